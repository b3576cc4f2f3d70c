"""Backbones used as MEANet main blocks and as cloud models.

Every backbone splits into ``forward_features`` (the last feature map, which the extension block reads) and
``forward_head`` (global pooling + the classifier over all classes).
"""

from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """A classifier split into a feature extractor and a head."""

    feature_channels: int
    downsample: int  # input side / feature-map side

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """The two-convolution residual block of He et al. (2016), with a 1x1 projection shortcut when needed."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(Backbone):
    """ResNet-(6n+2) for 32x32 inputs: 16/32/64 channels, three stages of n blocks."""

    def __init__(self, depth: int, num_classes: int) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 56, 110, ...); got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(conv3x3(3, 16), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        stages: list[nn.Module] = []
        c_in = 16
        for i, c_out in enumerate((16, 32, 64)):
            blocks = [BasicBlock(c_in if j == 0 else c_out, c_out, 2 if (i > 0 and j == 0) else 1) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(64, num_classes)
        self.feature_channels = 64
        self.downsample = 4
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))  # (B, 64, H/4, W/4)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1))  # (B, classes)


class TorchvisionResNet(Backbone):
    """A torchvision ResNet (18/34/50/101/152), randomly initialised (no weights are downloaded)."""

    def __init__(self, depth: int, num_classes: int) -> None:
        super().__init__()
        import torchvision  # imported where needed: it adds seconds to every edge process start

        builders = {
            18: torchvision.models.resnet18,
            34: torchvision.models.resnet34,
            50: torchvision.models.resnet50,
            101: torchvision.models.resnet101,
            152: torchvision.models.resnet152,
        }
        net = builders[depth](weights=None, num_classes=num_classes)
        self.body = nn.Sequential(
            net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
        )
        self.fc = net.fc
        self.feature_channels = net.fc.in_features
        self.downsample = 32

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (B, 512|2048, H/32, W/32)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1))


class MobileNetV2(Backbone):
    """torchvision's MobileNetV2; ``cifar=True`` removes two stride-2 steps so 32x32 inputs end at 4x4."""

    def __init__(self, num_classes: int, cifar: bool) -> None:
        super().__init__()
        import torchvision

        net = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes)
        if cifar:
            net.features[0][0].stride = (1, 1)  # stem: 32x32 stays 32x32
            net.features[2].conv[1][0].stride = (1, 1)  # first 16->24 inverted residual
        self.features = net.features
        self.classifier = net.classifier
        self.feature_channels = 1280
        self.downsample = 8 if cifar else 32

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 1280, H/8|H/32, ...)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1))
