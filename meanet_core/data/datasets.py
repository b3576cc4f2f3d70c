"""In-memory image datasets as uint8 tensors, with a seeded, stratified train/val carve-out.

Every dataset comes back as a :class:`DatasetSplits`: ``train`` and ``val`` are carved from the official
training split (seeded, stratified by class, shuffled), ``test`` is the official test split and is never used
for model selection. Images stay uint8 ``(N, C, H, W)``; scaling to [0, 1] happens in the loader,
normalisation in the model. The per-source readers live in :mod:`meanet_core.data.sources`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from meanet_core.data.images import SkippedImage

DATASETS: tuple[str, ...] = ("cifar100", "cifar100-mini", "cifar10", "digits", "imagefolder")
DATA_DIR_ENV = "MEANET_DATA_DIR"


@dataclass(frozen=True)
class ImageTensors:
    """Images ``x`` (uint8, ``(N, C, H, W)``, contiguous) with their labels ``y`` (int64, ``(N,)``)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.x, torch.Tensor) or not isinstance(self.y, torch.Tensor):
            raise TypeError(
                f"ImageTensors expects torch tensors for x and y; got {type(self.x).__name__} and "
                f"{type(self.y).__name__}; convert numpy arrays with torch.from_numpy"
            )
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise ValueError(
                f"ImageTensors.x must be uint8 of shape (N, C, H, W); got {self.x.dtype} of shape "
                f"{tuple(self.x.shape)}; scale float images with (x * 255).round().to(torch.uint8) and "
                "move channels first with .permute(0, 3, 1, 2)"
            )
        if self.y.dtype != torch.int64 or self.y.dim() != 1:
            raise ValueError(
                f"ImageTensors.y must be int64 of shape (N,); got {self.y.dtype} of shape "
                f"{tuple(self.y.shape)}; convert with y.long().flatten()"
            )
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"ImageTensors has {self.x.shape[0]} images but {self.y.shape[0]} labels; they must agree")
        if not self.x.is_contiguous():
            object.__setattr__(self, "x", self.x.contiguous())

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: np.ndarray | torch.Tensor) -> ImageTensors:
        """The images at ``idx`` (integer indices or a boolean mask of length N), in that order."""
        index = torch.as_tensor(np.asarray(idx) if not isinstance(idx, torch.Tensor) else idx)
        if index.dtype == torch.bool:
            if index.shape != (len(self),):
                raise ValueError(f"a boolean mask must have shape ({len(self)},); got {tuple(index.shape)}")
            index = index.nonzero().flatten()
        elif index.numel() == 0:
            index = index.to(torch.int64)
        elif index.is_floating_point() or index.is_complex():
            raise ValueError(f"subset indices must be integers or a boolean mask; got dtype {index.dtype}")
        index = index.to(device=self.x.device, dtype=torch.int64).flatten()
        return ImageTensors(self.x[index].contiguous(), self.y[index.to(self.y.device)])


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset's train/val/test splits with the facts a model needs (classes, size, normalisation)."""

    name: str
    train: ImageTensors
    val: ImageTensors
    test: ImageTensors
    num_classes: int
    class_names: tuple[str, ...]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    skipped_images: tuple[SkippedImage, ...] = ()
    """Files left out because they are not readable images (``imagefolder`` with ``bad_images="skip"``)."""

    def __post_init__(self) -> None:
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"DatasetSplits {self.name!r}: {len(self.class_names)} class names for {self.num_classes} classes"
            )
        for part in ("train", "val", "test"):
            data: ImageTensors = getattr(self, part)
            if data.x.shape[2:] != (self.image_size, self.image_size):
                raise ValueError(
                    f"DatasetSplits {self.name!r}: {part} images are {tuple(data.x.shape[2:])}, "
                    f"expected ({self.image_size}, {self.image_size})"
                )
            if len(data) and (int(data.y.min()) < 0 or int(data.y.max()) >= self.num_classes):
                raise ValueError(
                    f"DatasetSplits {self.name!r}: {part} labels span "
                    f"{int(data.y.min())}..{int(data.y.max())}, expected 0..{self.num_classes - 1}"
                )


def data_dir_from_env() -> Path | None:
    """The folder named by ``$MEANET_DATA_DIR``, or None when it is unset or empty."""
    value = os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else None


def stratified_pick(labels: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``k`` of the indices, stratified by label; returns ``(picked, rest)``, each in a random order.

    Each class gets ``floor(k * n_c / N)`` picks; the remaining picks go to the classes with the largest
    fractional quota (ties broken at random), so the total is exactly ``k``.
    """
    n = int(labels.shape[0])
    if not 0 <= k <= n:
        raise ValueError(f"cannot pick {k} of {n} items; k must lie in 0..{n}")
    perm = rng.permutation(n)
    if k == 0 or n == 0:
        return perm[:0].astype(np.int64), perm.astype(np.int64)
    classes, inverse, counts = np.unique(labels[perm], return_inverse=True, return_counts=True)
    quota = counts * (k / n)
    take = np.floor(quota).astype(np.int64)
    missing = k - int(take.sum())
    if missing > 0:
        # Largest remainder first; a random key breaks ties so no class is favoured by its label value.
        order = np.lexsort((rng.random(len(classes)), -(quota - take)))
        take[order[:missing]] += 1
    # Rank of every position within its class, in permuted order: the first take[c] of class c are picked.
    by_class = np.argsort(inverse, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(n, dtype=np.int64)
    rank[by_class] = np.arange(n) - np.repeat(starts, counts)
    picked = rank < take[inverse]
    return perm[picked].astype(np.int64), perm[~picked].astype(np.int64)


def train_val_split(data: ImageTensors, val_fraction: float, seed: int) -> tuple[ImageTensors, ImageTensors]:
    """Split ``data`` into shuffled ``(train, val)``, stratified by class; ``val_fraction=0``: empty val."""
    train_idx, val_idx = split_indices(data.y.cpu().numpy(), val_fraction, seed)
    return data.subset(train_idx), data.subset(val_idx)


def split_indices(
    labels: np.ndarray, val_fraction: float, seed: int, limit_train: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The positions of the training and validation images among ``labels`` (the official training split's):
    :func:`train_val_split`'s carve-out, then, with ``limit_train``, a seeded, stratified subset of the training part
    (a different random stream, so changing ``limit_train`` never changes val)."""
    if not 0.0 <= val_fraction < 1.0 or math.isnan(val_fraction):
        raise ValueError(f"val_fraction must lie in [0, 1) (0 means no validation split); got {val_fraction}")
    labels = np.asarray(labels, dtype=np.int64)
    val_idx, train_idx = stratified_pick(labels, round(len(labels) * val_fraction), np.random.default_rng(seed))
    if limit_train is not None and limit_train < len(train_idx):
        keep, _ = stratified_pick(labels[train_idx], int(limit_train), np.random.default_rng([seed, 1]))
        train_idx = train_idx[keep]
    return train_idx, val_idx
