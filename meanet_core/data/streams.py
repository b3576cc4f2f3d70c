"""Data that evolves: a stream of experiences, and each experience's split between the cloud and the edges.

* ``class-incremental``: the classes are shuffled with the seed and dealt into ``num_experiences`` groups; experience
  ``e`` brings the training images of group ``e``; its test set holds every class seen so far.
* ``iid``: every experience brings a fresh, disjoint share of the training images of all classes (more data over
  time, same distribution); the test set is the whole test split.

Within an experience, a seeded ``cloud_share`` of the new images stays with the cloud (which keeps everything it
has seen), and the rest is partitioned over the edge clients (IID or Dirichlet label skew).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from meanet_core.data import DatasetSplits, ImageTensors, data_dir_from_env, load_dataset, partition
from meanet_core.data.datasets import split_indices
from meanet_core.data.sources import SourceArrays, read_arrays


class StreamSpec(Protocol):
    """What a stream is built from: the fields of :class:`meanet_core.config.FederationConfig` it reads (the data
    room does not import the config, so that imports run one way)."""

    def __hash__(self) -> int: ...  # streams are cached per config
    @property
    def dataset(self) -> str: ...
    @property
    def data_dir(self) -> str: ...
    @property
    def stream(self) -> str: ...
    @property
    def experiences(self) -> int: ...
    @property
    def num_clients(self) -> int: ...
    @property
    def partition(self) -> str: ...
    @property
    def alpha(self) -> float: ...
    @property
    def cloud_share(self) -> float: ...
    @property
    def seed(self) -> int: ...
    @property
    def val_fraction(self) -> float: ...
    @property
    def limit_train(self) -> int | None: ...


STREAMS = ("class-incremental", "iid")


@dataclass(frozen=True)
class Experience:
    index: int
    classes: tuple[int, ...]  # classes whose training images arrive in this experience
    seen_classes: tuple[int, ...]  # every class that has arrived so far
    cloud: ImageTensors  # the cloud's new images
    edge: tuple[np.ndarray, ...]  # per client: indices into ``edge_pool``
    edge_pool: ImageTensors  # the edges' new images
    test: ImageTensors  # test images of the seen classes
    val: ImageTensors  # validation images of the seen classes (the cloud's, for the hard split)

    def client_data(self, client: int) -> ImageTensors:
        if not 0 <= client < len(self.edge):
            raise ValueError(f"client index must lie in 0..{len(self.edge) - 1}; got {client}")
        return self.edge_pool.subset(self.edge[client])


@dataclass(frozen=True)
class ExperiencePlan:
    """An experience as positions only (what :func:`plan_stream` decides from the labels alone)."""

    index: int
    classes: tuple[int, ...]
    seen_classes: tuple[int, ...]
    cloud: np.ndarray  # positions in the train split of the cloud's new images
    pool: np.ndarray  # positions in the train split of the edges' new images
    edge: tuple[np.ndarray, ...]  # per client: positions in ``pool``


def of_classes(labels: np.ndarray, classes: Sequence[int] | np.ndarray) -> np.ndarray:
    """The positions of the labels that are one of ``classes``, in order."""
    return np.flatnonzero(np.isin(labels, np.asarray(classes)))


def plan_stream(
    train_labels: np.ndarray,
    num_classes: int,
    *,
    kind: str = "class-incremental",
    num_experiences: int = 2,
    num_clients: int = 2,
    cloud_share: float = 0.5,
    partition_scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
) -> list[ExperiencePlan]:
    """:func:`make_stream`'s decisions from the training labels alone: which images each experience brings, which
    stay with the cloud, and each edge's share. Milliseconds, even for CIFAR-100: an edge computes it rather than
    building (or caching) the whole stream."""
    if kind not in STREAMS:
        raise ValueError(f"unknown stream {kind!r}; valid: {', '.join(STREAMS)}")
    if not 1 <= num_experiences <= num_classes:
        raise ValueError(f"num_experiences must lie in 1..{num_classes}; got {num_experiences}")
    if not 0.0 < cloud_share < 1.0:
        raise ValueError(f"cloud_share must lie in (0, 1): both the cloud and the edges need data; got {cloud_share}")
    labels = np.asarray(train_labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    if kind == "class-incremental":
        groups = np.array_split(rng.permutation(num_classes), num_experiences)
        chunks = [of_classes(labels, g) for g in groups]
    else:
        groups = [np.arange(num_classes)] * num_experiences
        order = rng.permutation(len(labels))
        chunks = [np.sort(part) for part in np.array_split(order, num_experiences)]
    plans = []
    seen: list[int] = []
    for e, (group, chunk) in enumerate(zip(groups, chunks, strict=True)):
        seen = sorted(set(seen) | {int(c) for c in group})
        order = rng.permutation(len(chunk))
        n_cloud = round(cloud_share * len(chunk))
        cloud, pool = chunk[np.sort(order[:n_cloud])], chunk[np.sort(order[n_cloud:])]
        parts = partition(labels[pool], num_clients, partition_scheme, alpha=alpha, seed=seed * 1000 + e)
        plans.append(ExperiencePlan(e, tuple(int(c) for c in group), tuple(seen), cloud, pool, tuple(parts)))
    return plans


def eval_shard(test_labels: np.ndarray, client: int, num_clients: int, seed: int, experience: int) -> np.ndarray:
    """The positions, among an experience's test images (their labels ``test_labels``), of ``client``'s shard:
    an IID split over the clients, seeded by the experience."""
    return partition(test_labels, num_clients, "iid", seed=seed + 7919 * experience)[client]


def own_test_shard(test_labels: np.ndarray, held_labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` positions among the test images (labels ``test_labels``) in the class proportions of the labels an
    edge holds (``held_labels``): its own distribution, for a label-skewed fleet. Each class's images are taken in a
    seeded order, repeated when the edge's share of a class outnumbers its test images; classes without test images
    are left out and the others scaled up."""
    test_labels, held = np.asarray(test_labels, dtype=np.int64), np.asarray(held_labels, dtype=np.int64)
    classes, counts = np.unique(held, return_counts=True)
    present = np.isin(classes, test_labels)
    classes, counts = classes[present], counts[present]
    if size < 1 or len(classes) == 0:
        return np.zeros(0, dtype=np.int64)
    quota = np.floor(size * counts / counts.sum()).astype(np.int64)
    rest = np.argsort(-(size * counts / counts.sum() - quota), kind="stable")[: size - int(quota.sum())]
    quota[rest] += 1  # largest remainders: exactly ``size`` in all
    rng = np.random.default_rng(seed)
    picks = []
    for c, k in zip(classes, quota, strict=True):
        if k:
            idx = rng.permutation(np.flatnonzero(test_labels == c))
            picks.append(np.resize(idx, int(k)))
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, dtype=np.int64)


