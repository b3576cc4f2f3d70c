"""The fleet of the personalised-FL benchmark: a server-held share and label-skewed devices, each with its own
train, validation and test splits.

From the (limited) training images of the dataset, a seeded, stratified ``cloud_share`` stays with the server (IID);
the rest is split over the devices by ``partition``: ``dirichlet`` (``meanet_core.data.partition``, Dir(beta) per
class) or ``classes`` (``classes_partition``: ``k`` classes per device). Each device then carves ``val_fraction`` of
its images into a validation split, stratified over the classes it holds at least twice (a class it holds once stays
in its training split), and gets a test split drawn from the official test set **in its own class proportions**: the
per-class counts are the largest-remainder apportionment of ``test_per_edge`` images by the device's training label
distribution, drawn without replacement (seeded per device; devices may share test images). When a class has fewer
test images than its share asks for (a device dominated by one class: 100 test images per class in CIFAR-100, 10 in
the mini set), the device's test split shrinks until every class fits, so its proportions hold and no image repeats;
``PersonalScenario.summary`` reports each device's test size.

Labels are always the dataset's class ids (never positions in a device's class list).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from benchmarks.personal.config import PersonalConfig
from meanet_core.data import DatasetSplits, ImageTensors, dirichlet_partition, load_dataset
from meanet_core.data.datasets import stratified_pick


@dataclass(frozen=True)
class DeviceData:
    """One device: its training images (its partition less validation), validation and test splits."""

    index: int
    train: ImageTensors
    val: ImageTensors
    test: ImageTensors

    def class_counts(self, num_classes: int) -> np.ndarray:
        """(K,) training images per class id."""
        return np.bincount(self.train.y.numpy(), minlength=num_classes)

    @property
    def classes(self) -> tuple[int, ...]:
        """The class ids of the device's training images."""
        return tuple(int(c) for c in torch.unique(self.train.y).tolist())


@dataclass(frozen=True)
class PersonalScenario:
    """The server-held share and every device's splits, for one seed."""

    dataset: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    seed: int
    server: ImageTensors
    devices: tuple[DeviceData, ...]

    def __len__(self) -> int:
        return len(self.devices)

    def summary(self) -> dict[str, Any]:
        """Sizes and skew, JSON-ready: the server share, and per device its splits and number of classes."""
        return {
            "server_images": len(self.server),
            "devices": [
                {"train": len(d.train), "val": len(d.val), "test": len(d.test), "classes": len(d.classes)}
                for d in self.devices
            ],
        }


