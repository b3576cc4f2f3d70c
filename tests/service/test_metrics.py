"""The service's metrics as operators scrape them: Prometheus text over real HTTPS on loopback, parsed back.

Each test starts its own service (a registry of its own), sends a known number of requests and images, and reads
``/metrics`` with :func:`prometheus_client.parser.text_string_to_metric_families`.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import httpx
import prometheus_client
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from fl_server.offload.batching import ServiceError
from fl_server.offload.metrics import ERROR_KINDS, batch_buckets, error_kind, wants_json
from fl_server.offload.service import BackgroundServer
from meanet_core.models import CloudModel
from meanet_core.trust.broadcast import digest
from meanet_core.trust.tls import DevCertificates
from meanet_core.wire import payload

from .conftest import MAX_REQUEST_IMAGES, TOKEN, start_service

IMAGES = payload.IMAGES_CONTENT_TYPE
SENT = (3, 5, 1, 7)  # images per classify request


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: httpx.Client) -> tuple[Samples, str]:
    """Every sample of ``/metrics`` by (name, labels), and the reply's content type."""
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    samples: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, r.headers["content-type"]


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels`` (0 when there is none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def labels_of(samples: Samples, name: str) -> dict[str, str]:
    (found,) = [dict(ls) for n, ls in samples if n == name]
    return found


def encoded(n: int, seed: int = 0) -> bytes:
    g = torch.Generator().manual_seed(seed)
    return payload.encode_images(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g))


def https(server: BackgroundServer, certs: DevCertificates, token: str = TOKEN) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    return httpx.Client(base_url=server.url, verify=ctx, headers={"Authorization": f"Bearer {token}"}, timeout=10)


@pytest.fixture
def served(cloud_model: CloudModel, certs: DevCertificates) -> Iterator[tuple[BackgroundServer, httpx.Client]]:
    server = start_service(cloud_model, certs)
    client = https(server, certs)
    try:
        yield server, client
    finally:
        client.close()
        server.stop()


# ------------------------------------------------------------------------------------------------ over HTTPS
def test_counts_move_with_the_images_requests_and_errors_sent(served, certs, cloud_model: CloudModel) -> None:
    server, client = served
    for i, n in enumerate(SENT):
        r = client.post("/v1/classify", content=encoded(n, seed=i), headers={"Content-Type": IMAGES})
        assert r.status_code == 200, r.text
    assert client.post("/v1/classify", content=b"garbage", headers={"Content-Type": IMAGES}).status_code == 400
    big = client.post("/v1/classify", content=encoded(MAX_REQUEST_IMAGES + 1), headers={"Content-Type": IMAGES})
    assert big.status_code == 413
    with https(server, certs, token="wrong-token-0123456789") as intruder:
        assert intruder.post("/v1/classify", content=encoded(2), headers={"Content-Type": IMAGES}).status_code == 403
        assert intruder.get("/metrics").status_code == 403  # the metrics need the token, as before

    m, content_type = scrape(client)
    assert content_type.startswith("text/plain; version=0.0.4"), content_type
    assert value(m, "meanet_offload_images_total") == sum(SENT)
    assert value(m, "meanet_offload_images_total", model_version="none") == sum(SENT)  # a model from --run
    classify = "/v1/classify"
    assert value(m, "meanet_offload_requests_total", endpoint=classify, status="200") == len(SENT)
    for status in ("400", "403", "413"):
        assert value(m, "meanet_offload_requests_total", endpoint=classify, status=status) == 1, status
    assert value(m, "meanet_offload_requests_total", endpoint="/metrics", status="403") == 1
    assert value(m, "meanet_offload_request_duration_seconds_count", endpoint=classify) == len(SENT)  # answered ones
    assert value(m, "meanet_offload_errors_total", kind="bad_payload") == 1
    assert value(m, "meanet_offload_errors_total", kind="too_large") == 1
    assert value(m, "meanet_offload_errors_total", kind="auth_refused") == 2  # classify and metrics
    assert value(m, "meanet_offload_errors_total") == 4
    calls = value(m, "meanet_offload_batch_images_count")
    assert 1 <= calls <= len(SENT)  # micro-batching may have put requests together
    assert value(m, "meanet_offload_batch_images_sum") == sum(SENT)  # each image rode in exactly one model call
    assert value(m, "meanet_offload_batch_images_bucket", le="+Inf") == calls
    assert value(m, "meanet_offload_model_call_duration_seconds_count") == calls
    assert value(m, "meanet_offload_queued_images") == 0
    info = labels_of(m, "meanet_offload_model_info")
    assert info["arch"] == "resnet20_cifar" and info["version"] == "none" and info["num_classes"] == "10"
    assert info["digest"] == digest(cloud_model.state_dict(), prefix="")
    assert ("meanet_offload_model_version", frozenset()) not in m  # an unversioned model has no version number

    summary = client.get("/metrics.json").json()  # the JSON of before, for its users
    assert summary["images"] == sum(SENT) and summary["answered"] == len(SENT)
    assert summary["errors_by_status"] == {"400": 1, "403": 2, "413": 1}
    assert summary["model"]["digest"] == info["digest"]


