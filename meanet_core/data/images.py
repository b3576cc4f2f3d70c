"""A folder of images in ImageFolder layout (``ROOT/<class>/**/<image>``) read into uint8 tensors.

Files are found and decoded by :mod:`meanet_edge.images` (Pillow and numpy, the code the device runs too): every file
in a class folder is read, one that is not a readable image is either left out and reported (``bad_images="skip"``,
the default: a warning with the count and the first paths, and the list in the result) or refuses the whole folder
(``bad_images="error"``: a :class:`BadImageError` naming the files). Files are visited in torchvision's
``ImageFolder`` order (sorted class names, then a sorted walk), so labels and seeded splits match it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from meanet_edge import images as edge_images
from meanet_edge.images import (
    BAD_IMAGE_POLICIES,
    IMAGE_EXTENSIONS,
    SHOWN,
    BadImageError,
    SkippedImage,
    Transform,
    check_bad_images,
    class_folders,
    image_files,
    list_bad,
    resize_crop,
    to_size,
)

log = logging.getLogger("meanet.data")


@dataclass(frozen=True)
class ImageTree:
    """The images of one folder: ``x`` uint8 ``(N, 3, S, S)``, labels ``y`` int64 ``(N,)`` indexing ``classes``."""

    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[str, ...]
    skipped: tuple[SkippedImage, ...]


def read_image_tree(root: Path, image_size: int, *, bad_images: str = "skip") -> ImageTree:
    """Read every class folder under ``root``, each image resized (short side ``image_size * 256 / 224``) and
    centre-cropped to ``image_size`` x ``image_size`` RGB.

    Raises
    ------
    BadImageError
        With ``bad_images="error"``, when any file in a class folder is not a readable image of a supported format.
    FileNotFoundError
        When ``root`` has no class folders, or a class folder holds no readable image.
    """
    check_bad_images(bad_images)
    classes = class_folders(root)
    if not classes:
        raise FileNotFoundError(
            f"{root} must hold one sub-folder per class with images inside (e.g. {root}/cat/001.jpg); found none"
        )
    files = [(path, label) for label, name in enumerate(classes) for path in image_files(root / name)]
    x, labels, bad = decode_labelled(files, image_size, resize_crop)
    if bad and bad_images == "error":
        raise BadImageError(
            f"{len(bad)} of {len(files)} files in {root} are not readable images: {list_bad(bad)}. Fix or remove "
            "them, or pass bad_images='skip' (meanet train --bad-images skip) to leave them out with a warning",
            tuple(bad),
        )
    if bad:
        log.warning(
            "skipped %d of %d files in %s that are not readable images: %s. Fix or remove them, or pass "
            "bad_images='error' (meanet train --bad-images error) to refuse such a folder",
            len(bad),
            len(files),
            root,
            list_bad(bad),
        )
    found = set(labels)
    empty = [name for label, name in enumerate(classes) if label not in found]
    if empty:
        raise FileNotFoundError(
            f"class folder(s) {', '.join(empty)} in {root} hold no readable image "
            f"(formats read: {', '.join(IMAGE_EXTENSIONS)}"
            + (f"; {len(bad)} file(s) skipped: {list_bad(bad)}" if bad else "")
            + "): put images in every class folder, or remove the empty ones from every split"
        )
    return ImageTree(x, torch.tensor(labels, dtype=torch.int64), classes, tuple(bad))


def decode_labelled(
    files: Sequence[tuple[Path, int]], image_size: int, transform: Transform = resize_crop
) -> tuple[torch.Tensor, list[int], list[SkippedImage]]:
    """:func:`meanet_edge.images.decode_labelled` as a tensor: the readable images (N_good, 3, S, S) uint8 packed in
    order, their labels, and the files skipped with the reason."""
    x, labels, bad = edge_images.decode_labelled(files, image_size, transform)
    return torch.from_numpy(x), labels, bad


__all__ = [
    "BAD_IMAGE_POLICIES",
    "IMAGE_EXTENSIONS",
    "SHOWN",
    "BadImageError",
    "ImageTree",
    "SkippedImage",
    "Transform",
    "check_bad_images",
    "class_folders",
    "decode_labelled",
    "image_files",
    "list_bad",
    "read_image_tree",
    "resize_crop",
    "to_size",
]
