"""What an edge device predicts on: a ``.npz`` of images, one image, or a folder of images (``meanet edge predict``).

A folder is flat (unlabelled) or holds one sub-folder per class named after one of the model's classes: the true
labels come from the *names*, so a folder's sorted position never decides its class id. Images of the model's input
size are used as they are, others resized and cropped as ``meanet train`` reads an image folder
(:mod:`meanet_core.data.images`); files are decoded one batch at a time, and unreadable ones are left out and listed
in ``Inputs.skipped``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meanet_core.data.images import SkippedImage, check_bad_images, class_folders, decode_into, image_files, resize_crop

NPZ_IMAGE_KEYS, NPZ_LABEL_KEYS = ("x", "images", "x_test"), ("y", "labels", "y_test")


@dataclass(frozen=True)
class Batch:
    x: torch.Tensor  # (n, 3, S, S) uint8
    names: list[str]  # the input of each row: a path, or an index into the .npz
    labels: torch.Tensor | None  # (n,) int64 class ids, None when unknown
    read: int  # inputs this batch used up: its rows and the unreadable files left out


@dataclass
class Inputs:
    """What to predict: files to decode (with class ids, -1 = unknown) or ``.npz`` arrays already in memory."""

    source: Path
    input_size: int
    files: list[tuple[Path, int]] = field(default_factory=list)
    arrays: torch.Tensor | None = None  # (N, 3, S, S) uint8
    array_labels: torch.Tensor | None = None
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
        transform = _to_model_size(self.input_size)
        for start in range(0, len(self.files), batch_size):
            chunk = self.files[start : start + batch_size]
            x = torch.empty((len(chunk), 3, self.input_size, self.input_size), dtype=torch.uint8)
            names: list[str] = []
            labels: list[int] = []
            for path, label in chunk:
                reason = decode_into(x[len(names)], path, transform)
                if reason:
                    self.skipped.append(SkippedImage(path, reason))
                else:
                    names.append(str(path))
                    labels.append(label)
            if names:
                y = torch.tensor(labels, dtype=torch.int64) if self.labelled else None
                yield Batch(x[: len(names)], names, y, len(chunk))


def _to_model_size(side: int) -> Callable[[Any], torch.Tensor]:
    """PIL image -> uint8 (3, S, S): as it is when it is S x S already, else resized and cropped as meanet train
    reads an image folder (:func:`meanet_core.data.images.resize_crop`)."""
    from torchvision.transforms import PILToTensor

    resize, as_tensor = resize_crop(side), PILToTensor()
    return lambda image: as_tensor(image) if image.size == (side, side) else resize(image)


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
    images = torch.from_numpy(x)
    images = (images if x.shape[1] == 3 and x.shape[3] != 3 else images.permute(0, 3, 1, 2)).contiguous()
    if images.shape[2:] != (input_size, input_size):  # as meanet train reads images of another size
        from torchvision.transforms import functional

        images = functional.center_crop(functional.resize(images, int(input_size * 256 / 224)), [input_size] * 2)
    labels = None
    if y is not None:
        if y.dtype.kind not in "iu" or y.shape != (len(x),) or (len(y) and not 0 <= y.min() <= y.max() < num_classes):
            raise ValueError(
                f"{path}: {label_key!r} must hold {len(x)} integer class ids in 0..{num_classes - 1}; "
                f"found {y.dtype} {y.shape}"
            )
        labels = torch.from_numpy(y.astype(np.int64))
    source = f"the .npz key {label_key!r}" if labels is not None else ""
    return Inputs(path, input_size, arrays=images, array_labels=labels, label_source=source)


__all__ = ["NPZ_IMAGE_KEYS", "NPZ_LABEL_KEYS", "Batch", "Inputs", "open_inputs"]
