"""Continual-learning scenarios built with Avalanche's scenario API from in-memory tensors, and their federated forms.

Avalanche's own dataset classes (``SplitCIFAR100``...) download, which fails offline, so the benchmarks are built
from the uint8 tensors ``meanet_core.data.load_dataset`` returns:

* ``split-<dataset>`` (class-incremental, e.g. Split CIFAR-100): the classes are shuffled with the seed and dealt into
  ``experiences`` groups with Avalanche's ``class_incremental_benchmark``; experience ``e`` brings the training images
  of group ``e`` and is tested on the test images of group ``e``.
* ``drift-<dataset>`` (domain drift): every experience brings a fresh, disjoint share of the training images of *all*
  classes, corrupted with a severity that rises linearly from 0 (clean) to 1 over the stream (contrast loss plus
  Gaussian noise); its test set is a disjoint share of the test split corrupted the same way. Built with Avalanche's
  ``benchmark_from_datasets``.

``<dataset>`` is one of ``cifar100``, ``cifar100-mini``, ``cifar10``, ``digits`` (see ``meanet_core.data``).

The federated form: within each experience a seeded ``cloud_share`` of the new training images stays with the cloud
(which keeps everything it has received), and the rest is partitioned over ``num_clients`` edges, IID or with
Dirichlet(alpha) label skew (``meanet_core.data.partition``). Validation images (the cloud's, for choosing the hard
classes and calibrating the routing) are carved from the training split and follow the same experience structure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from avalanche.benchmarks.scenarios import benchmark_from_datasets, class_incremental_benchmark
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset

from meanet_core.data import PARTITION_SCHEMES, DatasetSplits, ImageTensors, load_dataset, partition
from meanet_core.data.streams import concat

SCENARIO_KINDS = ("split", "drift")
SCENARIO_DATASETS = ("cifar100", "cifar100-mini", "cifar10", "digits")
SCENARIOS = tuple(f"{k}-{d}" for k in SCENARIO_KINDS for d in SCENARIO_DATASETS)


@dataclass(frozen=True)
class ExperienceData:
    """One experience of a scenario, as uint8 tensors, with its federated split."""

    index: int
    classes: tuple[int, ...]  # classes whose training images arrive in this experience
    seen_classes: tuple[int, ...]  # every class that has arrived so far
    severity: float  # corruption severity in [0, 1] (0 for class-incremental scenarios)
    train: ImageTensors  # every new training image of this experience
    val: ImageTensors  # this experience's validation images (the cloud's)
    test: ImageTensors  # this experience's test images (a column of the accuracy matrix)
    cloud: ImageTensors  # the cloud's share of ``train``
    clients: tuple[ImageTensors, ...]  # each edge client's partition of the rest of ``train``


@dataclass(frozen=True)
class Scenario:
    """A stream of experiences: the Avalanche benchmark and the same data as tensors for the fast training paths."""

    name: str
    kind: str  # "split" | "drift"
    dataset: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    experiences: tuple[ExperienceData, ...]
    benchmark: Any  # avalanche CLScenario with train_stream and test_stream

    def __len__(self) -> int:
        return len(self.experiences)

    def cloud_data(self, t: int) -> ImageTensors:
        """Everything the cloud has received up to experience ``t`` (included)."""
        return concat([e.cloud for e in self.experiences[: t + 1]])

    def train_data(self, t: int) -> ImageTensors:
        """Every training image of experiences 0..t (what joint training sees)."""
        return concat([e.train for e in self.experiences[: t + 1]])

    def val_data(self, t: int) -> ImageTensors:
        """The cloud's validation images of experiences 0..t."""
        return concat([e.val for e in self.experiences[: t + 1]])

    def test_data(self, t: int) -> ImageTensors:
        """Test images of experiences 0..t, in experience order (see ``test_offsets``)."""
        return concat([e.test for e in self.experiences[: t + 1]])

    def test_offsets(self, t: int) -> list[int]:
        """Start of each experience's test images inside ``test_data(t)``, plus the end."""
        return [0, *np.cumsum([len(e.test) for e in self.experiences[: t + 1]]).tolist()]


def to_avalanche(data: ImageTensors) -> Any:
    """An Avalanche classification dataset (x, y, task label 0) over the uint8 tensors, without copying them."""
    return _make_taskaware_tensor_classification_dataset(data.x, data.y, targets=data.y, task_labels=0)


def parse_scenario(name: str) -> tuple[str, str]:
    """``"split-cifar100"`` -> ``("split", "cifar100")``; a clear error for anything else."""
    kind, _, dataset = name.partition("-")
    if kind not in SCENARIO_KINDS or dataset not in SCENARIO_DATASETS:
        raise ValueError(f"unknown scenario {name!r}; valid: {', '.join(SCENARIOS)}")
    return kind, dataset


