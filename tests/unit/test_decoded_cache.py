"""The per-message start of an edge: the decoded-data cache (hit, invalidation, damage) and the edge's own slice of the
shared stream, read without building the stream."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from fl_client import local_data
from meanet_core.config import FederationConfig
from meanet_core.data import cache, load_dataset, sources
from meanet_core.data.streams import edge_slice, eval_shard, own_test_shard, stream_for
from meanet_edge import images as edge_images


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(local_data, "_CACHE", {})  # every test starts as a fresh ClientApp process would
    return tmp_path / "cache"


def _entries(root: Path, kind: str) -> list[Path]:
    return sorted(p for p in (root / kind).iterdir() if p.is_dir()) if (root / kind).is_dir() else []


def _fail(*_: Any) -> Any:
    raise AssertionError("decoded again despite the cache")


# ------------------------------------------------------------------------------------------------ the shared stream


@pytest.mark.parametrize(("stream", "scheme"), [("class-incremental", "iid"), ("iid", "dirichlet")])
def test_an_edges_slice_is_what_the_stream_deals_it(tmp_path: Path, cache_dir: Path, stream: str, scheme: str) -> None:
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "cifar10.npz",
        x_train=rng.integers(0, 256, (300, 32, 32, 3), dtype=np.uint8), y_train=np.repeat(np.arange(10), 30),
        x_test=rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8), y_test=np.repeat(np.arange(10), 10),
    )  # fmt: skip
    cfg = FederationConfig(
        dataset="cifar10", data_dir=str(tmp_path), num_clients=3, experiences=2, stream=stream, partition=scheme,
        limit_train=200, seed=5,
    )  # fmt: skip
    splits, experiences = stream_for(cfg)
    for e, exp in enumerate(experiences):
        for c in range(cfg.num_clients):
            train, test = edge_slice(cfg, e, c, "train"), edge_slice(cfg, e, c, "evaluate")
            assert (train.num_classes, train.mean, train.std) == (10, splits.mean, splits.std)
            shard = eval_shard(exp.test.y.numpy(), c, cfg.num_clients, cfg.seed, e)
            if scheme != "iid":  # a skewed fleet: each edge's test images in its own class proportions
                held = torch.cat([experiences[i].client_data(c).y for i in range(e + 1)]).numpy()
                shard = own_test_shard(exp.test.y.numpy(), held, len(shard), cfg.seed * 7919 + c * 104729 + e)
                assert set(exp.test.y[shard].tolist()) <= set(held.tolist())
            expected_test = exp.test.subset(shard)
            for got, want in ((train.data, exp.client_data(c)), (test.data, expected_test)):
                assert torch.equal(got.x, want.x) and torch.equal(got.y, want.y)
    with pytest.raises(ValueError, match=r"experience must lie in 0\.\.1"):
        edge_slice(cfg, 2, 0, "train")


# ------------------------------------------------------------------------------------------- the decoded-data cache


def test_digits_are_decoded_once_then_memory_mapped(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = sources.read_arrays("digits", None, download=False, image_size=32)
    [entry] = _entries(cache_dir, "source")
    monkeypatch.setattr(sources, "_decode_digits", _fail)
    again = sources.read_arrays("digits", None, download=False, image_size=32)  # a hit: no scikit-learn, no resizing
    assert isinstance(again.x_train, np.memmap)
    assert np.array_equal(again.x_train, first.x_train) and np.array_equal(again.y_test, first.y_test)
    assert (again.class_names, again.mean, again.std) == (first.class_names, first.mean, first.std)

    (entry / "x_train.npy").write_bytes(b"\x93NUMPY damaged")  # a damaged entry is removed and decoded again
    monkeypatch.undo()
    monkeypatch.setenv(cache.CACHE_ENV, str(cache_dir))
    rebuilt = sources.read_arrays("digits", None, download=False, image_size=32)
    assert np.array_equal(rebuilt.x_train, first.x_train)
    assert np.array_equal(np.load(entry / "x_train.npy"), first.x_train)


def _png(path: Path, value: int, side: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((side, side, 3), value, dtype=np.uint8)).save(path)


def test_an_edge_folder_is_decoded_once_and_again_when_it_changes(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "edge"
    for i in range(5):
        _png(folder / "a" / f"{i}.png", 10)
        _png(folder / "b" / f"{i}.png", 200)
    (folder / "b" / "notes.png").write_text("not an image")
    monkeypatch.setattr(edge_images, "resize_crop", _fail)  # images already of the run's size: not resized
    first = local_data.read_edge_data(folder, ["a", "b"], image_size=8)
    [entry] = _entries(cache_dir, "edge")
    assert (entry / cache.SOURCE).read_text() == str(folder.resolve())

    monkeypatch.setattr(local_data, "_CACHE", {})  # the next message's process
    monkeypatch.setattr(local_data, "_read_folder", _fail)
    hit = local_data.read_edge_data(folder, ["a", "b"], image_size=8)
    assert torch.equal(hit.train(0).x, first.train(0).x) and torch.equal(hit.test(0).y, first.test(0).y)
    assert [s.path for s in hit.skipped] == [folder / "b" / "notes.png"]

    monkeypatch.undo()
    monkeypatch.setenv(cache.CACHE_ENV, str(cache_dir))
    monkeypatch.setattr(local_data, "_CACHE", {})
    _png(folder / "a" / "new.png", 10)  # the folder changed: decoded again, the stale entry replaced
    changed = local_data.read_edge_data(folder, ["a", "b"], image_size=8)
    assert len(changed.train(0)) + len(changed.test(0)) == 11
    [new_entry] = _entries(cache_dir, "edge")
    assert new_entry != entry


def test_an_imagefolder_dataset_is_cached_with_its_skipped_files(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for split in ("train", "val"):
        for c, value in (("cat", 40), ("dog", 90)):
            for i in range(2):
                _png(tmp_path / "data" / split / c / f"{i}.png", value)
    (tmp_path / "data" / "train" / "cat" / "bad.jpg").write_bytes(b"truncated")
    first = load_dataset("imagefolder", data_dir=tmp_path / "data", image_size=8, val_fraction=0.0)
    monkeypatch.setattr(sources, "_decode_imagefolder", _fail)
    again = load_dataset("imagefolder", data_dir=tmp_path / "data", image_size=8, val_fraction=0.0)
    assert torch.equal(again.train.x, first.train.x) and torch.equal(again.test.y, first.test.y)
    assert again.class_names == first.class_names == ("cat", "dog")
    assert again.skipped_images == first.skipped_images and len(first.skipped_images) == 1


def test_entries_are_written_whole_and_keyed_by_their_source(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"one")
    entry = cache.entry_for("npz", "source", *cache.file_stamp(source))
    assert entry is not None
    cache.write_entry(entry, {"x": np.arange(3)}, source)
    cache.write_entry(entry, {"x": np.arange(5)}, source)  # another process was first: its entry stays
    hit = cache.read_entry(entry)
    assert hit is not None and hit["x"].tolist() == [0, 1, 2]
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # no temporary folder left behind

    source.write_bytes(b"two, longer")
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    assert cache.entry_for("npz", "source", *cache.file_stamp(source)) != entry  # a changed source: another key

    monkeypatch.setenv(cache.CACHE_ENV, "off")
    assert cache.entry_for("npz", "source", *cache.file_stamp(source)) is None
