"""Strategies for unit tests of one mechanism at a time."""

from __future__ import annotations

from typing import Any

from strategies import MEANetStrategy

PLAIN: dict[str, Any] = {"aggregation": "mean", "max_norm_ratio": None, "norm_bound_factor": None, "claim_factor": None}
"""The example-weighted mean with no bound: what a test of validation, merging or metrics compares against (the
bare ``MEANetStrategy()`` is the safe one: trimmed mean, the round's norm bound, bounded claims)."""


def plain_strategy(**settings: Any) -> MEANetStrategy:
    """A :class:`MEANetStrategy` with :data:`PLAIN` settings, overridden by ``settings``."""
    return MEANetStrategy(**{**PLAIN, **settings})
