"""``meanet-fl-main-*``: MEANet-FL with main rounds in the continual benchmark, end to end on a tiny scenario
(scikit-learn's digits: offline, 10 classes, 2 experiences), through ``meanet bench continual`` as the other
benchmark tests run it, on one thread (tiny batches on two threads of a busy machine mostly wait). About 30 s."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from benchmarks.continual.common import Context
from benchmarks.continual.config import BenchConfig
from benchmarks.continual.methods import build_method
from benchmarks.continual.scenarios import Scenario, build_scenario
from benchmarks.continual.shared import CloudTrajectory
from meanet_cli.main import app
from meanet_core.models import build_meanet
from meanet_core.training.checkpoint import safe_load
from meanet_core.trust.broadcast import digest, edge_state, main_state

SETTINGS: dict[str, Any] = dict(
    scenario="split-digits",
    experiences=2,
    epochs=1,
    clients=2,
    limit_train=300,
    limit_test=50,
    cloud_share=0.5,
    cloud_model="resnet20_cifar",
    batch_size=32,
)
ARGS = [a for k, v in SETTINGS.items() for a in (f"--{k.replace('_', '-')}", str(v))]
METHODS = ("meanet-fl-main-naive", "fedavg-naive")
ROUNDS = BenchConfig().main_rounds  # the CLI runs the default number of main rounds


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    assert ROUNDS >= 1  # the checks below need main rounds
    out = tmp_path_factory.mktemp("bench-main")
    cli = ["bench", "continual", *ARGS, "--methods", ",".join(METHODS), "--no-progress", "--threads", "1"]
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, [*cli, "--out", str(out)])
    finally:
        torch.set_num_threads(threads)  # the option sets it for the whole process
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "results.json").read_text())["runs"]["0"]


def scenario() -> Scenario:
    """The scenario the benchmark ran (built the same way: the same seed, split and limits)."""
    s = SETTINGS
    return build_scenario(
        s["scenario"], num_experiences=s["experiences"], num_clients=s["clients"], cloud_share=s["cloud_share"],
        seed=0, val_fraction=BenchConfig().val_fraction, limit_train=s["limit_train"], limit_test=s["limit_test"],
    )  # fmt: skip


def trajectory_digest(out: Path, t: int) -> str:
    """The main block of the shared cloud trajectory after experience ``t`` (trained on the cloud's data only)."""
    return digest(safe_load(out / "seed-0" / "cloud" / f"exp-{t}.pt")["main_state"])


def test_the_method_runs_end_to_end_and_is_reported(bench: tuple[Path, dict[str, Any]]) -> None:
    out, runs = bench
    r = runs["meanet-fl-main-naive"]
    a = r["accuracy_matrix"]
    assert len(a) == 2 and a[0][1] is None and all(0.0 <= v <= 1.0 for v in (a[0][0], a[1][0], a[1][1]))
    assert r["final_forgetting"] == pytest.approx(a[0][0] - a[1][0])
    assert sum(r["exits"].values()) == pytest.approx(1.0) and r["cloud_fraction"] <= 0.2 + 0.25
    for e in r["experiences"]:
        assert e["extra"]["main_rounds"]["rounds"] == ROUNDS
        assert e["extra"]["main_rounds"]["clients_trained"] == [SETTINGS["clients"]] * ROUNDS
        assert e["seconds"]["main_rounds"] > 0 and e["seconds"]["edge_training"] >= 0
    assert "| meanet-fl-main-naive |" in (out / "results.md").read_text()


def test_the_edges_change_the_main_block_and_their_images_are_counted(bench: tuple[Path, dict[str, Any]]) -> None:
    out, runs = bench
    s = scenario()
    for t, e in enumerate(runs["meanet-fl-main-naive"]["experiences"]):
        # the main rounds moved this method's main block away from the cloud's own (the control is the next test)
        assert e["extra"]["main_digest"] != trajectory_digest(out, t)
        clients = s.experiences[t].clients
        hard = np.array(e["extra"]["hard_classes"])
        # one epoch: each main round trains every edge image once; the edge round (Naive, no replay) each hard one
        main_images = ROUNDS * sum(len(c) for c in clients)
        edge_round = sum(int(np.isin(c.y.numpy(), hard).sum()) for c in clients)
        b = e["extra"]["budget"]
        assert e["extra"]["main_rounds"]["trained_edge"] == main_images
        assert b["trained_edge"] == main_images + edge_round
        assert b["edge_used"] == b["edge_new"] == sum(len(c) for c in clients)  # every edge image reaches the block
        # the cloud trains its main block and the trajectory's cloud model on all it holds, then adaptive + extension
        # on its hard-class images (chosen on this main block)
        cloud = s.cloud_data(t)
        assert b["trained_cloud"] == 2 * len(cloud) + int(np.isin(cloud.y.numpy(), hard).sum())


def test_without_main_rounds_the_main_block_is_the_trajectorys(bench: tuple[Path, dict[str, Any]]) -> None:
    # the control for the test above: the same method with 0 main rounds reproduces the cloud's own main block
    # bit for bit, so the difference there comes from the edges' rounds, not from how the method trains
    out, _ = bench
    cfg = BenchConfig(**SETTINGS, methods=("meanet-fl-main-naive",), main_rounds=0)
    s = scenario()
    trajectory = CloudTrajectory(replace(cfg, main_rounds=ROUNDS), s, 0, out / "seed-0" / "cloud")  # the cached one
    method = build_method("meanet-fl-main-naive", Context(cfg, s, 0, trajectory))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trajectory was trained
    try:
        for t in range(len(s)):
            e = method.run_experience(t)
            assert e.extra["main_digest"] == trajectory_digest(out, t)
            assert e.extra["main_rounds"]["model_up"] == 0 and e.extra["main_rounds"]["trained_edge"] == 0
    finally:
        torch.set_num_threads(threads)


def int8_bytes(state: dict[str, Any]) -> int:
    """What ``meanet_core.wire.compression``'s int8 encoding of ``state`` weighs: one byte per floating value, one
    float32 scale per output channel (per tensor for 0-d and 1-d arrays), integer counters as they are."""
    total = 0
    for v in state.values():
        if v.is_floating_point():
            total += v.numel() + 4 * (v.shape[0] if v.dim() >= 2 else 1)
        else:
            total += v.numel() * v.element_size()
    return total


def test_main_round_uploads_are_int8_and_far_smaller_than_fedavg_uploads(bench: tuple[Path, dict[str, Any]]) -> None:
    _, runs = bench
    model = build_meanet("resnet20_cifar", 10)
    main = main_state(model.state_dict())
    per_edge = int8_bytes(main)
    float32 = sum(v.numel() * v.element_size() for v in main.values())
    for t, e in enumerate(runs["meanet-fl-main-naive"]["experiences"]):
        rounds = e["extra"]["main_rounds"]
        assert rounds["model_up"] == per_edge * sum(rounds["clients_trained"])
        assert rounds["model_down"] == float32 * SETTINGS["clients"] * ROUNDS  # the float32 main block, every edge
        # the experience's upload: the main rounds' plus the edge round's int8 edge blocks (as meanet-fl-*, and as
        # the federation sends them)
        model.set_hard_classes(e["extra"]["hard_classes"])
        edge = int8_bytes(edge_state(model.state_dict()))
        assert e["bytes_sent"]["model_up"] == rounds["model_up"] + edge * e["extra"]["clients_trained"]
        # FedAvg uploads each edge's whole backbone (the same main block) in float32 once per experience; a main
        # round's upload is its change in int8: 1 byte per weight instead of 4, plus one float32 scale per output
        # channel, so about a quarter of it.
        fedavg = runs["fedavg-naive"]["experiences"][t]["bytes_sent"]
        fedavg_per_edge = fedavg["model_up"] / runs["fedavg-naive"]["experiences"][t]["extra"]["clients_trained"]
        assert fedavg_per_edge == float32
        assert rounds["model_up"] / sum(rounds["clients_trained"]) < 0.5 * fedavg_per_edge