def apportion(weights: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to ``total`` in proportion to ``weights`` (largest remainder; ties to the lower
    index)."""
    w = np.asarray(weights, dtype=np.float64)
    if total < 0 or w.sum() <= 0 or (w < 0).any():
        raise ValueError(f"apportion needs a total >= 0 and non-negative weights with a positive sum; got {total}, {w}")
    quota = w / w.sum() * total
    counts = np.floor(quota).astype(np.int64)
    missing = total - int(counts.sum())
    if missing > 0:
        order = np.argsort(-(quota - counts), kind="stable")
        counts[order[:missing]] += 1
    return counts


def classes_partition(labels: np.ndarray, num_clients: int, k: int, seed: int) -> list[np.ndarray]:
    """``k`` distinct classes per client: the classes, shuffled with ``seed``, are dealt round-robin (client ``i``
    gets positions ``i*k .. i*k+k-1`` of the cycle), and each class's images are split evenly over the clients that
    hold it. Classes no client holds (``num_clients * k`` < classes) leave their images out. Returns sorted index
    arrays, pairwise disjoint."""
    y = np.asarray(labels, dtype=np.int64)
    present = np.unique(y)
    if not 1 <= k <= len(present):
        raise ValueError(f"classes per edge must lie in 1..{len(present)} (classes present); got {k}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(present)
    holders: dict[int, list[int]] = {}
    for client in range(num_clients):
        for j in range(k):
            holders.setdefault(int(order[(client * k + j) % len(order)]), []).append(client)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c, clients in holders.items():
        idx = rng.permutation(np.flatnonzero(y == c))
        for client, chunk in zip(clients, np.array_split(idx, len(clients)), strict=True):
            parts[client].append(chunk)
    out = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
    empty = [i for i, p in enumerate(out) if len(p) == 0]
    if empty:
        raise ValueError(
            f"devices {empty} got no image ({len(y)} images, {num_clients} devices, {k} classes each): raise "
            "--limit-train or --classes-per-edge, or use fewer edges"
        )
    return out


def split_device_val(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train positions, val positions) of one device's images: ``val_fraction`` of them, stratified over the
    classes the device holds at least twice (every such class keeps an image in train)."""
    y = np.asarray(labels, dtype=np.int64)
    classes, counts = np.unique(y, return_counts=True)
    eligible = np.flatnonzero(np.isin(y, classes[counts >= 2]))
    k = min(round(len(y) * val_fraction), len(eligible))
    if k == 0:
        return np.arange(len(y), dtype=np.int64), np.empty(0, dtype=np.int64)
    picked, _ = stratified_pick(y[eligible], k, np.random.default_rng(seed))
    val = np.sort(eligible[picked])
    return np.setdiff1d(np.arange(len(y)), val).astype(np.int64), val.astype(np.int64)


def draw_test(
    counts: np.ndarray, test_labels: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """Positions in the test set of a split of at most ``size`` images in the proportions of ``counts`` (training
    images per class id), without repeats; shrunk until every class's share fits its test images. Returns the
    positions (grouped by class) and the size drawn."""
    available = np.bincount(test_labels, minlength=len(counts))
    p = counts / counts.sum()
    held = np.flatnonzero(p > 0)
    if (available[held] == 0).any():
        missing = held[available[held] == 0].tolist()
        raise ValueError(f"classes {missing} have training images but no test image; the test split cannot hold them")
    fits = int(np.floor(np.min(available[held] / p[held]) + 1e-9))
    total = max(1, min(size, fits))
    want = apportion(p, total)
    chosen = [rng.choice(np.flatnonzero(test_labels == c), int(want[c]), replace=False) for c in held if want[c]]
    return np.concatenate(chosen).astype(np.int64), total


def build_personal_scenario(cfg: PersonalConfig, seed: int, splits: DatasetSplits | None = None) -> PersonalScenario:
    """The fleet of ``cfg`` for ``seed`` (``splits`` replaces the loaded dataset: tests pass synthetic data)."""
    if splits is None:
        splits = load_dataset(
            cfg.dataset, data_dir=cfg.data_dir, val_fraction=0.0, seed=seed, limit_train=cfg.limit_train
        )
    data = splits.train
    labels = data.y.numpy()
    n_server = round(cfg.cloud_share * len(data))
    server_idx, pool_idx = stratified_pick(labels, n_server, np.random.default_rng([seed, 11]))
    pool_idx = np.sort(pool_idx)
    pool_labels = labels[pool_idx]
    if len(pool_idx) < 2 * cfg.edges:
        raise ValueError(
            f"{len(pool_idx)} images for {cfg.edges} devices: each needs at least 2; raise --limit-train or lower "
            "--cloud-share or --edges"
        )
    if cfg.partition == "dirichlet":
        min_size = min(10, len(pool_idx) // cfg.edges)
        parts = dirichlet_partition(pool_labels, cfg.edges, cfg.beta, seed=seed * 1000 + 5, min_size=min_size)
    else:
        parts = classes_partition(pool_labels, cfg.edges, cfg.classes_per_edge, seed=seed * 1000 + 5)
    test_labels = splits.test.y.numpy()
    devices = []
    for i, part in enumerate(parts):
        mine = data.subset(pool_idx[part])
        train_pos, val_pos = split_device_val(mine.y.numpy(), cfg.val_fraction, seed=seed * 1000 + 100 + i)
        train = mine.subset(train_pos)
        counts = np.bincount(train.y.numpy(), minlength=splits.num_classes)
        test_pos, _ = draw_test(counts, test_labels, cfg.test_per_edge, np.random.default_rng([seed, i, 3]))
        devices.append(DeviceData(i, train, mine.subset(val_pos), splits.test.subset(test_pos)))
    return PersonalScenario(
        dataset=splits.name,
        num_classes=splits.num_classes,
        mean=splits.mean,
        std=splits.std,
        seed=seed,
        server=data.subset(np.sort(server_idx)),
        devices=tuple(devices),
    )
