"""Build MEANets and cloud models by registered name; describe their blocks (channels, parameters, MACs)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from meanet_core.models.backbones import Backbone, CifarResNet, MobileNetV2, TorchvisionResNet
from meanet_core.models.meanet import CloudModel, MEANet


class UnknownModelError(ValueError):
    """Raised for a model name that is not registered; the message lists the valid names."""


@dataclass(frozen=True)
class ArchSpec:
    build: Callable[[int], Backbone]
    input_size: int  # native input side (32 for CIFAR variants, 224 for ImageNet ones)
    description: str


MEANET_ARCHS: dict[str, ArchSpec] = {
    "resnet20_cifar": ArchSpec(lambda k: CifarResNet(20, k), 32, "ResNet-20 for 32x32 inputs"),
    "resnet32_cifar": ArchSpec(lambda k: CifarResNet(32, k), 32, "ResNet-32 for 32x32 inputs"),
    "resnet56_cifar": ArchSpec(lambda k: CifarResNet(56, k), 32, "ResNet-56 for 32x32 inputs"),
    "mobilenetv2_cifar": ArchSpec(lambda k: MobileNetV2(k, cifar=True), 32, "MobileNetV2 for 32x32 inputs"),
    "resnet18": ArchSpec(lambda k: TorchvisionResNet(18, k), 224, "torchvision ResNet-18, 224x224"),
    "mobilenetv2": ArchSpec(lambda k: MobileNetV2(k, cifar=False), 224, "torchvision MobileNetV2, 224x224"),
}

CLOUD_ARCHS: dict[str, ArchSpec] = {
    "resnet56_cifar": MEANET_ARCHS["resnet56_cifar"],
    "resnet110_cifar": ArchSpec(lambda k: CifarResNet(110, k), 32, "ResNet-110 for 32x32 inputs"),
    "resnet20_cifar": MEANET_ARCHS["resnet20_cifar"],
    "resnet32_cifar": MEANET_ARCHS["resnet32_cifar"],
    "resnet50": ArchSpec(lambda k: TorchvisionResNet(50, k), 224, "torchvision ResNet-50, 224x224"),
    "resnet101": ArchSpec(lambda k: TorchvisionResNet(101, k), 224, "torchvision ResNet-101, 224x224"),
    "resnet152": ArchSpec(lambda k: TorchvisionResNet(152, k), 224, "torchvision ResNet-152, 224x224"),
}


def _spec(table: dict[str, ArchSpec], name: str, kind: str) -> ArchSpec:
    if name not in table:
        raise UnknownModelError(f"unknown {kind} model {name!r}; valid names: {', '.join(sorted(table))}")
    return table[name]


def _check_classes(num_classes: int) -> None:
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2; got {num_classes!r}")


def _input_size(spec: ArchSpec, name: str, input_size: int | None) -> int:
    """``input_size`` checked (a positive int), or the architecture's native size when it is None."""
    if input_size is None:
        return spec.input_size
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise ValueError(
            f"input_size of {name} must be a positive number of pixels (the side the model is trained and "
            f"evaluated at; native {spec.input_size}) or None for the native size; got {input_size!r}"
        )
    return input_size


def build_meanet(
    name: str,
    num_classes: int,
    hard_classes: Sequence[int] = (),
    *,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.25, 0.25, 0.25),
    adaptive_width: int = 16,
    extension_width: int | None = None,
    extension_blocks: int = 2,
    input_size: int | None = None,
    residual_extension: bool = True,
) -> MEANet:
    """A MEANet on the registered backbone ``name`` (see ``MEANET_ARCHS``).

    ``residual_extension`` (default): the extension's logits correct the main block's logits of the hard classes and
    start at zero, so a fresh extension answers as the main block does (``False``: it classifies on its own, as
    MEANets did before).

    ``input_size``: the side of the images it takes (trains on, is evaluated and served at); default the
    architecture's native size. Every backbone pools globally, so any size works; checkpoints record it.
    """
    spec = _spec(MEANET_ARCHS, name, "MEANet")
    _check_classes(num_classes)
    side = _input_size(spec, name, input_size)
    return MEANet(
        name,
        spec.build(num_classes),
        num_classes,
        hard_classes,
        mean,
        std,
        side,
        adaptive_width=adaptive_width,
        extension_width=extension_width,
        extension_blocks=extension_blocks,
        residual_extension=residual_extension,
    )


def build_cloud(
    name: str,
    num_classes: int,
    *,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.25, 0.25, 0.25),
    input_size: int | None = None,
) -> CloudModel:
    """A cloud classifier on the registered backbone ``name`` (see ``CLOUD_ARCHS``); ``input_size`` as in
    :func:`build_meanet`."""
    spec = _spec(CLOUD_ARCHS, name, "cloud")
    _check_classes(num_classes)
    return CloudModel(name, spec.build(num_classes), mean, std, _input_size(spec, name, input_size))


# --------------------------------------------------------------------------------------------- description
@dataclass(frozen=True)
class BlockInfo:
    """One block of a model at a given input size (per image)."""

    name: str
    out_shape: tuple[int, ...]  # per image, e.g. (64, 8, 8)
    params: int
    macs: int  # multiply-accumulates per image, measured with torch.utils.flop_counter

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "out_shape": list(self.out_shape),
            "params": self.params,
            "macs": self.macs,
        }


def count_macs(fn: Callable[[], object]) -> int:
    """MACs executed by ``fn()``: FlopCounterMode counts 2 FLOPs per multiply-accumulate."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops()) // 2


def _params(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


@torch.no_grad()
def describe_meanet(model: MEANet, input_size: int | None = None) -> list[BlockInfo]:
    """Main, adaptive and extension blocks with output shape, parameters and MACs for one image."""
    side = input_size or model.input_size
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, side, side, device=model.hard_index.device)
    main = model.forward_main(x)
    adaptive_out = model.adaptive(model.normalize(x))
    blocks = [
        BlockInfo(
            "main",
            tuple(main.features.shape[1:]),
            _params(model.main),
            count_macs(lambda: model.forward_main(x)),
        ),
        BlockInfo(
            "adaptive",
            tuple(adaptive_out.shape[1:]),
            _params(model.adaptive),
            count_macs(lambda: model.adaptive(model.normalize(x))),
        ),
        BlockInfo(
            "extension",
            (model.extension.fc.out_features,),
            _params(model.extension),
            count_macs(lambda: model.extension(main.features, adaptive_out)),
        ),
    ]
    model.train(was_training)
    return blocks


@torch.no_grad()
def describe_cloud(model: CloudModel, input_size: int | None = None) -> BlockInfo:
    side = input_size or model.input_size
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, side, side, device=next(model.parameters()).device)
    out = model(x)
    info = BlockInfo("cloud", tuple(out.shape[1:]), _params(model), count_macs(lambda: model(x)))
    model.train(was_training)
    return info
