"""The whole app on Flower's engines, on loopback: the simulation engine (Ray) and the deployment engine."""

import json
import os
from pathlib import Path

import pytest

from benchmarks.cloud_worth import run_comparison
from fl_server.launch import run_deployment, run_simulation
from fl_server.report import communication
from tests.sim.helpers import left_behind


def _mini_dir() -> Path | None:
    for folder in (os.environ.get("MEANET_DATA_DIR"), Path(__file__).resolve().parents[3] / "shared" / "data"):
        if folder and (Path(folder) / "cifar100_mini.npz").is_file():
            return Path(folder)
    return None


DATA = _mini_dir()
needs_mini = pytest.mark.skipif(
    DATA is None, reason="cifar100_mini.npz not found: set MEANET_DATA_DIR to the folder holding it"
)


# Timings come from two clocks: wall-clock time.time() (the edges' training intervals, shifted by the server's send
# time; values near 1.7e9 s carry ~2e-7 s of float rounding) and time.perf_counter() (durations). A comparison within
# one clock allows float rounding only; across the clocks it allows CLOCK_SKEW_S, far above the rounding and the
# drift NTP slewing can add in a round (500 ppm of ~100 s), far below any real ordering error (seconds).
FLOAT_SLACK_S = 1e-6
CLOCK_SKEW_S = 0.05


def _config(report: Path, **kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "dataset": "cifar100-mini", "data-dir": str(DATA), "model": "resnet20_cifar", "cloud-model": "resnet20_cifar",
        "experiences": 2, "rounds-per-experience": 2, "main-rounds": 0, "cloud-epochs": 5, "local-epochs": 1,
        "cloud-model-epochs": 2, "extension-epochs": 1,
        "batch-size": 32, "cloud-share": 0.5, "report-dir": str(report),
    }  # fmt: skip
    return {**base, **kw}


def _check_main_rounds(report: dict, num_clients: int, experiences: int, main_rounds: int) -> None:
    """Main rounds: every edge trained the main block on all its images; only main.* came back (int8), and the
    aggregate changed the main block; no evaluation."""
    rounds = [r for r in report["rounds"] if r["phase"] == "main"]
    assert len(rounds) == experiences * main_rounds
    for r in rounds:
        assert r["accepted"] == num_clients and r["dropped"] == [], r
        assert r["main_block_changed"], r
        assert not r.get("client_evaluation"), r
        assert 0 < r["bytes_received_per_client"] < 0.3 * r["full_state_bytes"], r  # int8 main block only
        assert r["rule"] == "median", r  # the main rounds' default rule
    for e in report["experiences"]:  # each edge claimed all its images of the experience, not its hard ones
        claims = [r["claims"] for r in rounds if r["experience"] == e["experience"]]
        assert all(sorted(c.values()) == sorted(e["edge_images"]) for c in claims), (claims, e["edge_images"])
    # a main round sends no edge block; nobody holds anything before the first one (the state without the edge
    # blocks, in full); a later experience's first main round finds the edges holding the state they evaluated
    # (nothing changed since: no array goes down); every other one is an int8 change from what the edges hold
    for r in rounds:
        down = r["bytes_broadcast_per_client"] / r["full_state_bytes"]
        if r["round"] == 1:
            assert (0.5 < down < 0.7) if r["experience"] == 0 else down == 0, r
        else:
            assert 0 < down < 0.25, r
    for e in report["experiences"]:  # the main block's validation accuracy before (and after) the main rounds
        assert set(e["main_val_accuracy"]) == ({"after_cloud", "after_main_rounds"} if main_rounds else {"after_cloud"})


