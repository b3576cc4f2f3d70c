"""Flower server strategies for MEANet-FL, and their aggregation maths as pure functions.

:class:`MEANetStrategy` aggregates the edges' adaptive and extension blocks and keeps the cloud's main block as
sent; :mod:`strategies.aggregation` holds the validation and aggregation rules over plain numpy dicts.
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

__all__ = [
    "AGGREGATORS",
    "MEANetStrategy",
    "TrainRoundReport",
    "aggregate_metrics",
    "coordinate_median",
    "trimmed_count",
    "trimmed_mean",
    "validate_update",
    "weighted_average",
]
