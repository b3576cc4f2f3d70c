"""An edge device's own images, named by its SuperNode: ``--node-config 'data-dir="/data/edge-3"'``.

With ``data-dir`` set, the edge ClientApp reads only that path and never loads the run's shared dataset. Two layouts:

* **An image folder** (ImageFolder layout), either one sub-folder per class (``cat/001.png``, ``dog/...``: the same
  images serve every experience) or split by experience, ``exp-0/<class>/*.png``, ``exp-1/<class>/...`` (experience
  ``e`` trains on ``exp-e``; every top-level folder must then be an ``exp-<int>`` one). Class folders are named after
  the cloud's classes (the ``class-names`` list of the signed broadcast, :data:`~meanet_core.keys.CLASS_NAMES`):
  the *name* gives the class id, never the folder's sorted position. A folder whose name is not a class is an error.
  Files are found and decoded as :mod:`meanet_edge.images` does (hidden files are not data); a file that is not a
  readable image is left out, counted in :attr:`EdgeData.skipped` and logged. Images already of the federation's
  size are used as they are, others resized and centre-cropped (``meanet edge predict`` reads images the same way).
* **An ``.npz`` file** with ``x`` uint8 ``(N, H, W, 3)`` images, ``y`` ``(N,)`` integer class ids (the cloud's ids)
  and optionally ``experience`` ``(N,)`` integers (without it, every image serves every experience).

Each experience's images are split, seeded and stratified by class, into a training part and a held-out
:data:`TEST_FRACTION` the edge evaluates on. Training at experience ``e`` uses ``e``'s training part (the new images,
as a partition of the shared stream would be); evaluation uses the held-out images of every experience up to ``e``
(the classes seen so far). The decoded images are cached on disk (:mod:`meanet_core.data.cache`; Flower starts a
ClientApp process per message, and each would decode the folder again) and per process, keyed by the path, the number
of entries under it and their newest modification time: a changed folder is read again.

Normalisation is not read here: it travels in the broadcast (the MEANet's ``normalize.mean``/``normalize.std``
buffers). The image side comes from the run config's dataset (:func:`federation_image_size`).
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meanet_core.config import FederationConfig
from meanet_core.data import ImageTensors, data_dir_from_env, load_dataset, train_val_split
from meanet_core.data.cache import entry_for, read_entry, tree_stamp, write_entry
from meanet_core.data.images import decode_labelled
from meanet_edge.images import (
    IMAGE_EXTENSIONS,
    SkippedImage,
    arrays_to_size,
    class_folders,
    image_files,
    list_bad,
    to_size,
)

DATA_DIR_KEY = "data-dir"
"""The SuperNode's node-config key naming its own data (a folder or an ``.npz`` file)."""
TEST_FRACTION = 0.2
"""The share of each experience's images held out for the edge's evaluation."""
ARRAY_IMAGE_SIZE = 32
"""The side of the images of the array datasets (CIFAR-10/100, digits)."""
EXPERIENCE_FOLDER = re.compile(r"exp-(\d+)")
log = logging.getLogger("meanet.edge")


class EdgeDataError(ValueError):
    """The edge's own data cannot be used as it is: the message says what was expected, what was found, the fix."""


@dataclass(frozen=True)
class EdgeData:
    """An edge's images by experience (``None``: one set for every experience), class ids in the cloud's numbering."""

    source: Path
    parts: Mapping[int | None, tuple[ImageTensors, ImageTensors]]  # experience -> (train, held-out test)
    skipped: tuple[SkippedImage, ...] = ()
    test_fraction: float = TEST_FRACTION

    def train(self, experience: int) -> ImageTensors:
        """The images this edge fine-tunes on at ``experience``."""
        return self._part(experience)[0]

    def test(self, experience: int) -> ImageTensors:
        """The held-out images of every experience up to ``experience``."""
        self._part(experience)  # the experience itself must be there
        seen = [None] if None in self.parts else sorted(e for e in self.parts if e is not None and e <= experience)
        tests = [self.parts[e][1] for e in seen]
        test = ImageTensors(torch.cat([t.x for t in tests]), torch.cat([t.y for t in tests]))
        if not len(test):
            size = sum(len(self.parts[e][0]) for e in seen)
            raise EdgeDataError(
                f"{self.source} has too few images to hold out a test set ({size} image(s); "
                f"{self.test_fraction:.0%} of them rounds to none): give this device more images"
            )
        return test

    def _part(self, experience: int) -> tuple[ImageTensors, ImageTensors]:
        if None in self.parts:
            return self.parts[None]
        if experience not in self.parts:
            have = ", ".join(f"exp-{e}" for e in sorted(e for e in self.parts if e is not None))
            raise EdgeDataError(
                f"{self.source} has images for experiences {have} but none for experience {experience}: add "
                f"exp-{experience}/<class>/ images (or rows with experience={experience}), or drop the exp-* split "
                "so the same images serve every experience"
            )
        return self.parts[experience]