def _check_report(report_dir: Path, num_clients: int, experiences: int, rounds: int, learned: bool = True) -> dict:
    report = json.loads((report_dir / "report.json").read_text())
    main_rounds = int(report["config"]["main-rounds"])
    _check_main_rounds(report, num_clients, experiences, main_rounds)
    assert len(report["rounds"]) == experiences * (rounds + main_rounds)
    every = int(report["config"]["evaluate-every"])
    for r in report["rounds"]:
        if r["phase"] == "main":
            continue
        assert r["accepted"] == num_clients and r["dropped"] == [], r  # every client trained, none dropped
        # The edges evaluate after an experience's last round, and every `evaluate-every` rounds when it is > 0.
        evaluated = r["round"] == rounds or (every > 0 and r["round"] % every == 0)
        assert bool(r.get("client_evaluation")) == evaluated, r
        if evaluated:  # one offload path: every edge called the real service on loopback, which counted each input
            assert {e["cloud"] for e in r["client_evaluation_per_node"].values()} == {"remote"}, r
            assert r["offload_service_images"] == r["client_offload_totals"]["offloaded"] > 0, r
            assert r["client_offload_totals"]["fallbacks"] == 0 and r["bytes_cloud_model_per_client"] == 0, r
        assert (r["client_evaluation_seconds"] > 0) == evaluated, r
        # Each edge's training interval lies inside the round's training phase; the union is the local training.
        # The intervals and local_training_seconds are wall-clock (time.time, one clock); train_phase_seconds and the
        # per-edge client_train_seconds are time.perf_counter: comparisons across the two clocks allow CLOCK_SKEW_S.
        intervals = r["client_train_intervals"]
        assert len(intervals) == num_clients, r
        assert all(0 <= a <= b <= r["train_phase_seconds"] + CLOCK_SKEW_S for a, b in intervals), r
        lengths = [b - a for a, b in intervals]
        assert max(lengths) <= r["local_training_seconds"] + FLOAT_SLACK_S, r  # one clock: the union holds each
        assert r["local_training_seconds"] <= sum(lengths) + FLOAT_SLACK_S, r  # and is at most their sum
        for seconds, length in zip(r["client_train_seconds"], lengths, strict=True):
            assert seconds <= length + CLOCK_SKEW_S, r  # an edge's perf_counter time lies inside its wall interval
        assert r["slowest_edge_training_seconds"] <= r["local_training_seconds"] + CLOCK_SKEW_S, r
        assert r["main_digest_matches"], r  # the main block the clients loaded is the server's broadcast
        assert r["main_block_unchanged"], r  # and aggregation did not touch it
        assert r["bytes_received_per_client"] < 0.15 * r["full_state_bytes"]  # int8 edge blocks only
        assert r["upload_ratio_vs_full_model"] == pytest.approx(r["bytes_received_per_client"] / r["full_state_bytes"])
        # the run's first broadcast is the whole state (nobody holds anything yet); after it every edge holds the last
        # state, and each round is a change from it (the main block's too, when it changed)
        if main_rounds == 0 and r["experience"] == 0 and r["round"] == 1:
            assert r["bytes_broadcast_per_client"] == r["full_state_bytes"], r
        else:
            assert 0 < r["bytes_broadcast_per_client"] < 0.3 * r["full_state_bytes"], r
        assert r["clipped_claims"] == [], r  # honest edges' example counts are taken as claimed
        assert len(r["trust_scores"]) == num_clients, r  # FLTrust (the default) scored every accepted edge
    assert len(report["experiences"]) == experiences
    for e in report["experiences"]:
        ev = e["evaluation"]
        chance = 1.0 / e["seen_classes"]
        assert 0.0 <= ev["accuracy"] <= 1.0
        if learned:
            assert ev["accuracy"] > 2 * chance, (ev["accuracy"], chance)
        assert sum(ev["exits"][x]["fraction"] for x in ("main", "extension", "cloud")) == pytest.approx(1.0)
        # what calling the cloud added = the offloaded share x (the cloud's accuracy - the edge's) on those inputs
        ref, sent = ev["reference_accuracy"], ev["exits"]["cloud"]["fraction"]
        if sent:
            gain = sent * (ref["offloaded_cloud"] - ref["offloaded_edge"])
            assert ref["meanet_with_cloud"] - ref["edge_main_plus_extension"] == pytest.approx(gain, abs=1e-6), ref
        else:
            assert ref["offloaded_cloud"] is None and ref["offloaded_edge"] is None, ref
    assert (report_dir / "experiences.png").is_file() and (report_dir / "rounds.png").is_file()
    rows = [line for line in (report_dir / "report.md").read_text().splitlines() if line.startswith("| ")]
    per_edge = sum(len(r.get("client_evaluation_per_node") or {}) for r in report["rounds"])
    assert per_edge == num_clients * sum(bool(r.get("client_evaluation")) for r in report["rounds"])  # every edge
    # two headers, one row per experience and round; with main rounds, a header and one row per experience (the main
    # block's validation accuracy before and after them); a header and one row per kind of round; then the per-edge
    # table: a header, one row per edge evaluation; the hard classes and the training budget: a header and one row
    # per experience each
    kinds = 2 if main_rounds else 1
    staged = 1 + experiences if main_rounds else 0
    assert len(rows) == 2 + experiences + staged + experiences * (rounds + main_rounds) + 1 + kinds + (
        1 + experiences  # bytes per edge and experience against FedAvg-full
    ) + (1 + per_edge if per_edge else 0) + 2 * (1 + experiences)
    for x in communication(report["rounds"]):  # both ways, far below FedAvg of the whole model in the same rounds
        # (a one-round run is its first broadcast, the whole state: a bit over a third of FedAvg's)
        assert x["rounds"] == rounds + main_rounds and 0 < x["ratio_vs_fedavg_full"] < (
            0.35 if x["rounds"] > 2 else 0.5
        ), x
    assert "| experience | hard-class test inputs | main only | main + extension | edge as run |" in "\n".join(rows)
    return report