def make_stream(splits: DatasetSplits, **options: Any) -> list[Experience]:
    """Split ``splits`` into experiences, each divided between the cloud and the edges; ``options`` are
    :func:`plan_stream`'s (``kind``, ``num_experiences``, ``num_clients``, ``cloud_share``, ``partition_scheme``,
    ``alpha``, ``seed``)."""
    return _materialize(splits, plan_stream(splits.train.y.numpy(), splits.num_classes, **options))


def _materialize(splits: DatasetSplits, plans: list[ExperiencePlan]) -> list[Experience]:
    return [
        Experience(
            index=p.index,
            classes=p.classes,
            seen_classes=p.seen_classes,
            cloud=splits.train.subset(p.cloud),
            edge=p.edge,
            edge_pool=splits.train.subset(p.pool),
            test=splits.test.subset(of_classes(splits.test.y.numpy(), p.seen_classes)),
            val=splits.val.subset(of_classes(splits.val.y.numpy(), p.seen_classes)),
        )
        for p in plans
    ]


def concat(parts: list[ImageTensors]) -> ImageTensors:
    return ImageTensors(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))


def _plan(cfg: StreamSpec, train_labels: np.ndarray, num_classes: int) -> list[ExperiencePlan]:
    return plan_stream(
        train_labels, num_classes, kind=cfg.stream, num_experiences=cfg.experiences, num_clients=cfg.num_clients,
        cloud_share=cfg.cloud_share, partition_scheme=cfg.partition, alpha=cfg.alpha, seed=cfg.seed,
    )  # fmt: skip


