"""The cloud offload service: the cloud model behind HTTPS, for the complex inputs the edges send.

Endpoints (``meanet cloud serve`` starts it; :func:`create_app` builds the app):

* ``POST /v1/classify``: body = a :mod:`meanet_core.wire.payload` images frame (uint8 ``(n, C, H, W)``, content type
  ``application/vnd.meanet.images``); reply = a labels frame. Concurrent requests are micro-batched: a worker gathers
  queued requests until ``max_batch`` images or ``max_wait_ms`` after the first one arrived, runs the model once (in
  a thread, ``torch.inference_mode``) and splits the labels (:mod:`fl_server.offload.batching`). With micro-batching off
  every request runs alone.
* ``GET /health``: liveness, no authentication (for probes and load balancers); says nothing about the model.
* ``GET /info``: the model's input contract, MACs per image, version and class names (authenticated; the edge
  client reads it).
* ``GET /metrics``: Prometheus text (authenticated): requests, images, micro-batch sizes, latencies, errors by kind,
  the served model (:mod:`fl_server.offload.metrics`). ``GET /metrics.json`` (or ``Accept: application/json``): the
  JSON summary (counts, mean batch size, errors by status, latency percentiles, the served model's version, swaps).

Every reply to ``/v1/classify`` carries ``X-MEANet-Model-Version``: the version of the model that answered it.

**The newest model** (``create_app(..., watch=FILE)``, ``meanet cloud serve --watch FILE``): the ServerApp writes
each experience's cloud model atomically to a serving file; a watcher thread polls it (or reloads on SIGHUP), builds
the new model and its optimised copy completely, and only then swaps one reference under a lock. Each model call
takes that reference once, so a request is answered wholly by the old or wholly by the new model; a file that does
not load or does not fit (other classes, class names or image size) is refused with a logged reason and the old
model keeps serving. Details: :mod:`fl_server.offload.handoff`.

Every bad request gets a precise 4xx and never reaches the model: 401 missing/malformed credentials, 403 wrong token,
415 wrong content type, 413 body or batch over the limit, 408 a body that does not arrive in time, 400 a malformed
frame (the payload decoder's reason), 422 a well-formed frame the model cannot take (dtype, channels, image size).
503 when the queue is full or the service is stopping. Clients authenticate with a bearer token (compared in
constant time) and/or a client certificate (mutual TLS, ``ca_certfile``).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from fl_server.offload.batching import MicroBatcher, ServiceError
from fl_server.offload.handoff import ModelSlot, ServedModel, ServingFileWatcher, prepare
from fl_server.offload.metrics import ServiceMetrics, wants_json
from meanet_core.models import CloudModel
from meanet_core.wire.payload import (
    DTYPE_UINT8,
    IMAGES_CONTENT_TYPE,
    LABELS_CONTENT_TYPE,
    VERSION,
    PayloadError,
    body_limit,
    decode_images,
    encode_labels,
)

log = logging.getLogger("meanet.cloud")
TOKEN_ENV = "MEANET_CLOUD_TOKEN"
CHANNELS = 3
VERSION_HEADER = "X-MEANet-Model-Version"


@dataclass(frozen=True)
class ServiceConfig:
    """Limits and batching of the service (validated once, here)."""

    max_batch: int = 256  # images per model call when micro-batching
    max_wait_ms: float = 5.0  # how long the first queued request waits for company
    micro_batching: bool = True
    max_request_images: int = 1024  # larger requests get 413
    max_pending_images: int = 8192  # queued images beyond this get 503 (backpressure, not an unbounded queue)
    body_timeout_s: float = 10.0  # a body that has not fully arrived by then gets 408
    token: str | None = field(default=None, repr=False)  # bearer token; None = no token check (mTLS or --insecure)
    watch_poll_s: float = 0.5  # with a serving file to watch: how often its inode/mtime/size is checked

    def __post_init__(self) -> None:
        positive: dict[str, float] = {"max_batch": self.max_batch, "max_request_images": self.max_request_images}
        positive |= {"max_pending_images": self.max_pending_images, "body_timeout_s": self.body_timeout_s}
        positive |= {"watch_poll_s": self.watch_poll_s}
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be > 0; got {value}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0; got {self.max_wait_ms}")
        if self.max_pending_images < self.max_request_images:
            raise ValueError(
                f"max_pending_images ({self.max_pending_images}) must be >= max_request_images "
                f"({self.max_request_images}), or a largest request could never be queued"
            )
        if self.token is not None and len(self.token) < 16:
            raise ValueError(
                "the token is too short (< 16 characters); make one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )


# ------------------------------------------------------------------------------------------------ the app
class CloudService:
    """The served model (one swappable reference), its batcher, its metrics, and the checks every request passes."""

    def __init__(
        self,
        model: CloudModel | ServedModel,
        config: ServiceConfig,
        device: str | torch.device = "cpu",
        watch: str | os.PathLike[str] | None = None,
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        served = model if isinstance(model, ServedModel) else prepare(model, self.device)
        self.slot = ModelSlot(served)
        self.side = served.input_size  # fixed for the service's life: a model of another size is refused
        self.body_limit = body_limit(config.max_request_images, CHANNELS, self.side)
        self.watcher = ServingFileWatcher(watch, self.slot, self.device, config.watch_poll_s) if watch else None
        self.batcher = MicroBatcher(
            self._predict,
            max_batch=config.max_batch,
            max_wait_s=config.max_wait_ms / 1e3,
            enabled=config.micro_batching,
            max_pending_images=config.max_pending_images,
        )
        largest_call = max(config.max_batch, config.max_request_images)  # a request larger than max_batch runs alone
        self.metrics = ServiceMetrics(self.slot, self.batcher, largest_call=largest_call)

    @property
    def served(self) -> ServedModel:
        return self.slot.current

    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, int | None]:
        """uint8 (n, C, H, W) -> int64 labels (n,) on the CPU and the answering model's version; runs in the model
        thread. The served model is taken once: the whole call runs on it, whatever a swap does meanwhile."""
        served = self.slot.current
        t0 = time.perf_counter()
        labels = served.classify(images.to(self.device))  # (n,)
        self.metrics.model_call(int(images.shape[0]), time.perf_counter() - t0)
        return labels, served.version

    # -------------------------------------------------------------------------------------------- checks
    def authorize(self, request: Request) -> None:
        if self.config.token is None:
            return
        header = request.headers.get("authorization")
        challenge = {"WWW-Authenticate": "Bearer"}
        if not header:
            raise ServiceError(
                401, f"missing credentials: send 'Authorization: Bearer <token>' (the service's {TOKEN_ENV})", challenge
            )
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise ServiceError(
                401, f"malformed Authorization header: expected 'Bearer <token>', found scheme {scheme!r}", challenge
            )
        if not hmac.compare_digest(value.strip().encode(), self.config.token.encode()):
            raise ServiceError(403, f"invalid token: it does not match the service's token ({TOKEN_ENV})")

    async def read_body(self, request: Request) -> bytes:
        limit = self.body_limit
        too_big = (
            f"the largest request is {self.config.max_request_images} images of {CHANNELS}x{self.side}x{self.side} "
            f"uint8 ({limit} bytes with the header); split the batch"
        )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ServiceError(413, f"body of {declared} bytes is too large: {too_big}", {"Connection": "close"})

        async def read() -> bytes:
            buf = bytearray()
            async for chunk in request.stream():
                buf += chunk
                if len(buf) > limit:
                    raise ServiceError(413, f"body over {limit} bytes is too large: {too_big}", {"Connection": "close"})
            return bytes(buf)

        try:
            return await asyncio.wait_for(read(), self.config.body_timeout_s)
        except asyncio.TimeoutError:
            raise ServiceError(
                408,
                f"the body did not arrive within {self.config.body_timeout_s:g} s (declared {declared} bytes); "
                "send the whole frame at once",
                {"Connection": "close"},
            ) from None
        except ClientDisconnect:
            raise ServiceError(400, "the client disconnected before sending the whole body") from None

    def check_images(self, body: bytes) -> torch.Tensor:
        try:
            images = decode_images(body)  # (n, c, h, w)
        except PayloadError as e:
            raise ServiceError(400, str(e)) from None
        n, c, h, w = (int(s) for s in images.shape)
        if n > self.config.max_request_images:
            raise ServiceError(
                413, f"batch of {n} images is too large: at most {self.config.max_request_images} per request; split it"
            )
        if images.dtype != torch.uint8:
            found = str(images.dtype).removeprefix("torch.")
            raise ServiceError(
                422,
                f"expected uint8 images (dtype code {DTYPE_UINT8}), found {found}; "
                "convert with meanet_core.inference.engine.to_uint8 (4x fewer bytes, too)",
            )
        if c != CHANNELS:
            raise ServiceError(
                422,
                f"expected {CHANNELS} channels (RGB, NCHW), found {c}; "
                "convert gray images to RGB, or permute NHWC arrays to NCHW",
            )
        if (h, w) != (self.side, self.side):
            raise ServiceError(
                422, f"expected {self.side}x{self.side} images, found {h}x{w}; resize or crop them to that size"
            )
        return images

    def info(self) -> dict[str, Any]:
        served = self.served
        return {
            "arch": served.arch,
            "num_classes": served.num_classes,
            "model_version": served.version,
            "class_names": list(served.class_names) if served.class_names is not None else None,
            "input_shape": [CHANNELS, self.side, self.side],
            "dtype": "uint8",
            "macs_per_image": served.macs_per_image,
            "max_request_images": self.config.max_request_images,
            "payload_version": VERSION,
            "content_type": IMAGES_CONTENT_TYPE,
            "micro_batching": self.config.micro_batching,
            "max_batch": self.config.max_batch,
            "max_wait_ms": self.config.max_wait_ms,
        }

    def error(self, endpoint: str, e: ServiceError, started: float) -> JSONResponse:
        """The reply to a request to ``endpoint`` refused with ``e`` (counted; ``started``: its arrival)."""
        self.metrics.refused(endpoint, e, started)
        return JSONResponse({"detail": e.detail}, status_code=e.status, headers=e.headers)

    def reply(self, endpoint: str, response: Response, started: float) -> Response:
        """``response`` to a request to ``endpoint``, counted (``started``: its arrival)."""
        self.metrics.replied(endpoint, response.status_code, started)
        return response

    def authorized(self, request: Request, endpoint: str, answer: Callable[[], Response]) -> Response:
        """``answer()`` to an authorized request to ``endpoint``, or the refusal; counted either way."""
        t0 = time.perf_counter()
        try:
            self.authorize(request)
        except ServiceError as e:
            return self.error(endpoint, e, t0)
        return self.reply(endpoint, answer(), t0)


def create_app(
    model: CloudModel | ServedModel,
    config: ServiceConfig | None = None,
    device: str | torch.device = "cpu",
    *,
    watch: str | os.PathLike[str] | None = None,
) -> FastAPI:
    """The FastAPI app serving ``model`` (see the module docstring for the endpoints); with ``watch``, the newest
    model of that serving file from then on (:func:`fl_server.offload.handoff.load_served` builds the first one)."""
    service = CloudService(model, config or ServiceConfig(), device, watch)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.batcher.start()
        if service.watcher is not None:
            service.watcher.start()
        try:
            yield
        finally:
            if service.watcher is not None:
                service.watcher.stop()
            await service.batcher.stop()

    app = FastAPI(title="MEANet cloud offload service", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service

    @app.get("/health")
    async def health() -> Response:
        t0 = time.perf_counter()
        ok = service.batcher.running
        # says nothing about the model to unauthenticated callers: the version is in /info and /metrics
        answer = JSONResponse({"status": "ok" if ok else "unavailable"}, status_code=200 if ok else 503)
        return service.reply("/health", answer, t0)

    @app.get("/info")
    async def info(request: Request) -> Response:
        return service.authorized(request, "/info", lambda: JSONResponse(service.info()))

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        accept = request.headers.get("accept")
        return service.authorized(request, "/metrics", lambda: service.metrics.response(accept, wants_json(accept)))

    @app.get("/metrics.json")
    async def metrics_json(request: Request) -> Response:
        return service.authorized(request, "/metrics.json", lambda: service.metrics.response(None, as_json=True))

    @app.post("/v1/classify")
    async def classify(request: Request) -> Response:
        t0 = time.perf_counter()
        service.metrics.received()
        try:
            service.authorize(request)
            content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type != IMAGES_CONTENT_TYPE:
                raise ServiceError(
                    415,
                    f"expected content type {IMAGES_CONTENT_TYPE!r}, found {content_type or None!r}; "
                    "send a frame from meanet_core.wire.payload.encode_images with that content type",
                )
            images = service.check_images(await service.read_body(request))
            answer = await service.batcher.submit(images)
        except ServiceError as e:
            return service.error("/v1/classify", e, t0)
        headers = {
            "X-MEANet-Batch-Images": str(answer.batch_images),
            "X-MEANet-Macs-Per-Image": str(service.served.macs_per_image),
            VERSION_HEADER: str(answer.model_version),
        }
        reply = Response(encode_labels(answer.labels), media_type=LABELS_CONTENT_TYPE, headers=headers)
        service.metrics.answered(int(answer.labels.numel()), answer.model_version, t0)
        return reply

    return app


# ------------------------------------------------------------------------------------------------ running it
def _uvicorn_config(
    app: FastAPI,
    host: str,
    port: int,
    certfile: str | os.PathLike[str] | None,
    keyfile: str | os.PathLike[str] | None,
    ca_certfile: str | os.PathLike[str] | None,
    log_level: str,
    graceful_s: int = 2,
) -> uvicorn.Config:
    for name, path in (("certfile", certfile), ("keyfile", keyfile), ("ca_certfile", ca_certfile)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{name} {path} does not exist")
    if (certfile is None) != (keyfile is None):
        raise ValueError("TLS needs both a certificate and its key (--certfile and --keyfile)")
    if ca_certfile is not None and certfile is None:
        raise ValueError("mutual TLS (--ca-certfile) needs the server's own --certfile and --keyfile")
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=os.fspath(certfile) if certfile else None,
        ssl_keyfile=os.fspath(keyfile) if keyfile else None,
        ssl_ca_certs=os.fspath(ca_certfile) if ca_certfile else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if ca_certfile else ssl.CERT_NONE,
        log_level=log_level,
        access_log=False,  # /metrics counts requests; a log line per request costs throughput
        timeout_graceful_shutdown=graceful_s,  # idle TLS keep-alive connections would otherwise hold the shutdown
        lifespan="on",
        ws="none",  # no websockets here
    )


def check_security(*, certfile: object, token: str | None, ca_certfile: object, insecure: bool) -> None:
    """Refuse a service without TLS or without client authentication unless ``insecure`` says so explicitly."""
    if insecure:
        return
    if certfile is None:
        raise ValueError(
            "TLS is required: pass --certfile and --keyfile (a server certificate and its key), "
            "or --insecure to serve plain HTTP on a trusted network"
        )
    if token is None and ca_certfile is None:
        raise ValueError(
            f"clients must authenticate: pass --token (or set {TOKEN_ENV}) and/or --ca-certfile for mutual TLS, "
            "or --insecure to serve without authentication on a trusted network"
        )


def serve(
    model: CloudModel | ServedModel,
    *,
    host: str = "127.0.0.1",
    port: int = 8443,
    certfile: str | os.PathLike[str] | None = None,
    keyfile: str | os.PathLike[str] | None = None,
    ca_certfile: str | os.PathLike[str] | None = None,
    config: ServiceConfig | None = None,
    insecure: bool = False,
    device: str = "cpu",
    log_level: str = "info",
    watch: str | os.PathLike[str] | None = None,
) -> None:
    """Serve ``model`` until interrupted (Ctrl-C / SIGTERM shut it down gracefully); with ``watch``, the newest model
    of that serving file (polled, or reloaded at once on SIGHUP)."""
    config = config or ServiceConfig()
    check_security(certfile=certfile, token=config.token, ca_certfile=ca_certfile, insecure=insecure)
    if config.token is not None and certfile is None:
        log.warning("the bearer token travels in clear text over plain HTTP; use TLS beyond loopback")
    app = create_app(model, config, device, watch=watch)
    watcher: ServingFileWatcher | None = app.state.service.watcher
    if watcher is not None and hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, lambda *_: watcher.reload())  # uvicorn handles SIGINT/SIGTERM, not SIGHUP
    uv = _uvicorn_config(app, host, port, certfile, keyfile, ca_certfile, log_level)
    uvicorn.Server(uv).run()


class BackgroundServer:
    """The service on a daemon thread, bound to a port chosen by the OS (tests and benchmarks).

    ``start()`` returns once the server accepts connections; ``stop()`` shuts it down gracefully and waits.
    """

    def __init__(
        self,
        app: FastAPI,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        certfile: str | os.PathLike[str] | None = None,
        keyfile: str | os.PathLike[str] | None = None,
        ca_certfile: str | os.PathLike[str] | None = None,
        log_level: str = "warning",
        graceful_s: int = 1,
    ) -> None:
        self.app, self.host, self.port, self.tls = app, host, port, certfile is not None
        self._config = _uvicorn_config(app, host, port, certfile, keyfile, ca_certfile, log_level, graceful_s)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def start(self, timeout_s: float = 20.0) -> BackgroundServer:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(self._config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the service did not start on {self.url} within {timeout_s:g} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
