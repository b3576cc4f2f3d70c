"""The newest cloud model, swapped atomically: the ServerApp writes the serving file, the service follows it.

The service runs for real (uvicorn, TLS on loopback, httpx clients in threads); nothing of HTTP or TLS is mocked.
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from fl_server.offload.handoff import (
    SERVING_FILE,
    ModelSlot,
    ServingFileWatcher,
    load_served,
    prepare,
    read_serving_file,
    serving_version,
    write_serving_model,
)
from fl_server.offload.service import VERSION_HEADER, BackgroundServer, ServiceConfig, create_app
from meanet_core.models import CloudModel, build_cloud
from meanet_core.trust.tls import DevCertificates
from meanet_core.wire import payload

from .conftest import TOKEN

NAMES = tuple(f"class-{i}" for i in range(10))


def constant_model(label: int, num_classes: int = 10, side: int = 32) -> CloudModel:
    """A tiny cloud model that predicts ``label`` for every input: zero classifier weights, a one-hot bias."""
    torch.manual_seed(label)
    model = build_cloud("resnet20_cifar", num_classes, input_size=side).eval()
    fc = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]  # the classifier (K, features)
    with torch.no_grad():
        fc.weight.zero_()
        fc.bias.zero_()
        fc.bias[label] = 10.0
    return model


def publish(path: Path, label: int, version: int, num_classes: int = 10, side: int = 32) -> None:
    """Write a constant model as the serving file, atomically (as the ServerApp does)."""
    names = NAMES if num_classes == len(NAMES) else None
    model = constant_model(label, num_classes, side)
    write_serving_model(model, path, version=version, num_classes=num_classes, class_names=names)


@pytest.fixture
def watched(tmp_path: Path, certs: DevCertificates) -> Iterator[tuple[BackgroundServer, Path, httpx.Client]]:
    """A real HTTPS service following a serving file (version 0: class 3 for everything), and a client for it."""
    path = tmp_path / SERVING_FILE
    publish(path, label=3, version=0)
    config = ServiceConfig(token=TOKEN, max_batch=16, max_wait_ms=2.0, max_request_images=16, watch_poll_s=0.05)
    app = create_app(load_served(path), config, watch=path)
    server = BackgroundServer(app, certfile=certs.server_cert, keyfile=certs.server_key).start()
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    client = httpx.Client(base_url=server.url, verify=ctx, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    try:
        yield server, path, client
    finally:
        client.close()
        server.stop()


def classify(client: httpx.Client, n: int, seed: int) -> tuple[int, list[int], str | None]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)  # (n, 3, 32, 32)
    r = client.post(
        "/v1/classify", content=payload.encode_images(x), headers={"Content-Type": payload.IMAGES_CONTENT_TYPE}
    )
    labels = payload.decode_labels(r.content, n).tolist() if r.status_code == 200 else []
    return r.status_code, labels, r.headers.get(VERSION_HEADER)


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def model_info(client: httpx.Client) -> dict[str, Any]:
    r = client.get("/metrics.json")
    assert r.status_code == 200, r.text
    info: dict[str, Any] = r.json()["model"]
    return info


# ------------------------------------------------------------------------------------------------ the swap
def test_concurrent_requests_see_wholly_old_or_wholly_new_models_across_two_swaps(watched, certs) -> None:
    server, path, _ = watched
    expected = {"0": 3, "1": 7, "2": 3}  # version -> the label its model gives every input
    replies: list[tuple[int, int, list[int], str | None]] = []  # (client, status, labels, version)
    errors: list[Exception] = []
    stop = threading.Event()
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))

    def edge(k: int) -> None:
        with httpx.Client(base_url=server.url, verify=ctx, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            i = 0
            while not stop.is_set():
                try:
                    status, labels, version = classify(c, 1 + (k + i) % 6, seed=1000 * k + i)
                except Exception as e:  # a transport error is a failed request too
                    errors.append(e)
                    return
                replies.append((k, status, labels, version))
                i += 1

    threads = [threading.Thread(target=edge, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()

    def seen(version: str) -> bool:
        return any(r[3] == version for r in replies)

    try:
        wait_for(lambda: seen("0"))
        publish(path, label=7, version=1)  # atomic write while the clients keep sending
        wait_for(lambda: seen("1"))
        time.sleep(0.1)
        publish(path, label=3, version=2)
        wait_for(lambda: seen("2"))
        time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors and len(replies) >= 12, errors
    assert all(status == 200 for _, status, _, _ in replies), {s for _, s, _, _ in replies}
    for k, _, labels, version in replies:
        assert version in expected, version
        assert labels == [expected[version]] * len(labels), f"client {k}: version {version} answered {labels}"
    for k in range(4):  # each client's successive requests never go back to an older model
        versions = [int(v) for c, _, _, v in replies if c == k and v is not None]
        assert versions == sorted(versions), f"client {k} saw versions {versions}"
    _, _, client = watched
    info = model_info(client)
    assert info["version"] == 2 and info["swaps"] == 2 and info["refused"] == 0
    metrics = client.get("/metrics.json").json()
    assert metrics["images"] == sum(len(labels) for _, _, labels, _ in replies)
    assert sum(metrics["images_by_model_version"].values()) == metrics["images"]
    assert set(metrics["images_by_model_version"]) == {"0", "1", "2"}
    info_reply = client.get("/info").json()
    assert info_reply["model_version"] == 2 and info_reply["class_names"] == list(NAMES)


def test_a_corrupt_or_unfit_serving_file_is_refused_and_the_old_model_keeps_serving(watched) -> None:
    _, path, client = watched
    assert classify(client, 4, seed=1)[1:] == ([3] * 4, "0")

    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(b"PK\x03\x04 not a torch file at all")  # corrupt, but written atomically
    os.replace(tmp, path)
    wait_for(lambda: model_info(client)["refused"] == 1)
    info = model_info(client)
    assert info["version"] == 0 and "cannot be read" in info["last_refusal"], info
    assert classify(client, 4, seed=2)[1:] == ([3] * 4, "0")

    publish(path, label=2, version=1, num_classes=5)  # another run's model: other classes
    wait_for(lambda: model_info(client)["refused"] == 2)
    info = model_info(client)
    assert info["version"] == 0 and "5 classes" in info["last_refusal"], info
    assert classify(client, 2, seed=3)[1:] == ([3] * 2, "0")

    publish(path, label=1, version=1, side=24)  # another image size
    wait_for(lambda: model_info(client)["refused"] == 3)
    assert "24px" in model_info(client)["last_refusal"]

    publish(path, label=7, version=2)  # a good file after bad ones is served
    wait_for(lambda: model_info(client)["version"] == 2)
    assert classify(client, 3, seed=4)[1:] == ([7] * 3, "2")
    assert model_info(client)["swaps"] == 1


def _prometheus(client: httpx.Client) -> dict[str, list[tuple[dict[str, str], float]]]:
    """``/metrics`` parsed: sample name -> [(labels, value)]."""
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def test_the_prometheus_model_info_follows_a_hot_reload(watched) -> None:
    _, path, client = watched
    assert classify(client, 2, seed=5)[0] == 200
    before = _prometheus(client)
    ((info, _),) = before["meanet_offload_model_info"]
    assert info["version"] == "0" and info["arch"] == "resnet20_cifar" and len(info["digest"]) == 64
    assert before["meanet_offload_model_version"] == [({}, 0.0)]

    publish(path, label=7, version=1)
    wait_for(lambda: _prometheus(client)["meanet_offload_model_version"] == [({}, 1.0)])
    assert classify(client, 3, seed=6)[1:] == ([7] * 3, "1")
    after = _prometheus(client)
    ((info_after, _),) = after["meanet_offload_model_info"]  # one model served: the old one's series is gone
    assert info_after["version"] == "1" and info_after["digest"] != info["digest"]
    assert info_after["digest"] == model_info(client)["digest"]
    assert after["meanet_offload_model_swaps_total"] == [({}, 1.0)]
    assert after["meanet_offload_model_refusals_total"] == [({}, 0.0)]
    images = {labels["model_version"]: v for labels, v in after["meanet_offload_images_total"]}
    assert images == {"0": 2.0, "1": 3.0}


def test_the_watcher_reloads_on_request_and_ignores_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / SERVING_FILE
    publish(path, label=3, version=4)
    slot = ModelSlot(load_served(path))
    watcher = ServingFileWatcher(path, slot, poll_s=10.0)
    assert not watcher.check()  # the file it started from is not new
    assert watcher.check(force=True) and slot.swaps == 1  # what SIGHUP asks for
    path.unlink()
    assert not watcher.check() and slot.current.version == 4
    model, version, names = read_serving_file(_write(tmp_path / "x.pt", 7, 9))
    assert version == 9 and names == NAMES
    with pytest.raises(ValueError, match="version"):
        write_serving_model(model, tmp_path / "y.pt", version=-1, num_classes=10)
    assert prepare(model).num_classes == 10


def _write(path: Path, label: int, version: int) -> Path:
    publish(path, label=label, version=version)
    return path


# ------------------------------------------------------------------------------------------------ the writer
def _server(tmp_path: Path, cloud_url: str = "") -> Any:
    from fl_server.cloud import CloudServer
    from meanet_core.config import FederationConfig

    cfg = FederationConfig.from_run_config(
        {
            "dataset": "digits", "model": "resnet20_cifar", "cloud-model": "resnet20_cifar", "num-clients": 2,
            "experiences": 2, "rounds-per-experience": 1, "main-rounds": 0, "batch-size": 64, "limit-train": 160,
            "report-dir": str(tmp_path / "report"), "cloud-url": cloud_url, "policy": "paper",
        }
    )  # fmt: skip
    return CloudServer(cfg, log_fn=lambda _: None)


def test_the_server_writes_each_experiences_cloud_model_to_the_serving_file(tmp_path: Path, monkeypatch) -> None:
    server = _server(tmp_path)
    written: list[int] = []
    federated: list[Any] = []

    def federate(e: int, start_round: int, grid: object) -> None:
        served_model, version, names = read_serving_file(server.serving_path)  # already there when edges start
        written.append(version)
        assert names == tuple(server.splits.class_names)
        for k, v in server.cloud.state_dict().items():
            assert torch.equal(served_model.state_dict()[k], v.cpu()), k
        federated.append(e)

    monkeypatch.setattr(server, "_federate", federate)
    monkeypatch.setattr(server, "_evaluate", lambda e: None)
    monkeypatch.setattr("fl_server.report.write_report", lambda report, out: [out / "report.json"])
    server.run(grid=None)
    assert written == [0, 1] and federated == [0, 1]
    assert load_served(server.serving_path).version == 1

    server.serving_path.unlink()  # a restarted server hands the newest cloud model over again
    again = _server(tmp_path)
    again._resume()
    assert read_serving_file(again.serving_path)[1] == 1
    publish(again.serving_path, label=7, version=2)  # newer than the saved state (a crash before it was saved)
    _server(tmp_path)._resume()
    assert serving_version(again.serving_path) == 2  # kept: no rollback to an older model


@pytest.mark.parametrize("cloud_url", ["", "https://cloud.example:8443"])
def test_no_cloud_model_rides_with_evaluation_and_without_a_cloud_url_the_server_serves_it_on_loopback(
    tmp_path: Path, monkeypatch, cloud_url
) -> None:
    from meanet_core import keys

    server = _server(tmp_path, cloud_url)
    server._publish_cloud(0)
    captured: dict[str, Any] = {}

    def start(**kw: Any) -> SimpleNamespace:
        captured["cloud_arrays"], captured["config"] = server.strategy.cloud_arrays, kw["evaluate_config"]
        return SimpleNamespace(evaluate_metrics_clientapp={})

    monkeypatch.setattr(server.strategy, "start", start)
    try:
        server._federate(0, 0, grid=None)
        assert captured["cloud_arrays"] is None  # one offload path: the service, never a shipped cloud model
        url = captured["config"].get(keys.OFFLOAD_URL)
        if cloud_url:
            assert url is None and server.offload is None  # the edges call the run's cloud-url
            return
        assert url.startswith("http://127.0.0.1:")  # the real service, on loopback, for the run's own edges
        token_file = tmp_path / "report" / keys.OFFLOAD_TOKEN_FILE
        assert token_file.stat().st_mode & 0o777 == 0o600
        info = httpx.get(f"{url}/info", headers={"Authorization": f"Bearer {token_file.read_text()}"})
        assert info.status_code == 200 and info.json()["model_version"] == 0  # the serving file's model
        assert httpx.get(f"{url}/info").status_code == 401  # and only for who holds the token
    finally:
        if server.offload is not None:
            server.offload.stop()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://cloud.example:8443", "only https"),
        ("cloud.example:8443", "only https"),
        ("https://", "no host"),
        ("https://cloud.example:99999", "out of range"),
        ("https://user:secret@cloud.example", "credentials in the URL"),
        ("https://cloud.example/ x", "white space"),
    ],
)
def test_cloud_url_is_empty_or_an_https_url(url: str, reason: str) -> None:
    from meanet_core.config import ConfigError, FederationConfig

    assert FederationConfig(cloud_url="https://cloud.example:8443").cloud_url == "https://cloud.example:8443"
    assert FederationConfig().cloud_url == ""
    with pytest.raises(ConfigError, match=f"cloud-url: .*{reason}"):
        FederationConfig(cloud_url=url)
