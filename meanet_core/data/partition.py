"""Partitions of sample indices across federated clients: IID, or label-skewed by a Dirichlet draw.

Every partition is a list of ``num_clients`` sorted int64 index arrays that are pairwise disjoint and together
cover ``range(len(labels))``. The same ``seed`` always gives the same partition.
"""

from __future__ import annotations

import math

import numpy as np
import torch

PARTITION_SCHEMES: tuple[str, ...] = ("iid", "dirichlet")


def _as_labels(labels: np.ndarray | torch.Tensor) -> np.ndarray:
    array = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be a 1-D array of class ids; got shape {array.shape}")
    if array.size and array.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers; got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _check_clients(num_clients: int, n: int) -> None:
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)):
        raise ValueError(f"num_clients must be an integer; got {num_clients!r}")
    if not 1 <= num_clients <= n:
        raise ValueError(
            f"num_clients must lie in 1..{n} (every client needs at least one of the {n} samples); got {num_clients}"
        )


def iid_partition(labels: np.ndarray | torch.Tensor, num_clients: int, seed: int) -> list[np.ndarray]:
    """Shuffle the indices with ``seed`` and deal them into ``num_clients`` parts (sizes differ by <= 1)."""
    y = _as_labels(labels)
    _check_clients(num_clients, len(y))
    perm = np.random.default_rng(seed).permutation(len(y))
    return [np.sort(part).astype(np.int64) for part in np.array_split(perm, num_clients)]


def dirichlet_partition(
    labels: np.ndarray | torch.Tensor,
    num_clients: int,
    alpha: float,
    seed: int,
    min_size: int = 1,
    *,
    max_attempts: int = 1000,
) -> list[np.ndarray]:
    """Label-skewed partition: each class is split over the clients in proportions drawn from Dir(alpha).

    Small ``alpha`` (e.g. 0.1) gives each client few classes; large ``alpha`` (e.g. 100) approaches IID.
    Draws are repeated until every client holds at least ``min_size`` samples, at most ``max_attempts`` times.
    """
    y = _as_labels(labels)
    _check_clients(num_clients, len(y))
    if not (isinstance(alpha, (int, float, np.floating)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a finite number > 0 (small = skewed, large = near IID); got {alpha!r}")
    if min_size < 0 or min_size * num_clients > len(y):
        raise ValueError(
            f"min_size must lie in 0..{len(y) // num_clients} for {len(y)} samples over {num_clients} "
            f"clients; got {min_size}"
        )
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1; got {max_attempts}")
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    sizes = np.zeros(num_clients, dtype=np.int64)
    for _ in range(max_attempts):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            shuffled = rng.permutation(idx)
            proportions = rng.dirichlet(np.full(num_clients, float(alpha)))
            cuts = (np.cumsum(proportions)[:-1] * len(shuffled)).astype(np.int64)
            for client, chunk in enumerate(np.split(shuffled, cuts)):
                parts[client].append(chunk)
        sizes = np.array([sum(len(c) for c in chunks) for chunks in parts], dtype=np.int64)
        if sizes.min() >= min_size:
            return [np.sort(np.concatenate(chunks)).astype(np.int64) for chunks in parts]
    raise ValueError(
        f"dirichlet_partition: after {max_attempts} draws with alpha={alpha}, some of the {num_clients} "
        f"clients still held fewer than {min_size} samples (last draw's smallest: {int(sizes.min())}); "
        "use a larger alpha, fewer clients, or a smaller min_size"
    )


def partition(
    labels: np.ndarray | torch.Tensor,
    num_clients: int,
    scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
) -> list[np.ndarray]:
    """Partition by ``scheme`` (``"iid"`` or ``"dirichlet"``; ``alpha`` only applies to the latter)."""
    if scheme == "iid":
        return iid_partition(labels, num_clients, seed)
    if scheme == "dirichlet":
        return dirichlet_partition(labels, num_clients, alpha, seed)
    raise ValueError(f"unknown partition scheme {scheme!r}; valid schemes: {', '.join(PARTITION_SCHEMES)}")
