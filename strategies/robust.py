"""What the server can bound about a client it cannot trust: pure functions over numbers and dicts of numpy arrays.

A client that passes every structural check can still lie in two ways, and each has its bound here:

* **Its example count is a claim.** :func:`bound_claims` caps each claim by what the server can know: the count the
  same client reported earlier in the experience (an edge's data does not grow within one), a multiple of the median
  claim of the *other* clients of the round, and an absolute cap. With the example-weighted mean, a client that
  claims a million examples would otherwise pull the aggregate almost all the way to its own update.
* **Its update can point anywhere inside the norm bound.** :func:`round_norm_bound` derives the round's bound from
  the round's own distribution (a multiple of the lower median of the norm ratios), under the absolute ceiling
  ``max-norm-ratio``; then a robust rule chooses what to trust: :func:`multi_krum` (Flower's own selection maths) or
  :func:`fltrust`, which scores each update by its cosine with a reference update the server computed on its own
  clean data (Cao et al., *FLTrust*, NDSS 2021) and so holds against colluding clients too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.serverapp.strategy.multikrum import select_multikrum

from strategies.aggregation import (
    AGGREGATORS,
    Arrays,
    WeightedUpdates,
    _cast_back,
    _check_consistent,
    _stack,
    trimmed_count,
    weighted_average,
)

RULES: tuple[str, ...] = ("mean", "median", "trimmed-mean", "multi-krum", "fltrust")
"""Every aggregation rule :class:`~strategies.MEANetStrategy` knows, by its run-config name."""


# ----------------------------------------------------------------------------------------- example counts
@dataclass(frozen=True)
class Claim:
    """One client's example count as claimed and as the server lets it weigh."""

    claimed: float
    allowed: float
    reason: str | None = None
    """Why the claim was clipped (``None``: taken as claimed)."""