@lru_cache(maxsize=2)
def stream_for(cfg: StreamSpec) -> tuple[DatasetSplits, tuple[Experience, ...]]:
    """The dataset and its stream, built the same way on the server and every client (same seed)."""
    splits = load_dataset(
        cfg.dataset,
        data_dir=cfg.data_dir or None,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        limit_train=cfg.limit_train or None,
    )
    plans = _plan(cfg, splits.train.y.numpy(), splits.num_classes)
    return splits, tuple(_materialize(splits, plans))


@lru_cache(maxsize=2)
def _planned(cfg: StreamSpec) -> tuple[SourceArrays, np.ndarray, list[ExperiencePlan]]:
    """The source (memory-mapped when cached), the train split's positions in it, and the stream's plan: what
    :func:`edge_slice` needs, kept per process (a simulation worker handles many messages)."""
    folder = Path(cfg.data_dir).expanduser() if cfg.data_dir else data_dir_from_env()
    defaults = inspect.signature(load_dataset).parameters  # read as stream_for's load_dataset reads it
    raw = read_arrays(
        cfg.dataset, folder, download=defaults["download"].default, image_size=defaults["image_size"].default,
        bad_images=defaults["bad_images"].default,
    )  # fmt: skip
    train_idx, _ = split_indices(raw.y_train, cfg.val_fraction, cfg.seed, cfg.limit_train or None)
    return raw, train_idx, _plan(cfg, raw.y_train[train_idx], len(raw.class_names))


@dataclass(frozen=True)
class EdgeView:
    """What an edge needs to build its model and run a round: the class count, normalisation, and the images."""

    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    data: ImageTensors


def edge_slice(cfg: StreamSpec, experience: int, client: int, purpose: str) -> EdgeView:
    """Edge ``client``'s images of ``experience``: its partition of the new training images (``purpose="train"``,
    :meth:`Experience.client_data`) or its shard of the test images of the classes seen so far (``"evaluate"``,
    :func:`eval_shard`), exactly what :func:`stream_for` would give, without building the stream.

    A ClientApp process handles one message (Flower's deployment engine starts one per message), so it plans the
    stream from the labels (:func:`plan_stream`) and reads only its own rows of the source, memory-mapped from the
    decoded-data cache (:mod:`meanet_core.data.cache`): tens of milliseconds instead of the whole dataset's seconds.
    """
    if purpose not in ("train", "evaluate"):
        raise ValueError(f"purpose must be 'train' or 'evaluate'; got {purpose!r}")
    if not 0 <= experience < cfg.experiences:
        raise ValueError(f"experience must lie in 0..{cfg.experiences - 1}; got {experience}")
    if not 0 <= client < cfg.num_clients:
        raise ValueError(f"client index must lie in 0..{cfg.num_clients - 1}; got {client}")
    raw, train_idx, plans = _planned(cfg)
    plan = plans[experience]
    if purpose == "train":
        data = raw.images("train", train_idx[plan.pool[plan.edge[client]]])
    else:
        seen = of_classes(raw.y_test, plan.seen_classes)
        shard = eval_shard(raw.y_test[seen], client, cfg.num_clients, cfg.seed, experience)
        if cfg.partition != "iid":  # a label-skewed fleet: each edge is scored on its own class proportions
            held = np.concatenate([raw.y_train[train_idx[p.pool[p.edge[client]]]] for p in plans[: experience + 1]])
            shard = own_test_shard(raw.y_test[seen], held, len(shard), cfg.seed * 7919 + client * 104729 + experience)
        data = raw.images("test", seen[shard])
    return EdgeView(len(raw.class_names), tuple(raw.mean), tuple(raw.std), data)
