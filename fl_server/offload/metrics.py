"""Metrics of the cloud offload service (:mod:`fl_server.offload.service`), in the operators' language.

``GET /metrics`` answers in the Prometheus text exposition format (``text/plain; version=0.0.4``; OpenMetrics when
the scraper asks for it), from a :class:`prometheus_client.CollectorRegistry` of the service's own, so several
services in one process (tests, a federation's loopback service) never share or collide on a metric:

* ``meanet_offload_requests_total`` (counter): requests replied to, by ``endpoint`` and HTTP ``status``;
* ``meanet_offload_request_duration_seconds`` (histogram): arrival -> reply of the requests answered 2xx, by
  ``endpoint`` (refused ones are in the errors);
* ``meanet_offload_images_total`` (counter): images classified, by the ``model_version`` that answered;
* ``meanet_offload_batch_images`` (histogram): images per model call (the micro-batches the batcher runs);
* ``meanet_offload_model_call_duration_seconds`` (histogram): one model call (to the device, forward, labels back);
* ``meanet_offload_errors_total`` (counter): refused requests, by ``kind`` (:data:`ERROR_KINDS`, and ``overloaded``
  for a full queue);
* ``meanet_offload_queued_images`` (gauge): images waiting for the model (bounded: past the bound, 503);
* ``meanet_offload_model_info`` (info): the served model: ``arch``, ``version``, ``digest`` (SHA-256 of its
  weights), ``num_classes``, ``input_size``, ``source``;
* ``meanet_offload_model_version`` (gauge): the served model's version (absent when it has none);
* ``meanet_offload_model_loaded_timestamp_seconds`` (gauge): when the served model was loaded;
* ``meanet_offload_model_swaps_total`` / ``meanet_offload_model_refusals_total`` (counters): hot reloads
  (``--watch``) that took effect / serving files refused (unreadable, or another run's), the old model serving on;
* ``meanet_offload_start_time_seconds`` (gauge): when the service started.

The served model's metrics are read from the :class:`~fl_server.offload.handoff.ModelSlot` at each scrape, so they
follow a hot reload at once. ``GET /metrics.json`` (or ``/metrics`` with ``Accept: application/json``) keeps the
JSON summary the service answered before (:class:`Metrics`: counts, mean batch size, latency percentiles).
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from starlette.responses import JSONResponse, Response

from fl_server.offload.batching import MicroBatcher, ServiceError
from fl_server.offload.handoff import ModelSlot

PREFIX = "meanet_offload"
ERROR_KINDS: dict[int, str] = {
    400: "bad_payload",  # a malformed frame, or a body cut short
    401: "auth_missing",  # no or malformed credentials
    403: "auth_refused",  # a wrong token
    408: "body_timeout",
    413: "too_large",
    415: "wrong_content_type",
    422: "unfit_images",  # a well-formed frame the model cannot take (dtype, channels, size)
    500: "model_error",
    503: "unavailable",  # starting or stopping; a full queue is "overloaded"
}
"""The kind of error each status means in ``meanet_offload_errors_total`` (unless the error names its own)."""
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds


def error_kind(e: ServiceError) -> str:
    """The ``kind`` label of a refused request."""
    return e.kind or ERROR_KINDS.get(e.status, f"http_{e.status}")


def batch_buckets(largest: int) -> tuple[float, ...]:
    """Histogram bounds for model-call sizes: powers of two up to ``largest`` (the largest possible call), and it."""
    if largest < 1:
        raise ValueError(f"the largest model call must hold >= 1 image; got {largest}")
    powers = {2**i for i in range(largest.bit_length()) if 2**i <= largest}
    return tuple(float(b) for b in sorted(powers | {largest}))


def wants_json(accept: str | None) -> bool:
    """Whether an ``Accept`` header prefers ``application/json`` to the Prometheus text (a wildcard does not count)."""
    best = {"json": 0.0, "text": 0.0}
    for part in (accept or "").split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.lower()
        if media == "application/json":
            best["json"] = max(best["json"], q)
        elif media in ("text/plain", "text/*", "application/openmetrics-text"):
            best["text"] = max(best["text"], q)
    return best["json"] > 0 and best["json"] >= best["text"]


# ------------------------------------------------------------------------------------------------ JSON summary
class Metrics:
    """The JSON summary (``/metrics.json``): counters since start and a window of recent latencies; updated on the
    event loop only."""

    def __init__(self, window: int = 10_000) -> None:
        self.started = time.monotonic()
        self.requests = 0  # classify requests received
        self.answered = 0
        self.images = 0  # images answered
        self.images_by_version: Tally[int | None] = Tally()  # images answered by each model version
        self.status: Tally[int] = Tally()
        self.latency_s: deque[float] = deque(maxlen=window)  # answered classify requests, arrival -> reply

    def snapshot(self, batcher: MicroBatcher) -> dict[str, Any]:
        lat = np.asarray(self.latency_s, dtype=np.float64) * 1e3
        pct = {f"p{q}": float(np.percentile(lat, q)) if lat.size else None for q in (50, 90, 99)}
        return {
            "uptime_s": time.monotonic() - self.started,
            "requests": self.requests,
            "answered": self.answered,
            "images": self.images,
            "images_by_model_version": {str(k): v for k, v in self.images_by_version.items()},
            "batches": batcher.calls,
            "mean_batch_size": batcher.call_images / batcher.calls if batcher.calls else 0.0,
            "mean_requests_per_batch": self.answered / batcher.calls if batcher.calls else 0.0,
            "queued_images": batcher.pending_images,
            "errors_by_status": {str(k): v for k, v in sorted(self.status.items()) if k >= 400},
            "latency_ms": {**pct, "window": int(lat.size)},
            "micro_batching": batcher.enabled,
        }


# ------------------------------------------------------------------------------------------------ Prometheus
class _ServedModelCollector(Collector):
    """What is served now, read at each scrape: the model (it changes on a hot reload) and the queue."""

    def __init__(self, slot: ModelSlot, queued: Callable[[], int]) -> None:
        self.slot, self.queued = slot, queued

    def collect(self) -> Iterator[Metric]:
        model = self.slot.describe()
        version = model["version"]
        labels = {k: str(model[k]) for k in ("arch", "digest", "num_classes", "input_size", "source")}
        labels["version"] = "none" if version is None else str(version)
        yield InfoMetricFamily(f"{PREFIX}_model", "The model the service answers with.", value=labels)
        if version is not None:
            yield GaugeMetricFamily(f"{PREFIX}_model_version", "The served model's version.", value=float(version))
        loaded = f"{PREFIX}_model_loaded_timestamp_seconds"
        yield GaugeMetricFamily(loaded, "When the served model was loaded (Unix time).", value=model["loaded_at"])
        swaps = f"{PREFIX}_model_swaps"
        yield CounterMetricFamily(swaps, "Hot reloads of the serving file that took effect.", value=model["swaps"])
        refusals = f"{PREFIX}_model_refusals"
        yield CounterMetricFamily(refusals, "Serving files refused, the old model serving on.", value=model["refused"])
        queued = f"{PREFIX}_queued_images"
        yield GaugeMetricFamily(queued, "Images waiting for the model.", value=float(self.queued()))


class ServiceMetrics:
    """One service's metrics: the Prometheus registry and the JSON summary, updated together.

    The event loop calls :meth:`received`, :meth:`answered`, :meth:`refused` and :meth:`replied`; the model thread
    calls :meth:`model_call`. ``largest_call`` is the most images one model call can hold (bounds the batch-size
    histogram).
    """

    def __init__(self, slot: ModelSlot, batcher: MicroBatcher, *, largest_call: int) -> None:
        self.slot, self.batcher = slot, batcher
        self.summary = Metrics()
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Requests replied to, by endpoint and HTTP status.",
            ["endpoint", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Arrival to reply of the requests answered 2xx, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.images = Counter(
            f"{PREFIX}_images", "Images classified, by the model version that answered.", ["model_version"], registry=r
        )
        self.batch_images = Histogram(
            f"{PREFIX}_batch_images",
            "Images per model call (the micro-batches the batcher runs).",
            buckets=batch_buckets(largest_call),
            registry=r,
        )
        self.model_seconds = Histogram(
            f"{PREFIX}_model_call_duration_seconds",
            "One model call: images to the device, forward, labels back.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(f"{PREFIX}_errors", "Refused requests, by kind of error.", ["kind"], registry=r)
        started = Gauge(f"{PREFIX}_start_time_seconds", "When the service started (Unix time).", registry=r)
        started.set_to_current_time()
        r.register(_ServedModelCollector(slot, lambda: batcher.pending_images))

    # -------------------------------------------------------------------------------------------- updates
    def received(self) -> None:
        """A classify request arrived."""
        self.summary.requests += 1

    def replied(self, endpoint: str, status: int, started: float) -> None:
        """A request to ``endpoint`` got ``status``; ``started`` is its ``time.perf_counter()`` at arrival."""
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        if 200 <= status < 300:
            self.request_seconds.labels(endpoint=endpoint).observe(time.perf_counter() - started)

    def answered(self, images: int, version: int | None, started: float) -> None:
        """A classify request got its ``images`` labels from model ``version``."""
        m = self.summary
        m.answered += 1
        m.images += images
        m.images_by_version[version] += images
        m.status[200] += 1
        m.latency_s.append(time.perf_counter() - started)
        self.images.labels(model_version="none" if version is None else str(version)).inc(images)
        self.replied("/v1/classify", 200, started)

    def refused(self, endpoint: str, e: ServiceError, started: float) -> None:
        """A request to ``endpoint`` was refused with ``e``."""
        self.summary.status[e.status] += 1
        self.errors.labels(kind=error_kind(e)).inc()
        self.replied(endpoint, e.status, started)

    def model_call(self, images: int, seconds: float) -> None:
        """A model call classified ``images`` in ``seconds`` (called from the model thread)."""
        self.batch_images.observe(images)
        self.model_seconds.observe(seconds)

    # -------------------------------------------------------------------------------------------- reading
    def snapshot(self) -> dict[str, Any]:
        """The JSON summary with the served model (version, swaps, refused files)."""
        return {**self.summary.snapshot(self.batcher), "model": self.slot.describe()}

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The registry in the format ``accept`` asks for (the text format 0.0.4 unless it asks for OpenMetrics) and
        that format's content type."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type

    def response(self, accept: str | None, as_json: bool = False) -> Response:
        """The reply to a scrape: the JSON summary (``as_json``) or :meth:`exposition`."""
        if as_json:
            return JSONResponse(self.snapshot())
        body, content_type = self.exposition(accept)
        return Response(body, headers={"Content-Type": content_type})


__all__ = [
    "ERROR_KINDS",
    "LATENCY_BUCKETS",
    "Metrics",
    "ServiceMetrics",
    "batch_buckets",
    "error_kind",
    "wants_json",
]
