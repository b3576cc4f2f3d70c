"""Tests for meanet_core.data: dataset loading, train/val carve-out, partitions and tensor batches."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from meanet_core.data import (
    DATASETS,
    DatasetSplits,
    ImageTensors,
    TensorBatches,
    data_dir_from_env,
    dirichlet_partition,
    iid_partition,
    load_dataset,
    partition,
    to_float,
    train_val_split,
)

FALLBACK_DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data"


def find_data_file(name: str) -> Path | None:
    """``name`` in $MEANET_DATA_DIR, else in the shared data folder beside the checkout, else None."""
    env = os.environ.get("MEANET_DATA_DIR")
    for folder in ([Path(env)] if env else []) + [FALLBACK_DATA_DIR]:
        if (folder / name).is_file():
            return folder / name
    return None


def require_data_dir(name: str) -> Path:
    path = find_data_file(name)
    if path is None:
        pytest.skip(f"{name} not found in $MEANET_DATA_DIR or {FALLBACK_DATA_DIR}; set MEANET_DATA_DIR to run this")
    return path.parent


def indexed_images(labels: np.ndarray | list[int], size: int = 4) -> ImageTensors:
    """Synthetic images whose first two pixels encode their index (for disjointness checks)."""
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    n = len(y)
    x = torch.zeros((n, 3, size, size), dtype=torch.uint8)
    idx = torch.arange(n)
    x[:, 0, 0, 0] = (idx // 256).to(torch.uint8)
    x[:, 0, 0, 1] = (idx % 256).to(torch.uint8)
    return ImageTensors(x, y)


def ids(data: ImageTensors) -> np.ndarray:
    return (data.x[:, 0, 0, 0].long() * 256 + data.x[:, 0, 0, 1].long()).numpy()


def image_keys(data: ImageTensors) -> set[bytes]:
    flat = data.x.reshape(len(data), -1).numpy()
    return {row.tobytes() for row in flat}


def write_npz(path: Path, **overrides: np.ndarray | None) -> Path:
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray | None] = {
        "x_train": rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
        "y_train": np.repeat(np.arange(10, dtype=np.uint8), 2),
        "x_test": rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8),
        "y_test": np.arange(10, dtype=np.uint8),
    }
    arrays.update(overrides)
    present: dict[str, Any] = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **present)
    return path


# ---------------------------------------------------------------------------------------- ImageTensors


def test_image_tensors_validates_dtype_and_shape() -> None:
    with pytest.raises(ValueError, match="uint8"):
        ImageTensors(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="int64"):
        ImageTensors(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.int32))
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        ImageTensors(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))
    hwc = torch.zeros(2, 4, 4, 3, dtype=torch.uint8).permute(0, 3, 1, 2)
    assert ImageTensors(hwc, torch.zeros(2, dtype=torch.int64)).x.is_contiguous()


def test_image_tensors_subset() -> None:
    data = indexed_images([0, 1, 2, 0, 1])
    assert ids(data.subset(np.array([4, 0]))).tolist() == [4, 0]
    assert ids(data.subset(torch.tensor([1, 3]))).tolist() == [1, 3]
    assert ids(data.subset(data.y == 0)).tolist() == [0, 3]
    assert len(data.subset(np.array([], dtype=np.int64))) == 0
    with pytest.raises(ValueError, match="integers"):
        data.subset(np.array([0.5]))


# ---------------------------------------------------------------------------------------------- splits


def test_train_val_split_is_stratified_disjoint_and_seeded() -> None:
    data = indexed_images(np.repeat(np.arange(5), [40, 40, 20, 20, 10]))
    train, val = train_val_split(data, 0.1, seed=3)
    assert len(val) == 13 and len(train) == 117
    assert set(ids(train)).isdisjoint(ids(val)) and set(ids(train)) | set(ids(val)) == set(range(130))
    counts = np.bincount(val.y.numpy(), minlength=5)
    assert counts[:4].tolist() == [4, 4, 2, 2] and counts[4] in (0, 1)
    assert not np.all(np.diff(train.y.numpy()) >= 0), "train should come back shuffled, not grouped by class"
    again_train, again_val = train_val_split(data, 0.1, seed=3)
    assert ids(again_train).tolist() == ids(train).tolist() and ids(again_val).tolist() == ids(val).tolist()
    assert ids(train_val_split(data, 0.1, seed=4)[1]).tolist() != ids(val).tolist()


def test_train_val_split_zero_and_bad_fraction() -> None:
    data = indexed_images(np.arange(10) % 2)
    train, val = train_val_split(data, 0.0, seed=0)
    assert len(train) == 10 and len(val) == 0 and val.x.shape == (0, 3, 4, 4)
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            train_val_split(data, bad, seed=0)


# ------------------------------------------------------------------------------------------ real files


@pytest.mark.data
def test_cifar100_mini_loads_with_stratified_val() -> None:
    folder = require_data_dir("cifar100_mini.npz")
    splits = load_dataset("cifar100-mini", data_dir=folder, seed=0)
    assert isinstance(splits, DatasetSplits) and splits.name == "cifar100-mini"
    assert splits.train.x.shape == (1800, 3, 32, 32) and splits.train.x.dtype == torch.uint8
    assert splits.train.y.dtype == torch.int64 and splits.train.x.is_contiguous()
    assert len(splits.val) == 200 and len(splits.test) == 1000
    assert splits.num_classes == 100 and len(splits.class_names) == 100 and splits.image_size == 32
    if (folder / "cifar100_labels.json").is_file():
        assert splits.class_names[0] == "apple"
    assert splits.mean == (0.5071, 0.4865, 0.4409) and splits.std == (0.2673, 0.2564, 0.2762)
    assert np.bincount(splits.val.y.numpy(), minlength=100).tolist() == [2] * 100
    assert image_keys(splits.train).isdisjoint(image_keys(splits.val))
    # Same seed, same splits; another seed, another val; limit_train leaves val alone.
    again = load_dataset("cifar100-mini", data_dir=folder, seed=0)
    assert torch.equal(again.train.x, splits.train.x) and torch.equal(again.val.y, splits.val.y)
    assert not torch.equal(load_dataset("cifar100-mini", data_dir=folder, seed=1).val.x, splits.val.x)
    small = load_dataset("cifar100-mini", data_dir=folder, seed=0, limit_train=300)
    assert len(small.train) == 300 and np.bincount(small.train.y.numpy(), minlength=100).tolist() == [3] * 100
    assert torch.equal(small.val.x, splits.val.x)


@pytest.mark.data
def test_data_dir_comes_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    folder = require_data_dir("cifar100_mini.npz")
    monkeypatch.setenv("MEANET_DATA_DIR", str(folder))
    assert data_dir_from_env() == folder
    assert len(load_dataset("cifar100-mini", val_fraction=0.0).train) == 2000


@pytest.fixture(scope="module")
def cifar100() -> DatasetSplits:
    return load_dataset("cifar100", data_dir=require_data_dir("cifar100.npz"), seed=0)


@pytest.mark.data
def test_cifar100_full_splits(cifar100: DatasetSplits) -> None:
    assert (len(cifar100.train), len(cifar100.val), len(cifar100.test)) == (45000, 5000, 10000)
    assert cifar100.train.x.shape[1:] == (3, 32, 32) and cifar100.test.x.dtype == torch.uint8
    assert np.bincount(cifar100.val.y.numpy(), minlength=100).tolist() == [50] * 100
    assert np.bincount(cifar100.test.y.numpy(), minlength=100).tolist() == [100] * 100
    assert len(set(cifar100.class_names)) == 100


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"y_test": None}, "y_test"),
        ({"x_train": np.zeros((20, 32, 32, 3), dtype=np.float32)}, "x_train"),
        ({"x_test": np.zeros((10, 3, 32, 32), dtype=np.uint8)}, "x_test"),
        ({"y_train": np.full(20, 100, dtype=np.int64)}, "y_train"),
        ({"y_train": np.zeros(19, dtype=np.int64)}, "y_train"),
    ],
)
def test_bad_npz_layout_names_file_and_key(tmp_path: Path, overrides: dict[str, np.ndarray | None], key: str) -> None:
    path = write_npz(tmp_path / "cifar100_mini.npz", **overrides)
    with pytest.raises(ValueError, match=key) as info:
        load_dataset("cifar100-mini", data_dir=tmp_path)
    assert str(path) in str(info.value)


def test_good_synthetic_npz_loads(tmp_path: Path) -> None:
    write_npz(tmp_path / "cifar100_mini.npz")
    splits = load_dataset("cifar100-mini", data_dir=tmp_path, val_fraction=0.5)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (10, 10, 10)
    assert splits.class_names[:2] == ("class_0", "class_1")


def test_missing_data_without_download_names_both_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEANET_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="MEANET_DATA_DIR") as info:
        load_dataset("cifar100", data_dir=tmp_path, download=False)
    assert "cifar100.npz" in str(info.value) and "download" in str(info.value)
    with pytest.raises(FileNotFoundError, match="MEANET_DATA_DIR"):
        load_dataset("cifar100-mini", data_dir=tmp_path)


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown dataset") as info:
        load_dataset("imagenet-22k")
    assert all(name in str(info.value) for name in DATASETS)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="limit_train"):
        load_dataset("digits", limit_train=0)
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("digits", val_fraction=1.0)


# ------------------------------------------------------------------------------------- digits, folders


def test_digits_loads_offline() -> None:
    pytest.importorskip("sklearn")
    splits = load_dataset("digits", seed=0, val_fraction=0.1)
    assert splits.num_classes == 10 and splits.image_size == 32
    assert len(splits.test) == 359 and len(splits.train) + len(splits.val) + len(splits.test) == 1797
    assert splits.train.x.shape[1:] == (3, 32, 32) and splits.train.x.dtype == torch.uint8
    assert torch.equal(splits.train.x[:, 0], splits.train.x[:, 2]) and int(splits.train.x.max()) == 255
    assert np.bincount(splits.test.y.numpy()).min() >= 35
    assert torch.equal(load_dataset("digits", seed=5).test.x, splits.test.x), "test split must not depend on seed"
    assert 0 < splits.mean[0] < 1 and 0 < splits.std[0] < 1


def make_image_tree(root: Path, classes: dict[str, int], size: tuple[int, int] = (40, 30)) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_imagefolder_loads_resized_and_cropped(tmp_path: Path) -> None:
    make_image_tree(tmp_path / "train", {"cat": 6, "dog": 4})
    make_image_tree(tmp_path / "val", {"cat": 2, "dog": 2}, size=(20, 50))
    splits = load_dataset("imagefolder", data_dir=tmp_path, image_size=16, val_fraction=0.2)
    assert splits.class_names == ("cat", "dog") and splits.num_classes == 2 and splits.image_size == 16
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 2, 4)
    assert splits.train.x.shape == (8, 3, 16, 16) and splits.test.x.dtype == torch.uint8
    assert splits.mean == (0.485, 0.456, 0.406)


def test_imagefolder_errors(tmp_path: Path) -> None:
    make_image_tree(tmp_path / "train", {"cat": 1, "dog": 1})
    with pytest.raises(FileNotFoundError, match="val/"):
        load_dataset("imagefolder", data_dir=tmp_path)
    make_image_tree(tmp_path / "test", {"cat": 1, "bird": 1})
    with pytest.raises(ValueError, match="bird") as info:
        load_dataset("imagefolder", data_dir=tmp_path)
    assert "dog" in str(info.value)


# ------------------------------------------------------------------------------------------ partitions


def check_partition(parts: list[np.ndarray], n: int, num_clients: int) -> None:
    assert len(parts) == num_clients
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)
    joined = np.concatenate(parts)
    assert len(joined) == n and np.array_equal(np.sort(joined), np.arange(n))


def test_iid_partition() -> None:
    labels = np.arange(103) % 7
    parts = iid_partition(labels, 5, seed=1)
    check_partition(parts, 103, 5)
    assert {len(p) for p in parts} <= {20, 21}
    assert all(np.array_equal(a, b) for a, b in zip(parts, iid_partition(torch.as_tensor(labels), 5, 1), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, iid_partition(labels, 5, 2), strict=True))


def test_dirichlet_partition_skew_depends_on_alpha() -> None:
    labels = np.repeat(np.arange(10), 100)

    def mean_top_share(alpha: float) -> float:
        parts = dirichlet_partition(labels, 10, alpha, seed=0)
        check_partition(parts, 1000, 10)
        return float(np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]))

    assert mean_top_share(0.05) > 0.6
    assert mean_top_share(1000.0) < 0.25
    again = dirichlet_partition(labels, 10, 0.5, seed=3, min_size=5)
    assert min(len(p) for p in again) >= 5
    assert all(np.array_equal(a, b) for a, b in zip(again, partition(labels, 10, "dirichlet", 0.5, 3), strict=True))


def test_partition_bad_arguments() -> None:
    labels = np.arange(20) % 4
    cases: list[tuple[dict[str, Any], str]] = [
        ({"num_clients": 0}, "num_clients"),
        ({"num_clients": 21}, "num_clients"),
        ({"num_clients": 2, "scheme": "shards"}, "iid, dirichlet"),
        ({"num_clients": 2, "scheme": "dirichlet", "alpha": 0.0}, "alpha"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            partition(labels, **kwargs)
    with pytest.raises(ValueError, match="labels"):
        partition(np.zeros((4, 2), dtype=np.int64), 2)
    with pytest.raises(ValueError, match="larger alpha"):
        dirichlet_partition(np.zeros(20, dtype=np.int64), 4, alpha=1e-3, seed=0, min_size=5, max_attempts=3)


# --------------------------------------------------------------------------------------------- batches


def random_images(n: int = 50, size: int = 8) -> ImageTensors:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return ImageTensors(x, torch.arange(n) % 10)


def collect(batches: TensorBatches) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*batches, strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_batches_shapes_range_and_length() -> None:
    data = random_images(50)
    batches = TensorBatches(data, 16, shuffle=True)
    assert len(batches) == 4 and len(TensorBatches(data, 16, shuffle=True, drop_last=True)) == 3
    sizes = [x.shape[0] for x, _ in TensorBatches(data, 16, shuffle=False, drop_last=True)]
    assert sizes == [16, 16, 16]
    x, y = next(iter(batches))
    assert x.shape == (16, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    with pytest.raises(ValueError, match="batch_size"):
        TensorBatches(data, 0, shuffle=False)


def test_batches_without_augmentation_are_identity() -> None:
    data = random_images(50)
    x, y = collect(TensorBatches(data, 16, shuffle=False))
    assert torch.equal(x, to_float(data.x)) and torch.equal(y, data.y)
    indexed = indexed_images(np.arange(50) % 10)
    xs, ys = collect(TensorBatches(indexed, 16, shuffle=True, seed=1))
    order = (xs[:, 0, 0, 0] * 255).round().long() * 256 + (xs[:, 0, 0, 1] * 255).round().long()
    assert sorted(order.tolist()) == list(range(50)) and order.tolist() != list(range(50))
    assert torch.equal(ys, indexed.y[order])
    with pytest.raises(ValueError, match="uint8"):
        to_float(torch.zeros(2))


def test_batches_are_reproducible_and_epochs_differ() -> None:
    data = random_images(50)
    a = TensorBatches(data, 16, shuffle=True, augment=True, seed=7)
    b = TensorBatches(data, 16, shuffle=True, augment=True, seed=7)
    first_a, first_b = collect(a), collect(b)
    assert torch.equal(first_a[0], first_b[0]) and torch.equal(first_a[1], first_b[1])
    second_a = collect(a)
    assert not torch.equal(second_a[1], first_a[1])
    b.set_epoch(1)
    assert torch.equal(collect(b)[0], second_a[0])


def test_flip_only_augmentation_flips_some_images() -> None:
    data = random_images(64)
    x, _ = collect(TensorBatches(data, 64, shuffle=False, augment=True, pad=0))
    original = to_float(data.x)
    same = (x == original).flatten(1).all(1)
    flipped = (x == original.flip(-1)).flatten(1).all(1)
    assert bool((same | flipped).all()) and 0 < int(flipped.sum()) < 64


def test_crop_augmentation_shifts_with_zero_padding() -> None:
    data = ImageTensors(torch.full((64, 3, 8, 8), 200, dtype=torch.uint8), torch.zeros(64, dtype=torch.int64))
    x, _ = collect(TensorBatches(data, 32, shuffle=True, augment=True, pad=2))
    assert x.shape == (64, 3, 8, 8)
    zero_pixels = (x == 0).flatten(1).sum(1)
    assert 0 < int((zero_pixels > 0).sum()) < 64, "some (not all) crops should show the zero padding"
    assert set(torch.unique((x * 255).round()).tolist()) <= {0.0, 200.0}
    # A shifted crop of a random image matches the image shifted by (dy, dx) with zeros filled in.
    img = random_images(1)
    out, _ = collect(TensorBatches(img, 1, shuffle=False, augment=True, pad=3, seed=11))
    padded = torch.nn.functional.pad(to_float(img.x), (3, 3, 3, 3))
    candidates = [padded[..., dy : dy + 8, dx : dx + 8] for dy in range(7) for dx in range(7)]
    assert any(torch.equal(out, c) or torch.equal(out, c.flip(-1)) for c in candidates)


# ----------------------------------------------------------------------------------------- the npz decompression cache
def _write_big_npz(path: Path, seed: int, compressed: bool = True) -> dict[str, np.ndarray]:
    """An archive over the cache's size floor (random images barely compress)."""
    from meanet_core.data.sources import NPZ_CACHE_MIN_BYTES

    rng = np.random.default_rng(seed)
    n = NPZ_CACHE_MIN_BYTES // (32 * 32 * 3) + 50
    arrays = {
        "x_train": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n).astype(np.int64),
        "x_test": rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
        "y_test": rng.integers(0, 10, 20).astype(np.int64),
    }
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return arrays


