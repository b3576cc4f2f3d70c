"""The cloud offload service on loopback with TLS: predictions, input checks, auth, and the edge's fallback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fl_client.offload import RemoteCloud
from fl_server.offload.batching import MicroBatcher, ServiceError
from fl_server.offload.handoff import load_cloud_from_run
from fl_server.offload.service import BackgroundServer, ServiceConfig
from meanet_cli.main import app as cli
from meanet_core.inference.engine import EXIT_CLOUD, AdaptiveEngine, LocalCloud
from meanet_core.models import CloudModel, build_meanet
from meanet_core.training.checkpoint import FORMAT, CheckpointError, atomic_save, cloud_payload
from meanet_core.trust.tls import DevCertificates
from meanet_core.wire import payload

from .conftest import MAX_REQUEST_IMAGES, TOKEN, free_port, start_service

IMAGES = payload.IMAGES_CONTENT_TYPE


def images(n: int, c: int = 3, side: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, side, side), dtype=torch.uint8, generator=g)  # (n, c, side, side)


@pytest.fixture
def client(service: BackgroundServer, certs: DevCertificates) -> Iterator[httpx.Client]:
    """A raw HTTPS client that trusts the test CA and sends the token."""
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    with httpx.Client(base_url=service.url, verify=ctx, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


def remote(service: BackgroundServer, certs: DevCertificates, **kw: object) -> RemoteCloud:
    options: dict = dict(token=TOKEN, ca_certfile=certs.ca_cert, timeout_s=5.0)
    options.update(kw)
    return RemoteCloud(service.url, **options)


# ------------------------------------------------------------------------------------------------ correct answers
def test_remote_predictions_equal_the_local_model(service, certs, cloud_model: CloudModel) -> None:
    x = images(20)
    local = LocalCloud(cloud_model)
    with remote(service, certs) as cloud:
        reply = cloud.classify(x)
        assert cloud.macs_per_image == local.macs_per_image  # read from /info
        assert cloud.info["input_shape"] == [3, 32, 32]
    assert reply.ok.all()
    assert torch.equal(reply.labels, local.classify(x).labels)


def test_concurrent_edges_are_micro_batched_and_each_gets_its_own_answers(service, certs, cloud_model) -> None:
    local = LocalCloud(cloud_model)
    batches = [images(1 + i % 7, seed=100 + i) for i in range(24)]
    expected = [local.classify(b).labels for b in batches]
    results: dict[int, torch.Tensor] = {}
    barrier = threading.Barrier(8)

    def edge(k: int) -> None:
        with remote(service, certs, macs_per_image=1) as cloud:
            barrier.wait()
            for i in range(k, len(batches), 8):
                reply = cloud.classify(batches[i])
                assert reply.ok.all(), cloud.last_error
                results[i] = reply.labels

    threads = [threading.Thread(target=edge, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == list(range(len(batches)))
    for i, labels in results.items():
        assert torch.equal(labels, expected[i]), f"request {i} got another request's labels"


def test_micro_batcher_gathers_up_to_max_batch_and_off_runs_each_alone() -> None:
    async def run(enabled: bool) -> tuple[list[int], list[torch.Tensor]]:
        calls: list[int] = []

        def fn(x: torch.Tensor) -> torch.Tensor:  # (n, 1, 1, 1) -> (n,): each image's value
            calls.append(int(x.shape[0]))
            return x.view(x.shape[0]).long()

        batcher = MicroBatcher(fn, max_batch=10, max_wait_s=0.05, enabled=enabled)
        await batcher.start()
        jobs = [torch.full((3, 1, 1, 1), i, dtype=torch.uint8) for i in range(5)]
        outs = await asyncio.gather(*(batcher.submit(j) for j in jobs))
        await batcher.stop()
        return calls, [answer.labels for answer in outs]

    calls, outs = asyncio.run(run(True))
    assert calls == [9, 6]  # 3 requests of 3; the 4th would pass 10 images and opens the next call
    assert [o.tolist() for o in outs] == [[i] * 3 for i in range(5)]
    calls, outs = asyncio.run(run(False))
    assert calls == [3] * 5
    assert [o.tolist() for o in outs] == [[i] * 3 for i in range(5)]


def test_micro_batcher_refuses_past_its_queue_bound_and_survives_a_model_failure() -> None:
    async def run() -> None:
        def fn(x: torch.Tensor) -> torch.Tensor:
            if int(x.flatten()[0]) == 13:
                raise RuntimeError("boom")
            return x.view(x.shape[0]).long()

        batcher = MicroBatcher(fn, max_batch=8, max_wait_s=0.01, max_pending_images=5)
        await batcher.start()
        ok, over = await asyncio.gather(
            batcher.submit(torch.ones(3, 1, 1, 1, dtype=torch.uint8)),
            batcher.submit(torch.ones(3, 1, 1, 1, dtype=torch.uint8)),
            return_exceptions=True,
        )
        assert isinstance(over, ServiceError) and over.status == 503 and "overloaded" in over.detail
        assert over.kind == "overloaded"  # not "unavailable", the other 503, in the errors metric
        assert ok[0].tolist() == [1, 1, 1]
        with pytest.raises(ServiceError, match="the model failed") as failed:
            await batcher.submit(torch.full((1, 1, 1, 1), 13, dtype=torch.uint8))
        assert failed.value.kind == "model_error"
        labels = (await batcher.submit(torch.full((2, 1, 1, 1), 7, dtype=torch.uint8))).labels  # the worker goes on
        assert labels.tolist() == [7, 7]
        await batcher.stop()
        with pytest.raises(ServiceError, match="not running"):
            await batcher.submit(torch.ones(1, 1, 1, 1, dtype=torch.uint8))

    asyncio.run(run())


# ------------------------------------------------------------------------------------------------ bad inputs
def _header(
    n: int = 1,
    c: int = 3,
    h: int = 32,
    w: int = 32,
    *,
    magic: bytes = b"MEAN",
    version: int = 1,
    kind: int = 1,
    dtype: int = 1,
) -> bytes:
    return payload._HEADER.pack(magic, version, kind, dtype, 0, n, c, h, w)


GOOD = payload.encode_images(images(2))
BAD_BODIES = {
    "garbage": (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 400, "bad magic"),
    "json": (b'{"images": [[0.1, 0.2]]}', 400, "bad magic"),
    "short header": (GOOD[:10], 400, "too short for its header"),
    "truncated": (GOOD[:-100], 400, "truncated body"),
    "trailing bytes": (GOOD + b"\x00", 400, "trailing bytes"),
    "version": (_header(version=9) + GOOD[payload.HEADER_BYTES :], 400, "unsupported payload version 9"),
    "unknown dtype": (_header(dtype=7) + b"\x00" * 3072, 400, "unknown dtype code 7"),
    "empty batch": (_header(n=0), 400, "zero dimension"),
    "labels frame": (payload.encode_labels(torch.tensor([1, 2])), 400, "expected a images frame"),
    "float32": (payload.encode_images(images(1).float() / 255), 422, "expected uint8 images"),
    "channels": (payload.encode_images(images(2, c=1)), 422, "expected 3 channels"),
    "image size": (payload.encode_images(images(2, side=16)), 422, "expected 32x32 images, found 16x16"),
    "oversized batch": (payload.encode_images(images(MAX_REQUEST_IMAGES + 1)), 413, "too large"),
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_bad_bodies_get_a_precise_4xx(client: httpx.Client, name: str) -> None:
    body, status, reason = BAD_BODIES[name]
    r = client.post("/v1/classify", content=body, headers={"Content-Type": IMAGES})
    assert r.status_code == status, r.text
    assert reason in r.json()["detail"]


def test_oversized_chunked_body_without_length_gets_413(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(MAX_REQUEST_IMAGES + 2):
            yield b"\x00" * 3072

    r = client.post("/v1/classify", content=chunks(), headers={"Content-Type": IMAGES})
    assert r.status_code == 413 and "too large" in r.json()["detail"]


@pytest.mark.parametrize("content_type", [None, "application/json", "application/octet-stream"])
def test_wrong_content_type_gets_415(client: httpx.Client, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    r = client.post("/v1/classify", content=GOOD, headers=headers)
    assert r.status_code == 415 and IMAGES in r.json()["detail"]


@pytest.mark.parametrize(
    ("authorization", "status", "reason"),
    [
        (None, 401, "missing credentials"),
        ("Basic dXNlcjpwdw==", 401, "malformed"),
        ("Bearer wrong-token", 403, "invalid token"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/classify", "/info", "/metrics", "/metrics.json"])
def test_unauthenticated_requests_are_refused(service, certs, path, authorization, status, reason) -> None:
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    headers = {"Content-Type": IMAGES} | ({"Authorization": authorization} if authorization else {})
    with httpx.Client(base_url=service.url, verify=ctx) as c:
        r = c.post(path, content=GOOD, headers=headers) if path == "/v1/classify" else c.get(path, headers=headers)
        assert r.status_code == status and reason in r.json()["detail"]
        assert c.get("/health").status_code == 200  # health needs no credentials and says only "ok"
        assert c.get("/health").json() == {"status": "ok"}


def test_a_stalled_body_gets_408_and_does_not_stall_others(service, certs, client: httpx.Client) -> None:
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    with (
        socket.create_connection(("127.0.0.1", service.port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        head = (
            f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: {IMAGES}\r\nContent-Length: {len(GOOD)}\r\n\r\n"
        )
        tls.sendall(head.encode() + GOOD[:100])  # then nothing: the rest never comes
        t0 = time.perf_counter()
        r = client.post("/v1/classify", content=GOOD, headers={"Content-Type": IMAGES})
        assert r.status_code == 200 and time.perf_counter() - t0 < 1.5  # served before the stalled body times out
        received = b""
        while chunk := tls.recv(4096):  # the service answers, then closes the connection
            received += chunk
        answer = received.decode(errors="replace")
    assert answer.startswith("HTTP/1.1 408"), answer
    assert "did not arrive within" in answer


def test_the_service_survives_all_of_it_and_counts_errors(client: httpx.Client, cloud_model) -> None:
    client.post("/v1/classify", content=b"garbage", headers={"Content-Type": IMAGES})
    r = client.post("/v1/classify", content=GOOD, headers={"Content-Type": IMAGES})
    assert r.status_code == 200
    assert (
        payload.decode_labels(r.content, expected=2).tolist()
        == LocalCloud(cloud_model).classify(images(2)).labels.tolist()
    )
    m = client.get("/metrics.json").json()
    assert m["answered"] >= 1 and m["images"] >= 2 and m["batches"] >= 1 and m["mean_batch_size"] >= 1
    assert m["errors_by_status"]["400"] >= 1
    assert m["latency_ms"]["p50"] is not None and m["latency_ms"]["p99"] >= m["latency_ms"]["p50"]
    assert client.get("/info").json()["max_request_images"] == MAX_REQUEST_IMAGES


# ------------------------------------------------------------------------------------------------ mutual TLS
def test_mutual_tls_refuses_a_client_without_certificate(cloud_model, certs: DevCertificates) -> None:
    server = start_service(cloud_model, certs, token=None, ca_certfile=certs.ca_cert)
    try:
        ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
        with pytest.raises(httpx.TransportError), httpx.Client(base_url=server.url, verify=ctx) as c:
            c.post("/v1/classify", content=GOOD, headers={"Content-Type": IMAGES})
        with RemoteCloud(
            server.url, ca_certfile=certs.ca_cert, client_certfile=certs.client_cert, client_keyfile=certs.client_key
        ) as cloud:
            assert cloud.classify(images(3)).ok.all()
        with RemoteCloud(server.url, ca_certfile=certs.ca_cert, macs_per_image=1, retries=0) as cloud:
            assert not cloud.classify(images(3)).ok.any()  # no certificate: refused, the edge falls back
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------------ the edge
@dataclass(frozen=True)
class EveryThird:
    """Routing double: samples 0, 3, 6, ... go to the cloud, the rest exit at the main block."""

    name: str = "every-third"

    def after_main(self, probs: torch.Tensor, top1_hard: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = probs.shape[0]
        return torch.arange(n) % 3 == 0, torch.zeros(n, dtype=torch.bool)

    def after_extension(self, ext_probs: torch.Tensor) -> torch.Tensor:
        return torch.zeros(ext_probs.shape[0], dtype=torch.bool)


def test_edge_falls_back_when_the_service_stops_mid_run(cloud_model, certs: DevCertificates) -> None:
    torch.manual_seed(1)
    meanet = build_meanet("resnet20_cifar", 10, [0, 1, 2, 3]).eval()
    local = LocalCloud(cloud_model)
    server = start_service(cloud_model, certs)
    try:
        cloud = RemoteCloud(
            server.url, token=TOKEN, ca_certfile=certs.ca_cert, timeout_s=3.0, retries=1, backoff_s=0.01
        )
        engine = AdaptiveEngine(meanet, EveryThird(), cloud)
        edge_only = AdaptiveEngine(meanet, EveryThird(), None)
        batches = [images(12, seed=10 + i) for i in range(4)]
        preds = []
        for i, batch in enumerate(batches):
            if i == 2:
                server.stop()  # the cloud goes away between inference batches
            t0 = time.perf_counter()
            preds.append(engine.predict(batch))
            assert time.perf_counter() - t0 < 3.0  # a refused connection does not wait for the deadline
    finally:
        server.stop()
    offloaded = torch.arange(12) % 3 == 0
    for i, (batch, pred) in enumerate(zip(batches, preds, strict=True)):
        assert len(pred) == len(batch)  # no prediction missing
        own = edge_only.predict(batch)
        assert torch.equal(pred.labels[~offloaded], own.labels[~offloaded])
        assert (pred.bytes_sent[offloaded] == 3 * 32 * 32).all()
        if i < 2:
            assert not pred.fallback.any() and (pred.exit[offloaded] == EXIT_CLOUD).all()
            assert torch.equal(pred.labels[offloaded], local.classify(batch[offloaded]).labels)
            assert (pred.cloud_macs[offloaded] == local.macs_per_image).all()
        else:
            assert torch.equal(pred.fallback, offloaded)  # exactly the offloaded samples are marked
            assert torch.equal(pred.labels, own.labels)  # ... and answered by the edge
            assert (pred.exit != EXIT_CLOUD).all() and (pred.cloud_macs == 0).all()
    assert cloud.stats.fallback_images == 2 * int(offloaded.sum())
    cloud.close()


def test_retries_are_bounded_and_client_errors_are_not_retried(service, certs: DevCertificates) -> None:
    url = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    with RemoteCloud(
        url, ca_certfile=certs.ca_cert, macs_per_image=1, retries=2, backoff_s=0.01, circuit_failures=0
    ) as down:
        for calls in (1, 2):
            reply = down.classify(images(4))
            assert not reply.ok.any() and len(reply.labels) == 4
            assert down.stats.attempts == 3 * calls  # 1 + 2 retries per call, never more
        assert down.stats.failures["connection"] == 6
    with remote(service, certs, token="wrong-token-0123456789", macs_per_image=1, retries=5) as wrong:
        assert not wrong.classify(images(2)).ok.any()
        assert wrong.stats.attempts == 1 and wrong.last_error and "HTTP 403" in wrong.last_error


def test_deadline_bounds_a_silent_service_and_the_circuit_opens(certs: DevCertificates) -> None:
    with socket.socket() as silent:  # accepts TCP (kernel backlog) but never answers the TLS handshake
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"https://127.0.0.1:{silent.getsockname()[1]}"
        with RemoteCloud(
            url,
            ca_certfile=certs.ca_cert,
            macs_per_image=1,
            timeout_s=0.4,
            retries=3,
            circuit_failures=2,
            circuit_cooldown_s=60,
        ) as cloud:
            for _ in range(2):
                t0 = time.perf_counter()
                assert not cloud.classify(images(2)).ok.any()
                assert time.perf_counter() - t0 < 1.2  # the deadline holds, retries included
            assert cloud.stats.failures["timeout"] >= 2
            attempts = cloud.stats.attempts
            t0 = time.perf_counter()
            assert not cloud.classify(images(2)).ok.any()  # circuit open: immediate fallback, no request
            assert time.perf_counter() - t0 < 0.2
            assert cloud.stats.attempts == attempts and cloud.stats.skipped_calls == 1


def test_remote_cloud_refuses_plain_http_unless_allowed() -> None:
    with pytest.raises(ValueError, match="plain HTTP"):
        RemoteCloud("http://127.0.0.1:1", macs_per_image=1)


# ------------------------------------------------------------------------------------------------ payload
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_decoders_raise_only_value_error_on_random_bytes(buf: bytes) -> None:
    for decode in (payload.decode_images, payload.decode_labels):
        with contextlib.suppress(ValueError):  # anything else fails the test
            decode(buf)


@settings(max_examples=300, deadline=None)
@given(
    st.tuples(
        *(st.integers(0, 255) for _ in range(4)),
        st.integers(0, 2**32 - 1),
        *(st.integers(0, 2**16 - 1) for _ in range(3)),
    ),
    st.binary(max_size=64),
    st.booleans(),
)
def test_decoders_raise_only_value_error_on_random_headers(fields: tuple, body: bytes, real_magic: bool) -> None:
    version, kind, dtype, flags, n, c, h, w = fields
    if n * c * h * w > 64 and real_magic:  # also reach the body-length check with small, consistent shapes
        n, c, h, w = 1, 1, 2, 2
    magic = b"MEAN" if real_magic else b"XXXX"
    buf = payload._HEADER.pack(magic, version, kind, dtype, flags, n, c, h, w) + body
    for decode in (payload.decode_images, payload.decode_labels):
        with contextlib.suppress(ValueError):  # anything else fails the test
            decode(buf)


@settings(max_examples=50, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(1, 4),
    st.integers(1, 5),
    st.integers(1, 5),
    st.sampled_from([torch.uint8, torch.float32]),
)
def test_payload_round_trip(n: int, c: int, h: int, w: int, dtype: torch.dtype) -> None:
    x = torch.randint(0, 256, (n, c, h, w)).to(dtype)
    assert torch.equal(payload.decode_images(payload.encode_images(x)), x)
    labels = torch.randint(0, 1000, (n,))
    assert torch.equal(payload.decode_labels(payload.encode_labels(labels), expected=n), labels)
    with pytest.raises(payload.PayloadError, match="holds"):
        payload.decode_labels(payload.encode_labels(labels), expected=n + 1)


# ------------------------------------------------------------------------------------------------ loading, CLI
def test_load_cloud_from_train_and_federation_runs(tmp_path, cloud_model: CloudModel) -> None:
    x = images(4)
    atomic_save(cloud_payload(cloud_model, 10), tmp_path / "train" / "cloud.pt")
    atomic_save(
        {"format": FORMAT, "config": {"cloud-model": "resnet20_cifar"}, "cloud": cloud_model.state_dict()},
        tmp_path / "fed" / "state.pt",
    )
    want = LocalCloud(cloud_model).logits(x)
    for run in ("train", "fed"):
        assert torch.allclose(LocalCloud(load_cloud_from_run(tmp_path / run)).logits(x), want)
    atomic_save(
        {"format": FORMAT, "config": {"cloud_model": "resnet20_cifar"}, "stage": "main"},
        tmp_path / "unfinished" / "state.pt",
    )
    with pytest.raises(CheckpointError, match="unfinished"):
        load_cloud_from_run(tmp_path / "unfinished")
    with pytest.raises(CheckpointError, match=r"neither cloud\.pt"):
        load_cloud_from_run(tmp_path)


def test_cli_refuses_a_service_without_tls_or_authentication(tmp_path, cloud_model, certs, monkeypatch) -> None:
    monkeypatch.delenv("MEANET_CLOUD_TOKEN", raising=False)
    atomic_save(cloud_payload(cloud_model, 10), tmp_path / "cloud.pt")
    runner = CliRunner()
    r = runner.invoke(cli, ["cloud", "serve", "--run", str(tmp_path)])
    assert r.exit_code == 2 and "TLS is required" in r.output
    tls = ["--certfile", str(certs.server_cert), "--keyfile", str(certs.server_key)]
    r = runner.invoke(cli, ["cloud", "serve", "--run", str(tmp_path), *tls])
    assert r.exit_code == 2 and "clients must authenticate" in r.output
    r = runner.invoke(cli, ["cloud", "serve", "--run", str(tmp_path / "nope"), *tls, "--token", TOKEN])
    assert r.exit_code == 2 and "neither cloud.pt" in r.output


def test_service_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="too short"):
        ServiceConfig(token="short")
    with pytest.raises(ValueError, match="max_batch must be > 0"):
        ServiceConfig(max_batch=0)
