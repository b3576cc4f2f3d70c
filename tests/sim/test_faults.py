"""Hostile and broken edge updates on Flower's simulation engine: the strategy drops them, the run is not harmed.

Two real runs with the same seed and config (5 edge clients, scikit-learn's digits, one experience, one round): a
clean one (``faults=""``) and one where client 0 sends NaN, client 1 weights scaled by 100 and client 2 arrays of the
wrong shape. The norm bound is the run config's default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from meanet_cli.flower_runner import FlowerRun, run_simulation
from meanet_core.config import FederationConfig

pytest.importorskip("sklearn", reason="the digits dataset comes from scikit-learn")

NUM_CLIENTS = 5
FAULTS = "0:nan,1:scale=100,2:shape"
EXPECTED_REASON = {0: "non-finite value", 1: "exceeds max_norm_ratio", 2: "has shape"}


def tiny_config(report: Path, **kw: object) -> dict[str, object]:
    """The smallest config that still learns: digits (10 classes, no data file), 600 images, one experience."""
    base: dict[str, object] = {
        "dataset": "digits", "model": "resnet20_cifar", "cloud-model": "resnet20_cifar", "num-clients": NUM_CLIENTS,
        "experiences": 1, "rounds-per-experience": 1, "cloud-epochs": 3, "local-epochs": 1, "batch-size": 32,
        "limit-train": 600, "cloud-share": 0.5, "report-dir": str(report),
    }  # fmt: skip
    return {**base, **kw}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[FlowerRun, dict[str, Any]]]:
    """The clean and the faulty run (about a minute each on 2 idle cores), with their report.json."""
    out: dict[str, tuple[FlowerRun, dict[str, Any]]] = {}
    for name, faults in (("clean", ""), ("faulty", FAULTS)):
        tmp = tmp_path_factory.mktemp(name)
        run = run_simulation(tiny_config(tmp / "report", faults=faults), NUM_CLIENTS, timeout=900, home=tmp / "flwr")
        assert run.ok, f"{name}: {run.status}: {run.details}\n{run.logs[-4000:]}"
        out[name] = (run, json.loads((tmp / "report" / "report.json").read_text()))
    return out


@pytest.mark.sim
@pytest.mark.timeout(1200)
def test_bad_updates_are_dropped_with_their_reasons(runs: dict[str, tuple[FlowerRun, dict[str, Any]]]) -> None:
    run, report = runs["faulty"]
    bound = FederationConfig().max_norm_ratio
    assert report["config"]["max-norm-ratio"] == bound > 0  # the default protects
    [record] = report["rounds"]
    client_of = {int(node): client for node, client in record["clients"].items()}
    assert sorted(client_of.values()) == list(range(NUM_CLIENTS))  # every edge replied and said who it is
    assert record["received"] == NUM_CLIENTS and record["accepted"] == 2
    assert sorted(client_of[n] for n in record["accepted_nodes"]) == [3, 4]  # only the honest ones
    reasons = {client_of[node]: reason for node, reason in record["dropped"]}
    assert sorted(reasons) == [0, 1, 2]
    for client, expected in EXPECTED_REASON.items():
        assert expected in reasons[client], (client, reasons[client])
        assert "num_batches_tracked" not in reasons[client]  # only the injected fault, nothing else, is wrong
    ratios = {client_of[int(node)]: r for node, r in record["norm_ratios"].items()}
    assert sorted(ratios) == [1, 3, 4]  # NaN and wrong shapes fail before the norm is taken
    assert ratios[3] < bound and ratios[4] < bound and ratios[1] > 50 * bound
    assert record["main_block_unchanged"] and record["main_digest_matches"]
    assert run.logs.count("dropped the update from node") == 3  # each drop logged, with its reason
    assert "non-finite value" in run.logs and "exceeds max_norm_ratio" in run.logs


@pytest.mark.sim
@pytest.mark.timeout(1200)
def test_faulty_run_is_as_accurate_as_the_clean_run(runs: dict[str, tuple[FlowerRun, dict[str, Any]]]) -> None:
    _, clean = runs["clean"]
    _, faulty = runs["faulty"]
    [clean_round] = clean["rounds"]
    assert clean_round["accepted"] == NUM_CLIENTS and clean_round["dropped"] == []
    assert max(clean_round["norm_ratios"].values()) < clean["config"]["max-norm-ratio"]  # honest edges pass
    clean_acc = clean["experiences"][0]["evaluation"]["accuracy"]
    faulty_acc = faulty["experiences"][0]["evaluation"]["accuracy"]
    assert clean_acc > 0.12  # learned something (10 classes: chance is 0.10)
    assert abs(faulty_acc - clean_acc) <= 0.02, (clean_acc, faulty_acc)
