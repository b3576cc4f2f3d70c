"""Readers for each dataset in :data:`~meanet_core.data.datasets.DATASETS`: official train/test as uint8.

CIFAR comes from an ``.npz`` file (fast, offline) or torchvision's download; ``digits`` from scikit-learn
(offline); ``imagefolder`` from a ``train/`` + ``val/`` (or ``test/``) tree of images.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meanet_core.data.cache import DEFAULT_CACHE, cached, entry_for, file_stamp, read_entry, tree_stamp, write_entry
from meanet_core.data.datasets import DATA_DIR_ENV, ImageTensors, stratified_pick
from meanet_core.data.images import SkippedImage, check_bad_images, class_folders, list_bad, read_image_tree

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0  # fixed, so the digits test split is the same for every run seed (like an official split)
NPZ_CACHE_MIN_BYTES = 4 << 20  # smaller archives decompress in a few milliseconds
log = logging.getLogger("meanet.data")


@dataclass(frozen=True)
class SourceArrays:
    """A dataset's official splits as numpy arrays, not copied yet (often memory maps of the decoded-data cache,
    :mod:`meanet_core.data.cache`): :meth:`images` gathers only the rows asked for, so a process that needs a slice
    (an edge's partition) reads that slice, not the dataset."""

    x_train: np.ndarray  # uint8 (N, H, W, 3) when channels_last, else (N, 3, H, W)
    y_train: np.ndarray  # int64 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    channels_last: bool
    class_names: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    skipped: tuple[SkippedImage, ...] = ()

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[2])

    def images(self, part: str, index: np.ndarray | None = None) -> ImageTensors:
        """The images of ``part`` (``"train"`` or ``"test"``) at ``index`` (all when None), in that order, as
        contiguous uint8 ``(N, 3, H, W)`` tensors with int64 labels."""
        if part not in ("train", "test"):
            raise ValueError(f"part must be 'train' or 'test'; got {part!r}")
        x, y = (self.x_train, self.y_train) if part == "train" else (self.x_test, self.y_test)
        if index is not None:
            index = np.asarray(index, dtype=np.int64)
            x, y = x[index], y[index]  # a memory map reads only these rows
        images = torch.from_numpy(np.ascontiguousarray(x))
        if self.channels_last:
            images = images.permute(0, 3, 1, 2)
        return ImageTensors(images.contiguous(), torch.from_numpy(np.asarray(y, dtype=np.int64)))


def read_arrays(
    name: str, folder: Path | None, *, download: bool, image_size: int, bad_images: str = "skip"
) -> SourceArrays:
    """Read dataset ``name``'s official splits; ``folder`` is the data directory (already resolved against the
    environment). Decoded once into the disk cache (:mod:`meanet_core.data.cache`: CIFAR archives, digits, image
    folders), memory-mapped afterwards.

    ``bad_images`` (``imagefolder`` only): ``"skip"`` leaves files that are not readable images out with a warning,
    ``"error"`` refuses the folder with a :class:`~meanet_core.data.images.BadImageError` naming them.
    """
    check_bad_images(bad_images)
    if name == "cifar100":
        return _read_cifar(folder, "cifar100.npz", 100, CIFAR100_MEAN, CIFAR100_STD, "CIFAR100", download)
    if name == "cifar100-mini":
        return _read_cifar(folder, "cifar100_mini.npz", 100, CIFAR100_MEAN, CIFAR100_STD, None, download)
    if name == "cifar10":
        return _read_cifar(folder, "cifar10.npz", 10, CIFAR10_MEAN, CIFAR10_STD, "CIFAR10", download)
    if name == "digits":
        return _read_digits()
    if name == "imagefolder":
        return _read_imagefolder(folder, image_size, bad_images)
    raise ValueError(f"no reader for dataset {name!r}")


def class_names_of(name: str, folder: Path | None, num_classes: int) -> tuple[str, ...]:
    """The class names (index = class id) dataset ``name`` has in ``folder``, without reading its images.

    What :func:`read_arrays` would give: ``cifar100_labels.json`` beside the CIFAR-100 arrays (else ``class_I``),
    CIFAR-10's names, the digits ``0``-``9``, the sorted class folders of an ``imagefolder``'s ``train/``.

    Raises
    ------
    FileNotFoundError
        When the names cannot be found (no data folder, or it lacks the dataset): pass them explicitly instead.
    """
    fallback = tuple(f"class_{i}" for i in range(num_classes))
    if name in ("cifar10", "digits"):
        return CIFAR10_CLASSES if name == "cifar10" else tuple(str(i) for i in range(10))
    if folder is None:
        raise FileNotFoundError(f"cannot find the class names of {name}: no data folder (data_dir, ${DATA_DIR_ENV})")
    if name in ("cifar100", "cifar100-mini"):
        npz = folder / ("cifar100.npz" if name == "cifar100" else "cifar100_mini.npz")
        if not npz.is_file():
            raise FileNotFoundError(f"cannot find the class names of {name}: {npz} does not exist")
        return _class_names_beside(npz, num_classes) or fallback
    if name == "imagefolder":
        if not (folder / "train").is_dir():
            raise FileNotFoundError(f"cannot find the class names of the imagefolder: {folder}/train does not exist")
        return class_folders(folder / "train")
    raise ValueError(f"no reader for dataset {name!r}")


