"""Hostile and broken edge updates on Flower's simulation engine: the strategy drops them, the run is not harmed.

Two real runs with the same seed and config (6 edge clients, scikit-learn's digits, one experience, one round): a
clean one (``faults=""``) and one where client 0 sends NaN, client 1 weights scaled by 100, client 2 arrays of the
wrong shape, and client 3 lies inside every check (its step reversed and doubled, backed by 1000x its example count).
The norm bounds, claim bounds and aggregation rule are the run config's defaults.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fl_server.launch import FlowerRun, run_simulation
from meanet_core.config import FederationConfig

pytest.importorskip("sklearn", reason="the digits dataset comes from scikit-learn")

NUM_CLIENTS = 6
LIAR = 3
FAULTS = f"0:nan,1:scale=100,2:shape,{LIAR}:flip=2+claim=1000"
EXPECTED_REASON = {0: "non-finite value", 1: "exceeds max_norm_ratio", 2: "has shape"}


def tiny_config(report: Path, **kw: object) -> dict[str, object]:
    """The smallest config that still learns: digits (10 classes, no data file), 600 images, one experience."""
    base: dict[str, object] = {
        "dataset": "digits", "model": "resnet20_cifar", "cloud-model": "resnet20_cifar", "num-clients": NUM_CLIENTS,
        "experiences": 1, "rounds-per-experience": 1, "main-rounds": 0, "cloud-epochs": 3, "local-epochs": 1,
        "cloud-model-epochs": 1, "extension-epochs": 1,
        "batch-size": 32, "limit-train": 600, "cloud-share": 0.5, "report-dir": str(report),
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
    assert record["received"] == NUM_CLIENTS and record["accepted"] == 3
    assert sorted(client_of[n] for n in record["accepted_nodes"]) == [3, 4, 5]  # the liar passes every check...
    [(liar_node, why)] = record["ignored_by_rule"]  # ... but the default rule gives it no weight
    assert client_of[int(liar_node)] == LIAR and "trust score 0" in why, record["trust_scores"]
    scores = {client_of[int(node)]: score for node, score in record["trust_scores"].items()}
    assert scores[LIAR] == 0 and scores[4] > 0.3 and scores[5] > 0.3  # honest edges agree with the cloud's update
    [(clipped_node, claim)] = record["clipped_claims"]  # its claim is clipped, with the reason
    assert client_of[int(clipped_node)] == LIAR and "claimed" in claim and "median" in claim
    reasons = {client_of[node]: reason for node, reason in record["dropped"]}
    assert sorted(reasons) == [0, 1, 2]
    for client, expected in EXPECTED_REASON.items():
        assert expected in reasons[client], (client, reasons[client])
        assert "num_batches_tracked" not in reasons[client]  # only the injected fault, nothing else, is wrong
    ratios = {client_of[int(node)]: r for node, r in record["norm_ratios"].items()}
    assert sorted(ratios) == [1, 3, 4, 5]  # NaN and wrong shapes fail before the norm is taken
    assert max(ratios[3], ratios[4], ratios[5]) < record["norm_bound"] < bound and ratios[1] > 50 * bound
    assert record["main_block_unchanged"] and record["main_digest_matches"]
    assert run.logs.count("dropped the update from node") == 3  # each drop logged, with its reason
    assert "non-finite value" in run.logs and "exceeds max_norm_ratio" in run.logs


@pytest.mark.sim
@pytest.mark.timeout(1200)
def test_faulty_run_with_a_liar_is_within_a_point_of_the_clean_run(
    runs: dict[str, tuple[FlowerRun, dict[str, Any]]],
) -> None:
    _, clean = runs["clean"]
    _, faulty = runs["faulty"]
    [clean_round] = clean["rounds"]
    assert clean_round["accepted"] == NUM_CLIENTS and clean_round["dropped"] == []
    assert max(clean_round["norm_ratios"].values()) < clean_round["norm_bound"]  # honest edges pass the round's bound
    assert clean_round["clipped_claims"] == [] and clean_round["ignored_by_rule"] == []  # nobody honest is punished
    clean_acc = clean["experiences"][0]["evaluation"]["accuracy"]
    faulty_acc = faulty["experiences"][0]["evaluation"]["accuracy"]
    assert clean_acc > 0.12  # learned something (10 classes: chance is 0.10)
    assert abs(faulty_acc - clean_acc) <= 0.01, (clean_acc, faulty_acc)
