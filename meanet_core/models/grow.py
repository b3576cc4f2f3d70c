"""Grow a cloud model from the edge's main block: the cloud starts from what the federation learned.

The main block is trained on everyone's images (the cloud's epochs and the edges' main rounds); the cloud model holds
only the cloud's share. :func:`grow_from_main` copies the main block into a deeper CIFAR ResNet of the same widths
(Net2DeeperNet, Chen et al., ICLR 2016): the first blocks of every stage take the main block's weights, and each extra
block starts as the identity (its last BatchNorm scale is zero, so ``relu(0 + x) = x`` on the non-negative input
every block receives). The grown model computes exactly the main block's function, then trains on with the cloud's own
schedule and capacity.
"""

from __future__ import annotations

import torch
from torch import nn

from meanet_core.models.backbones import Backbone, BasicBlock, CifarResNet
from meanet_core.models.meanet import CloudModel


def _stages(net: CifarResNet) -> list[list[nn.Module]]:
    """The residual blocks of each stage of ``net``, in order."""
    return [list(stage.children()) for stage in net.stages.children()]


def can_grow(main: Backbone, cloud: CloudModel) -> str | None:
    """Why ``cloud`` cannot be grown from ``main`` (None when it can)."""
    if not isinstance(main, CifarResNet) or not isinstance(cloud.net, CifarResNet):
        return (
            f"growing needs CIFAR ResNets on both sides (main {type(main).__name__}, cloud "
            f"{type(cloud.net).__name__}); use e.g. model resnet20_cifar with cloud model resnet20/32/56/110_cifar"
        )
    depth_main, depth_cloud = len(_stages(main)[0]), len(_stages(cloud.net)[0])
    if depth_cloud < depth_main:
        return (
            f"the cloud model ({depth_cloud} blocks per stage) is shallower than the main block ({depth_main}); "
            "pick a cloud model at least as deep"
        )
    if main.fc.out_features != cloud.net.fc.out_features:
        return f"the main block has {main.fc.out_features} classes, the cloud model {cloud.net.fc.out_features}"
    return None


@torch.no_grad()
def grow_from_main(cloud: CloudModel, main: Backbone, normalize: nn.Module | None = None) -> CloudModel:
    """Overwrite ``cloud``'s weights with ``main``'s, extra blocks as identities (see the module docstring); with
    ``normalize`` (the MEANet's), the cloud's input normalisation too. Returns ``cloud``."""
    problem = can_grow(main, cloud)
    if problem is not None:
        raise ValueError(f"cannot grow the cloud model from the main block: {problem}")
    assert isinstance(main, CifarResNet) and isinstance(cloud.net, CifarResNet)
    net = cloud.net
    net.stem.load_state_dict(main.stem.state_dict())
    for stage_main, stage_cloud in zip(_stages(main), _stages(net), strict=True):
        for j, block in enumerate(stage_cloud):
            if j < len(stage_main):
                block.load_state_dict(stage_main[j].state_dict())
            else:  # an identity: the residual branch outputs 0 (its last BatchNorm scale and shift are 0)
                for m in block.modules():
                    if isinstance(m, nn.BatchNorm2d):
                        m.reset_parameters()
                        m.reset_running_stats()
                assert isinstance(block, BasicBlock)
                nn.init.zeros_(block.bn2.weight)
                nn.init.zeros_(block.bn2.bias)
    net.fc.load_state_dict(main.fc.state_dict())
    if normalize is not None:
        cloud.normalize.load_state_dict(normalize.state_dict())
    return cloud
