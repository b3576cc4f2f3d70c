"""A fleet that comes and goes, on loopback with real Flower engines: per-round sampling in simulation, and in a
deployment a SuperNode killed mid-round (SIGKILL, its whole process tree), then started again.

Config: scikit-learn's digits, one experience (``tests.sim.test_faults.tiny_config``). The kill test lets SuperNode 2
train in round 1, waits for its next ClientApp process (its SuperExec starts one per instruction: a round is in
flight) and kills the SuperNode's process tree at once; once the server has recorded that round and the next one, it
starts the SuperNode again with the same partition.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from fl_server.launch import FlowerRun, flwr_run, loopback_federation, run_deployment, run_simulation, start_supernode
from tests.sim.helpers import kill_tree, left_behind, saved_position
from tests.sim.test_faults import tiny_config

pytest.importorskip("sklearn", reason="the digits dataset comes from scikit-learn")

ROUND_TIMEOUT = 60.0


def _round(state: Path) -> int:
    """The edge rounds the server has recorded (``state.pt``'s position)."""
    position = saved_position(state) or {}
    return int(position.get("round", 0)) if position.get("phase") == "federation" else 0


def _clientapps(pid: int) -> set[int]:
    """The ClientApp processes of SuperNode ``pid``: its SuperExec starts one per instruction (and runs itself from
    the start)."""
    found = set()
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if any("flwr-clientapp" in part for part in child.cmdline()):
                found.add(child.pid)
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.mark.sim
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "engine", ["simulation", pytest.param("deployment", marks=[pytest.mark.deploy, pytest.mark.slow])]
)
def test_each_round_samples_edges_per_round_and_every_reply_is_from_a_sampled_edge(tmp_path: Path, engine: str) -> None:
    report_dir, edges = tmp_path / "report", 5 if engine == "simulation" else 3
    cfg = tiny_config(report_dir, **{"num-clients": edges, "edges-per-round": 2, "rounds-per-experience": 3})
    run = (run_simulation if engine == "simulation" else run_deployment)(cfg, edges, timeout=600, home=tmp_path / "f")
    assert run.ok, f"{run.status}: {run.details}\n{run.logs[-4000:]}"
    rounds = json.loads((report_dir / "report.json").read_text())["rounds"]
    assert len(rounds) == 3
    trained: set[tuple[int, ...]] = set()
    for r in rounds:
        assert len(r["sampled_nodes"]) == 2 and r["connected_nodes"] == edges, r
        assert set(r["accepted_nodes"]) <= set(r["sampled_nodes"]) and r["received"] <= 2
        assert r["participation"]["sampled"] == 2 and len(r["participation"]["trained"]) == r["accepted"] >= 1
        trained.add(tuple(r["participation"]["trained"]))
    assert len(trained) > 1  # the rounds sampled different edges
    assert f"sampled 2 of {edges} connected edges" in run.logs


@pytest.mark.sim
@pytest.mark.deploy
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_supernode_killed_mid_round_is_missed_and_trains_again_when_it_comes_back(tmp_path: Path) -> None:
    report_dir, state = tmp_path / "report", tmp_path / "report" / "state.pt"
    cfg = tiny_config(
        report_dir,
        **{"num-clients": 3, "rounds-per-experience": 6, "min-edges": 2, "round-timeout": ROUND_TIMEOUT},
        personal=True,  # its own blocks live in its SuperNode's state-dir: the restarted one goes on from them
    )
    result: list[FlowerRun | BaseException] = []
    timeline: dict[str, float] = {}
    with loopback_federation(simulation=False, num_supernodes=3, home=tmp_path / "flwr") as fed:
        victim = fed.procs[3]  # the SuperLink, then SuperNodes 0, 1, 2

        def follow() -> None:
            try:
                result.append(flwr_run(fed.connection, fed.home, cfg, timeout=900))
            except BaseException as e:
                result.append(e)

        start = time.monotonic()
        threading.Thread(target=follow, daemon=True).start()
        deadline = start + 600
        # it trains in round 1 (so the server knows its client index), then is killed on round 2's instruction
        seen: set[int] = set()
        for tick in itertools.count():
            seen |= _clientapps(victim.pid)
            if time.monotonic() > deadline or (tick % 10 == 0 and state.is_file() and _round(state) >= 1):
                break
            time.sleep(0.05)
        seen |= _clientapps(victim.pid)
        while time.monotonic() < deadline and not (_clientapps(victim.pid) - seen):
            time.sleep(0.05)
        assert time.monotonic() < deadline, "SuperNode 2 never received a second instruction"
        kill_tree(victim.pid)
        timeline["killed"] = time.monotonic() - start
        done = _round(state)  # rounds finished when it was killed
        while time.monotonic() < deadline and _round(state) < done + 2:  # the round it was in, and the next one
            time.sleep(0.5)
        start_supernode(fed, 2, 3, log_name="supernode-2-again.log")
        timeline["restarted"] = time.monotonic() - start
        while not result and time.monotonic() < start + 1100:
            time.sleep(1)
        timeline["finished"] = time.monotonic() - start
    [run] = result
    assert isinstance(run, FlowerRun), run
    assert run.ok, f"{run.status}: {run.details}\n{run.logs[-4000:]}"
    rounds: list[dict[str, Any]] = json.loads((report_dir / "report.json").read_text())["rounds"]
    parts = [(r["phase"], r["round"], r["participation"]) for r in rounds]
    missed = [i for i, (_, _, p) in enumerate(parts) if 2 in p["missed"]]
    assert missed, parts
    first = missed[0]
    assert first >= 1 and parts[first][2]["trained"] == [0, 1], parts  # the round went on with the other two
    # what the dead device cost: its round waited at most the deadline (+ 10 s), and the next round did not wait for it
    waits = [round(r["train_phase_seconds"], 1) for r in rounds]  # from sending the instructions to aggregating
    assert max(waits) <= ROUND_TIMEOUT + 10, waits
    assert 2 not in parts[first + 1][2]["missed"] and 2 not in parts[first + 1][2]["trained"], parts
    back = [i for i, (_, _, p) in enumerate(parts) if i > first and 2 in p["trained"]]
    assert back, f"client 2 never trained after it came back: {parts}"
    assert parts[back[0]][2]["rejoined"] == [2]
    # personal blocks survive the kill: the restarted SuperNode loads its file and goes on from the blocks it kept
    kept = [e for r in rounds[:first] for e in r["personal_edges"].values() if e["client"] == 2]
    resumed = [e for e in rounds[back[0]]["personal_edges"].values() if e["client"] == 2]
    assert kept and resumed and resumed[0]["base"] == kept[-1]["digest"], (kept, resumed)
    assert (tmp_path / "flwr" / "supernode-2" / "personal.state").is_file()
    assert left_behind(tmp_path / "flwr") == []
    print(json.dumps({"timeline_s": timeline, "waits_s": waits, "rounds": parts}))
