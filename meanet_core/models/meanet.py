"""The MEANet edge model: main block, adaptive block and extension block; and the cloud classifier.

Models take float images in [0, 1] of shape (B, C, H, W) and normalise them themselves, so a checkpoint carries
its own preprocessing and the edge can offload the raw uint8 image unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from meanet_core.models.backbones import Backbone, BasicBlock


class Normalize(nn.Module):
    """Per-channel (x - mean) / std, stored as buffers so checkpoints carry it."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class AdaptiveBlock(nn.Module):
    """A small network on the raw (normalised) input whose output matches the main block's feature map size.

    A stride-1 convolution, then ``log2(downsample)`` stride-2 convolutions doubling the width up to ``4*width``.
    """

    def __init__(self, downsample: int, width: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        steps = downsample.bit_length() - 1
        if 2**steps != downsample:
            raise ValueError(f"adaptive block downsample must be a power of two; got {downsample}")
        layers: list[nn.Module] = []
        if downsample < 32:  # small inputs: keep full resolution for the first layer
            layers.append(_conv_bn_relu(in_channels, width, 1))
            c = width
        else:
            c = in_channels
        for i in range(steps):
            c_out = width * 2 ** min(i + (0 if downsample >= 32 else 1), 2)
            layers.append(_conv_bn_relu(c, c_out, 2))
            c = c_out
        self.layers = nn.Sequential(*layers)
        self.out_channels = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)  # (B, out_channels, H/downsample, W/downsample)


