"""A deployment whose edges have their own images and offload to the real cloud service during evaluation.

Real components throughout: Flower's SuperLink and two SuperNodes as subprocesses, each SuperNode reading its own
ImageFolder (different classes and counts, made here from the digits data) named in its node config along with the
cloud service's CA and token file; ``meanet cloud serve`` as a subprocess over TLS with a bearer token (``meanet
certs`` made the certificates). The run's ``cloud-url`` names the service: the edges' complex inputs go there over
HTTPS, and the report says, per edge, what each trained and evaluated on, offloaded, fell back on and sent. The
edges name themselves (partition ids 7 and 12) and outnumber the run's ``num-clients`` (1 slice of the shared stream,
which they do not read): the fleet is whoever connects.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fl_client.local_data import read_edge_data
from fl_server.launch import VENV_BIN, free_port, run_deployment
from meanet_cli.main import app as cli
from meanet_core import keys
from meanet_core.data import load_dataset
from meanet_core.models import build_cloud
from meanet_core.training.checkpoint import atomic_save, cloud_payload
from tests.sim.helpers import left_behind

TOKEN = "edge-offload-deploy-token-0123456789"
NAMES = tuple(str(i) for i in range(10))  # the digits' class names: the class folders are named after them
EDGES = ({c: 14 for c in range(0, 6)}, {c: 9 for c in range(4, 10)})  # class -> images: other classes, other counts


def _folders(root: Path) -> list[Path]:
    """One ImageFolder per edge, from disjoint digits training images."""
    x, y = (t.numpy() for t in (lambda s: (s.train.x, s.train.y))(load_dataset("digits")))
    used: set[int] = set()
    folders = []
    for i, counts in enumerate(EDGES):
        folder = root / f"edge-{i}"
        for c, n in counts.items():
            picks = [int(j) for j in np.flatnonzero(y == c) if int(j) not in used][:n]
            assert len(picks) == n
            used.update(picks)
            (folder / NAMES[c]).mkdir(parents=True)
            for j in picks:
                Image.fromarray(x[j].transpose(1, 2, 0)).save(folder / NAMES[c] / f"{j}.png")
        folders.append(folder)
    return folders


@pytest.fixture
def cloud_service(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``meanet cloud serve`` over TLS with a token, serving an untrained digits cloud model: (url, certs folder)."""
    certs = tmp_path / "certs"
    result = CliRunner().invoke(cli, ["certs", "--out", str(certs), "--supernodes", "0"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "served"
    run.mkdir()
    atomic_save(cloud_payload(build_cloud("resnet20_cifar", 10).eval(), 10), run / "cloud.pt")
    port = free_port()
    log = tmp_path / "cloud-serve.log"
    cmd = [str(VENV_BIN / "meanet"), "cloud", "serve", "--run", str(run), "--port", str(port), "--threads", "1"]
    cmd += ["--certfile", str(certs / "server.pem"), "--keyfile", str(certs / "server.key")]
    env = {**os.environ, "MEANET_CLOUD_TOKEN": TOKEN}
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        verify = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", verify=verify, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        yield url, certs
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _served_images(url: str, certs: Path) -> int:
    verify = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    r = httpx.get(f"{url}/metrics.json", verify=verify, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 200, r.text
    return int(r.json()["images"])


@pytest.mark.sim
@pytest.mark.deploy
@pytest.mark.timeout(600)  # about 3 minutes on 2 cores: two SuperNodes start ClientApp processes with torch
def test_edges_with_their_own_data_offload_to_the_real_cloud_service(
    tmp_path: Path, cloud_service: tuple[str, Path]
) -> None:
    url, certs = cloud_service
    folders = _folders(tmp_path / "edges")
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "token").chmod(0o600)
    credentials = {"cloud-ca": str(certs / "ca.pem"), "cloud-token-file": str(tmp_path / "token"), "cloud-timeout": 60}
    report_dir = tmp_path / "report"
    run_config: dict[str, object] = {
        # num-clients counts the shared stream's slices; these edges read none, so the fleet outnumbers it
        "dataset": "digits", "model": "resnet20_cifar", "cloud-model": "resnet20_cifar", "num-clients": 1,
        "min-edges": 2,
        "experiences": 1, "rounds-per-experience": 1, "main-rounds": 0, "cloud-epochs": 1, "local-epochs": 1,
        "cloud-model-epochs": 1, "extension-epochs": 1,
        "batch-size": 64, "limit-train": 400, "report-dir": str(report_dir), "cloud-url": url,
        # the paper's rule: a main-block answer less sure than this normalised entropy goes to the cloud; after one
        # cloud epoch most are (the calibrated rule can keep every input of an edge's classes on the extension)
        "policy": "paper", "entropy-threshold": 0.25,
    }  # fmt: skip
    ids = (7, 12)  # an edge with its own data names itself: any distinct ids, not positions, no num-partitions check
    node_configs = [{"data-dir": str(f), "partition-id": i, **credentials} for f, i in zip(folders, ids, strict=True)]
    run = run_deployment(run_config, 2, timeout=500, home=tmp_path / "flwr", node_configs=node_configs)
    assert run.ok, f"{run.status}: {run.details}\n{run.logs[-4000:]}"

    report = json.loads((report_dir / "report.json").read_text())
    (rnd,) = report["rounds"]
    assert rnd["accepted"] == 2 and rnd["dropped"] == [], rnd
    hard = set(report["experiences"][0]["hard_classes"])
    seed = int(report["config"]["seed"])
    per_node = rnd["client_evaluation_per_node"]
    assert len(per_node) == 2 and sorted(int(m["client"]) for m in per_node.values()) == [7, 12], rnd
    offloaded = 0
    for node, m in per_node.items():
        client = int(m["client"])
        assert rnd["clients"][node] == client  # the same edge trained and evaluated
        own = read_edge_data(folders[ids.index(client)], NAMES, image_size=32, seed=seed)
        train_hard = sum(int(c) in hard for c in own.train(0).y.tolist())
        assert rnd["claims"][node] == train_hard, (node, client, rnd["claims"], hard)  # its own folder's hard images
        assert m[keys.NUM_EXAMPLES] == len(own.test(0)), (node, m)  # and its own held-out images
        assert m["cloud"] == "remote", m  # the real service, not a shipped stand-in
        assert m[keys.FALLBACKS] == 0, m  # every offloaded input was answered
        assert m[keys.BYTES_SENT] == m[keys.OFFLOADED] * 3 * 32 * 32, m
        offloaded += int(m[keys.OFFLOADED])
    assert offloaded > 0, per_node
    assert rnd["client_offload_totals"][keys.OFFLOADED] == offloaded
    assert _served_images(url, certs) == offloaded  # the service classified exactly what the edges sent
    assert rnd["bytes_evaluate_per_client"] <= rnd["full_state_bytes"]  # no cloud model shipped to the edges
    md = (report_dir / "report.md").read_text()
    assert "| offloaded | fallbacks | bytes sent |" in md
    assert left_behind(tmp_path / "flwr") == []
