"""Image files read into uint8 numpy arrays ``(3, S, S)``, with Pillow and numpy only: what the device runs, and what
``meanet train`` (:mod:`meanet_core.data.images`) reads an image folder with, so both see the same pixels.

Every file of a folder is read: one that is not a readable image of a supported format (a corrupt or truncated file, a
text file renamed ``.png``, a ``.gif``, a file that cannot be opened) is left out and reported as a
:class:`SkippedImage`, or refuses the whole folder (``bad_images="error"``: a :class:`BadImageError` naming the
files). Hidden files and folders (names starting with ``.``: ``.DS_Store``, ``.ipynb_checkpoints``) are not data.
Files are visited in torchvision's ``ImageFolder`` order (sorted class names, then a sorted walk), so labels and
seeded splits match it.

An image of another size is resized (short side ``int(S * 256 / 224)``, bilinear) and centre-cropped to S, the pixels
bit for bit those of torchvision's ``Compose([Resize(int(S * 256 / 224)), CenterCrop(S), PILToTensor()])`` on the
same PIL image (the same Pillow call, the same size and crop-offset rounding, the same zero padding).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

BAD_IMAGE_POLICIES: tuple[str, ...] = ("skip", "error")
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""The formats read (torchvision's ``IMG_EXTENSIONS``), matched case-insensitively."""
SHOWN = 5
"""How many bad files a warning or an error names (the count covers them all)."""

Transform = Callable[[Image.Image, int], np.ndarray]
"""An RGB PIL image and the side S -> uint8 ``(3, S, S)``: :func:`resize_crop` or :func:`to_size`."""


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


def check_bad_images(policy: str) -> str:
    """``policy`` if it is one of :data:`BAD_IMAGE_POLICIES`, else a ValueError saying what is valid."""
    if policy not in BAD_IMAGE_POLICIES:
        raise ValueError(
            f"bad_images must be one of {', '.join(BAD_IMAGE_POLICIES)} (skip: leave unreadable images out with a "
            f"warning; error: refuse the dataset); got {policy!r}"
        )
    return policy


def list_bad(bad: Sequence[SkippedImage]) -> str:
    """The first :data:`SHOWN` bad files with their reasons, and how many more there are."""
    shown = "; ".join(str(b) for b in bad[:SHOWN])
    return shown + (f"; and {len(bad) - SHOWN} more" if len(bad) > SHOWN else "")


def class_folders(root: Path) -> tuple[str, ...]:
    """The class sub-folders of ``root``, sorted; hidden ones (``.ipynb_checkpoints``) are not classes."""
    return tuple(sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")))


def image_files(folder: Path) -> list[Path]:
    """Every non-hidden file under ``folder``, in ``ImageFolder`` order (a sorted walk that follows links)."""
    paths = []
    for dirpath, _, filenames in sorted(os.walk(folder, followlinks=True)):
        if any(part.startswith(".") for part in Path(dirpath).relative_to(folder).parts):
            continue  # a hidden folder (.git, .ipynb_checkpoints): not data
        paths += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
    return paths


# ------------------------------------------------------------------------------------------------ pixels
def resize_side(image_size: int) -> int:
    """The short side an image is resized to before its centre ``image_size`` crop: ``int(S * 256 / 224)``."""
    return int(image_size * 256 / 224)


def resized_size(width: int, height: int, short: int) -> tuple[int, int]:
    """``(width, height)`` with the short side ``short`` and the long one scaled and truncated, as torchvision's
    ``_compute_resized_output_size`` rounds it."""
    old_short, old_long = (width, height) if width <= height else (height, width)
    new_long = int(short * old_long / old_short)
    return (short, new_long) if width <= height else (new_long, short)


def center_crop(pixels: np.ndarray, side: int) -> np.ndarray:
    """The centre ``side`` x ``side`` of ``pixels`` (H, W, C): zero-padded first where it is smaller (the padding's
    odd pixel at the right and bottom), the offsets rounded half to even, as torchvision's ``center_crop``."""
    height, width = pixels.shape[:2]
    if side > width or side > height:
        pad_w, pad_h = max(side - width, 0), max(side - height, 0)
        pixels = np.pad(pixels, ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2), (0, 0)))
        height, width = pixels.shape[:2]
    top, left = round((height - side) / 2.0), round((width - side) / 2.0)  # Python's round: half to even
    return pixels[top : top + side, left : left + side]