class ExtensionBlock(nn.Module):
    """Merges the (detached) main-block features with the adaptive features and classifies the hard classes.

    In a residual MEANet (the default) its output is a *correction* added to the main block's logits of the hard
    classes (:meth:`MEANet.forward_extension`), and a new hard-class set starts it at zero: the extension then answers
    exactly as the main block does, and training can only move it where the hard-class data says so.
    """

    def __init__(self, main_channels: int, adaptive_channels: int, width: int, num_blocks: int, num_hard: int):
        super().__init__()
        self.merge = nn.Sequential(
            nn.Conv2d(main_channels + adaptive_channels, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.blocks = nn.Sequential(*[BasicBlock(width, width) for _ in range(num_blocks)])
        self.fc = nn.Linear(width, max(num_hard, 1))
        self.width = width

    def forward(self, main_features: torch.Tensor, adaptive_features: torch.Tensor) -> torch.Tensor:
        z = torch.cat([main_features, adaptive_features], dim=1)  # (B, Cm + Ca, h, w)
        z = self.blocks(self.merge(z))  # (B, width, h, w)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(z, 1), 1))  # (B, num_hard)


class MainOutput(NamedTuple):
    logits: torch.Tensor  # (B, num_classes)
    features: torch.Tensor  # (B, C, h, w)


class MEANet(nn.Module):
    """Main block (all classes), adaptive block (raw input) and extension block (hard classes).

    ``hard_classes`` lists the original class ids the extension answers for; ``hard_index[c]`` is the position of
    class ``c`` among them, or -1 when ``c`` is easy.
    """

    hard_classes: torch.Tensor
    hard_index: torch.Tensor
    extension_residual: torch.Tensor
    class_prior: torch.Tensor

    def __init__(
        self,
        arch: str,
        main: Backbone,
        num_classes: int,
        hard_classes: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        input_size: int,
        adaptive_width: int = 16,
        extension_width: int | None = None,
        extension_blocks: int = 2,
        residual_extension: bool = True,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.num_classes = num_classes
        self.input_size = input_size
        self.normalize = Normalize(mean, std)
        self.main = main
        self.adaptive = AdaptiveBlock(main.downsample, adaptive_width)
        self.adaptive_width = adaptive_width
        width = extension_width or min(main.feature_channels, 128)
        self.extension_width = width
        self.extension_blocks = extension_blocks
        self.extension = ExtensionBlock(
            main.feature_channels, self.adaptive.out_channels, width, extension_blocks, len(hard_classes)
        )
        # (1,) 1 = the extension's logits are a correction of the main block's hard-class logits (a buffer, so every
        # checkpoint and broadcast says how to read its extension; states saved before it existed load as 0)
        self.register_buffer("extension_residual", torch.tensor([int(residual_extension)], dtype=torch.long))
        self._residual = bool(residual_extension)  # the buffer's value, readable on the meta device too
        # (K,) added to the main block's logits: zeros in the shared model; a device's personal model holds its own
        # label prior here (meanet_core.inference.personal), so every exit, export and engine reads it
        self.register_buffer("class_prior", torch.zeros(num_classes))
        self.register_buffer("hard_classes", torch.empty(0, dtype=torch.long))
        self.register_buffer("hard_index", torch.full((num_classes,), -1, dtype=torch.long))
        self._main_frozen = False
        self.set_hard_classes(hard_classes)

    # ----------------------------------------------------------------------------------------- hard classes
    def set_hard_classes(self, hard_classes: Sequence[int]) -> None:
        """Set the hard-class set; a new set gets a freshly initialised extension classifier (its rows are classes)."""
        classes = sorted({int(c) for c in hard_classes})
        if classes and (classes[0] < 0 or classes[-1] >= self.num_classes):
            raise ValueError(f"hard classes must lie in 0..{self.num_classes - 1}; got {classes}")
        device = self.hard_index.device
        changed = classes != ([] if self.hard_classes.is_meta else self.hard_classes.tolist())
        self.hard_classes = torch.tensor(classes, dtype=torch.long, device=device)
        index = torch.full((self.num_classes,), -1, dtype=torch.long, device=device)
        index[self.hard_classes] = torch.arange(len(classes), device=device)
        self.hard_index = index
        if changed or self.extension.fc.out_features != max(len(classes), 1):
            fc = nn.Linear(self.extension.width, max(len(classes), 1))
            if self.residual_extension:  # the correction starts at zero: the extension answers as the main block
                nn.init.zeros_(fc.weight)
                nn.init.zeros_(fc.bias)
            self.extension.fc = fc.to(device)

    @property
    def residual_extension(self) -> bool:
        """Whether the extension corrects the main block's hard-class logits (else it classifies on its own)."""
        return self._residual

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        if prefix + "class_prior" not in state_dict:  # a state saved before personal priors: none
            state_dict[prefix + "class_prior"] = torch.zeros(self.num_classes)
        key = prefix + "extension_residual"
        if key not in state_dict:  # a state saved before residual extensions: its extension classifies on its own
            state_dict[key] = torch.zeros(1, dtype=torch.long)
        value = state_dict[key]
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_meta:
            self._residual = bool(value.reshape(-1)[0])

    @property
    def num_hard(self) -> int:
        return int(self.hard_classes.numel())

    def is_hard(self, labels: torch.Tensor) -> torch.Tensor:
        return self.hard_index[labels] >= 0

    # ----------------------------------------------------------------------------------------- freezing
    def freeze_main(self, frozen: bool = True) -> None:
        """Freeze the main block: no gradients, and BatchNorm statistics stay as trained (eval mode)."""
        self._main_frozen = frozen
        for p in self.main.parameters():
            p.requires_grad_(not frozen)
        if frozen:
            self.main.eval()

    @property
    def main_frozen(self) -> bool:
        return self._main_frozen

    def train(self, mode: bool = True) -> MEANet:
        super().train(mode)
        if self._main_frozen:
            self.main.eval()
        return self

    def edge_parameters(self) -> list[nn.Parameter]:
        """Parameters of the adaptive and extension blocks (what edges fine-tune and upload)."""
        return [*self.adaptive.parameters(), *self.extension.parameters()]

    # ----------------------------------------------------------------------------------------- forwards
    def forward_main(self, x: torch.Tensor) -> MainOutput:
        """Main exit: x (B, C, H, W) in [0, 1] -> logits over all classes and the last feature map."""
        features = self.main.forward_features(self.normalize(x))
        return MainOutput(self.main_logits(features), features)

    def main_logits(self, features: torch.Tensor) -> torch.Tensor:
        """The main block's head on its features, plus the model's class prior (zeros unless personal)."""
        return self.main.forward_head(features) + self.class_prior  # (B, K)

    def forward_extension(self, x: torch.Tensor, main_features: torch.Tensor) -> torch.Tensor:
        """Extension exit: logits over the hard classes, from the raw input and the main block's features (in a
        residual MEANet, the main block's logits of the hard classes plus the extension's correction)."""
        features = main_features.detach()
        adaptive = self.adaptive(self.normalize(x))  # (B, Ca, h, w)
        out = self.extension(features, adaptive)  # (B, H)
        if self.residual_extension:
            out = out + self.main_logits(features)[:, self.hard_classes].detach()  # (B, H)
        return out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every edge branch on every sample (training and the all-branches baseline)."""
        main = self.forward_main(x)
        return main.logits, self.forward_extension(x, main.features)

    def extension_to_classes(self, ext_logits: torch.Tensor) -> torch.Tensor:
        """Map extension argmax positions back to original class ids."""
        return self.hard_classes[ext_logits.argmax(dim=1)]


class CloudModel(nn.Module):
    """A full classifier that serves the complex inputs offloaded by the edge."""

    def __init__(self, arch: str, net: nn.Module, mean: Sequence[float], std: Sequence[float], input_size: int):
        super().__init__()
        self.arch = arch
        self.input_size = input_size
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))  # (B, num_classes)
