"""The client of the cloud offload service (``meanet cloud serve``), on numpy arrays: what a device runs without torch.

``CloudClient("https://cloud:8443", token=..., ca_certfile="ca.pem").classify_array(images)`` sends a batch of uint8
images ``(n, C, H, W)`` in one request (a :mod:`meanet_edge.payload` frame) and returns a :class:`CloudAnswer`: the
labels and, per image, whether the cloud answered. Each call has a deadline; transient failures (timeouts, refused
connections, 408/429/5xx answers) are retried a bounded number of times with exponential back-off and jitter inside
that deadline. When the cloud still does not answer, or answers with an error, every image is marked ``ok=False`` and
the caller keeps its own prediction for them: no call raises for the service's sake. After ``circuit_failures``
failed calls in a row the client stops trying for ``circuit_cooldown_s`` (fallbacks are then immediate), then tries
again. :class:`OffloadStats` counts what happened and why.

The torch edge client (:class:`fl_client.offload.RemoteCloud`, the adaptive engine's ``CloudBackend``) is this class
with a tensor ``classify``.
"""

from __future__ import annotations

import logging
import os
import random
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import numpy as np
import numpy.typing as npt

from meanet_edge.payload import IMAGES_CONTENT_TYPE, PayloadError, decode_labels, encode_images

log = logging.getLogger("meanet.edge.offload")
TOKEN_ENV = "MEANET_CLOUD_TOKEN"
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MACS_HEADER = "X-MEANet-Macs-Per-Image"

_Client = TypeVar("_Client", bound="CloudClient")


@dataclass
class OffloadStats:
    """What the client did since it was made (read it to see fallbacks, retries and why)."""

    calls: int = 0  # classify calls with at least one image
    images: int = 0
    answered_images: int = 0
    fallback_images: int = 0
    attempts: int = 0  # HTTP requests sent (calls + retries)
    skipped_calls: int = 0  # calls answered by fallback at once because the circuit was open
    failures: Counter[str] = field(default_factory=Counter)  # failed attempts by kind


@dataclass(frozen=True)
class CloudAnswer:
    """The cloud's labels for one batch; where ``ok`` is False the cloud did not answer (keep the edge's own)."""

    labels: npt.NDArray[np.int64]  # (n,) predicted classes (0 where not ok)
    ok: npt.NDArray[np.bool_]  # (n,)

    @classmethod
    def unanswered(cls, n: int) -> CloudAnswer:
        return cls(np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.bool_))