# --------------------------------------------------------------------------------------------------- CIFAR


def _read_cifar(
    folder: Path | None,
    filename: str,
    num_classes: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    torchvision_name: str | None,
    download: bool,
) -> SourceArrays:
    npz = folder / filename if folder is not None else None
    if npz is not None and npz.is_file():
        arrays = npz_arrays(npz, num_classes)
        names = _class_names_beside(npz, num_classes)
        if names is None:
            names = CIFAR10_CLASSES if num_classes == 10 else tuple(f"class_{i}" for i in range(num_classes))
        return SourceArrays(
            arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], True, names, mean, std
        )
    where = f"{npz} does not exist" if npz is not None else f"no data_dir given and ${DATA_DIR_ENV} is unset"
    layout = f"keys x_train uint8 (N, 32, 32, 3) HWC RGB, y_train (N,) labels 0..{num_classes - 1}, x_test, y_test"
    if torchvision_name is None:
        raise FileNotFoundError(
            f"cannot find {filename}: {where}. Set {DATA_DIR_ENV} (or pass data_dir) to a folder holding "
            f"{filename} ({layout}); this dataset has no download fallback"
        )
    root = (folder if folder is not None else DEFAULT_CACHE).expanduser()
    fetch = (
        "give torchvision network access for its download"
        if download
        else "pass download=True so torchvision downloads it (needs network access)"
    )
    try:
        train, test, names = _torchvision_cifar(torchvision_name, root, download)
    except Exception as err:
        raise FileNotFoundError(
            f"cannot load {torchvision_name}: {where}, and torchvision could not provide it from {root} "
            f"({type(err).__name__}: {err}). Either set {DATA_DIR_ENV} (or pass data_dir) to a folder "
            f"holding {filename} ({layout}), or {fetch}"
        ) from err
    return SourceArrays(train.x.numpy(), train.y.numpy(), test.x.numpy(), test.y.numpy(), False, names, mean, std)


def load_npz(path: Path, num_classes: int) -> tuple[ImageTensors, ImageTensors]:
    """Read ``x_train``/``y_train``/``x_test``/``y_test`` (HWC uint8) from ``path``, checking the layout.

    A compressed archive (``numpy.savez_compressed``) of at least :data:`NPZ_CACHE_MIN_BYTES` is decompressed once
    into a cache of plain ``.npy`` files (:mod:`meanet_core.data.cache`: ``$MEANET_CACHE_DIR``, default
    ``~/.cache/meanet``; ``off`` disables it), keyed by the archive's path, size and modification time; later loads
    memory-map those files (CIFAR-100: 0.5 s instead of 1.8-2.4 s, and the pages are shared by every process reading
    them, e.g. the simulation's workers). The same checks run on cached arrays; an unreadable cache entry is ignored
    and rewritten.
    """
    arrays = npz_arrays(path, num_classes)
    splits = []
    for part in ("train", "test"):
        images = torch.from_numpy(arrays[f"x_{part}"]).permute(0, 3, 1, 2).contiguous()
        splits.append(ImageTensors(images, torch.from_numpy(arrays[f"y_{part}"])))
    return splits[0], splits[1]


def npz_arrays(path: Path, num_classes: int) -> dict[str, np.ndarray]:
    """The checked arrays of a CIFAR-layout ``.npz`` (images HWC, labels int64), from the cache when it holds them
    (memory-mapped: nothing is read until used), else from the archive (then cached; see :func:`load_npz`)."""
    cache = _npz_cache_dir(path)
    arrays = read_entry(cache)
    if arrays is not None and any(key not in arrays for key in NPZ_KEYS):
        arrays = None  # an entry of another layout: rebuilt below
    if arrays is None:
        arrays = _read_npz(path)
        write_entry(cache, arrays, path)
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        _check_npz_images(path, f"x_{part}", x)
        _check_npz_labels(path, f"y_{part}", y, len(x), num_classes)
    return {**arrays, "y_train": arrays["y_train"].astype(np.int64), "y_test": arrays["y_test"].astype(np.int64)}


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    expected = f"expected a .npz archive (numpy.savez) with keys {', '.join(NPZ_KEYS)}"
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as err:  # OSError, ValueError, zipfile.BadZipFile, EOFError...: all mean "not an npz"
        raise ValueError(f"{path} is not a readable .npz archive ({type(err).__name__}: {err}); {expected}") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is not a .npz archive (it holds a single {type(archive).__name__}); {expected}")
    with archive:
        missing = [key for key in NPZ_KEYS if key not in archive.files]
        if missing:
            raise ValueError(
                f"{path} lacks key(s) {', '.join(missing)}; found {', '.join(archive.files) or 'none'}, "
                f"expected {', '.join(NPZ_KEYS)}"
            )
        return {key: _read_member(archive, path, key) for key in NPZ_KEYS}


