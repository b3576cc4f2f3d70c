"""Aggregation maths for MEANet-FL as pure functions over dicts of numpy arrays: no Flower, no Grid.

An *update* is one client's reply decoded to ``{state-dict key: numpy array}``; it holds only the edge blocks'
entries (``adaptive.*`` and ``extension.*``, parameters and BatchNorm buffers). Aggregators take a list of
``(update, weight)`` pairs, where the weight is the number of examples the client trained on, and return one update
with the same keys, shapes and dtypes.

Dtype rules, shared by every aggregator:

* floating arrays are combined in float64 and cast back to their own dtype;
* integer arrays (BatchNorm's ``num_batches_tracked``) are combined the same way and then **rounded to the nearest
  integer** (``np.rint``) before the cast back: the weighted mean of the clients' counters for :func:`weighted_average`,
  their median for :func:`coordinate_median`, their trimmed mean for :func:`trimmed_mean`. Every client starts from the
  counter the server sent, so this is the "typical" count after one round of local training;
* boolean arrays become the (weighted) majority vote.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from meanet_core.keys import EDGE_PREFIXES, MAIN_PREFIX, in_scope

Arrays = dict[str, npt.NDArray[Any]]
"""One update: state-dict key -> numpy array."""

WeightedUpdates = Sequence[tuple[Mapping[str, npt.NDArray[Any]], float]]
"""``(update, weight)`` pairs, the weight being the number of examples the client trained on."""

MetricValue = float | list[float]
"""An aggregated metric: a scalar, or a list aggregated element by element."""

_MAX_PROBLEMS = 5  # reasons list at most this many problems, then "... and N more"


# ----------------------------------------------------------------------------------------- validation
def validate_update(
    update: Mapping[str, npt.NDArray[Any]],
    reference: Mapping[str, npt.NDArray[Any]],
    *,
    max_norm_ratio: float | None,
    eps: float = 1e-12,
    scope: str = "edge",
) -> str | None:
    """Check one client's update against the edge arrays the server sent it (``scope="edge"``), or against the main
    block it sent in a main round (``scope="main"``: ``main.*`` keys only, then).

    Parameters
    ----------
    update
        The client's arrays, by state-dict key. Only ``adaptive.*``/``extension.*`` keys are allowed.
    reference
        The arrays the server sent this round. It may be the full state dict: only its edge entries are compared
        (the update must carry exactly those keys, with the same shapes and dtypes).
    max_norm_ratio
        If given, reject the update when ``||update - reference||_2 > max_norm_ratio * (||reference||_2 + eps)``,
        both norms taken over all floating edge arrays together (parameters and floating BatchNorm statistics;
        integer counters are left out). ``None`` disables the check.
    eps
        Added to the reference norm so an all-zero reference does not reject every change by a division-like edge.

    Returns
    -------
    str | None
        ``None`` if the update is acceptable, else a human-readable reason naming the offending key(s) and what was
        expected. Several problems are joined with ``"; "``.

    Raises
    ------
    ValueError
        If ``max_norm_ratio`` is given but not a positive finite number.
    """
    if max_norm_ratio is not None and not (math.isfinite(max_norm_ratio) and max_norm_ratio > 0):
        raise ValueError(f"max_norm_ratio must be a positive finite number or None; got {max_norm_ratio!r}")
    expected = {k: v for k, v in reference.items() if in_scope(k, scope)}
    allowed = " or ".join(f"'{p}'" for p in (EDGE_PREFIXES if scope == "edge" else (MAIN_PREFIX,)))
    problems: list[str] = []

    for key in update:
        if in_scope(key, "main") and scope == "edge":
            problems.append(
                f"key '{key}' belongs to the main block, which an edge update may never touch "
                f"(expected only keys starting with {allowed})"
            )
        elif not in_scope(key, scope):
            problems.append(f"unexpected key '{key}' (expected only keys starting with {allowed} in a {scope} round)")
        elif key not in expected:
            problems.append(f"unexpected key '{key}': not among the {len(expected)} {scope} arrays the server sent")

    missing = [k for k in expected if k not in update]
    if missing:
        problems.append(
            f"missing key(s) {_preview(missing)}: the update must carry all {len(expected)} {scope} arrays sent"
        )

    for key, ref in expected.items():
        if key not in update:
            continue
        arr = np.asarray(update[key])
        if arr.shape != ref.shape:
            problems.append(f"'{key}' has shape {tuple(arr.shape)}, expected {tuple(ref.shape)}")
        if arr.dtype != ref.dtype:
            problems.append(f"'{key}' has dtype {arr.dtype}, expected {ref.dtype}")
        if np.issubdtype(arr.dtype, np.inexact):
            bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
            if bad:
                problems.append(f"'{key}' has {bad} non-finite value(s) (NaN or inf) out of {arr.size}")

    if problems:
        return _join(problems)
    if max_norm_ratio is not None:
        return _check_norm(update, expected, max_norm_ratio, eps, scope)
    return None


def _norms(
    update: Mapping[str, npt.NDArray[Any]], expected: Mapping[str, npt.NDArray[Any]], scope: str = "edge"
) -> tuple[float, float, str, float]:
    """``(||update - sent||, ||sent||, key of the largest change, that change)`` over the floating arrays of
    ``scope``."""
    diff_sq = 0.0
    ref_sq = 0.0
    largest_key, largest = "", -1.0
    for key, ref in expected.items():
        if not in_scope(key, scope) or not np.issubdtype(ref.dtype, np.floating):
            continue
        ref64 = ref.astype(np.float64)
        key_sq = float(np.sum(np.square(np.asarray(update[key], dtype=np.float64) - ref64)))
        diff_sq += key_sq
        ref_sq += float(np.sum(np.square(ref64)))
        if key_sq > largest:
            largest_key, largest = key, key_sq
    return math.sqrt(diff_sq), math.sqrt(ref_sq), largest_key, math.sqrt(max(largest, 0.0))


def update_norm_ratio(
    update: Mapping[str, npt.NDArray[Any]],
    reference: Mapping[str, npt.NDArray[Any]],
    eps: float = 1e-12,
    scope: str = "edge",
) -> float:
    """``||update - sent|| / (||sent|| + eps)`` over the floating arrays of ``scope`` (the edge arrays by default):
    how far an update moved, relatively.

    The update must already have passed :func:`validate_update`'s structural checks (every edge key of
    ``reference``, same shapes); this is the number the norm bound ``max_norm_ratio`` is compared with.
    """
    diff_norm, ref_norm, _, _ = _norms(update, reference, scope)
    return diff_norm / (ref_norm + eps)


def _check_norm(
    update: Mapping[str, npt.NDArray[Any]],
    expected: Mapping[str, npt.NDArray[Any]],
    max_norm_ratio: float,
    eps: float,
    scope: str,
) -> str | None:
    """The norm-bound part of :func:`validate_update` (keys, shapes and dtypes already checked)."""
    diff_norm, ref_norm, largest_key, largest = _norms(update, expected, scope)
    bound = max_norm_ratio * (ref_norm + eps)
    if diff_norm > bound:
        return (
            f"update norm ||update - sent|| = {diff_norm:.4g} exceeds max_norm_ratio {max_norm_ratio:g} "
            f"x ||sent|| ({ref_norm:.4g}) = {bound:.4g} (ratio {diff_norm / (ref_norm + eps):.4g}); "
            f"the largest change is in '{largest_key}' ({largest:.4g}); if honest edges are dropped like this, "
            "raise max-norm-ratio (or lower lr / local-epochs)"
        )
    return None


# ----------------------------------------------------------------------------------------- array aggregators
def weighted_average(updates: WeightedUpdates) -> Arrays:
    """Average the updates entry by entry, weighted by their example counts (FedAvg).

    Floating arrays are averaged in float64 and cast back; integer arrays (``num_batches_tracked``) get the
    weighted mean rounded to the nearest integer; boolean arrays the weighted majority (see the module docstring).

    Raises
    ------
    ValueError
        If ``updates`` is empty, the updates disagree on keys or shapes, or a weight is negative or not finite, or
        all weights are zero.
    """
    keys = _check_consistent(updates)
    weights = _normalized_weights([w for _, w in updates])
    out: Arrays = {}
    for key in keys:
        stacked = _stack(updates, key)
        out[key] = _cast_back(np.tensordot(weights, stacked, axes=1), updates[0][0][key].dtype)
    return out


def coordinate_median(updates: WeightedUpdates) -> Arrays:
    """Coordinate-wise median of the updates (FedMedian, Yin et al. 2018): robust to a minority of outliers.

    The weights are **ignored** on purpose: a robust rule must not let one client buy influence by overstating its
    example count. They are accepted so that every aggregator has the same signature. With an even number of
    updates the median is the mean of the two middle values.

    Raises
    ------
    ValueError
        If ``updates`` is empty or the updates disagree on keys or shapes.
    """
    keys = _check_consistent(updates)
    return {key: _cast_back(np.median(_stack(updates, key), axis=0), updates[0][0][key].dtype) for key in keys}


def trimmed_count(num_updates: int, trim_fraction: float) -> int:
    """How many values :func:`trimmed_mean` drops from *each* end.

    ``floor(trim_fraction * num_updates)``, but at least one when ``trim_fraction > 0`` and there are at least three
    updates (so 0.2 with four clients trims one from each end instead of nothing; three clients give the median).
    With one or two updates nothing can be trimmed (the strategy logs it); ``trim_fraction = 0`` never trims.
    """
    if not 0.0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must lie in [0, 0.5); got {trim_fraction!r}")
    if trim_fraction == 0 or num_updates < 3:
        return 0
    return max(1, min(int(trim_fraction * num_updates), (num_updates - 1) // 2))


def trimmed_mean(updates: WeightedUpdates, trim_fraction: float) -> Arrays:
    """Coordinate-wise trimmed mean (FedTrimmedAvg, Yin et al. 2018): robust to a minority of outliers.

    At every coordinate, the :func:`trimmed_count` smallest and largest values are dropped and the rest averaged
    without weights (weights are ignored, as in :func:`coordinate_median`). With one or two updates nothing can be
    trimmed, and the result is then the plain unweighted mean.

    Raises
    ------
    ValueError
        If ``trim_fraction`` is outside ``[0, 0.5)``, ``updates`` is empty, or the updates disagree on keys or shapes.
    """
    k = trimmed_count(len(updates), trim_fraction)
    keys = _check_consistent(updates)
    n = len(updates)
    out: Arrays = {}
    for key in keys:
        ordered = np.sort(_stack(updates, key), axis=0)
        out[key] = _cast_back(np.mean(ordered[k : n - k], axis=0), updates[0][0][key].dtype)
    return out


# ----------------------------------------------------------------------------------------- metrics
def aggregate_metrics(metrics: Sequence[tuple[Mapping[str, float | Sequence[float]], float]]) -> dict[str, MetricValue]:
    """Average metrics weighted by example counts.

    Each metric is averaged over the replies that report it, with the weights of those replies renormalised (a
    metric only some clients report is still averaged correctly). List-valued metrics are averaged element by
    element and must have the same length in every reply. Values come back as ``float`` (or ``list[float]``).
    Leave the weight entry (``num-examples``) out of the dicts: averaging it means nothing.

    Raises
    ------
    ValueError
        If a weight is negative or not finite, the weights of a metric's replies sum to zero, or a metric is a scalar
        in one reply and a list (or a list of another length) in another.
    """
    weights = [float(w) for _, w in metrics]
    for w in weights:
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"metric weights must be finite and >= 0 (example counts); got {weights}")
    names: list[str] = []
    for values, _ in metrics:
        names.extend(k for k in values if k not in names)

    out: dict[str, MetricValue] = {}
    for name in names:
        rows = [(values[name], w) for (values, _), w in zip(metrics, weights, strict=True) if name in values]
        total = sum(w for _, w in rows)
        if total <= 0:
            raise ValueError(f"metric '{name}': the replies reporting it have a total weight of {total}; expected > 0")
        first = rows[0][0]
        if isinstance(first, Sequence):
            length = len(first)
            if any(not isinstance(v, Sequence) or len(v) != length for v, _ in rows):
                raise ValueError(
                    f"metric '{name}' must be a list of length {length} in every reply that reports it; "
                    f"got {[v for v, _ in rows]}"
                )
            acc = [0.0] * length
            for v, w in rows:
                assert isinstance(v, Sequence)  # checked above
                for i, x in enumerate(v):
                    acc[i] += float(x) * w / total
            out[name] = acc
        else:
            if any(isinstance(v, Sequence) for v, _ in rows):
                raise ValueError(f"metric '{name}' is a scalar in some replies and a list in others")
            out[name] = float(sum(float(v) * w for v, w in rows if not isinstance(v, Sequence)) / total)
    return out


AGGREGATORS: dict[str, Callable[[WeightedUpdates, float], Arrays]] = {
    "mean": lambda updates, _trim: weighted_average(updates),
    "median": lambda updates, _trim: coordinate_median(updates),
    "trimmed-mean": trimmed_mean,
}
"""Aggregation methods by name, as ``fn(updates, trim_fraction)`` (the trim fraction matters to trimmed-mean only)."""


# ----------------------------------------------------------------------------------------- helpers
def _check_consistent(updates: WeightedUpdates) -> list[str]:
    """Keys of the first update, after checking every update has the same keys and shapes."""
    if not updates:
        raise ValueError("cannot aggregate an empty list of updates; expected at least one (update, weight) pair")
    first = updates[0][0]
    keys = list(first)
    for i, (arrays, _) in enumerate(updates[1:], start=1):
        if set(arrays) != set(keys):
            missing = [k for k in keys if k not in arrays]
            extra = [k for k in arrays if k not in first]
            raise ValueError(
                f"update {i} has different keys from update 0: missing {_preview(missing)}, extra {_preview(extra)}"
            )
        for key in keys:
            if np.shape(arrays[key]) != np.shape(first[key]):
                raise ValueError(
                    f"update {i}: '{key}' has shape {np.shape(arrays[key])}, update 0 has {np.shape(first[key])}"
                )
    return keys


def _normalized_weights(weights: Sequence[float]) -> npt.NDArray[np.float64]:
    """Weights divided by their sum, after checking they are finite, non-negative and not all zero."""
    w = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"weights must be finite and >= 0 (example counts); got {list(weights)}")
    total = float(w.sum())
    if total <= 0:
        raise ValueError(f"weights sum to {total}; expected a positive total number of examples")
    return w / total


def _stack(updates: WeightedUpdates, key: str) -> npt.NDArray[Any]:
    """One entry of every update stacked on a new leading axis, in float64 (complex128 for complex arrays)."""
    dtype = np.complex128 if np.issubdtype(np.asarray(updates[0][0][key]).dtype, np.complexfloating) else np.float64
    return np.stack([np.asarray(arrays[key], dtype=dtype) for arrays, _ in updates])


def _cast_back(value: npt.NDArray[Any], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """An aggregate computed in float64 back to the update's dtype (rounded for integers, majority for booleans)."""
    value = np.asarray(value)
    if np.issubdtype(dtype, np.inexact):
        return np.asarray(value.astype(dtype))
    if np.issubdtype(dtype, np.bool_):
        return np.asarray(value >= 0.5)
    return np.asarray(np.rint(value).astype(dtype))  # np.asarray: 0-d results stay arrays, not numpy scalars


def _preview(keys: Sequence[str], limit: int = 5) -> str:
    """``['a', 'b', ...]`` with at most ``limit`` names and a count of the rest."""
    shown = ", ".join(f"'{k}'" for k in keys[:limit])
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return f"[{shown}{more}]"


def _join(problems: Sequence[str]) -> str:
    """Problems joined with '; ', at most ``_MAX_PROBLEMS`` of them."""
    text = "; ".join(problems[:_MAX_PROBLEMS])
    if len(problems) > _MAX_PROBLEMS:
        text += f"; ... and {len(problems) - _MAX_PROBLEMS} more problem(s)"
    return text
