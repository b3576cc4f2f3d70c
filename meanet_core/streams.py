"""Data that evolves: a stream of experiences, and each experience's split between the cloud and the edges.

* ``class-incremental``: the classes are shuffled with the seed and dealt into ``num_experiences`` groups; experience
  ``e`` brings the training images of group ``e``; its test set holds every class seen so far.
* ``iid``: every experience brings a fresh, disjoint share of the training images of all classes (more data over
  time, same distribution); the test set is the whole test split.

Within an experience, a seeded ``cloud_share`` of the new images stays with the cloud (which keeps everything it
has seen), and the rest is partitioned over the edge clients (IID or Dirichlet label skew).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import torch

from meanet_core.data import DatasetSplits, ImageTensors, load_dataset, partition

if TYPE_CHECKING:
    from meanet_core.config import FederationConfig

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


def _of_classes(data: ImageTensors, classes: np.ndarray) -> ImageTensors:
    return data.subset(np.isin(data.y.numpy(), classes))


def make_stream(
    splits: DatasetSplits,
    *,
    kind: str = "class-incremental",
    num_experiences: int = 2,
    num_clients: int = 2,
    cloud_share: float = 0.5,
    partition_scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
) -> list[Experience]:
    """Split ``splits`` into experiences, each divided between the cloud and ``num_clients`` edges."""
    if kind not in STREAMS:
        raise ValueError(f"unknown stream {kind!r}; valid: {', '.join(STREAMS)}")
    if not 1 <= num_experiences <= splits.num_classes:
        raise ValueError(f"num_experiences must lie in 1..{splits.num_classes}; got {num_experiences}")
    if not 0.0 < cloud_share < 1.0:
        raise ValueError(f"cloud_share must lie in (0, 1): both the cloud and the edges need data; got {cloud_share}")
    rng = np.random.default_rng(seed)
    k = splits.num_classes
    if kind == "class-incremental":
        groups = np.array_split(rng.permutation(k), num_experiences)
        chunks = [_of_classes(splits.train, g) for g in groups]
    else:
        groups = [np.arange(k)] * num_experiences
        order = rng.permutation(len(splits.train))
        chunks = [splits.train.subset(np.sort(part)) for part in np.array_split(order, num_experiences)]
    experiences = []
    seen: list[int] = []
    for e, (group, chunk) in enumerate(zip(groups, chunks, strict=True)):
        seen = sorted(set(seen) | {int(c) for c in group})
        order = rng.permutation(len(chunk))
        n_cloud = round(cloud_share * len(chunk))
        cloud, pool = chunk.subset(np.sort(order[:n_cloud])), chunk.subset(np.sort(order[n_cloud:]))
        parts = partition(pool.y, num_clients, partition_scheme, alpha=alpha, seed=seed * 1000 + e)
        seen_arr = np.asarray(seen)
        experiences.append(
            Experience(
                index=e,
                classes=tuple(int(c) for c in group),
                seen_classes=tuple(seen),
                cloud=cloud,
                edge=tuple(parts),
                edge_pool=pool,
                test=_of_classes(splits.test, seen_arr),
                val=_of_classes(splits.val, seen_arr),
            )
        )
    return experiences


def concat(parts: list[ImageTensors]) -> ImageTensors:
    return ImageTensors(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))


@lru_cache(maxsize=2)
def stream_for(cfg: FederationConfig) -> tuple[DatasetSplits, tuple[Experience, ...]]:
    """The dataset and its stream, built the same way on the server and every client (same seed)."""
    splits = load_dataset(
        cfg.dataset,
        data_dir=cfg.data_dir or None,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        limit_train=cfg.limit_train or None,
    )
    stream = make_stream(
        splits,
        kind=cfg.stream,
        num_experiences=cfg.experiences,
        num_clients=cfg.num_clients,
        cloud_share=cfg.cloud_share,
        partition_scheme=cfg.partition,
        alpha=cfg.alpha,
        seed=cfg.seed,
    )
    return splits, tuple(stream)
