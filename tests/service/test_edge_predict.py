"""``meanet export`` then ``meanet edge predict`` against the real offload service on loopback (TLS + token).

A tiny train run (random weights) is exported with thresholds that send about half of the inputs to the cloud; the
inputs are an ImageFolder whose class folders ``10``, ``2``, ``9`` sort in another order than their class ids
(4, 3, 1). With the service up, the offloaded inputs are answered by the cloud; with it stopped, every input still
gets a row, the offloaded ones answered by the edge and flagged; with no cloud at all, the same, and nothing is sent.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from meanet_cli.main import app as cli
from meanet_core.inference.engine import EXIT_MAIN, AdaptiveEngine, LocalCloud
from meanet_core.inference.policies import CalibratedPolicy
from meanet_core.models import CloudModel, MEANet, build_meanet
from meanet_core.training.checkpoint import atomic_save, meanet_payload
from meanet_core.trust.tls import DevCertificates
from meanet_edge.inputs import open_inputs

from .conftest import TOKEN, start_service

NAMES = ("cat", "9", "dog", "2", "10", "ant", "bee", "cow", "elk", "fox")  # folder "10" is class 4, "2" 3, "9" 1
FOLDERS = ("10", "2", "9")
PER_CLASS = 4


def image_folder(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in FOLDERS:
        (root / name).mkdir(parents=True)
        for i in range(PER_CLASS):  # 40x40: resized and cropped to the model's 32x32 as meanet train would
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    (root / "2" / "notes.png").write_text("not an image")  # skipped and counted
    return root


def half_to_the_cloud(model: MEANet, images: torch.Tensor) -> dict[str, object]:
    """Thresholds at the median confidence of each exit on these images: about half of them are offloaded."""
    pred = AdaptiveEngine(model, CalibratedPolicy(0.0, 0.0), optimize=True).predict(images)
    main = pred.exit == EXIT_MAIN

    def median(mask: torch.Tensor) -> float:
        return float(pred.edge_confidence[mask].median()) if mask.any() else 0.0

    return {"name": "calibrated", "main_threshold": median(main), "extension_threshold": median(~main)}


def rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as f:
        return {row["input"]: row for row in csv.DictReader(f)}


@pytest.fixture
def exported(tmp_path: Path) -> tuple[Path, Path, Path, dict[str, torch.Tensor]]:
    """A train run exported with meanet export: (model file, its public key, image folder, images by path)."""
    torch.manual_seed(3)
    model = build_meanet("resnet20_cifar", 10, [1, 3, 5]).eval()
    folder = image_folder(tmp_path / "inputs")
    batches = list(open_inputs(folder, 32, NAMES).batches(64))
    images = torch.from_numpy(np.concatenate([b.x for b in batches]))
    run = tmp_path / "run"
    atomic_save(meanet_payload(model), run / "meanet.pt")
    dataset = {"name": "imagefolder", "image_size": 32, "class_names": list(NAMES)}
    (run / "train.json").write_text(json.dumps({"config": {"dataset": "imagefolder"}, "dataset": dataset}))
    (run / "eval.json").write_text(json.dumps({"policy": half_to_the_cloud(model, images)}))
    r = CliRunner().invoke(cli, ["export", "--run", str(run), "--out", str(tmp_path / "model.pt")])
    assert r.exit_code == 0, r.output
    assert "routing policy: calibrated (main_threshold" in r.output and "broadcast-signing.pub" in r.output
    by_path = {name: torch.from_numpy(x) for b in batches for name, x in zip(b.names, b.x, strict=True)}
    return tmp_path / "model.pt", run / "broadcast-signing.pub", folder, by_path


def test_edge_predict_uses_the_cloud_and_falls_back_when_it_stops(
    exported, cloud_model: CloudModel, certs: DevCertificates, tmp_path: Path
) -> None:
    model, pub, folder, images = exported
    predict = ["edge", "predict", "--model", str(model), "--verify-key", str(pub), "--images", str(folder)]
    remote = ["--cloud-url", "", "--ca", str(certs.ca_cert), "--retries", "1", "--timeout", "3"]
    env = {"MEANET_CLOUD_TOKEN": TOKEN}  # the token from the environment, never printed
    runner = CliRunner()
    server = start_service(cloud_model, certs)
    try:
        remote[1] = server.url
        r = runner.invoke(cli, [*predict, *remote, "--out", str(tmp_path / "up.csv")], env=env)
        wrong = runner.invoke(
            cli, [*predict, *remote, "--out", str(tmp_path / "x.csv")], env={"MEANET_CLOUD_TOKEN": ""}
        )
    finally:
        server.stop()
    assert wrong.exit_code == 2 and "answered 401" in wrong.output and "check the token" in wrong.output
    assert not (tmp_path / "x.csv").exists()  # a misconfigured cloud stops the run before it starts
    assert r.exit_code == 0, r.output
    assert TOKEN not in r.output and "1 unreadable files skipped" in r.output and "accuracy" in r.output
    up = rows(tmp_path / "up.csv")
    assert len(up) == len(FOLDERS) * PER_CLASS  # one row per readable image
    for path, row in up.items():
        folder_name = Path(path).parent.name
        assert row["true_label"] == str(NAMES.index(folder_name)) and row["true_class_name"] == folder_name
        assert row["class_name"] == NAMES[int(row["label"])]
    cloud = {p for p, row in up.items() if row["exit"] == "cloud"}
    assert cloud and len(cloud) < len(up)  # some inputs, not all, went to the cloud ...
    assert all(up[p]["fallback"] == "false" for p in up)  # ... and it answered each of them
    local = LocalCloud(cloud_model)
    for p in cloud:
        assert int(up[p]["label"]) == int(local.classify(images[p][None]).labels[0])
        assert up[p]["bytes_sent"] == str(3 * 32 * 32) and int(up[p]["cloud_macs"]) == local.macs_per_image

    r = runner.invoke(cli, [*predict, *remote, "--out", str(tmp_path / "down.csv")], env=env)  # the service is down
    assert r.exit_code == 0, r.output
    down = rows(tmp_path / "down.csv")
    assert down.keys() == up.keys()  # nothing missing
    assert {p for p, row in down.items() if row["fallback"] == "true"} == cloud  # exactly the offloaded, flagged
    assert all(row["exit"] != "cloud" and row["cloud_macs"] == "0" for row in down.values())
    assert all(down[p]["label"] == up[p]["label"] for p in up.keys() - cloud)  # the rest as before

    r = runner.invoke(cli, [*predict, "--out", str(tmp_path / "edge.csv")])  # no cloud at all
    assert r.exit_code == 0, r.output
    edge = rows(tmp_path / "edge.csv")
    assert {p for p, row in edge.items() if row["fallback"] == "true"} == cloud
    assert all(edge[p]["label"] == down[p]["label"] and edge[p]["bytes_sent"] == "0" for p in edge)
