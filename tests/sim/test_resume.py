"""Crashes on Flower's simulation engine: the server killed mid-experience resumes where it stopped, and an edge that
dies mid-round costs only its own update for that round.

One config (3 edge clients, digits, one experience, two rounds; client 2 raises in every training round): the
server's whole process tree (SuperLink, SuperExec, flwr-simulation with the ServerApp, Ray) gets SIGKILL as soon as
``state.pt`` records a finished round; a fresh SuperLink then runs the same config, which resumes from ``state.pt``.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fl_server.launch import flwr_run, loopback_federation, run_simulation
from tests.sim.helpers import kill_tree, saved_position
from tests.sim.test_faults import tiny_config

pytest.importorskip("sklearn", reason="the digits dataset comes from scikit-learn")

NUM_CLIENTS = 3


@pytest.mark.sim
@pytest.mark.timeout(1200)
def test_killed_server_resumes_and_a_crashing_client_costs_only_its_update(tmp_path: Path) -> None:
    report_dir = tmp_path / "report"
    overrides = {
        "num-clients": NUM_CLIENTS,
        "rounds-per-experience": 2,
        "cloud-epochs": 1,
        "faults": "2:crash",
        "evaluate-every": 1,
    }
    cfg = tiny_config(report_dir, **overrides)
    state = report_dir / "state.pt"

    # 1. Start the run; kill the server's process tree once a round is checkpointed.
    killed_at: dict[str, Any] | None = None
    with loopback_federation(simulation=True, home=tmp_path / "flwr1") as fed:
        errors: list[BaseException] = []

        def follow() -> None:
            federation = f"num-supernodes={NUM_CLIENTS} client-resources-num-cpus=1"
            try:
                flwr_run(fed.connection, fed.home, cfg, federation_config=federation)
            except BaseException as e:  # the SuperLink is killed under it: `flwr ls` fails
                errors.append(e)

        threading.Thread(target=follow, daemon=True).start()
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            position = saved_position(state) if state.is_file() else None
            if position is not None and position["phase"] == "federation" and position["round"] >= 1:
                kill_tree(fed.procs[0].pid)  # the SuperLink first
                killed_at = saved_position(state)  # the last state written before the kill
                break
            time.sleep(0.5)
    assert killed_at is not None, "state.pt never recorded a finished round"
    assert killed_at["phase"] == "federation" and 1 <= killed_at["round"] <= 2
    assert not (report_dir / "report.json").exists() or killed_at["round"] == 2  # killed before the experience ended

    # 2. Restart with the same config: it resumes at the round it reached.
    run = run_simulation(cfg, NUM_CLIENTS, timeout=900, home=tmp_path / "flwr2")
    assert run.ok, f"{run.status}: {run.details}\n{run.logs[-4000:]}"
    assert f"resuming from {state} at {killed_at}" in run.logs
    report = json.loads((report_dir / "report.json").read_text())
    assert [(r["experience"], r["round"]) for r in report["rounds"]] == [(0, 1), (0, 2)]  # none lost, none twice
    [experience] = report["experiences"]
    assert "evaluation" in experience and 0.0 < experience["evaluation"]["accuracy"] <= 1.0
    assert (report_dir / "report.md").is_file() and (report_dir / "rounds.png").is_file()
    if killed_at["round"] == 1:
        assert "experience 0: training the main block" not in run.logs  # the cloud did not retrain

    # 3. The crashing client: each round went on with the other two; its error reply is counted as a drop.
    for record in report["rounds"]:
        assert record["received"] == NUM_CLIENTS and record["accepted"] == NUM_CLIENTS - 1, record
        accepted = sorted(record["clients"][str(n)] for n in record["accepted_nodes"])
        assert accepted == [0, 1]
        [(_, reason)] = record["dropped"]
        assert "error reply" in reason and "client 2 crashed mid-round" in reason, reason
        assert "client_evaluation" in record  # the crashed client still evaluated (it only fails in training)
    assert "no update from node" in run.logs
