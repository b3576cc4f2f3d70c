"""Flower server strategies for MEANet-FL, and their aggregation maths as pure functions.

:class:`MEANetStrategy` aggregates the edges' adaptive and extension blocks and keeps the cloud's main block as
sent; :class:`SignedMEANetStrategy` signs every broadcast. :mod:`strategies.aggregation` holds the validation and
averaging rules over plain numpy dicts, :mod:`strategies.robust` what bounds a lying client (claims, the round's
norm bound, Multi-Krum, FLTrust), :mod:`strategies.broadcasts` the delta broadcasts, :mod:`strategies.replies` the
decoding of replies and the round's record.
"""

from strategies.aggregation import (
    AGGREGATORS,
    aggregate_metrics,
    coordinate_median,
    trimmed_count,
    trimmed_mean,
    validate_update,
    weighted_average,
)
from strategies.meanet_strategy import MEANetStrategy, TrainRoundReport
from strategies.robust import RULES, apply_rule, bound_claims, fltrust, multi_krum, round_norm_bound
from strategies.signed import SignedMEANetStrategy

__all__ = [
    "AGGREGATORS",
    "RULES",
    "MEANetStrategy",
    "SignedMEANetStrategy",
    "TrainRoundReport",
    "aggregate_metrics",
    "apply_rule",
    "bound_claims",
    "coordinate_median",
    "fltrust",
    "multi_krum",
    "round_norm_bound",
    "trimmed_count",
    "trimmed_mean",
    "validate_update",
    "weighted_average",
]
