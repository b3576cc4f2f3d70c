"""Personal edges on Flower's simulation engine: skewed devices end with their own hard classes and blocks, nothing
personal goes up, and the fleet is sampled by the devices' names."""

import json
from pathlib import Path

import pytest

from fl_server.launch import run_simulation
from strategies.fleet import draw
from tests.sim.test_federation import DATA, _config

pytestmark = pytest.mark.sim


def test_skewed_devices_keep_their_own_hard_classes_and_blocks_and_send_none_of_it(tmp_path: Path) -> None:
    assert DATA is not None, "cifar100_mini.npz not found: set MEANET_DATA_DIR to the folder holding it"
    report_dir = tmp_path / "report"
    cfg = _config(
        report_dir, experiences=1, **{"rounds-per-experience": 2, "num-clients": 3, "edges-per-round": 2,
                                      "partition": "dirichlet", "alpha": 0.1, "personal": True, "cloud-epochs": 1,
                                      "cloud-model-epochs": 1},
    )  # fmt: skip
    run = run_simulation(cfg, 3, timeout=900, home=tmp_path / "flwr")
    assert run.status == "finished:completed", run.logs[-3000:]
    report = json.loads((report_dir / "report.json").read_text())
    rounds = [r for r in report["rounds"] if r["phase"] == "edge"]
    assert len(rounds) == 2
    for r in rounds:
        assert r["rule"] == "personal" and r["accepted"] == 2 and r["bytes_received_per_client"] == 0, r
        edges = list(r["personal_edges"].values())
        assert len({tuple(e["hard_classes"]) for e in edges}) == 2, edges  # each device its own hard classes
        assert len({e["digest"] for e in edges}) == 2 and all(e["digest"] for e in edges), edges  # its own blocks
        # sampled by the devices' names (partition ids), not by Flower's random node ids: a rerun samples the same
        position = int(report["config"]["main-rounds"]) + r["round"]
        expected = draw(["0", "1", "2"], 2, (0, 0, 0, position, 0), {})  # type: ignore[arg-type]
        assert sorted(str(e["client"]) for e in edges) == sorted(expected), (edges, expected)
    trained = {e["client"] for r in rounds for e in r["personal_edges"].values()}
    per_node = rounds[-1]["client_evaluation_per_node"]
    assert len(per_node) == 2 and all(0 <= m["accuracy-main"] <= 1 for m in per_node.values())
    for m in per_node.values():  # a device never sampled for training runs the global model
        assert (m["num-hard"] >= 2) == (m["client"] in trained), (m, trained)
    assert "Per device, on its own test images" in (report_dir / "report.md").read_text()