class CloudClient:
    """Classifies uint8 images over HTTPS with the cloud offload service (``meanet cloud serve``).

    Args:
        url: base URL of the service, ``https://host:port``.
        token: bearer token (default: ``$MEANET_CLOUD_TOKEN``); None for mutual TLS alone.
        ca_certfile: CA that signed the service's certificate (default: the system's trust store).
        client_certfile, client_keyfile: the edge's certificate and key, for a service with mutual TLS.
        timeout_s: deadline of one classify call, retries included.
        retries: extra attempts after a transient failure (0 = one attempt).
        backoff_s: first back-off; doubled for each retry, with jitter, never past the deadline.
        macs_per_image: the cloud model's MACs per image; default: read from the service's ``/info``.
        allow_insecure: allow an ``http://`` URL (trusted networks only: images and token travel in clear).
        circuit_failures: failed calls in a row that open the circuit (0: never).
        circuit_cooldown_s: how long an open circuit answers by fallback before trying the service again.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        ca_certfile: str | os.PathLike[str] | None = None,
        client_certfile: str | os.PathLike[str] | None = None,
        client_keyfile: str | os.PathLike[str] | None = None,
        timeout_s: float = 2.0,
        retries: int = 2,
        backoff_s: float = 0.05,
        macs_per_image: int | None = None,
        allow_insecure: bool = False,
        circuit_failures: int = 3,
        circuit_cooldown_s: float = 5.0,
    ) -> None:
        if not url.startswith(("https://", "http://")):
            raise ValueError(f"url must start with https:// (the service's address); got {url!r}")
        if url.startswith("http://") and not allow_insecure:
            raise ValueError(
                f"{url} is plain HTTP: images and token would travel in clear; use https://, "
                "or pass allow_insecure=True on a trusted network"
            )
        if timeout_s <= 0 or retries < 0 or backoff_s < 0:
            raise ValueError(
                f"need timeout_s > 0, retries >= 0 and backoff_s >= 0; got {timeout_s}, {retries} and {backoff_s}"
            )
        if (client_certfile is None) != (client_keyfile is None):
            raise ValueError("mutual TLS needs both client_certfile and client_keyfile")
        self.url = url.rstrip("/")
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.circuit_failures, self.circuit_cooldown_s = circuit_failures, circuit_cooldown_s
        self.stats = OffloadStats()
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._failures_in_row = 0
        self._open_until = 0.0
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        verify: ssl.SSLContext | bool = True
        if url.startswith("https://"):
            verify = ssl.create_default_context(cafile=os.fspath(ca_certfile) if ca_certfile else None)
            if client_certfile is not None and client_keyfile is not None:
                verify.load_cert_chain(os.fspath(client_certfile), os.fspath(client_keyfile))
        self._client = httpx.Client(base_url=self.url, headers=headers, verify=verify, timeout=timeout_s)
        self.info: dict[str, Any] = {}
        self.macs_per_image = int(macs_per_image) if macs_per_image is not None else 0
        if macs_per_image is None:
            try:
                self.refresh_info()
            except (httpx.HTTPError, ValueError) as e:  # the edge still starts; MACs come with the first answer
                log.warning("cloud service %s: /info unavailable (%s); MACs per image unknown until it answers", url, e)

    # -------------------------------------------------------------------------------------------- service info
    def refresh_info(self) -> dict[str, Any]:
        """Read ``/info`` (input shape, MACs per image, request limit); raises on failure."""
        r = self._client.get("/info")
        if r.status_code != 200:
            raise ValueError(f"GET {self.url}/info answered {r.status_code}: {_detail(r)}")
        self.info = r.json()
        self.macs_per_image = int(self.info["macs_per_image"])
        return self.info

    def health(self) -> bool:
        try:
            return self._client.get("/health", timeout=self.timeout_s).status_code == 200
        except httpx.HTTPError:
            return False

    # -------------------------------------------------------------------------------------------- classify
    def classify_array(self, images: npt.NDArray[np.uint8]) -> CloudAnswer:
        """Labels for uint8 images ``(n, C, H, W)``; ``ok`` is False everywhere when the cloud did not answer."""
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            found = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
            raise TypeError(
                f"classify_array takes uint8 images (n, C, H, W) as a numpy array; got {found}. "
                "Convert floats in [0, 1] with (x * 255).round().astype(np.uint8)"
            )
        if images.ndim != 4:
            raise ValueError(f"images must have shape (n, C, H, W); got {images.shape}. Add a batch dimension")
        n = int(images.shape[0])
        if n == 0:
            return CloudAnswer.unanswered(0)
        with self._lock:
            self.stats.calls += 1
            self.stats.images += n
            if time.monotonic() < self._open_until:
                self.stats.skipped_calls += 1
                return self._fallback(n, f"circuit open after {self._failures_in_row} failed calls", count=False)
        body = encode_images(images)
        deadline = time.monotonic() + self.timeout_s
        reason = "deadline passed before the first attempt"
        for attempt in range(self.retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with self._lock:
                self.stats.attempts += 1
            labels, reason, retryable = self._attempt(body, n, remaining)
            if labels is not None:
                with self._lock:
                    self.stats.answered_images += n
                    self._failures_in_row, self._open_until = 0, 0.0
                return CloudAnswer(labels, np.ones(n, dtype=np.bool_))
            with self._lock:
                self.stats.failures[reason.split(":")[0]] += 1
            if not retryable or attempt == self.retries:
                break
            pause = self.backoff_s * (2**attempt) * random.uniform(0.5, 1.0)
            time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
        with self._lock:
            return self._fallback(n, reason)

    def _attempt(self, body: bytes, n: int, remaining: float) -> tuple[npt.NDArray[np.int64] | None, str, bool]:
        """One POST: (labels, "", _) on success, else (None, reason, retryable)."""
        try:
            r = self._client.post(
                "/v1/classify",
                content=body,
                headers={"Content-Type": IMAGES_CONTENT_TYPE},
                timeout=httpx.Timeout(remaining),
            )
        except httpx.TimeoutException as e:
            return None, f"timeout: {type(e).__name__} after {remaining:.2f} s left of the deadline", True
        except httpx.TransportError as e:  # refused, reset, TLS failure, DNS
            return None, f"connection: {type(e).__name__}: {e}", True
        if r.status_code != 200:
            return None, f"HTTP {r.status_code}: {_detail(r)}", r.status_code in RETRYABLE_STATUS
        try:
            labels = decode_labels(r.content, expected=n)
        except PayloadError as e:
            return None, f"bad reply: {e}", False
        macs = r.headers.get(MACS_HEADER, "")
        if macs.isdigit():
            self.macs_per_image = int(macs)
        return labels, "", False

    def _fallback(self, n: int, reason: str, count: bool = True) -> CloudAnswer:
        """Every sample marked not answered; the caller keeps the edge's prediction. Caller holds the lock."""
        self.stats.fallback_images += n
        if reason != self.last_error:
            log.warning("cloud %s did not answer %d images (%s); the edge's predictions stand", self.url, n, reason)
        self.last_error = reason
        if count:
            self._failures_in_row += 1
            if self.circuit_failures and self._failures_in_row >= self.circuit_failures:
                self._open_until = time.monotonic() + self.circuit_cooldown_s
        return CloudAnswer.unanswered(n)

    # -------------------------------------------------------------------------------------------- lifetime
    def close(self) -> None:
        self._client.close()

    def __enter__(self: _Client) -> _Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _detail(r: httpx.Response) -> str:
    """The service's error detail (its JSON ``detail``, else the body's start), cut to 300 characters."""
    try:
        body = r.json()
    except ValueError:
        return r.text[:300]
    return str(body.get("detail", body) if isinstance(body, dict) else body)[:300]


