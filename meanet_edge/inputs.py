"""What an edge device predicts on: a ``.npz`` of images, one image, or a folder of images (``meanet edge predict``).

A folder is flat (unlabelled) or holds one sub-folder per class named after one of the model's classes: the true
labels come from the *names*, so a folder's sorted position never decides its class id. Images of the model's input
size are used as they are, others resized and cropped as ``meanet train`` reads an image folder
(:mod:`meanet_edge.images`); files are decoded one batch at a time, and unreadable ones are left out and listed in
``Inputs.skipped``. Everything is numpy: a torch caller wraps ``Batch.x`` with ``torch.from_numpy``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meanet_edge.images import (
    SkippedImage,
    arrays_to_size,
    check_bad_images,
    class_folders,
    decode_labelled,
    image_files,
    to_size,
)

NPZ_IMAGE_KEYS, NPZ_LABEL_KEYS = ("x", "images", "x_test"), ("y", "labels", "y_test")


@dataclass(frozen=True)
class Batch:
    x: np.ndarray  # (n, 3, S, S) uint8
    names: list[str]  # the input of each row: a path, or an index into the .npz
    labels: np.ndarray | None  # (n,) int64 class ids, None when unknown
    read: int  # inputs this batch used up: its rows and the unreadable files left out


@dataclass
class Inputs:
    """What to predict: files to decode (with class ids, -1 = unknown) or ``.npz`` arrays already in memory."""

    source: Path
    input_size: int
    files: list[tuple[Path, int]] = field(default_factory=list)
    arrays: np.ndarray | None = None  # (N, 3, S, S) uint8
    array_labels: np.ndarray | None = None  # (N,) int64
    label_source: str = ""  # where the true labels come from; "" = unlabelled
    skipped: list[SkippedImage] = field(default_factory=list)

    @property
    def labelled(self) -> bool:
        return bool(self.label_source)

    def __len__(self) -> int:
        return len(self.files) if self.arrays is None else int(self.arrays.shape[0])

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """Batches of decoded inputs; files that cannot be read are left out and added to ``skipped``."""
        if self.arrays is not None:
            for start in range(0, len(self), batch_size):
                end = min(start + batch_size, len(self))
                y = self.array_labels[start:end] if self.array_labels is not None else None
                yield Batch(self.arrays[start:end], [str(i) for i in range(start, end)], y, end - start)
            return
        for start in range(0, len(self.files), batch_size):
            chunk = self.files[start : start + batch_size]
            x, labels, bad = decode_labelled(chunk, self.input_size, to_size)
            self.skipped += bad
            if labels:
                left_out = {b.path for b in bad}
                names = [str(path) for path, _ in chunk if path not in left_out]
                y = np.array(labels, dtype=np.int64) if self.labelled else None
                yield Batch(x, names, y, len(chunk))


def open_inputs(
    path: str | os.PathLike[str], input_size: int, class_names: Sequence[str], *, bad_images: str = "skip"
) -> Inputs:
    """The inputs at ``path``: a ``.npz`` (``x`` uint8 (N, H, W, 3), optional ``y``), an image, or a folder of
    images (flat, or one sub-folder per class named after one of ``class_names``)."""
    check_bad_images(bad_images)
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"--images {root} does not exist; pass a folder of images or an .npz file")
    if root.is_file() and root.suffix.lower() == ".npz":
        return _open_npz(root, input_size, len(class_names))
    if root.is_file():
        return Inputs(root, input_size, files=[(root, -1)])
    classes, flat = class_folders(root), _flat_files(root)
    if classes and flat:
        raise ValueError(
            f"{root} holds both files ({', '.join(p.name for p in flat[:3])}) and sub-folders "
            f"({', '.join(classes[:3])}): put every image in a sub-folder named after its class (labelled), or all of "
            "them in the folder itself (unlabelled)"
        )
    if classes:
        ids = {name: i for i, name in enumerate(class_names)}
        unknown = [c for c in classes if c not in ids]
        if unknown:
            raise ValueError(
                f"sub-folder(s) {', '.join(unknown[:5])} of {root} are not classes of this model: the sub-folders "
                f"of a labelled folder are named after the model's classes (e.g. {', '.join(class_names[:5])}); "
                "rename them, or put the images in one flat folder to predict without labels"
            )
        files = [(p, ids[c]) for c in classes for p in image_files(root / c)]
        inputs = Inputs(root, input_size, files=files, label_source="the class folders")
    else:
        inputs = Inputs(root, input_size, files=[(p, -1) for p in flat])
    if not inputs.files:
        raise FileNotFoundError(f"{root} holds no files to predict (hidden files and folders are not data)")
    return inputs


def _flat_files(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))


def _open_npz(path: Path, input_size: int, num_classes: int) -> Inputs:
    expected = "expected numpy.savez(path, x=images, y=labels): x uint8 (N, H, W, 3), y optional class ids"
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:  # OSError, ValueError, BadZipFile, EOFError...: all mean "not an npz"
        raise ValueError(f"{path} is not a readable .npz archive ({type(e).__name__}: {e}); {expected}") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} holds a single array, not a .npz archive; {expected}")
    with archive:
        found = list(archive.files)
        image_key = next((k for k in NPZ_IMAGE_KEYS if k in found), None)
        label_key = next((k for k in NPZ_LABEL_KEYS if k in found), None)
        if image_key is None:
            raise ValueError(
                f"{path} holds no images under the keys {', '.join(NPZ_IMAGE_KEYS)} "
                f"(found {', '.join(found) or 'none'}); {expected}"
            )
        try:
            x = np.asarray(archive[image_key])
            y = np.asarray(archive[label_key]) if label_key is not None else None
        except Exception as e:  # zlib.error, BadZipFile, ValueError (object arrays need pickle)...
            raise ValueError(f"{path}: its arrays cannot be read ({type(e).__name__}: {e}); {expected}") from e
    if x.dtype != np.uint8 or x.ndim != 4 or 3 not in (x.shape[1], x.shape[3]):
        raise ValueError(f"{path}: {image_key!r} must be uint8 (N, H, W, 3) images; found {x.dtype} {x.shape}")
    channels_first = x.shape[1] == 3 and x.shape[3] != 3
    hwc = x.transpose(0, 2, 3, 1) if channels_first else x  # (N, H, W, 3)
    if hwc.shape[1:3] == (input_size, input_size):
        images = np.ascontiguousarray(hwc.transpose(0, 3, 1, 2))  # (N, 3, S, S)
    else:  # as meanet train reads images of another size
        images = arrays_to_size(hwc, input_size)
    labels = None
    if y is not None:
        if y.dtype.kind not in "iu" or y.shape != (len(x),) or (len(y) and not 0 <= y.min() <= y.max() < num_classes):
            raise ValueError(
                f"{path}: {label_key!r} must hold {len(x)} integer class ids in 0..{num_classes - 1}; "
                f"found {y.dtype} {y.shape}"
            )
        labels = y.astype(np.int64)
    source = f"the .npz key {label_key!r}" if labels is not None else ""
    return Inputs(path, input_size, arrays=images, array_labels=labels, label_source=source)


__all__ = ["NPZ_IMAGE_KEYS", "NPZ_LABEL_KEYS", "Batch", "Inputs", "open_inputs"]
