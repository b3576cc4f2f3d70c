"""MEANet models: backbones, the MEANet edge model, cloud models, and the registry that builds them by name."""

from meanet_core.models.backbones import Backbone, CifarResNet, MobileNetV2, TorchvisionResNet
from meanet_core.models.grow import can_grow, grow_from_main
from meanet_core.models.meanet import AdaptiveBlock, CloudModel, ExtensionBlock, MainOutput, MEANet, Normalize
from meanet_core.models.registry import (
    CLOUD_ARCHS,
    MEANET_ARCHS,
    BlockInfo,
    UnknownModelError,
    build_cloud,
    build_meanet,
    count_macs,
    describe_cloud,
    describe_meanet,
)

__all__ = [
    "CLOUD_ARCHS",
    "MEANET_ARCHS",
    "AdaptiveBlock",
    "Backbone",
    "BlockInfo",
    "CifarResNet",
    "CloudModel",
    "ExtensionBlock",
    "MEANet",
    "MainOutput",
    "MobileNetV2",
    "Normalize",
    "TorchvisionResNet",
    "UnknownModelError",
    "build_cloud",
    "build_meanet",
    "can_grow",
    "count_macs",
    "describe_cloud",
    "describe_meanet",
    "grow_from_main",
]