def node_data_dir(node_config: Mapping[str, Any]) -> Path | None:
    """The path a SuperNode's ``--node-config 'data-dir="..."'`` names, or None when it names none."""
    value = node_config.get(DATA_DIR_KEY)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise EdgeDataError(
            f"node config {DATA_DIR_KEY} must be a path string; got {value!r} ({type(value).__name__}): start the "
            f"SuperNode with --node-config '{DATA_DIR_KEY}=\"/data/edge-0\"' (quoted)"
        )
    return Path(value.strip()).expanduser()


def federation_image_size(cfg: FederationConfig) -> int:
    """The side of the federation's images: 32 for the array datasets; an ``imagefolder`` dataset is read by the
    shared stream at :func:`~meanet_core.data.load_dataset`'s default ``image_size``."""
    if cfg.dataset == "imagefolder":
        return int(inspect.signature(load_dataset).parameters["image_size"].default)
    return ARRAY_IMAGE_SIZE


def class_names_for(config: Mapping[str, Any], cfg: FederationConfig, num_classes: int) -> tuple[str, ...]:
    """The cloud's class names: the broadcast's signed ``class-names`` list when it has one, else the names the run
    config's dataset has (read without its images; CIFAR-100's need its data folder)."""
    from meanet_core.data.sources import class_names_of
    from meanet_core.keys import CLASS_NAMES

    sent = config.get(CLASS_NAMES)
    if sent is not None:
        if not isinstance(sent, list | tuple) or not all(isinstance(n, str) for n in sent):
            raise EdgeDataError(f"the broadcast's {CLASS_NAMES} must be a list of strings; got {sent!r}")
        names = tuple(sent)
    else:
        folder = Path(cfg.data_dir).expanduser() if cfg.data_dir else data_dir_from_env()
        try:
            names = class_names_of(cfg.dataset, folder, num_classes)
        except FileNotFoundError as e:
            raise EdgeDataError(
                f"the broadcast carries no {CLASS_NAMES} list and the class names of {cfg.dataset} are not on this "
                f"device ({e}): run a server that sends {CLASS_NAMES}, or give the device the dataset's label file"
            ) from e
    if len(names) != num_classes:
        raise EdgeDataError(f"{len(names)} class names for a model of {num_classes} classes; they must agree")
    return names


def read_edge_data(
    path: str | os.PathLike[str],
    class_names: Sequence[str],
    *,
    image_size: int,
    test_fraction: float = TEST_FRACTION,
    seed: int = 0,
) -> EdgeData:
    """The images at ``path`` (an image folder or an ``.npz``; see the module docstring), class ids indexing
    ``class_names``, each experience split into training and held-out test images (seeded, stratified).

    Raises
    ------
    EdgeDataError
        The path does not exist, holds no readable image, mixes ``exp-*`` and other folders, names a class that is not
        one of ``class_names``, or an ``.npz`` lacks ``x``/``y`` or holds ill-shaped arrays or out-of-range ids.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise EdgeDataError(
            f"{DATA_DIR_KEY} {root} does not exist: point the SuperNode's --node-config {DATA_DIR_KEY} at this "
            "device's image folder or .npz file"
        )
    if root.is_file():
        if root.suffix.lower() != ".npz":
            raise EdgeDataError(f"{DATA_DIR_KEY} {root} is a file but not an .npz; expected a folder or an .npz")
        raw = _cached(root, image_size, lambda: _read_npz(root, image_size))
        ids = _npz_labels(root, raw, len(class_names))
    else:
        layout = _layout(root)
        _check_class_names(root, layout, class_names)
        raw = _cached(root, image_size, lambda: _read_folder(root, layout, image_size))
        index = {name: i for i, name in enumerate(class_names)}
        ids = {
            e: torch.tensor([index[raw.names[i]] for i in labels.tolist()], dtype=torch.int64)
            for e, labels in raw.y.items()
        }
    parts: dict[int | None, tuple[ImageTensors, ImageTensors]] = {}
    for e, x in raw.x.items():
        train, test = train_val_split(ImageTensors(x, ids[e]), test_fraction, seed + 7919 * (e or 0))
        parts[e] = (train, test)
    return EdgeData(root, parts, raw.skipped, test_fraction)


# --------------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Raw:
    """Decoded images by experience; ``y`` indexes ``names`` (folders) or is the class id itself (npz: no names)."""

    x: dict[int | None, torch.Tensor]
    y: dict[int | None, torch.Tensor]
    names: tuple[str, ...] = ()
    skipped: tuple[SkippedImage, ...] = ()


_CACHE: dict[tuple[object, ...], _Raw] = {}
_CACHE_SIZE = 2


def _cached(root: Path, image_size: int, read: Callable[[], _Raw]) -> _Raw:
    """The decoded images of ``root``: from this process's memory, else the disk cache, else ``read()`` (cached)."""
    key = (*tree_stamp(root), image_size)
    if key not in _CACHE:
        while len(_CACHE) >= _CACHE_SIZE:
            del _CACHE[next(iter(_CACHE))]
        entry = entry_for("edge", root.name, *key)
        arrays = read_entry(entry)
        if arrays is None:
            raw = read()
            write_entry(entry, _to_arrays(raw), root)
        else:
            raw = _from_arrays(arrays)
            if raw.skipped:  # said by every process that reads the folder, as when it decoded it
                _warn_skipped(root, raw.skipped, None)
        _CACHE[key] = raw
    return _CACHE[key]