def _same(loaded: Any, arrays: dict[str, np.ndarray]) -> bool:
    train, test = loaded
    return bool(
        np.array_equal(train.x.permute(0, 2, 3, 1).numpy(), arrays["x_train"])
        and np.array_equal(train.y.numpy(), arrays["y_train"])
        and np.array_equal(test.x.permute(0, 2, 3, 1).numpy(), arrays["x_test"])
    )


def test_compressed_npz_is_decompressed_once_then_memory_mapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meanet_core.data import sources

    monkeypatch.setenv("MEANET_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "big.npz"
    arrays = _write_big_npz(path, seed=0)
    assert _same(sources.load_npz(path, 10), arrays)
    [entry] = (tmp_path / "cache" / "npz").iterdir()
    assert sorted(f.name for f in entry.glob("*.npy")) == sorted(f"{k}.npy" for k in sources.NPZ_KEYS)

    def no_archive(p: Path) -> dict[str, np.ndarray]:
        raise AssertionError("the archive was read again despite the cache")

    monkeypatch.setattr(sources, "_read_npz", no_archive)
    assert _same(sources.load_npz(path, 10), arrays)  # served from the cache

    # A damaged cache entry is ignored, and the archive read and cached again.
    monkeypatch.undo()
    monkeypatch.setenv("MEANET_CACHE_DIR", str(tmp_path / "cache"))
    (entry / "x_train.npy").write_bytes(b"\x93NUMPY garbage")
    assert _same(sources.load_npz(path, 10), arrays)
    assert np.load(entry / "x_train.npy").shape == arrays["x_train"].shape

    # Labels out of range are refused from the cache as from the archive (the same checks run).
    np.save(entry / "y_train.npy", np.full_like(arrays["y_train"], 99))
    with pytest.raises(ValueError, match=r"labels 99\.\.99; expected 0\.\.9"):
        sources.load_npz(path, 10)


def test_npz_cache_follows_the_file_and_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from meanet_core.data import sources

    cache = tmp_path / "cache"
    monkeypatch.setenv("MEANET_CACHE_DIR", str(cache))
    path = tmp_path / "big.npz"
    _write_big_npz(path, seed=0)
    sources.load_npz(path, 10)
    newer = _write_big_npz(path, seed=1)  # the file changes: never served stale data
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert _same(sources.load_npz(path, 10), newer)
    [entry] = (cache / "npz").iterdir()  # the stale entry was replaced, not kept beside the new one
    assert _same(sources.load_npz(path, 10), newer)

    plain = tmp_path / "plain.npz"
    _write_big_npz(plain, seed=2, compressed=False)  # a stored archive loads as fast as a cache: not cached
    sources.load_npz(plain, 10)
    assert list((cache / "npz").iterdir()) == [entry]

    monkeypatch.setenv("MEANET_CACHE_DIR", "off")
    other = tmp_path / "other.npz"
    arrays = _write_big_npz(other, seed=3)
    assert _same(sources.load_npz(other, 10), arrays)
    assert list((cache / "npz").iterdir()) == [entry]
