"""The continual benchmark end to end on a tiny scenario (scikit-learn's digits: offline, 10 classes).

Every method but two of the three FedAvg baselines (``fedavg-replay`` stands for them: the same loop, another
Avalanche strategy), two of the three cloud-last ones (``fedavg-cloud-last-lwf``; ``tests/unit/test_fedavg_order.py``
checks their order) and two of the three MEANet-FL variants with main rounds (``meanet-fl-main-replay`` stands for
them; ``tests/unit/test_bench_main_rounds.py`` checks their main rounds) runs through ``meanet bench continual``;
the edge clients of MEANet-FL and FedAvg are simulated in-process (the Flower engines are exercised by
``test_federation.py``).
About 25 s of CPU time on one thread (3 min of wall time on a 2-core machine busy with other jobs).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from benchmarks.continual.config import (
    FEDAVG_CLOUD_LAST_METHODS,
    FEDAVG_METHODS,
    MEANET_FL_MAIN_METHODS,
    METHODS,
    BenchConfig,
)
from benchmarks.continual.methods import Context, ExperienceOutcome, Method, build_method
from benchmarks.continual.runner import run_benchmark
from benchmarks.continual.targets import TARGETS
from benchmarks.continual.targets import main as targets_main
from meanet_cli.main import app

pytestmark = pytest.mark.sim

TINY = [
    "--scenario", "split-digits", "--experiences", "2", "--epochs", "1", "--clients", "2", "--limit-train", "300",
    "--limit-test", "50", "--cloud-share", "0.5", "--cloud-model", "resnet20_cifar", "--batch-size", "32",
    "--no-progress",
]  # fmt: skip
STAND_INS = ("fedavg-replay", "fedavg-cloud-last-lwf", "meanet-fl-main-replay")
GROUPS = (*FEDAVG_METHODS, *FEDAVG_CLOUD_LAST_METHODS, *MEANET_FL_MAIN_METHODS)
TESTED = tuple(m for m in METHODS if m not in GROUPS or m in STAND_INS)


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    result = CliRunner().invoke(app, ["bench", "continual", *TINY, "--methods", ",".join(TESTED), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_every_method_runs_and_reports(bench_out: Path) -> None:
    results = json.loads((bench_out / "results.json").read_text())
    runs = results["runs"]["0"]
    assert list(runs) == list(TESTED) and list(results["summary"]) == list(TESTED)
    for name, r in runs.items():
        a = r["accuracy_matrix"]
        assert len(a) == 2 and all(len(row) == 2 for row in a), name  # experiences trained x tested
        assert a[0][1] is None and all(v is not None and 0.0 <= v <= 1.0 for v in (a[0][0], a[1][0], a[1][1]))
        assert r["final_forgetting"] == pytest.approx(a[0][0] - a[1][0])  # Avalanche's definition, 2 experiences
        assert r["final_bwt"] == pytest.approx(-r["final_forgetting"])
        assert r["average_accuracy"][-1] == pytest.approx((a[1][0] + a[1][1]) / 2)
        assert sum(r["exits"].values()) == pytest.approx(1.0)
        assert r["energy_per_inference_joule"] > 0 and r["wall_seconds"] > 0
        assert len(r["experiences"]) == 2 and r["experiences"][0]["bytes_sent_total"] > 0
    assert runs["cloud-only"]["cloud_fraction"] == 1.0 and runs["edge-only"]["cloud_fraction"] == 0.0
    for name in ("meanet-fl-naive", "meanet-fl-ewc", "meanet-fl-lwf", "meanet-fl-replay", "meanet-fl-main-replay"):
        assert runs[name]["cloud_fraction"] <= 0.2 + 0.25  # calibrated on validation, measured on test
        first = runs[name]["experiences"][0]  # every client holds samples of the first hard classes
        assert first["extra"]["clients_trained"] >= 1 and first["bytes_sent"]["model_up"] > 0
    # the static MEANet never learns the second experience's classes
    assert runs["meanet-static"]["accuracy_matrix"][1][1] < 0.2
    table = (bench_out / "results.md").read_text()
    assert all(f"| {m} |" in table for m in TESTED if m != "joint") and "| joint (upper bound) |" in table
    for png in ("accuracy_per_experience.png", "accuracy_vs_energy.png"):
        assert (bench_out / png).stat().st_size > 1000


def test_budgets_are_counted_from_what_each_method_ran(bench_out: Path) -> None:
    results = json.loads((bench_out / "results.json").read_text())
    runs, budget = results["runs"]["0"], results["budget"]
    assert list(budget) == list(TESTED)
    exps = runs["naive"]["experiences"]
    sizes = [e["extra"]["budget"]["experience"] for e in exps]  # training images of each experience
    # one epoch: naive trains once on each experience, joint on everything seen so far (counted in the loops)
    assert budget["naive"]["trained_cloud_images"]["mean"] == sum(sizes)
    assert budget["joint"]["trained_cloud_images"]["mean"] == sizes[0] + (sizes[0] + sizes[1])
    assert budget["naive"]["data_seen"] == "cloud 100% of each exp"
    assert budget["joint"]["data_seen"] == "cloud 100% of each exp, all kept"
    for name in ("cloud-only", "edge-only", "naive", "joint"):
        assert budget[name]["trained_edge_images"]["mean"] == 0, name
    for name in ("meanet-fl-naive", "meanet-fl-replay", "fedavg-replay"):
        b = [e["extra"]["budget"] for e in runs[name]["experiences"]]
        assert budget[name]["trained_edge_images"]["mean"] > 0 and "edges 50% of each exp" in budget[name]["data_seen"]
        assert all(x["cloud_new"] + x["edge_new"] == x["experience"] for x in b), name  # the federated split
        assert all(x["bytes_up"] > 0 and x["bytes_down"] > 0 for x in b), name
    fl = [e["extra"]["budget"] for e in runs["meanet-fl-naive"]["experiences"]]
    assert all(x["edge_used"] < x["edge_new"] for x in fl)  # MEANet-FL edges train on the hard-class samples only
    fedavg = [e["extra"]["budget"] for e in runs["fedavg-replay"]["experiences"]]
    assert fedavg[0]["trained_edge"] == fedavg[0]["edge_new"]  # 1 epoch over the partitions, nothing to replay yet
    assert fedavg[1]["trained_edge"] > fedavg[1]["edge_new"] and fedavg[1]["edge_stored"] > 0  # replayed images
    # FedAvg of the whole model moves the whole model both ways; MEANet-FL uploads only the edge blocks
    whole = runs["fedavg-replay"]["experiences"][1]["bytes_sent"]
    assert whole["model_up"] == whole["model_down"]
    assert runs["meanet-fl-naive"]["experiences"][1]["bytes_sent"]["model_up"] < whole["model_up"]
    table = (bench_out / "results.md").read_text()
    assert "| method | final avg acc (%) | labelled data seen |" in table


def test_the_parts_table_shows_what_the_extension_and_the_cloud_add(bench_out: Path) -> None:
    results = json.loads((bench_out / "results.json").read_text())
    runs, parts = results["runs"]["0"], results["parts"]
    routed = [m for m in TESTED if m.startswith("meanet-")]
    assert list(parts) == routed  # only the methods that route through MEANet
    for name in routed:
        p = {key: stat["mean"] for key, stat in parts[name].items()}
        # the same test images as the method's own accuracy (equal test sets per experience: the average over
        # experiences is the average over images)
        assert p["meanet_with_cloud"] == pytest.approx(runs[name]["final_average_accuracy"])
        assert p["cloud_fraction"] == runs[name]["cloud_fraction"]
        gain = p["meanet_with_cloud"] - p["edge_main_plus_extension"]
        if p["offloaded_edge"] is None:  # nothing offloaded: the cloud changed nothing
            assert p["cloud_fraction"] == 0 and gain == pytest.approx(0, abs=1e-6)
        else:  # the cloud adds the offloaded share times (its accuracy - the edge's) on those inputs
            assert gain == pytest.approx(p["cloud_fraction"] * (p["offloaded_cloud"] - p["offloaded_edge"]), abs=1e-6)
    # the methods on the cloud trajectory's main block have edge-only's main block and cloud-only's cloud model
    for name in ("meanet-fl-naive", "meanet-fl-lwf"):
        assert parts[name]["main_only"]["mean"] == pytest.approx(runs["edge-only"]["final_average_accuracy"])
        assert parts[name]["cloud_only"]["mean"] == pytest.approx(runs["cloud-only"]["final_average_accuracy"])
    table = (bench_out / "results.md").read_text()
    assert "| method | MEANet with cloud | main block alone | main + extension, no cloud |" in table


def test_routing_is_set_beside_early_exit_and_random_offload(bench_out: Path) -> None:
    results = json.loads((bench_out / "results.json").read_text())
    runs, routing = results["runs"]["0"], results["routing"]
    routed = [m for m in TESTED if m.startswith("meanet-")]
    assert list(routing) == routed
    for name in routed:
        final = runs[name]["experiences"][-1]["costs"]["routing"]
        assert final["meanet"]["accuracy"] == pytest.approx(runs[name]["final_average_accuracy"])
        # the baselines offload exactly as many inputs as MEANet did, and none runs the extension
        for base in ("early_exit", "random"):
            assert final[base]["cloud_fraction"] == pytest.approx(final["meanet"]["cloud_fraction"])
            assert 0.0 <= final[base]["accuracy"] <= 1.0
        hard = final["hard_classes"]
        assert hard["inputs"] > 0 and all(0 <= hard[k] <= 1 for k in ("main_only", "main_plus_extension"))
        # the accuracy-energy curves after the last experience: energy grows with the cloud fraction
        for kind in ("meanet", "early_exit"):
            curve = final["curves"][kind]
            assert len(curve) >= 5 and curve[0]["cloud_fraction"] <= curve[-1]["cloud_fraction"]
            assert curve[0]["energy_joule"] <= curve[-1]["energy_joule"]
        assert "curves" not in runs[name]["experiences"][0]["costs"]["routing"]  # only after the last experience
    table = (bench_out / "results.md").read_text()
    assert (
        "| method | cloud fraction (%) | MEANet routing (%) | confidence early exit (%) | random offload (%)" in table
    )
    assert "| method | main block alone | main + extension | edge as run | extension kept (experiences) |" in table
    assert "cloud training (TMAC)" in table


def test_the_targets_script_reads_the_run(bench_out: Path, tmp_path: Path) -> None:
    report = targets_main([str(bench_out), "--method", "meanet-fl-main-replay", "--json", str(tmp_path / "t.json")])
    assert json.loads((tmp_path / "t.json").read_text()) == report
    (values,) = report["seeds"].values()
    run = json.loads((bench_out / "results.json").read_text())["runs"]["0"]
    last = run["meanet-fl-main-replay"]["experiences"][-1]["costs"]
    ref = last["reference_accuracy"]
    assert values["cloud_minus_main"] == pytest.approx(100 * (ref["cloud_only"] - ref["main_only"]))
    point = next(p for p in last["routing"]["curves"]["meanet"] if p["target"] == 0.15)
    assert values["energy_over_cloud_only"] == pytest.approx(
        point["energy_joule"] / run["cloud-only"]["energy_per_inference_joule"]
    )
    assert [row["key"] for row in report["targets"]] == [key for key, *_ in TARGETS]
    with pytest.raises(SystemExit, match="no 'meanet-fl-lwf-x' result"):
        targets_main([str(bench_out), "--method", "meanet-fl-lwf-x"])


def test_a_cloud_grown_from_the_main_block_distilling_it_and_labelled_offloads(tmp_path: Path) -> None:
    """MEANet-FL's own cloud model: grown from its main block, distilling it, with 10 labelled offloaded images per
    experience; the extension distils the cloud model."""
    args = [*TINY, "--methods", "meanet-fl-main-replay,meanet-fl-naive", "--cloud-init", "main", "--cloud-distill"]
    args += ["1", "--extension-distill", "1", "--offload-labels", "10", "--cloud-lr", "0.02", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, ["bench", "continual", *args])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results.json").read_text())
    for name in ("meanet-fl-main-replay", "meanet-fl-naive"):
        exps = results["runs"]["0"][name]["experiences"]
        assert [e["extra"]["offloaded_labelled"] for e in exps] == [10, 10]
        budgets = [e["extra"]["budget"] for e in exps]
        assert [b["labelled"] for b in budgets] == [10, 10]
        assert budgets[1]["cloud_stored"] == budgets[0]["cloud_new"] + budgets[1]["cloud_new"] + 20
        assert all(b["trained_cloud_macs"] > 0 for b in budgets)
    assert "10 offloaded edge images labelled at the cloud per exp" in (tmp_path / "results.md").read_text()
    # the cloud-init setting needs a cloud model that can be grown from the main block
    bad = CliRunner().invoke(
        app, ["bench", "continual", *TINY, "--model", "mobilenetv2_cifar", "--cloud-init", "main", "--out", "x"]
    )
    assert bad.exit_code == 2 and "cannot grow" in bad.output


def test_a_rerun_skips_finished_methods_and_other_settings_are_refused(bench_out: Path) -> None:
    before = (bench_out / "seed-0" / "naive.json").stat().st_mtime_ns
    result = CliRunner().invoke(app, ["bench", "continual", *TINY, "--methods", "naive", "--out", str(bench_out)])
    assert result.exit_code == 0, result.output
    assert "already done" in result.output and (bench_out / "seed-0" / "naive.json").stat().st_mtime_ns == before
    # a setting only other methods read (main rounds: meanet-fl-main-*) leaves naive's stored result valid
    result = CliRunner().invoke(
        app, ["bench", "continual", *TINY, "--methods", "naive", "--main-rounds", "2", "--out", str(bench_out)]
    )
    assert result.exit_code == 0, result.output
    assert "already done" in result.output and (bench_out / "seed-0" / "naive.json").stat().st_mtime_ns == before
    result = CliRunner().invoke(
        app, ["bench", "continual", *TINY, "--methods", "naive", "--lr", "0.1", "--out", str(bench_out)]
    )
    assert result.exit_code == 2 and "other settings" in result.output


class ConstantMethod(Method):
    """Learns nothing: predicts class 3 for every input."""

    name = "constant"

    def run_experience(self, t: int) -> ExperienceOutcome:
        scenario = self.ctx.scenario
        accs = [float((e.test.y == 3).float().mean()) for e in scenario.experiences[: t + 1]]
        costs = {"cloud_fraction": 0.0, "exits": {"main": 1.0}, "macs_per_inference": 0.0}
        costs.update(edge_macs_per_inference=0.0, energy_per_inference_joule=0.0, bytes_sent_per_inference=0.0)
        return ExperienceOutcome(accs, costs, {}, {"training": 0.0})


def test_a_method_that_learns_nothing_scores_as_such(tmp_path: Path) -> None:
    cfg = BenchConfig(scenario="split-digits", experiences=5, methods=("naive",), limit_test=40, seeds=(0, 1))

    def factory(name: str, ctx: Context) -> Method:
        return ConstantMethod(ctx) if name == "naive" else build_method(name, ctx)

    results = run_benchmark(
        cfg, tmp_path, progress=False, log=lambda _: None, method_factory=factory, write_plots=False
    )
    for seed in ("0", "1"):
        r = results["runs"][seed]["naive"]
        a = torch.tensor([[v if v is not None else float("nan") for v in row] for row in r["accuracy_matrix"]])
        assert torch.equal(a.nan_to_num(-1)[-1, :], a.nan_to_num(-1).diagonal())  # the same accuracies all along
        assert r["final_forgetting"] == 0.0 and r["final_bwt"] == 0.0
        # one class of the ten is right wherever it is tested: chance level once every class has been seen
        assert r["final_average_accuracy"] == pytest.approx(max(a[-1]).item() / 5)
        assert r["final_average_accuracy"] <= 0.15
    assert results["summary"]["naive"]["final_forgetting"] == {"mean": 0.0, "std": 0.0, "n": 2}


def test_meanet_fl_counts_its_bytes_with_the_federations_encodings(tmp_path: Path) -> None:
    """``--upload-encoding int4 --broadcast-encoding int6``: uploads and downloads counted (and decoded) by the very
    codecs of ``meanet federate``; the downloads after the first are changes from what the edges hold."""
    budgets = {}
    for name, extra in (("full", []), ("compressed", ["--upload-encoding", "int4", "--broadcast-encoding", "int6"])):
        out = tmp_path / name
        args = [*TINY, "--methods", "meanet-fl-main-naive", "--main-rounds", "2", *extra, "--out", str(out)]
        result = CliRunner().invoke(app, ["bench", "continual", *args])
        assert result.exit_code == 0, result.output
        exps = json.loads((out / "results.json").read_text())["runs"]["0"]["meanet-fl-main-naive"]["experiences"]
        budgets[name] = [e["extra"]["budget"] for e in exps]
    full, small = budgets["full"], budgets["compressed"]
    assert 0 < small[1]["bytes_down"] < 0.3 * full[1]["bytes_down"]  # changes, not the state, every time
    assert small[0]["bytes_down"] < full[0]["bytes_down"]  # only the very first broadcast is the whole (main) block
    for a, b in zip(small, full, strict=True):  # int4 against int8 uploads (the cloud's images are the same)
        assert a["bytes_up"] < b["bytes_up"]
