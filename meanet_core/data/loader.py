"""Fast batches from in-memory uint8 tensors: seeded shuffling and batched augmentation, no per-sample Python.

Images come out as float32 in [0, 1]; normalisation is the model's job.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from meanet_core.data.datasets import ImageTensors


def to_float(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 images (any shape) as float32 in [0, 1]."""
    if x_uint8.dtype != torch.uint8:
        raise ValueError(f"to_float expects uint8 images (0..255); got {x_uint8.dtype}")
    return x_uint8.to(torch.float32).div_(255.0)


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator, p_flip: float = 0.5) -> torch.Tensor:
    """Per-sample random crop after zero-padding each side by ``pad``, and left-right flip with prob ``p_flip``.

    One gather on the whole batch (B, C, H, W): each sample's source columns are its crop offset plus
    ``arange(W)``, reversed (via ``torch.where``) for the samples drawn to be flipped.
    """
    b, c, h, w = x.shape
    hp, wp = h + 2 * pad, w + 2 * pad
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad)) if pad else x
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    flip = (torch.rand(b, generator=generator) < p_flip).to(x.device)
    cols = torch.arange(w, device=x.device)
    cols = dx[:, None] + torch.where(flip[:, None], cols.flip(0), cols)  # (B, W)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H)
    flat = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, hp * wp).gather(2, flat).reshape(b, c, h, w)


class TensorBatches:
    """Iterate ``(images, labels)`` batches of ``data``: float32 images in [0, 1], int64 labels.

    Each ``__iter__`` starts a new epoch whose shuffle order and augmentation come from a generator seeded
    with ``seed + epoch``: epochs differ, and a fresh ``TensorBatches`` with the same seed replays the same
    epochs. Augmentation (random crop with zero padding ``pad``, random horizontal flip) runs on the whole
    batch at once.
    """

    def __init__(
        self,
        data: ImageTensors,
        batch_size: int,
        *,
        shuffle: bool,
        augment: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        pad: int = 4,
    ) -> None:
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        if int(pad) < 0:
            raise ValueError(f"pad must be >= 0 pixels; got {pad}")
        self.data = data
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.augment = augment
        self.seed = int(seed)
        self.drop_last = drop_last
        self.pad = int(pad)
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``__iter__`` use epoch ``epoch`` (e.g. when resuming)."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        n, x, y = len(self.data), self.data.x, self.data.y
        order = torch.randperm(n, generator=generator) if self.shuffle else None
        for i in range(len(self)):
            start, stop = i * self.batch_size, min((i + 1) * self.batch_size, n)
            if order is None:
                xb, yb = x[start:stop], y[start:stop]
            else:
                idx = order[start:stop]
                xb, yb = x[idx.to(x.device)], y[idx.to(y.device)]
            if self.augment:
                xb = random_crop_flip(xb, self.pad, generator)
            yield to_float(xb), yb