def bound_claims(
    claims: Sequence[float],
    previous: Sequence[float | None] | None = None,
    *,
    median_factor: float | None = 3.0,
    cap: float | None = None,
) -> list[Claim]:
    """Bound each client's example count by what the server can know; the weight it may carry is ``allowed``.

    Parameters
    ----------
    claims
        The ``num-examples`` each client of the round reported (finite, >= 0: the strategy checked them).
    previous
        Per client, the count it reported earlier in the same experience (``None``: none yet). An edge's local data
        is fixed within an experience, so an honest count does not grow: a larger claim is clipped to the earlier one.
    median_factor
        A claim may be at most this multiple of the median claim of the *other* clients (leave-one-out, so a liar
        cannot raise its own bound); ``None`` or ``0`` turns the rule off. Needs at least one other client.
    cap
        An absolute cap on any claim (``None`` or ``0``: none).

    Raises
    ------
    ValueError
        If ``previous`` has another length than ``claims``, or a factor or cap is negative or not finite.
    """
    for name, value in (("median_factor", median_factor), ("cap", cap)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0 (0 or None: off); got {value!r}")
    if previous is not None and len(previous) != len(claims):
        raise ValueError(f"previous has {len(previous)} entries for {len(claims)} claims; expected one per claim")
    out: list[Claim] = []
    for i, claimed in enumerate(claims):
        allowed, reasons = float(claimed), []
        if cap and allowed > cap:
            allowed = float(cap)
            reasons.append(f"above the cap max-claim={cap:g}")
        if median_factor and len(claims) > 1:
            others = float(np.median([c for j, c in enumerate(claims) if j != i]))
            if allowed > median_factor * others:
                allowed = median_factor * others
                reasons.append(f"above {median_factor:g} x the other clients' median claim ({others:g})")
        before = previous[i] if previous is not None else None
        if before is not None and allowed > before:
            allowed = float(before)
            reasons.append(f"above its own earlier claim in this experience ({before:g})")
        reason = f"claimed {claimed:g} examples, weighed as {allowed:g}: " + "; ".join(reasons) if reasons else None
        out.append(Claim(float(claimed), allowed, reason))
    return out


# ----------------------------------------------------------------------------------------- norm bound
def lower_median(values: Sequence[float]) -> float:
    """The lower median (the middle value, the smaller of the two middle ones for an even count): with two values
    it is the smaller one, so one of two clients cannot raise a bound derived from it."""
    if not values:
        raise ValueError("lower_median of no values")
    ordered = sorted(values)
    return float(ordered[(len(ordered) - 1) // 2])


def round_norm_bound(ratios: Sequence[float], *, factor: float | None, ceiling: float | None) -> float | None:
    """The round's norm bound: ``factor`` x the lower median of the round's norm ratios, never above ``ceiling``.

    ``ratios`` are the ``||update - sent|| / ||sent||`` of the round's structurally valid updates. ``factor`` ``None``
    (or 0) or no ratio leaves the absolute ``ceiling`` alone, and so does a median of 0 (most edges sent back what
    they received, e.g. with nothing to train on: a bound of 0 would refuse every edge that did train);
    ``ceiling`` ``None`` means no absolute bound. Returns ``None`` when neither applies (no bound at all).
    """
    if not factor or not ratios or lower_median(ratios) <= 0:
        return ceiling
    relative = factor * lower_median(ratios)
    return relative if ceiling is None else min(relative, ceiling)


# ----------------------------------------------------------------------------------------- robust rules
def multi_krum(updates: Sequence[Mapping[str, npt.NDArray[Any]]], num_malicious: int, num_select: int) -> list[int]:
    """Indices of the updates Multi-Krum selects (Blanchard et al. 2017), with Flower's own selection maths.

    Each update is scored by the sum of its squared distances to its ``n - f - 2`` nearest neighbours; the
    ``num_select`` lowest scores are kept (``num_select = 1`` is Krum). Flower's
    :func:`~flwr.serverapp.strategy.multikrum.select_multikrum` does the work; this wrapper gives it dicts of arrays
    and returns positions, so the caller aggregates the selection with its own weights and dtype rules.

    Raises
    ------
    ValueError
        If ``updates`` is empty or disagree on keys/shapes, or ``num_select`` is not in ``1..len(updates)``.
    """
    _check_consistent([(u, 1.0) for u in updates])
    if not 1 <= num_select <= len(updates):
        raise ValueError(f"num_select must lie in 1..{len(updates)} (the updates); got {num_select}")
    contents = [
        RecordDict({"arrays": ArrayRecord({k: Array(np.asarray(v, dtype=np.float64)) for k, v in u.items()})})
        for u in updates
    ]
    selected = select_multikrum(contents, max(0, num_malicious), num_select)
    ids = {id(c): i for i, c in enumerate(contents)}
    return sorted(ids[id(c)] for c in selected)


def _floating_delta(update: Mapping[str, npt.NDArray[Any]], sent: Mapping[str, npt.NDArray[Any]]) -> np.ndarray:
    """``update - sent`` over the floating entries, flattened in key order (float64)."""
    parts = [
        (np.asarray(update[k], dtype=np.float64) - np.asarray(sent[k], dtype=np.float64)).ravel()
        for k in sorted(sent)
        if np.issubdtype(np.asarray(sent[k]).dtype, np.floating)
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


def trust_scores(
    updates: Sequence[Mapping[str, npt.NDArray[Any]]],
    reference: Mapping[str, npt.NDArray[Any]],
    sent: Mapping[str, npt.NDArray[Any]],
) -> list[float]:
    """FLTrust's trust score of each update: ``max(0, cos(update - sent, reference - sent))``."""
    ref = _floating_delta(reference, sent)
    ref_norm = float(np.linalg.norm(ref))
    scores = []
    for u in updates:
        delta = _floating_delta(u, sent)
        norm = float(np.linalg.norm(delta))
        scores.append(0.0 if norm == 0 or ref_norm == 0 else max(0.0, float(delta @ ref) / (norm * ref_norm)))
    return scores


def fltrust(
    updates: WeightedUpdates,
    reference: Mapping[str, npt.NDArray[Any]],
    sent: Mapping[str, npt.NDArray[Any]],
) -> tuple[Arrays, list[float]]:
    """FLTrust aggregation (Cao et al., NDSS 2021) of edge updates against the server's own reference update.

    Every update's change ``update - sent`` is clipped to the lower median of the changes' norms (so no client gains
    by a larger step; FLTrust rescales to the reference's norm, but the server's clean data is smaller than an edge's
    and would shrink every step), and the clipped changes are averaged with the trust scores (:func:`trust_scores`)
    as weights; example counts are ignored. An update pointing away from the reference gets weight 0, however many
    clients send it. Integer entries (BatchNorm counters) take the coordinate median. When every score is 0 the
    result is ``sent`` unchanged.

    Returns
    -------
    tuple[Arrays, list[float]]
        The aggregate (keys, shapes and dtypes of the updates) and the trust score of each update.

    Raises
    ------
    ValueError
        If ``updates`` is empty or disagree on keys/shapes, or ``reference``/``sent`` lack one of their keys.
    """
    keys = _check_consistent(updates)
    missing = [k for k in keys if k not in reference or k not in sent]
    if missing:
        raise ValueError(f"the reference update or the sent arrays lack {missing[:5]}; expected every update key")
    sent_edge = {k: np.asarray(sent[k]) for k in keys}
    scores = trust_scores([u for u, _ in updates], reference, sent_edge)
    norms = [float(np.linalg.norm(_floating_delta(u, sent_edge))) for u, _ in updates]
    step = lower_median(norms)
    total = sum(scores)
    out: Arrays = {}
    for key in keys:
        dtype = np.asarray(updates[0][0][key]).dtype
        if not np.issubdtype(dtype, np.floating):
            out[key] = _cast_back(np.median(_stack(updates, key), axis=0), dtype)
            continue
        base = sent_edge[key].astype(np.float64)
        if total == 0:
            out[key] = _cast_back(base, dtype)
            continue
        change = np.zeros_like(base)
        for (u, _), score, norm in zip(updates, scores, norms, strict=True):
            if score > 0 and norm > 0:
                change += score * min(1.0, step / norm) * (np.asarray(u[key], dtype=np.float64) - base)
        out[key] = _cast_back(base + change / total, dtype)
    return out, scores


# ----------------------------------------------------------------------------------------- one entry point
@dataclass(frozen=True)
class RuleResult:
    """What a rule made of a round's updates."""

    arrays: Arrays
    note: str = ""
    """What the rule did beyond averaging ('' if nothing), e.g. the trim or the Multi-Krum selection."""
    ignored: tuple[tuple[int, str], ...] = ()
    """``(position, reason)`` of each update the rule gave no weight."""
    scores: tuple[float, ...] = ()
    """FLTrust's trust score of each update (``fltrust`` only)."""


def apply_rule(
    rule: str,
    updates: WeightedUpdates,
    *,
    trim_fraction: float = 0.2,
    krum_malicious: int = 1,
    reference: Mapping[str, npt.NDArray[Any]] | None = None,
    sent: Mapping[str, npt.NDArray[Any]] | None = None,
) -> RuleResult:
    """Combine one round's accepted updates by ``rule`` (one of :data:`RULES`).

    ``mean`` and ``multi-krum`` use the weights (bounded claims); ``median``, ``trimmed-mean`` and ``fltrust`` ignore
    them. ``multi-krum`` tolerates ``f = min(krum_malicious, (n - 3) // 2)`` malicious updates and keeps ``n - f``
    (with fewer than 5 updates ``f`` is 0 and the rule is the mean, said in the note). ``fltrust`` needs the
    server's ``reference`` update and the ``sent`` arrays.

    Raises
    ------
    ValueError
        For an unknown rule, or ``fltrust`` without ``reference`` and ``sent``.
    """
    n = len(updates)
    if rule == "multi-krum":
        f = min(krum_malicious, max(0, (n - 3) // 2))  # Krum needs n >= 2f + 3
        if f == 0:
            return RuleResult(weighted_average(updates), f"{n} updates: Krum needs 5 to hold one out; the mean")
        selected = multi_krum([u for u, _ in updates], f, n - f)
        ignored = tuple(
            (i, f"not among the {n - f} updates Multi-Krum selected (f={f})") for i in range(n) if i not in selected
        )
        return RuleResult(
            weighted_average([updates[i] for i in selected]), f"Multi-Krum kept {n - f} of {n} (f={f})", ignored
        )
    if rule == "fltrust":
        if reference is None or sent is None:
            raise ValueError("fltrust needs the server's reference update and the sent arrays")
        arrays, scores = fltrust(updates, reference, sent)
        ignored = tuple(
            (i, "FLTrust trust score 0: its change points away from the server's reference update")
            for i, score in enumerate(scores)
            if score == 0
        )
        return RuleResult(arrays, "trust scores " + ", ".join(f"{x:.2f}" for x in scores), ignored, tuple(scores))
    if rule not in AGGREGATORS:
        raise ValueError(f"unknown aggregation rule {rule!r}; expected one of {', '.join(RULES)}")
    note = ""
    if rule == "trimmed-mean":
        k = trimmed_count(n, trim_fraction)
        note = f"trimmed {k} from each end of {n}" if k else f"{n} updates: nothing can be trimmed, a plain mean"
    return RuleResult(AGGREGATORS[rule](updates, trim_fraction), note)