def _name(e: int | None) -> str:
    return "all" if e is None else str(e)


def _to_arrays(raw: _Raw) -> dict[str, np.ndarray]:
    arrays = {f"x-{_name(e)}": x.numpy() for e, x in raw.x.items()}
    arrays.update({f"y-{_name(e)}": y.numpy() for e, y in raw.y.items()})
    arrays["names"] = np.array(raw.names, dtype=str)
    arrays["skipped-paths"] = np.array([str(b.path) for b in raw.skipped], dtype=str)
    arrays["skipped-reasons"] = np.array([b.reason for b in raw.skipped], dtype=str)
    return arrays


def _from_arrays(arrays: Mapping[str, np.ndarray]) -> _Raw:
    exps = [k[2:] for k in arrays if k.startswith("x-")]
    key = {name: (None if name == "all" else int(name)) for name in exps}
    return _Raw(
        {key[n]: torch.from_numpy(arrays[f"x-{n}"]) for n in exps},
        {key[n]: torch.from_numpy(arrays[f"y-{n}"]) for n in exps},
        tuple(str(n) for n in arrays["names"]),
        tuple(
            SkippedImage(Path(str(p)), str(r))
            for p, r in zip(arrays["skipped-paths"], arrays["skipped-reasons"], strict=True)
        ),
    )


def _warn_skipped(root: Path, bad: Sequence[SkippedImage], total: int | None) -> None:
    log.warning(
        "skipped %d%s files in %s that are not readable images: %s. Fix or remove them",
        len(bad),
        f" of {total}" if total is not None else "",
        root,
        list_bad(list(bad)),
    )


def _layout(root: Path) -> dict[int | None, tuple[Path, tuple[str, ...]]]:
    """experience (None: every one) -> (its folder, its class folders)."""
    top = class_folders(root)
    if not top:
        raise EdgeDataError(
            f"{root} holds no class folders: expected {root}/<class name>/*.png (or exp-0/<class name>/*.png, ...), "
            "one folder per class of the cloud's, or an .npz file"
        )
    exps = {name: EXPERIENCE_FOLDER.fullmatch(name) for name in top}
    if not any(exps.values()):
        return {None: (root, top)}
    others = [name for name, m in exps.items() if m is None]
    if others:
        raise EdgeDataError(
            f"{root} mixes experience folders (exp-<int>) with other folders ({', '.join(others[:5])}): put every "
            "class folder inside an exp-<int> folder, or use no exp-* folders at all"
        )
    layout: dict[int | None, tuple[Path, tuple[str, ...]]] = {}
    for name, m in exps.items():
        assert m is not None
        layout[int(m.group(1))] = (root / name, class_folders(root / name))
    return layout


def _check_class_names(
    root: Path, layout: Mapping[int | None, tuple[Path, tuple[str, ...]]], class_names: Sequence[str]
) -> None:
    known = set(class_names)
    for folder, classes in layout.values():
        unknown = [c for c in classes if c not in known]
        if unknown:
            shown = ", ".join(f"{folder / c}" for c in unknown[:5])
            raise EdgeDataError(
                f"class folder(s) {shown} are not classes of the cloud's model: name each class folder after one of "
                f"its {len(class_names)} classes (e.g. {', '.join(list(class_names)[:5])}), or remove it"
            )


