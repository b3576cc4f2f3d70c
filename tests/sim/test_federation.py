"""The whole app on Flower's engines, on loopback: the simulation engine (Ray) and the deployment engine."""

import json
import os
from pathlib import Path

import pytest

from meanet_cli.flower_runner import run_deployment, run_simulation


def _mini_dir() -> Path | None:
    for folder in (os.environ.get("MEANET_DATA_DIR"), Path(__file__).resolve().parents[3] / "shared" / "data"):
        if folder and (Path(folder) / "cifar100_mini.npz").is_file():
            return Path(folder)
    return None


DATA = _mini_dir()
needs_mini = pytest.mark.skipif(
    DATA is None, reason="cifar100_mini.npz not found: set MEANET_DATA_DIR to the folder holding it"
)


def _config(report: Path, **kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "dataset": "cifar100-mini", "data-dir": str(DATA), "model": "resnet20_cifar", "cloud-model": "resnet20_cifar",
        "experiences": 2, "rounds-per-experience": 2, "cloud-epochs": 3, "local-epochs": 1, "batch-size": 32,
        "report-dir": str(report),
    }  # fmt: skip
    return {**base, **kw}


def _check_report(report_dir: Path, num_clients: int, experiences: int, rounds: int) -> dict:
    report = json.loads((report_dir / "report.json").read_text())
    assert len(report["rounds"]) == experiences * rounds
    for r in report["rounds"]:
        assert r["accepted"] == num_clients and r["dropped"] == [], r  # every client trained, none dropped
        assert r["main_digest_matches"], r  # the main block the clients loaded is the server's broadcast
        assert r["main_block_unchanged"], r  # and aggregation did not touch it
        assert r["bytes_received_per_client"] < r["bytes_broadcast_per_client"]
    assert len(report["experiences"]) == experiences
    for e in report["experiences"]:
        ev = e["evaluation"]
        chance = 1.0 / e["seen_classes"]
        assert ev["accuracy"] > 2 * chance, (ev["accuracy"], chance)
        assert sum(ev["exits"][x]["fraction"] for x in ("main", "extension", "cloud")) == pytest.approx(1.0)
    assert (report_dir / "experiences.png").is_file() and (report_dir / "rounds.png").is_file()
    return report


@pytest.mark.sim
@needs_mini
def test_simulation_engine_runs_the_experience_loop(tmp_path: Path) -> None:
    run = run_simulation(_config(tmp_path / "report", **{"num-clients": 3}), 3, timeout=900, home=tmp_path / "flwr")
    assert run.ok, f"{run.status}: {run.details}\n{run.logs[-4000:]}"
    _check_report(tmp_path / "report", num_clients=3, experiences=2, rounds=2)


@pytest.mark.sim
@pytest.mark.deploy
@needs_mini
def test_deployment_engine_with_two_supernodes(tmp_path: Path) -> None:
    cfg = _config(tmp_path / "report", **{"num-clients": 2, "experiences": 1, "rounds-per-experience": 1})
    run = run_deployment(cfg, 2, timeout=900, home=tmp_path / "flwr")
    assert run.ok, f"{run.status}: {run.details}\n{run.logs[-4000:]}"
    _check_report(tmp_path / "report", num_clients=2, experiences=1, rounds=1)