def resize_crop(image: Image.Image, image_size: int) -> np.ndarray:
    """RGB PIL image -> uint8 ``(3, S, S)``: short side resized to :func:`resize_side` (Pillow's bilinear), then
    centre-cropped to S."""
    size = resized_size(image.width, image.height, resize_side(image_size))
    if size != image.size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    return center_crop(np.asarray(image, dtype=np.uint8), image_size).transpose(2, 0, 1)  # (S, S, 3) -> (3, S, S)


def to_size(image: Image.Image, image_size: int) -> np.ndarray:
    """RGB PIL image -> uint8 ``(3, S, S)``: as it is when it is S x S already, else :func:`resize_crop`."""
    if image.size == (image_size, image_size):
        return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)  # (S, S, 3) -> (3, S, S)
    return resize_crop(image, image_size)


def arrays_to_size(x: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 ``(N, H, W, 3)`` images -> ``(N, 3, S, S)``, each through :func:`to_size` (one image at a time)."""
    out = np.empty((len(x), 3, image_size, image_size), dtype=np.uint8)
    for i, hwc in enumerate(x):
        out[i] = to_size(Image.fromarray(np.ascontiguousarray(hwc)), image_size)  # (H, W, 3): RGB
    return out


# ------------------------------------------------------------------------------------------------ files
def decode_into(out: np.ndarray, path: Path, transform: Transform = resize_crop) -> str:
    """Decode ``path`` into ``out`` (3, S, S) uint8; returns "" on success, else why the file cannot be used."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"unsupported format ({path.suffix or 'no extension'}); formats read: {', '.join(IMAGE_EXTENSIONS)}"
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")  # decodes every pixel: a truncated file fails here, not later
        out[...] = transform(rgb, out.shape[-1])
    # Pillow reports a bad file with many types (OSError, SyntaxError, ValueError, EOFError, zlib.error,
    # DecompressionBombError, ...): whatever one file raises makes that one file unusable, and is reported with it.
    except Exception as err:
        return f"cannot be read as an image: {type(err).__name__}: {err}"
    return ""


def decode_labelled(
    files: Sequence[tuple[Path, int]], image_size: int, transform: Transform = resize_crop
) -> tuple[np.ndarray, list[int], list[SkippedImage]]:
    """Decode ``(path, label)`` pairs into one uint8 array (N_good, 3, S, S): the readable images packed in order,
    their labels, and the files skipped with the reason."""
    x = np.empty((len(files), 3, image_size, image_size), dtype=np.uint8)  # (N, 3, S, S), filled in place
    labels: list[int] = []
    bad: list[SkippedImage] = []
    for path, label in files:
        reason = decode_into(x[len(labels)], path, transform)
        if reason:
            bad.append(SkippedImage(path, reason))
        else:
            labels.append(label)
    if len(labels) < len(files):
        x = x[: len(labels)].copy()  # the good images were packed at the front
    return x, labels, bad


__all__ = [
    "BAD_IMAGE_POLICIES",
    "IMAGE_EXTENSIONS",
    "SHOWN",
    "BadImageError",
    "SkippedImage",
    "Transform",
    "arrays_to_size",
    "center_crop",
    "check_bad_images",
    "class_folders",
    "decode_into",
    "decode_labelled",
    "image_files",
    "list_bad",
    "resize_crop",
    "resize_side",
    "resized_size",
    "to_size",
]