def test_each_service_counts_in_a_registry_of_its_own(served, certs, cloud_model: CloudModel) -> None:
    _, client = served
    other = start_service(cloud_model, certs)
    try:
        with https(other, certs) as other_client:
            r = client.post("/v1/classify", content=encoded(4), headers={"Content-Type": IMAGES})
            assert r.status_code == 200
            assert value(scrape(client)[0], "meanet_offload_images_total") == 4
            assert value(scrape(other_client)[0], "meanet_offload_images_total") == 0
    finally:
        other.stop()
    assert prometheus_client.REGISTRY.get_sample_value("meanet_offload_images_total", {"model_version": "none"}) is None


@pytest.mark.parametrize(
    ("path", "accept", "expected"),
    [
        ("/metrics", None, "text/plain; version=0.0.4"),
        ("/metrics", "*/*", "text/plain; version=0.0.4"),
        ("/metrics", "application/json", "application/json"),
        ("/metrics", "application/openmetrics-text; version=1.0.0", "application/openmetrics-text"),
        ("/metrics.json", None, "application/json"),
        ("/metrics.json", "text/plain", "application/json"),
    ],
)
def test_the_reply_speaks_what_the_client_accepts(served, path: str, accept: str | None, expected: str) -> None:
    _, client = served
    r = client.get(path, headers={"Accept": accept} if accept else {})
    assert r.status_code == 200 and r.headers["content-type"].startswith(expected), r.headers["content-type"]
    if expected == "application/json":
        assert r.json()["requests"] == 0 and "model" in r.json()
    else:
        assert "meanet_offload_model_info" in r.text


# ------------------------------------------------------------------------------------------------ the pieces
def test_accept_headers_choose_json_only_when_asked_for() -> None:
    assert not wants_json(None) and not wants_json("") and not wants_json("*/*")
    assert wants_json("application/json") and wants_json("application/json, text/plain")
    assert not wants_json("text/plain;q=0.9, application/json;q=0.5")
    assert wants_json("text/plain;q=0.1, application/json")
    assert not wants_json("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1")
    assert not wants_json("application/json;q=0")


def test_error_kinds_and_batch_buckets() -> None:
    assert error_kind(ServiceError(400, "bad frame")) == "bad_payload"
    assert error_kind(ServiceError(503, "queue full", kind="overloaded")) == "overloaded"
    assert error_kind(ServiceError(418, "a teapot")) == "http_418"
    assert set(ERROR_KINDS) >= {400, 401, 403, 408, 413, 415, 422, 500, 503}
    assert batch_buckets(32) == (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
    assert batch_buckets(48) == (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 48.0)
    with pytest.raises(ValueError, match=">= 1 image"):
        batch_buckets(0)