@pytest.mark.sim
@pytest.mark.timeout(1200)  # about 3 minutes on 2 idle cores; generous for a loaded CI machine
@needs_mini
def test_simulation_engine_runs_the_experience_loop(tmp_path: Path) -> None:
    # with one main round per experience: the edges' images reach the main block
    cfg = _config(tmp_path / "report", **{"num-clients": 3, "main-rounds": 1})
    run = run_simulation(cfg, 3, timeout=900, home=tmp_path / "flwr")
    assert run.ok, f"{run.status}: {run.details}\n{run.logs[-4000:]}"
    report = _check_report(tmp_path / "report", num_clients=3, experiences=2, rounds=2)
    assert left_behind(tmp_path / "flwr") == []  # Ray and flwr-simulation were ended with the SuperLink
    # benchmarks/cloud_worth.py on this run: its own cloud model reproduces the run's last evaluation; a fresh cloud
    # model trains on everything the cloud holds
    result = run_comparison(tmp_path / "report", epochs=[1], log=lambda _: None)
    last = report["experiences"][-1]
    ev, ref = last["evaluation"], last["evaluation"]["reference_accuracy"]
    own, fresh = result["rows"]
    assert result["experience"] == 1 and result["cloud_images"] == last["cloud_images"]
    assert own["cloud"] == "run" and fresh["cloud"] == "1 epochs"
    one = 1.01 / result["test_images"]  # one image: another thread count may round a tie the other way
    for key in ("meanet_with_cloud", "cloud_only"):
        assert own[key] == pytest.approx(ref[key], abs=one), key
    assert own["edge"] == pytest.approx(ref["edge_main_plus_extension"], abs=one)
    assert own["cloud_fraction"] == pytest.approx(ev["exits"]["cloud"]["fraction"], abs=one)
    assert fresh["training_image_passes"] == last["cloud_images"] and fresh["training_seconds"] > 0


@pytest.mark.sim
@pytest.mark.deploy
@pytest.mark.timeout(1200)
@needs_mini
def test_deployment_engine_with_two_supernodes(tmp_path: Path) -> None:
    # The plumbing, not the learning (the simulation test checks that): one experience, one round, one cloud epoch.
    cfg = _config(tmp_path / "report", **{"num-clients": 2, "experiences": 1, "rounds-per-experience": 1})
    run = run_deployment({**cfg, "cloud-epochs": 1}, 2, timeout=900, home=tmp_path / "flwr")
    assert run.ok, f"{run.status}: {run.details}\n{run.logs[-4000:]}"
    _check_report(tmp_path / "report", num_clients=2, experiences=1, rounds=1, learned=False)
    assert left_behind(tmp_path / "flwr") == []  # the SuperLink and both SuperNodes were ended
