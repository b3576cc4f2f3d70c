"""Edge packages end to end: ``meanet export --format onnx [--int8]``, then the device's ``meanet edge predict`` with
torch, torchvision, Flower and Avalanche unimportable, against the real offload service on loopback (TLS + token).

The run is a tiny train run (random weights, a class prior, hard classes 1, 3, 5) on the ``digits`` dataset, whose
validation split calibrates the int8 export. The inputs are an ImageFolder whose class folders ``10``, ``2``, ``9``
sort in another order than their class ids (4, 3, 1).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from meanet_cli.main import app as cli
from meanet_core.inference.engine import AdaptiveEngine
from meanet_core.inference.policies import PaperPolicy
from meanet_core.models import CloudModel, build_meanet
from meanet_core.training.checkpoint import atomic_save, meanet_payload
from meanet_core.trust.tls import DevCertificates
from meanet_edge.inputs import open_inputs
from meanet_edge.package import EdgePackageError, is_package, read_package
from meanet_edge.policy import EdgePolicy
from meanet_edge.runtime import EdgeRuntime

from .conftest import TOKEN, start_service
from .test_edge_predict import FOLDERS, NAMES, PER_CLASS, half_to_the_cloud, image_folder, rows

BLOCKED = "import sys; [sys.modules.__setitem__(m, None) for m in ('torch', 'torchvision', 'flwr', 'avalanche')]"
DEVICE = (
    f"{BLOCKED}\nfrom meanet_edge.cli import main\nrc = main(sys.argv[1:])\n"
    "assert not [m for m in sys.modules if m.split('.')[0] in ('meanet_core', 'fl_client', 'fl_server')]\n"
    "sys.exit(rc)"
)


def device(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The device's ``meanet`` (meanet_edge.cli) in a fresh interpreter where importing torch fails."""
    import os

    return subprocess.run(
        [sys.executable, "-c", DEVICE, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The run exported three ways with the CLI: .pt, float32 package, int8 package (and the key and inputs)."""
    tmp = tmp_path_factory.mktemp("package")
    torch.manual_seed(3)
    model = build_meanet("resnet20_cifar", 10, [1, 3, 5]).eval()
    model.class_prior = torch.linspace(-0.5, 0.5, 10)  # a device's prior: the graphs must carry it
    folder = image_folder(tmp / "inputs")
    images = torch.from_numpy(np.concatenate([b.x for b in open_inputs(folder, 32, NAMES).batches(64)]))
    run = tmp / "run"
    atomic_save(meanet_payload(model), run / "meanet.pt")
    config = {"dataset": "digits", "val_fraction": 0.2, "seed": 0}
    dataset = {"name": "digits", "image_size": 32, "class_names": list(NAMES)}
    (run / "train.json").write_text(json.dumps({"config": config, "dataset": dataset}))
    (run / "eval.json").write_text(json.dumps({"policy": half_to_the_cloud(model, images)}))
    runner = CliRunner()
    paths = {"run": run, "key": run / "broadcast-signing.pub", "inputs": folder, "pt": tmp / "model.pt"}
    for name, extra in (("float32", []), ("int8", ["--int8", "--calibration-images", "64"]), ("pt", None)):
        out = tmp / ("model.pt" if extra is None else f"{name}.zip")
        fmt = [] if extra is None else ["--format", "onnx", *extra]
        r = runner.invoke(cli, ["export", "--run", str(run), "--out", str(out), *fmt])
        assert r.exit_code == 0, r.output
        paths[name] = out
        if name == "int8":
            assert "int8: calibrated on 64 images" in r.output and "digits" in r.output, r.output
    return paths


def test_the_float32_package_routes_as_the_torch_engine(exported) -> None:
    from meanet_core.training.checkpoint import load_meanet

    model = load_meanet(exported["run"] / "meanet.pt")
    package = read_package(exported["float32"], exported["key"])
    m = package.manifest
    assert m["precision"] == "float32" and m["hard_classes"] == [1, 3, 5] and m["class_names"] == list(NAMES)
    assert m["policy"]["name"] == "calibrated" and set(m["blocks"]) == {"main", "adaptive", "extension"}
    x = np.random.default_rng(5).integers(0, 256, (96, 3, 32, 32), dtype=np.uint8)
    policy = PaperPolicy(0.9)
    runtime = EdgeRuntime(package, EdgePolicy("paper", entropy_threshold=0.9))
    logits, _ = runtime.main(x.astype(np.float32) / 255)
    with torch.no_grad():
        want = model.forward_main(torch.from_numpy(x).float() / 255).logits.numpy()
    assert np.abs(logits - want).max() < 1e-4  # the class prior rides in the main graph
    ours, theirs = runtime.predict(x), AdaptiveEngine(model, policy).predict(torch.from_numpy(x))
    assert (ours.exit == 1).any() and (ours.exit == 0).any()  # both edge exits are exercised
    assert np.array_equal(ours.labels, theirs.labels.numpy()) and np.array_equal(ours.exit, theirs.exit.numpy())
    main_only = ~ours.ran_extension
    assert np.array_equal(ours.edge_macs[main_only], theirs.edge_macs.numpy()[main_only])  # the manifest's costs
    head = 64 * model.num_classes  # the torch engine's extension recomputes the main head; the graphs reuse its logits
    assert np.array_equal(ours.edge_macs[~main_only], theirs.edge_macs.numpy()[~main_only] - head)


def test_the_int8_package_is_calibrated_checked_and_smaller(exported) -> None:
    f32, i8 = read_package(exported["float32"], exported["key"]), read_package(exported["int8"], exported["key"])
    cal = i8.manifest["calibration"]
    assert i8.manifest["precision"] == "int8" and cal["images"] == 64 and "validation images of digits" in cal["source"]
    check = cal["float32_vs_int8"]
    assert check["images"] > 0 and 0.0 <= check["same_exit"] <= 1.0
    assert set(check["int8"]) >= {"main_accuracy", "edge_accuracy", "extension_accuracy_on_hard", "exits"}
    for block in ("main", "adaptive", "extension"):  # quantised graphs: QDQ nodes, int8 weights
        graph = i8.graphs[block]
        assert b"QuantizeLinear" in graph and len(graph) < 0.5 * len(f32.graphs[block])
    assert exported["int8"].stat().st_size < 0.5 * exported["pt"].stat().st_size
    assert is_package(exported["int8"]) and not is_package(exported["pt"])  # torch.save writes a zip archive too


def test_the_device_predicts_without_torch_through_the_cloud_and_falls_back(
    exported, cloud_model: CloudModel, certs: DevCertificates, tmp_path: Path
) -> None:
    pkg, key, folder = (str(exported[k]) for k in ("float32", "key", "inputs"))
    predict = ["edge", "predict", "--model", pkg, "--verify-key", key, "--images", folder, "--no-progress"]
    remote = ["--ca", str(certs.ca_cert), "--retries", "1", "--timeout", "3"]
    server = start_service(cloud_model, certs)
    try:
        r = device(*predict, "--cloud-url", server.url, *remote, "--out", str(tmp_path / "up.csv"),
                   env={"MEANET_CLOUD_TOKEN": TOKEN})  # fmt: skip
    finally:
        server.stop()
    assert r.returncode == 0, r.stderr
    assert TOKEN not in r.stdout and "1 unreadable files skipped" in r.stdout and "float32, signed by" in r.stdout
    up = rows(tmp_path / "up.csv")
    assert len(up) == len(FOLDERS) * PER_CLASS
    for path, row in up.items():
        folder_name = Path(path).parent.name
        assert row["true_label"] == str(NAMES.index(folder_name)) and row["true_class_name"] == folder_name
    cloud = {p for p, row in up.items() if row["exit"] == "cloud"}
    assert cloud and len(cloud) < len(up) and all(up[p]["fallback"] == "false" for p in up)
    assert all(up[p]["bytes_sent"] == str(3 * 32 * 32) for p in cloud)

    r = device(
        *predict,
        "--cloud-url",
        server.url,
        *remote,
        "--out",
        str(tmp_path / "down.csv"),
        env={"MEANET_CLOUD_TOKEN": TOKEN},
    )  # fmt: skip  (the service is down now)
    assert r.returncode == 0, r.stderr
    down = rows(tmp_path / "down.csv")
    assert down.keys() == up.keys() and {p for p, row in down.items() if row["fallback"] == "true"} == cloud

    r = CliRunner().invoke(cli, [*predict, "--out", str(tmp_path / "full.csv")])  # the full install, no cloud
    assert r.exit_code == 0, r.output
    full = rows(tmp_path / "full.csv")
    assert all(full[p]["label"] == down[p]["label"] and full[p]["exit"] == down[p]["exit"] for p in full)


def test_a_changed_foreign_or_unsigned_package_is_refused_before_it_runs(exported, tmp_path: Path) -> None:
    source = exported["float32"]
    with zipfile.ZipFile(source) as z:
        members = {n: z.read(n) for n in z.namelist()}

    def repack(name: str, change: dict[str, bytes | None]) -> Path:
        out = tmp_path / name
        with zipfile.ZipFile(out, "w") as z:
            for member, data in {**members, **change}.items():
                if data is not None:
                    z.writestr(member, data)
        return out

    graph = bytearray(members["extension.onnx"])
    graph[len(graph) // 2] ^= 0xFF
    manifest = json.loads(members["manifest.json"])
    manifest["hard_classes"] = [1, 3]
    other = tmp_path / "other.pub"
    from meanet_core.trust.signing import public_key_pem

    other.write_bytes(public_key_pem(Ed25519PrivateKey.generate().public_key()))
    cases = {
        repack("graph.zip", {"extension.onnx": bytes(graph)}): "does not match its signed digest",
        repack("manifest.zip", {"manifest.json": json.dumps(manifest).encode()}): "signature does not verify",
        repack("unsigned.zip", {"signature.json": None}): "unsigned",
        source: "signature does not verify",  # with another pinned key, below
    }
    for path, message in cases.items():
        key = other if path == source else exported["key"]
        with pytest.raises(EdgePackageError, match=message):
            read_package(path, key)
        out = tmp_path / f"{path.stem}.csv"
        r = device("edge", "predict", "--model", str(path), "--verify-key", str(key), "--images",
                   str(exported["inputs"]), "--out", str(out))  # fmt: skip
        assert r.returncode == 1 and "error:" in r.stderr and message in r.stderr and not out.exists()
    (tmp_path / "junk.zip").write_bytes(b"not a zip at all")
    with pytest.raises(EdgePackageError, match="not a zip archive"):
        read_package(tmp_path / "junk.zip", exported["key"])


def test_edge_bench_writes_a_profile_that_predict_reports(exported, tmp_path: Path) -> None:
    pkg, key = str(exported["int8"]), str(exported["key"])
    profile = tmp_path / "profile.json"
    r = device("edge", "bench", "--model", pkg, "--verify-key", key, "--repeats", "2", "--batch-size", "8",
               "--power-watts", "3", "--out", str(profile))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "mJ measured" in r.stdout and "mJ MACs model" in r.stdout and "3 W (stated" in r.stdout
    saved = json.loads(profile.read_text())
    assert saved["precision"] == "int8" and saved["power_w"] == 3 and saved["main_s_batch1"] > 0
    out = tmp_path / "p.csv"
    r = device("edge", "predict", "--model", pkg, "--verify-key", key, "--images", str(exported["inputs"]),
               "--out", str(out), "--profile", str(profile))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "energy from the device profile" in r.stdout and "x 3 W stated power" in r.stdout
    with out.open() as f:
        assert len(list(csv.DictReader(f))) == len(FOLDERS) * PER_CLASS
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    r = device("edge", "predict", "--model", pkg, "--verify-key", key, "--images", str(exported["inputs"]),
               "--out", str(out), "--profile", str(bad))  # fmt: skip
    assert r.returncode == 1 and "not a device profile" in r.stderr


@pytest.mark.slow
def test_a_mobilenetv2_meanet_at_96_px_exports_quantises_and_runs(tmp_path: Path) -> None:
    """ResNet-20 cannot stand in for every model: torchvision's MobileNetV2 (depthwise convolutions, ReLU6, 96 px)
    through the same export, int8 quantisation and runtime (slow: 40 s of exports; CI's -m slow run)."""
    from meanet_core.inference.export import ExportSource
    from meanet_core.inference.onnx_export import Calibration, export_package

    torch.manual_seed(0)
    model = build_meanet("mobilenetv2", 10, [2, 7], input_size=96).eval()
    source = ExportSource(model, NAMES, "", {"name": "paper", "entropy_threshold": 0.95}, "test", tmp_path, "", "mnv2")
    key = Ed25519PrivateKey.generate()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 3, 96, 96), dtype=np.uint8)
    f32_path, _ = export_package(source, tmp_path / "f32.zip", key, NAMES)
    path, check = export_package(
        source, tmp_path / "i8.zip", key, NAMES, calibration=Calibration(x, rng.integers(0, 10, 40), "random"),
        calibration_images=32,
    )  # fmt: skip
    f32, i8 = read_package(f32_path, key.public_key()), read_package(path, key.public_key())
    assert i8.manifest["input_size"] == 96 and i8.manifest["calibration"]["images"] == 32 and check is not None
    assert len(i8.graphs["main"]) < 0.4 * len(f32.graphs["main"])
    policy = EdgePolicy("paper", entropy_threshold=0.95)
    ours = EdgeRuntime(f32, policy).predict(x[:8])
    theirs = AdaptiveEngine(model, PaperPolicy(0.95)).predict(torch.from_numpy(x[:8]))
    assert np.array_equal(ours.labels, theirs.labels.numpy()) and np.array_equal(ours.exit, theirs.exit.numpy())
    quantised = EdgeRuntime(i8, policy).predict(x[:8])
    assert len(quantised) == 8 and set(np.unique(quantised.exit)) <= {0, 1}


def test_bad_inputs_get_the_errors_edge_predict_gives_today(exported, tmp_path: Path) -> None:
    base = ["edge", "predict", "--model", str(exported["int8"]), "--verify-key", str(exported["key"])]
    out = tmp_path / "p.csv"
    r = device(*base, "--images", str(tmp_path / "nowhere"), "--out", str(out))
    assert r.returncode == 1 and "does not exist; pass a folder of images or an .npz file" in r.stderr
    r = device(*base, "--images", str(exported["inputs"]), "--out", str(out), "--bad-images", "error")
    assert r.returncode == 1 and "are not readable images" in r.stderr and "notes.png" in r.stderr
    assert not out.exists()  # refused before any CSV is left behind
    r = device(*base, "--images", str(exported["inputs"]), "--out", str(tmp_path))
    assert r.returncode == 1 and "is a folder; expected a CSV file path" in r.stderr
    r = device(*base, "--images", str(exported["inputs"]), "--out", str(out), "--policy", "calibrated")
    assert r.returncode == 0, r.stderr  # the run recorded calibrated thresholds
    r = device(*base, "--images", str(exported["inputs"]), "--out", str(out), "--ca", "ca.pem")
    assert r.returncode == 1 and "give --cloud-url too" in r.stderr
    r = device("train", "--epochs", "3")
    assert r.returncode == 2 and "need the full install" in r.stderr
