"""Cost of a route (MACs, bytes, energy, latency): the edge runtime's :mod:`meanet_edge.cost`, which the torch
engine shares (one cost model on the device and in the evaluations)."""

from meanet_edge.cost import CostConfig, RouteLatency, time_per_call

__all__ = ["CostConfig", "RouteLatency", "time_per_call"]
