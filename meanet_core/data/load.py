"""``load_dataset``: any dataset of :data:`~meanet_core.data.datasets.DATASETS` as seeded train/val/test splits.

It sits above both :mod:`meanet_core.data.datasets` (the splits) and :mod:`meanet_core.data.sources` (the readers),
so that neither imports the other's caller.
"""

from __future__ import annotations

import os
from pathlib import Path

from meanet_core.data import sources
from meanet_core.data.datasets import DATASETS, DatasetSplits, data_dir_from_env, split_indices
from meanet_core.data.images import check_bad_images


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    download: bool = True,
    image_size: int = 224,
    limit_train: int | None = None,
    bad_images: str = "skip",
) -> DatasetSplits:
    """Load dataset ``name`` (one of :data:`DATASETS`) as seeded train/val/test splits held in memory.

    ``data_dir`` defaults to ``$MEANET_DATA_DIR``. ``image_size`` only applies to ``imagefolder``; the other
    datasets keep their native 32x32. ``limit_train`` keeps a seeded, stratified subset of that many training
    images (after the validation carve-out), for quick runs. ``bad_images`` (``imagefolder`` only) says what happens
    to a file that is not a readable image of a supported format: ``"skip"`` leaves it out with a warning (listed in
    ``skipped_images``), ``"error"`` refuses the dataset with a ``BadImageError`` naming the files.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if limit_train is not None and (isinstance(limit_train, bool) or int(limit_train) < 1):
        raise ValueError(f"limit_train must be a positive number of images or None; got {limit_train!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1) (0 means no validation split); got {val_fraction}")
    check_bad_images(bad_images)
    folder = Path(data_dir).expanduser() if data_dir is not None else data_dir_from_env()
    raw = sources.read_arrays(name, folder, download=download, image_size=image_size, bad_images=bad_images)
    train_idx, val_idx = split_indices(raw.y_train, val_fraction, seed, limit_train)
    return DatasetSplits(
        name=name,
        train=raw.images("train", train_idx),  # only the rows kept are read (the source is often memory-mapped)
        val=raw.images("train", val_idx),
        test=raw.images("test"),
        num_classes=len(raw.class_names),
        class_names=raw.class_names,
        image_size=raw.image_size,
        mean=raw.mean,
        std=raw.std,
        skipped_images=raw.skipped,
    )