# -------------------------------------------------------------------------------------------- connecting
def check_cloud_contract(info: dict[str, Any], input_size: int, num_classes: int, url: str) -> None:
    """Refuse a cloud service whose model takes other images or classes than the edge's model (another run)."""
    side, k = input_size, num_classes
    shape, classes = info.get("input_shape"), info.get("num_classes")
    if shape is not None and list(shape) != [3, side, side]:
        raise ValueError(f"the cloud at {url} takes images of shape {shape}; this edge model takes [3, {side}, {side}]")
    if classes is not None and int(classes) != k:
        raise ValueError(
            f"the cloud at {url} classifies {classes} classes, this edge model {k}: they belong to different runs; "
            "serve the cloud of the run the model was exported from"
        )


def connect(url: str, input_size: int, num_classes: int, client: type[_Client], **options: Any) -> _Client:
    """A ``client`` (:class:`CloudClient` or a subclass) for an edge model of ``input_size`` and ``num_classes``,
    checked once at the start.

    A service that is down now is not an error (the offloaded inputs fall back until it answers); one that answers
    with an error (wrong or missing token, no client certificate), whose certificate does not verify, or that serves
    another run's cloud model is: it would turn every offload of the run into a fallback.
    """
    cloud = client(url, macs_per_image=0, **options)  # /info is read below, where its errors are told apart
    try:
        info = cloud.refresh_info()
    except httpx.HTTPError as e:
        if "CERTIFICATE_VERIFY_FAILED" not in str(e):
            log.warning("cloud %s does not answer now (%s); its inputs are answered on the edge until it does", url, e)
            return cloud
        cloud.close()
        raise ValueError(
            f"the TLS certificate of {url} does not verify ({e}); pass the CA that signed it (--ca)"
        ) from e
    except (ValueError, KeyError, TypeError) as e:  # it answered, with an error or not with a cloud's info
        cloud.close()
        raise ValueError(
            f"the cloud service refused or did not understand GET /info ({e}): check the token (--token or "
            "$MEANET_CLOUD_TOKEN), the client certificate, and that --cloud-url is a meanet cloud serve"
        ) from e
    try:
        check_cloud_contract(info, input_size, num_classes, url)
    except ValueError:
        cloud.close()
        raise
    return cloud