def corrupt(x: torch.Tensor, severity: float, seed: int) -> torch.Tensor:
    """uint8 images with contrast reduced by ``0.5 * severity`` and Gaussian noise of std ``0.15 * severity``."""
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must lie in [0, 1]; got {severity}")
    if severity == 0.0 or len(x) == 0:
        return x.clone()
    g = torch.Generator().manual_seed(seed)
    f = x.float().div(255.0)
    mean = f.mean(dim=(1, 2, 3), keepdim=True)
    f = (f - mean) * (1.0 - 0.5 * severity) + mean
    f = f + torch.randn(f.shape, generator=g) * (0.15 * severity)
    return (f.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def _chunks(n: int, parts: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [np.sort(p) for p in np.array_split(rng.permutation(n), parts)]


def _limit_per_experience(data: ImageTensors, limit: int | None, seed: int) -> ImageTensors:
    if limit is None or limit >= len(data):
        return data
    return data.subset(np.sort(np.random.default_rng(seed).permutation(len(data))[:limit]))


def build_scenario(
    name: str,
    *,
    num_experiences: int = 10,
    num_clients: int = 3,
    cloud_share: float = 0.2,
    partition_scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    val_fraction: float = 0.1,
    limit_train: int | None = None,
    limit_test: int | None = None,
    data_dir: str | None = None,
    splits: DatasetSplits | None = None,
) -> Scenario:
    """Build scenario ``name`` (see ``SCENARIOS``) for one seed.

    ``limit_train`` keeps a seeded, stratified subset of that many training images; ``limit_test`` keeps at most that
    many test images per experience. ``splits`` replaces the loaded dataset (tests pass synthetic data).
    """
    kind, dataset = parse_scenario(name)
    if partition_scheme not in PARTITION_SCHEMES:
        raise ValueError(f"unknown partition {partition_scheme!r}; valid: {', '.join(PARTITION_SCHEMES)}")
    if not 0.0 < cloud_share < 1.0:
        raise ValueError(f"cloud_share must lie in (0, 1): the cloud and the edges both need data; got {cloud_share}")
    if num_clients < 1:
        raise ValueError(f"clients must be >= 1; got {num_clients}")
    if splits is None:
        splits = load_dataset(dataset, data_dir=data_dir, val_fraction=val_fraction, seed=seed, limit_train=limit_train)
    k = splits.num_classes
    if not 1 <= num_experiences <= (k if kind == "split" else len(splits.train)):
        raise ValueError(
            f"experiences must lie in 1..{k} for {name} ({k} classes); got {num_experiences}"
            if kind == "split"
            else f"experiences must be >= 1; got {num_experiences}"
        )
    rng = np.random.default_rng(seed)
    trains: list[ImageTensors]
    vals: list[ImageTensors]
    tests: list[ImageTensors]
    if kind == "split":
        order = rng.permutation(k)
        groups = [tuple(int(c) for c in g) for g in np.array_split(order, num_experiences)]
        benchmark = class_incremental_benchmark(
            {"train": to_avalanche(splits.train), "test": to_avalanche(splits.test)},
            class_order=[int(c) for c in order],
            num_classes_per_exp=[len(g) for g in groups],
        )
        of = [np.asarray(g) for g in groups]
        trains = [splits.train.subset(np.isin(splits.train.y.numpy(), g)) for g in of]
        vals = [splits.val.subset(np.isin(splits.val.y.numpy(), g)) for g in of]
        tests = [splits.test.subset(np.isin(splits.test.y.numpy(), g)) for g in of]
        severities = [0.0] * num_experiences
        for e, exp in enumerate(benchmark.train_stream):  # internal invariant: Avalanche split the same way
            assert len(exp.dataset) == len(trains[e]), (len(exp.dataset), len(trains[e]))
        if limit_test is not None:  # the same training stream, fewer test images per experience
            tests = [_limit_per_experience(t, limit_test, seed * 7 + e) for e, t in enumerate(tests)]
            benchmark = benchmark_from_datasets(
                train=[exp.dataset for exp in benchmark.train_stream], test=[to_avalanche(t) for t in tests]
            )
    else:
        groups = [tuple(range(k))] * num_experiences
        severities = [e / (num_experiences - 1) if num_experiences > 1 else 0.0 for e in range(num_experiences)]
        parts = {
            s: [d.subset(idx) for idx in _chunks(len(d), num_experiences, rng)]
            for s, d in (("train", splits.train), ("val", splits.val), ("test", splits.test))
        }
        trains, vals, tests = (
            [ImageTensors(corrupt(p.x, severities[e], seed * 1_000 + 10 * e + j), p.y) for e, p in enumerate(ps)]
            for j, ps in enumerate(parts.values())
        )
        tests = [_limit_per_experience(t, limit_test, seed * 7 + e) for e, t in enumerate(tests)]
        benchmark = benchmark_from_datasets(
            train=[to_avalanche(t) for t in trains], test=[to_avalanche(t) for t in tests]
        )
    experiences = []
    seen: set[int] = set()
    for e in range(num_experiences):
        seen |= set(groups[e])
        train = trains[e]
        perm = np.random.default_rng([seed, e, 17]).permutation(len(train))
        n_cloud = max(1, math.floor(cloud_share * len(train) + 0.5))
        cloud, pool = train.subset(np.sort(perm[:n_cloud])), train.subset(np.sort(perm[n_cloud:]))
        if len(pool) < num_clients:
            raise ValueError(
                f"experience {e} leaves {len(pool)} images to the edges, fewer than the {num_clients} clients; "
                "use fewer clients or experiences, a smaller cloud share, or more training images"
            )
        idx = partition(pool.y, num_clients, partition_scheme, alpha=alpha, seed=seed * 1000 + e)
        experiences.append(
            ExperienceData(
                index=e,
                classes=groups[e],
                seen_classes=tuple(sorted(seen)),
                severity=float(severities[e]),
                train=train,
                val=vals[e],
                test=tests[e],
                cloud=cloud,
                clients=tuple(pool.subset(i) for i in idx),
            )
        )
    return Scenario(
        name=name,
        kind=kind,
        dataset=dataset,
        num_classes=k,
        mean=splits.mean,
        std=splits.std,
        experiences=tuple(experiences),
        benchmark=benchmark,
    )
