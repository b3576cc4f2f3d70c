"""Inference fast path: a copy of a MEANet or cloud model with BatchNorm folded into its convolutions, weights in
channels-last memory format and, optionally, ``torch.compile``.

``optimize_for_inference(model)`` never touches ``model``: it returns an optimised deep copy in eval mode with the same
API (``forward_main``, ``forward_extension``, ``hard_classes``, ``hard_index``, ``input_size``, ...), so
``AdaptiveEngine`` and ``LocalCloud`` run it unchanged (``AdaptiveEngine(model, policy, optimize=True)`` does it for
you). The copy is for inference only: its BatchNorm layers are gone (folded into the preceding convolution's weight
and bias, so they would no longer learn nor track statistics) and its parameters have ``requires_grad=False``.

Which BatchNorm follows which convolution is read off the module structure, not guessed from names alone:

* within an ``nn.Sequential`` that keeps ``nn.Sequential.forward``, a ``Conv2d`` immediately followed by a
  ``BatchNorm2d`` (the ``_conv_bn_relu`` layers, the CIFAR ResNet stem, projection shortcuts, the extension's merge,
  torchvision's ResNet body and downsample, torchvision's ``Conv2dNormActivation`` and MobileNetV2 inverted
  residuals);
* ``convN``/``bnN`` attribute pairs of residual blocks whose ``forward`` applies ``bnN`` directly, and only, to the
  output of ``convN``: this package's ``BasicBlock`` and torchvision's ``BasicBlock``/``Bottleneck``.

A module that appears more than once in the model (shared) is never fused.
"""

from __future__ import annotations

import copy
import itertools
import sys
from typing import TypeVar

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from meanet_core.models.backbones import BasicBlock

M = TypeVar("M", bound=nn.Module)

_COMPILED_FLAG = "_fastpath_compiled"
# methods replaced by compiled versions, per kind of model (every other method keeps running eagerly)
_COMPILED_METHODS = ("forward_main", "forward_extension", "forward")


def _paired_blocks() -> tuple[type[nn.Module], ...]:
    """Residual blocks whose ``bnN`` reads only ``convN``'s output (checked against their ``forward``)."""
    blocks: list[type[nn.Module]] = [BasicBlock]
    tv_resnet = sys.modules.get("torchvision.models.resnet")  # only if loaded: importing torchvision costs seconds
    if tv_resnet is not None:
        blocks += [tv_resnet.BasicBlock, tv_resnet.Bottleneck]
    return tuple(blocks)


def _fusable(conv: nn.Module, bn: nn.Module) -> bool:
    if type(conv) is not nn.Conv2d or type(bn) is not nn.BatchNorm2d:  # exact types: subclasses may differ
        return False
    return (
        bn.track_running_stats
        and bn.running_mean is not None
        and bn.running_var is not None
        and conv.out_channels == bn.num_features
    )


def fuse_conv_bn(model: nn.Module) -> int:
    """Fold every BatchNorm2d that directly follows a Conv2d into that convolution, in place; returns the number of
    pairs fused. ``model`` must be in eval mode (the running statistics are what gets folded)."""
    if model.training:
        raise ValueError("fuse_conv_bn folds BatchNorm running statistics: put the model in eval mode first")
    uses: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        uses[id(m)] = uses.get(id(m), 0) + 1
    paired = _paired_blocks()

    pairs: list[tuple[nn.Module, str, str]] = []  # (parent, conv attribute, bn attribute)
    for parent in model.modules():
        if isinstance(parent, nn.Sequential) and type(parent).forward is nn.Sequential.forward:
            names = list(parent._modules)
            pairs += [(parent, a, b) for a, b in itertools.pairwise(names)]
        elif type(parent) in paired:
            pairs += [(parent, f"conv{i}", f"bn{i}") for i in (1, 2, 3) if hasattr(parent, f"bn{i}")]

    fused = 0
    for parent, conv_name, bn_name in pairs:
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        if not _fusable(conv, bn) or uses[id(conv)] > 1 or uses[id(bn)] > 1:
            continue
        setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
        setattr(parent, bn_name, nn.Identity())
        fused += 1
    return fused


def uses_channels_last(model: nn.Module) -> bool:
    """True when the model's convolution weights are channels-last (its inputs should be too)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.weight.dim() == 4:
            w = m.weight
            # a 1x1 or depthwise kernel is contiguous in both formats; the others tell them apart
            if w.shape[1] > 1 and w.shape[2] * w.shape[3] > 1:
                return w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    return False


def is_compiled(model: nn.Module) -> bool:
    """True for a copy made by ``optimize_for_inference(..., compile=True)``."""
    return bool(getattr(model, _COMPILED_FLAG, False))


def optimize_for_inference(
    model: M, *, fuse_bn: bool = True, channels_last: bool = True, compile: bool = False, dynamic: bool | None = True
) -> M:
    """An optimised deep copy of ``model`` (a ``MEANet`` or ``CloudModel``) in eval mode, for inference only.

    ``fuse_bn`` folds each BatchNorm2d into the convolution before it (see :func:`fuse_conv_bn`); ``channels_last``
    stores the weights as NHWC, which the CPU convolution kernels (oneDNN) prefer, and the engine then converts its
    inputs to match; ``compile`` wraps ``forward_main``/``forward_extension``/``forward`` in ``torch.compile``
    (``dynamic=True`` by default since the engine's batches vary in size; the first calls pay the compilation).
    The parameters of the copy do not require gradients: a fused model has no BatchNorm left and must not be trained.
    ``model`` itself is not modified.
    """
    if is_compiled(model):
        raise ValueError("this model was already compiled by optimize_for_inference; optimise the original model")
    out = copy.deepcopy(model).eval()
    out.requires_grad_(False)
    if fuse_bn:
        fuse_conv_bn(out)
    if channels_last:
        out.to(memory_format=torch.channels_last)
    if compile:
        for name in _COMPILED_METHODS:
            method = getattr(out, name, None)
            if method is not None:
                # an instance attribute shadows the method; nn.Module.__call__ then runs the compiled forward
                object.__setattr__(out, name, torch.compile(method, dynamic=dynamic))
        object.__setattr__(out, _COMPILED_FLAG, True)
    return out
