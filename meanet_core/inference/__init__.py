"""The inference room: what runs when an input arrives, and what it costs.

- :mod:`~meanet_core.inference.engine`: the adaptive engine (main block, extension only where needed, the cloud for
  complex inputs), each prediction with its exit and cost;
- :mod:`~meanet_core.inference.policies`: the routing policies (the paper's entropy rule, the calibrated one);
- :mod:`~meanet_core.inference.fastpath`: BatchNorm folded into convolutions, channels-last, for serving;
- :mod:`~meanet_core.inference.cost`: MACs, bytes, energy and latency of a route;
- :mod:`~meanet_core.inference.evaluation`: a trained run on the test set, its references and sweeps;
- :mod:`~meanet_core.inference.edge_model`, :mod:`~meanet_core.inference.export`: the signed edge model file a
  device loads, and ``meanet export`` that writes it.

Imports run one way: this room may import ``models``, ``data``, ``training`` and ``trust``; none of them imports it.
"""

from meanet_core.inference.cost import CostConfig
from meanet_core.inference.edge_model import EdgeModel, EdgeModelError, load_edge_model, write_edge_model
from meanet_core.inference.engine import EXIT_NAMES, AdaptiveEngine, CloudBackend, LocalCloud, Predictions
from meanet_core.inference.evaluation import evaluate, evaluate_routing, fit_calibrated
from meanet_core.inference.export import export
from meanet_core.inference.fastpath import optimize_for_inference
from meanet_core.inference.policies import CalibratedPolicy, PaperPolicy, Policy

__all__ = [
    "EXIT_NAMES",
    "AdaptiveEngine",
    "CalibratedPolicy",
    "CloudBackend",
    "CostConfig",
    "EdgeModel",
    "EdgeModelError",
    "LocalCloud",
    "PaperPolicy",
    "Policy",
    "Predictions",
    "evaluate",
    "evaluate_routing",
    "export",
    "fit_calibrated",
    "load_edge_model",
    "optimize_for_inference",
    "write_edge_model",
]