def _read_folder(root: Path, layout: Mapping[int | None, tuple[Path, tuple[str, ...]]], image_size: int) -> _Raw:
    names = tuple(sorted({c for _, classes in layout.values() for c in classes}))
    index = {name: i for i, name in enumerate(names)}
    xs: dict[int | None, torch.Tensor] = {}
    ys: dict[int | None, torch.Tensor] = {}
    bad: list[SkippedImage] = []
    total = 0
    for e, (folder, classes) in layout.items():
        files = [(p, index[c]) for c in classes for p in image_files(folder / c)]
        total += len(files)
        x, labels, skipped = decode_labelled(files, image_size, to_size)
        bad += skipped
        if labels:
            xs[e], ys[e] = x, torch.tensor(labels, dtype=torch.int64)
    if bad:
        _warn_skipped(root, bad, total)
    if not xs:
        raise EdgeDataError(
            f"{root} holds no readable image (formats read: {', '.join(IMAGE_EXTENSIONS)}"
            + (f"; {len(bad)} file(s) skipped: {list_bad(bad)}" if bad else "")
            + f"): put this device's images in {root}/<class name>/ (or exp-<int>/<class name>/)"
        )
    return _Raw(xs, ys, names, tuple(bad))


_NPZ_LAYOUT = "expected numpy.savez(path, x=images, y=labels[, experience=ids]): x uint8 (N, H, W, 3), y (N,) class ids"


def _read_npz(path: Path, image_size: int) -> _Raw:
    try:
        with np.load(path, allow_pickle=False) as archive:
            found = list(archive.files)
            missing = [k for k in ("x", "y") if k not in found]
            if missing:
                raise EdgeDataError(
                    f"{path} lacks {', '.join(missing)} (found {', '.join(found) or 'none'}); {_NPZ_LAYOUT}"
                )
            x, y = np.asarray(archive["x"]), np.asarray(archive["y"])
            exp = np.asarray(archive["experience"]) if "experience" in found else None
    except EdgeDataError:
        raise
    except Exception as e:  # OSError, ValueError, BadZipFile, EOFError, zlib.error...: all mean "not a usable npz"
        raise EdgeDataError(f"{path} is not a readable .npz archive ({type(e).__name__}: {e}); {_NPZ_LAYOUT}") from e
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
        raise EdgeDataError(f"{path}: x must be uint8 (N, H, W, 3) images; found {x.dtype} {x.shape}; {_NPZ_LAYOUT}")
    if len(x) == 0:
        raise EdgeDataError(f"{path} holds no images (x has shape {x.shape}); {_NPZ_LAYOUT}")
    if y.dtype.kind not in "iu" or y.shape != (len(x),):
        raise EdgeDataError(f"{path}: y must hold {len(x)} integer class ids; found {y.dtype} {y.shape}; {_NPZ_LAYOUT}")
    if exp is not None and (exp.dtype.kind not in "iu" or exp.shape != (len(x),) or int(exp.min()) < 0):
        raise EdgeDataError(
            f"{path}: experience must hold {len(x)} integers >= 0 (one per image); found {exp.dtype} {exp.shape}"
        )
    if x.shape[1:3] == (image_size, image_size):
        images = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S)
    else:  # as an image folder's images of another size are read
        images = torch.from_numpy(arrays_to_size(x, image_size))
    labels = torch.from_numpy(y.astype(np.int64))
    if exp is None:
        return _Raw({None: images}, {None: labels})
    groups = {int(e): torch.from_numpy(np.flatnonzero(exp == e)) for e in np.unique(exp)}
    return _Raw({e: images[i] for e, i in groups.items()}, {e: labels[i] for e, i in groups.items()})


def _npz_labels(path: Path, raw: _Raw, num_classes: int) -> dict[int | None, torch.Tensor]:
    for labels in raw.y.values():
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
            raise EdgeDataError(
                f"{path}: y holds class ids {int(labels.min())}..{int(labels.max())}, but the cloud's model has "
                f"{num_classes} classes (ids 0..{num_classes - 1}): relabel the images with the cloud's class ids"
            )
    return raw.y


__all__ = [
    "DATA_DIR_KEY",
    "TEST_FRACTION",
    "EdgeData",
    "EdgeDataError",
    "class_names_for",
    "federation_image_size",
    "node_data_dir",
    "read_edge_data",
]
