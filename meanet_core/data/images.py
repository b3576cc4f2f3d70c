"""A folder of images in ImageFolder layout (``ROOT/<class>/**/<image>``) read into uint8 tensors.

Every file in a class folder is read: one that is not a readable image of a supported format (a corrupt or truncated
file, a text file renamed ``.png``, a ``.gif``, a file that cannot be opened) is either left out and reported
(``bad_images="skip"``, the default: a warning with the count and the first paths, and the list in the result) or
refuses the whole folder (``bad_images="error"``: a :class:`BadImageError` naming the files). Hidden files and
folders (names starting with ``.``: ``.DS_Store``, ``.ipynb_checkpoints``) are not data. Files are visited in
torchvision's ``ImageFolder`` order (sorted class names, then a sorted walk), so labels and seeded splits match it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

BAD_IMAGE_POLICIES: tuple[str, ...] = ("skip", "error")
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""The formats read (torchvision's ``IMG_EXTENSIONS``), matched case-insensitively."""
SHOWN = 5
"""How many bad files a warning or an error names (the count covers them all)."""
log = logging.getLogger("meanet.data")


@dataclass(frozen=True)
class SkippedImage:
    """A file that is not a readable image, and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path} ({self.reason})"


class BadImageError(ValueError):
    """Files of an image folder are not readable images (``bad_images="error"``); ``bad`` lists every one."""

    def __init__(self, message: str, bad: tuple[SkippedImage, ...]) -> None:
        super().__init__(message)
        self.bad = bad


@dataclass(frozen=True)
class ImageTree:
    """The images of one folder: ``x`` uint8 ``(N, 3, S, S)``, labels ``y`` int64 ``(N,)`` indexing ``classes``."""

    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[str, ...]
    skipped: tuple[SkippedImage, ...]


def check_bad_images(policy: str) -> str:
    """``policy`` if it is one of :data:`BAD_IMAGE_POLICIES`, else a ValueError saying what is valid."""
    if policy not in BAD_IMAGE_POLICIES:
        raise ValueError(
            f"bad_images must be one of {', '.join(BAD_IMAGE_POLICIES)} (skip: leave unreadable images out with a "
            f"warning; error: refuse the dataset); got {policy!r}"
        )
    return policy


def list_bad(bad: tuple[SkippedImage, ...] | list[SkippedImage]) -> str:
    """The first :data:`SHOWN` bad files with their reasons, and how many more there are."""
    shown = "; ".join(str(b) for b in bad[:SHOWN])
    return shown + (f"; and {len(bad) - SHOWN} more" if len(bad) > SHOWN else "")


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
    transform = resize_crop(image_size)
    classes = class_folders(root)
    if not classes:
        raise FileNotFoundError(
            f"{root} must hold one sub-folder per class with images inside (e.g. {root}/cat/001.jpg); found none"
        )
    files = [(path, label) for label, name in enumerate(classes) for path in image_files(root / name)]
    x, labels, bad = decode_labelled(files, image_size, transform)
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
    files: list[tuple[Path, int]], image_size: int, transform: Callable[[object], torch.Tensor]
) -> tuple[torch.Tensor, list[int], list[SkippedImage]]:
    """Decode ``(path, label)`` pairs into one uint8 tensor (N_good, 3, S, S): the readable images packed in order,
    their labels, and the files skipped with the reason."""
    x = torch.empty((len(files), 3, image_size, image_size), dtype=torch.uint8)  # (N, 3, S, S), filled in place
    labels: list[int] = []
    bad: list[SkippedImage] = []
    for path, label in files:
        reason = decode_into(x[len(labels)], path, transform)
        if reason:
            bad.append(SkippedImage(path, reason))
        else:
            labels.append(label)
    if len(labels) < len(files):
        x = x[: len(labels)].clone()  # the good images were packed at the front
    return x, labels, bad


def class_folders(root: Path) -> tuple[str, ...]:
    """The class sub-folders of ``root``, sorted; hidden ones (``.ipynb_checkpoints``) are not classes."""
    return tuple(sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")))


def resize_crop(image_size: int) -> Callable[[object], torch.Tensor]:
    """PIL image -> uint8 ``(3, S, S)``: short side resized to ``image_size * 256 / 224``, centre-cropped to S."""
    from torchvision import transforms

    return transforms.Compose(
        [transforms.Resize(int(image_size * 256 / 224)), transforms.CenterCrop(image_size), transforms.PILToTensor()]
    )


def image_files(folder: Path) -> list[Path]:
    """Every non-hidden file under ``folder``, in ``ImageFolder`` order (a sorted walk that follows links)."""
    paths = []
    for dirpath, _, filenames in sorted(os.walk(folder, followlinks=True)):
        if any(part.startswith(".") for part in Path(dirpath).relative_to(folder).parts):
            continue  # a hidden folder (.git, .ipynb_checkpoints): not data
        paths += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
    return paths


def decode_into(out: torch.Tensor, path: Path, transform: Callable[[object], torch.Tensor]) -> str:
    """Decode ``path`` into ``out`` (3, S, S); returns "" on success, else why the file cannot be used."""
    from PIL import Image

    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"unsupported format ({path.suffix or 'no extension'}); formats read: {', '.join(IMAGE_EXTENSIONS)}"
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")  # decodes every pixel: a truncated file fails here, not later
        out.copy_(transform(rgb))
    # Pillow reports a bad file with many types (OSError, SyntaxError, ValueError, EOFError, zlib.error,
    # DecompressionBombError, ...): whatever one file raises makes that one file unusable, and is reported with it.
    except Exception as err:
        return f"cannot be read as an image: {type(err).__name__}: {err}"
    return ""