def _npz_cache_dir(path: Path) -> Path | None:
    """Where the decompressed arrays of ``path`` are cached, or None (caching off, small or uncompressed archive)."""
    try:
        stamp = file_stamp(path)
        if stamp[1] < NPZ_CACHE_MIN_BYTES:
            return None
        with zipfile.ZipFile(path) as z:
            if all(info.compress_type == zipfile.ZIP_STORED for info in z.infolist()):
                return None  # np.load reads a stored archive as fast as a cache would
    except (OSError, zipfile.BadZipFile):
        return None  # _read_npz says what is wrong with it
    return entry_for("npz", path.stem, *stamp)


def _read_member(archive: Any, path: Path, key: str) -> np.ndarray:
    """One array of an open npz archive; a corrupt or pickled member becomes a ValueError naming file and key."""
    try:
        return np.asarray(archive[key])
    except Exception as err:  # zlib.error, BadZipFile, EOFError, ValueError (object arrays need pickle)...
        raise ValueError(
            f"{path}: key {key!r} cannot be read ({type(err).__name__}: {err}); the file is corrupt or holds "
            "pickled objects: write plain arrays with numpy.savez (uint8 images, integer labels)"
        ) from err


def _check_npz_images(path: Path, key: str, x: np.ndarray) -> None:
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3 or x.shape[1] != x.shape[2]:
        raise ValueError(
            f"{path}: key {key!r} must be uint8 of shape (N, H, W, 3) with H == W (HWC RGB); "
            f"found {x.dtype} of shape {x.shape}"
        )


def _check_npz_labels(path: Path, key: str, y: np.ndarray, n: int, num_classes: int) -> None:
    if y.dtype.kind not in "iu" or y.shape != (n,):
        raise ValueError(
            f"{path}: key {key!r} must be integer labels of shape ({n},) to match the images; "
            f"found {y.dtype} of shape {y.shape}"
        )
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"{path}: key {key!r} holds labels {int(y.min())}..{int(y.max())}; expected 0..{num_classes - 1}"
        )


def _class_names_beside(npz: Path, num_classes: int) -> tuple[str, ...] | None:
    """``fine_label_names`` from ``cifar100_labels.json`` next to ``npz`` (CIFAR-100 only), else None."""
    path = npz.with_name("cifar100_labels.json")
    if num_classes != 100 or not path.is_file():
        return None
    try:
        names = json.loads(path.read_text(encoding="utf-8"))["fine_label_names"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} must be JSON with a key 'fine_label_names' (a list of 100 names): {err}") from err
    if not isinstance(names, list) or len(names) != num_classes:
        found = len(names) if isinstance(names, list) else type(names).__name__
        raise ValueError(f"{path}: 'fine_label_names' must list {num_classes} names; found {found}")
    return tuple(str(n) for n in names)


def _torchvision_cifar(name: str, root: Path, download: bool) -> tuple[ImageTensors, ImageTensors, tuple[str, ...]]:
    import torchvision

    cls: Any = getattr(torchvision.datasets, name)
    parts = []
    names: tuple[str, ...] = ()
    for train in (True, False):
        ds = cls(root=str(root), train=train, download=download)
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        parts.append(ImageTensors(x, torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)))
        names = tuple(ds.classes)
    return parts[0], parts[1], names


# --------------------------------------------------------------------------------------------------- digits


def _read_digits() -> SourceArrays:
    """scikit-learn's 8x8 digits as 32x32 RGB uint8, with a fixed, stratified 20% test split (decoded once into the
    disk cache, keyed by scikit-learn's data file: later reads import neither scikit-learn nor resize anything).

    Normalisation: the per-channel mean/std of the non-test images (all three channels are equal).
    """
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    data_file = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    stamp = file_stamp(data_file) if data_file is not None and data_file.is_file() else ("no data file",)
    entry = entry_for("source", "digits", *stamp, DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)
    return _from_cache(cached(entry, _decode_digits, data_file))


