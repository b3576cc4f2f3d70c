"""Adaptive inference on an edge device outside federation rounds, with the full install: what ``meanet edge
predict`` runs on a ``.pt`` edge model (an edge package runs in :mod:`meanet_edge`, without torch).

A verified edge model (:func:`meanet_core.inference.edge_model.load_edge_model`) routes new inputs through
``AdaptiveEngine``: the main block on every input, the extension on those the policy sends there, the complex ones
to the cloud service (:class:`fl_client.offload.RemoteCloud`), or to nowhere (:class:`EdgeOnly`) when the device has
no cloud. The inputs, the CSV (one row per input, ``fallback=true`` where the cloud did not answer) and the summary
are the edge runtime's (:mod:`meanet_edge.inputs`, :mod:`meanet_edge.predict`, :mod:`meanet_edge.report`).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
import torch

from fl_client.offload import RemoteCloud
from meanet_core.inference.cost import CostConfig
from meanet_core.inference.edge_model import EdgeModel
from meanet_core.inference.engine import EXIT_CLOUD, AdaptiveEngine, CloudBackend, CloudReply, Predictions
from meanet_core.inference.policies import Policy
from meanet_core.models import MEANet
from meanet_core.training.memory import inference_batch
from meanet_edge.cloud import check_cloud_contract as check_contract
from meanet_edge.cloud import connect
from meanet_edge.inputs import Inputs
from meanet_edge.predict import predict_to_csv as run_to_csv
from meanet_edge.report import CSV_COLUMNS, PredictRun, format_summary
from meanet_edge.runtime import EdgePredictions

log = logging.getLogger("meanet.edge.predict")


# ------------------------------------------------------------------------------------------------ cloud backends
class EdgeOnly:
    """The cloud of a device that has none: every input the policy would offload stays on the edge, flagged as a
    fallback, and nothing is sent."""

    macs_per_image = 0

    def classify(self, images: torch.Tensor) -> CloudReply:
        n = int(images.shape[0])
        no = torch.zeros(n, dtype=torch.bool)
        return CloudReply(torch.zeros(n, dtype=torch.int64), no, sent=no)


class TimedCloud:
    """A cloud backend that measures the wall-clock seconds of its last call (the request's real round trip)."""

    def __init__(self, inner: CloudBackend) -> None:
        self.inner = inner
        self.macs_per_image = inner.macs_per_image
        self.seconds = 0.0

    def classify(self, images: torch.Tensor) -> CloudReply:
        t0 = time.perf_counter()
        try:
            return self.inner.classify(images)
        finally:
            self.seconds = time.perf_counter() - t0
            self.macs_per_image = self.inner.macs_per_image


def check_cloud_contract(info: dict[str, Any], edge: EdgeModel | MEANet, url: str) -> None:
    """Refuse a cloud service whose model takes other images or classes than the edge model (another run)."""
    model = edge.model if isinstance(edge, EdgeModel) else edge
    check_contract(info, model.input_size, model.num_classes, url)


def connect_cloud(url: str, edge: EdgeModel | MEANet, **options: Any) -> RemoteCloud:
    """A :class:`RemoteCloud` for ``edge`` (an exported edge model, or the MEANet of a federation's broadcast),
    checked once at the start (:func:`meanet_edge.cloud.connect`: a service that is down now is not an error; one
    that refuses, does not verify or serves another run's model is)."""
    model = edge.model if isinstance(edge, EdgeModel) else edge
    return connect(url, model.input_size, model.num_classes, RemoteCloud, **options)


# ------------------------------------------------------------------------------------------------ predicting
def predict_to_csv(
    edge: EdgeModel,
    inputs: Inputs,
    out: str | os.PathLike[str],
    *,
    policy: Policy,
    cloud: CloudBackend | None = None,
    cost: CostConfig | None = None,
    batch_size: int = 64,
    bad_images: str = "skip",
    progress: bool = True,
) -> PredictRun:
    """Route every input with the torch engine, write one CSV row per input to ``out`` (atomically), and summarise
    (the loop, the CSV and the summary are the edge runtime's: :func:`meanet_edge.predict.predict_to_csv`).

    ``latency_ms`` is measured, not modelled: the wall time of the input's batch on the edge, shared among its
    inputs in proportion to the MACs each ran (an input that also ran the extension costs more), plus, for inputs
    sent to the cloud, the wall time of the request that carried them (retries and a fallback's wait included).
    """
    bounded = inference_batch([edge.model], edge.model.input_size, batch_size)  # a large folder never exhausts it
    if bounded < batch_size:
        log.warning("batch of %d inputs lowered to %d: a larger one would not fit in memory", batch_size, bounded)
        batch_size = bounded
    timed = TimedCloud(cloud if cloud is not None else EdgeOnly())
    engine = AdaptiveEngine(edge.model, policy, timed, cost, optimize=True)

    def predict_batch(x: np.ndarray) -> EdgePredictions:
        timed.seconds, t0 = 0.0, time.perf_counter()
        pred = engine.predict(torch.from_numpy(x))
        edge_s = max(0.0, time.perf_counter() - t0 - timed.seconds)
        asked = (pred.exit == EXIT_CLOUD) | pred.fallback
        macs = pred.edge_macs.double()
        pred.latency_s = edge_s * macs / macs.sum() + asked.double() * timed.seconds
        return as_edge_predictions(pred, engine.main_macs)

    return run_to_csv(
        predict_batch, edge.class_names, inputs, out, policy=policy.as_dict(), batch_size=batch_size,
        bad_images=bad_images, progress=progress,
    )  # fmt: skip


def as_edge_predictions(pred: Predictions, main_macs: int) -> EdgePredictions:
    """The torch engine's predictions as the edge runtime's (numpy arrays); an input that ran more than the main
    block's ``main_macs`` ran the extension."""
    ran_extension = pred.edge_macs > main_macs
    return EdgePredictions(
        labels=pred.labels.numpy(), exit=pred.exit.numpy(), edge_macs=pred.edge_macs.numpy(),
        cloud_macs=pred.cloud_macs.numpy(), bytes_sent=pred.bytes_sent.numpy(), energy_joule=pred.energy_joule.numpy(),
        latency_s=pred.latency_s.numpy(), fallback=pred.fallback.numpy(),
        edge_confidence=pred.edge_confidence.numpy(), ran_extension=ran_extension.numpy(),
    )  # fmt: skip


__all__ = [
    "CSV_COLUMNS",
    "EdgeOnly",
    "PredictRun",
    "TimedCloud",
    "as_edge_predictions",
    "check_cloud_contract",
    "connect_cloud",
    "format_summary",
    "predict_to_csv",
]