def _decode_digits() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits  # lazy: only this dataset needs scikit-learn

    bunch = load_digits()
    small = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) * (255.0 / 16.0)).unsqueeze(1)
    big = torch.nn.functional.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
    x = big.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    data = ImageTensors(x, torch.as_tensor(np.asarray(bunch.target), dtype=torch.int64))
    k = round(len(data) * DIGITS_TEST_FRACTION)
    test_idx, train_idx = stratified_pick(data.y.numpy(), k, np.random.default_rng(DIGITS_TEST_SEED))
    train, test = data.subset(train_idx), data.subset(test_idx)
    scaled = train.x[:, 0].float() / 255.0
    mean, std = round(float(scaled.mean()), 4), round(float(scaled.std()), 4)
    names = tuple(str(int(t)) for t in bunch.target_names)
    return _to_cache(train, test, names, (mean, mean, mean), (std, std, std))


def _to_cache(
    train: ImageTensors,
    test: ImageTensors,
    names: tuple[str, ...],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    skipped: tuple[SkippedImage, ...] = (),
) -> dict[str, np.ndarray]:
    """A decoded source as the plain arrays of a cache entry (names and skipped files as unicode arrays)."""
    return {
        "x_train": train.x.numpy(), "y_train": train.y.numpy(), "x_test": test.x.numpy(), "y_test": test.y.numpy(),
        "class_names": np.array(names, dtype=str), "mean": np.array(mean), "std": np.array(std),
        "skipped_paths": np.array([str(b.path) for b in skipped], dtype=str),
        "skipped_reasons": np.array([b.reason for b in skipped], dtype=str),
    }  # fmt: skip


def _from_cache(arrays: Mapping[str, np.ndarray]) -> SourceArrays:
    """The :class:`SourceArrays` of a cache entry written by :func:`_to_cache`."""

    def three(key: str) -> tuple[float, float, float]:
        a, b, c = (float(v) for v in arrays[key])
        return a, b, c

    skipped = tuple(SkippedImage(Path(str(p)), str(r)) for p, r in zip(*_skipped(arrays), strict=True))
    return SourceArrays(
        arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], False,
        tuple(str(n) for n in arrays["class_names"]), three("mean"), three("std"), skipped,
    )  # fmt: skip


def _skipped(arrays: Mapping[str, np.ndarray]) -> tuple[list[str], list[str]]:
    return [str(p) for p in arrays["skipped_paths"]], [str(r) for r in arrays["skipped_reasons"]]


# --------------------------------------------------------------------------------------------------- folders


def _read_imagefolder(folder: Path | None, image_size: int, bad_images: str) -> SourceArrays:
    """``folder/train`` and ``folder/val`` (or ``folder/test``) in ImageFolder layout, resized and cropped; decoded
    once into the disk cache, keyed by the folder's contents (:func:`~meanet_core.data.cache.tree_stamp`)."""
    if isinstance(image_size, bool) or int(image_size) < 1:
        raise ValueError(f"image_size must be a positive number of pixels; got {image_size!r}")
    if folder is None:
        raise FileNotFoundError(
            f"imagefolder needs a data directory: pass data_dir or set {DATA_DIR_ENV} to a folder holding "
            "train/<class>/*.jpg and val/<class>/*.jpg (or test/<class>/...)"
        )
    entry = entry_for("source", folder.name, *tree_stamp(folder), image_size, bad_images) if folder.is_dir() else None
    hit = read_entry(entry)
    if hit is not None:
        source = _from_cache(hit)
        if source.skipped:  # said again by every process that uses the folder, as when it decoded it
            log.warning("%s: %d files are not readable images and were left out: %s", folder, len(source.skipped),
                        list_bad(source.skipped))  # fmt: skip
        return source
    decoded = _decode_imagefolder(folder, image_size, bad_images)
    write_entry(entry, decoded, folder)
    return _from_cache(decoded)


def _decode_imagefolder(folder: Path, image_size: int, bad_images: str) -> dict[str, np.ndarray]:
    train_dir = folder / "train"
    eval_dir = next((folder / sub for sub in ("val", "test") if (folder / sub).is_dir()), None)
    if not train_dir.is_dir() or eval_dir is None:
        found = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else None
        raise FileNotFoundError(
            f"imagefolder expects {folder}/train/ and {folder}/val/ (or test/), one sub-folder per class; "
            + (f"found sub-folders {found or 'none'}" if found is not None else f"{folder} does not exist")
        )
    train_classes, test_classes = class_folders(train_dir), class_folders(eval_dir)
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_eval = sorted(set(test_classes) - set(train_classes))
        raise ValueError(
            f"class folders differ between {train_dir} and {eval_dir}: "
            f"only in train: {only_train or 'none'}, only in {eval_dir.name}: {only_eval or 'none'}; "
            "both must hold the same class sub-folders"
        )
    train = read_image_tree(train_dir, image_size, bad_images=bad_images)
    test = read_image_tree(eval_dir, image_size, bad_images=bad_images)
    return _to_cache(
        ImageTensors(train.x, train.y),
        ImageTensors(test.x, test.y),
        train.classes,
        IMAGENET_MEAN,
        IMAGENET_STD,
        train.skipped + test.skipped,
    )
