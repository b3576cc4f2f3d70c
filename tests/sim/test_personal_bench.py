"""The personalised-FL benchmark end to end at tiny size on CIFAR-100 mini: every method through ``meanet bench
personal``, the JSON it writes, reproducibility of a seed, a row registered as the MEANet-FL rows will be, and
reruns into the same folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from benchmarks.personal import fedavg as fedavg_module
from benchmarks.personal.common import Context, MethodResult, load, main_block_macs, new_model
from benchmarks.personal.config import PersonalConfig
from benchmarks.personal.methods import METHODS, MethodSpec
from benchmarks.personal.runner import run_benchmark
from meanet_cli.main import app
from tests.unit.test_data import find_data_file

pytestmark = pytest.mark.sim

TINY = {
    "dataset": "cifar100-mini", "edges": 4, "limit_train": 400, "rounds": 2, "edges_per_round": 2,
    "test_per_edge": 20, "server_epochs": 1, "ft_epochs": 1, "batch_size": 32, "extension_epochs": 1,
}  # fmt: skip


def data_dir() -> str:
    path = find_data_file("cifar100_mini.npz")
    if path is None:
        pytest.fail(
            "cifar100_mini.npz not found in $MEANET_DATA_DIR or ../shared/data: set MEANET_DATA_DIR to its folder"
        )
    return str(path.parent)


def cli_args(**overrides: Any) -> list[str]:
    values = {**TINY, **overrides}
    return [a for k, v in values.items() for a in (f"--{k.replace('_', '-')}", str(v))]


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("personal")
    args = ["bench", "personal", *cli_args(), "--data-dir", data_dir(), "--no-progress", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def test_every_method_runs_and_reports(bench_out: Path) -> None:
    results = json.loads((bench_out / "results.json").read_text())
    runs = results["runs"]["0"]
    assert list(runs) == list(METHODS) and list(results["summary"]) == list(METHODS)
    assert len(results["scenario"]["0"]["devices"]) == 4
    for name, r in runs.items():
        assert len(r["accuracies"]) == 4 and all(0.0 <= a <= 1.0 for a in r["accuracies"]), name
        assert r["worst10_accuracy"] == min(r["accuracies"]) and r["offload_fraction"] == 0.0
        assert r["macs_per_inference"] > 1e6 and r["trained_images"] > 0 and r["wall_seconds"] > 0
    assert runs["local-only"]["bytes_up"] == runs["local-only"]["bytes_down"] == 0
    assert runs["local-only"]["trained_server_images"] == 0
    body, whole = runs["fedper"]["bytes_up"], runs["fedavg"]["bytes_up"]
    assert 0 < body < whole and runs["fedrep"]["bytes_up"] == runs["fedbabu"]["bytes_up"] == body
    assert runs["fedavg-ft"]["bytes_up"] == whole and runs["ditto"]["bytes_down"] == whole  # ditto: no final download
    ft = runs["fedavg-ft"]["trained_edge_images"] - runs["fedavg"]["trained_edge_images"]
    assert ft == sum(d["train"] for d in results["scenario"]["0"]["devices"])  # 1 fine-tuning epoch per device
    table = (bench_out / "results.md").read_text()
    assert all(f"| {m} |" in table for m in METHODS) and "2 rounds, 1 local epoch(s), 2 edges per round" in table
    for png in ("accuracy_per_device.png", "accuracy_vs_bytes.png"):
        assert (bench_out / png).stat().st_size > 1000


def test_the_meanet_rows_keep_personal_blocks_off_the_wire_and_say_what_each_device_chose(bench_out: Path) -> None:
    runs = json.loads((bench_out / "results.json").read_text())["runs"]["0"]
    fedavg, personal, glob = runs["fedavg"], runs["meanet-fl-personal"], runs["meanet-fl-global"]
    for name in ("meanet-fl-personal", "meanet-fl-personal-prior", "meanet-fl-personal-ext"):
        # the shared main block's bytes and nothing more: the personal blocks never travel
        assert (runs[name]["bytes_up"], runs[name]["bytes_down"]) == (fedavg["bytes_up"], fedavg["bytes_down"]), name
        devices = runs[name]["extra"]["per_device"]
        assert [d["device"] for d in devices] == [0, 1, 2, 3]
        assert all(0 <= d["main_shared"] <= 1 and d["personal_bytes"] > 0 for d in devices)
    assert all(d["prior_strength"] == 0.0 for d in runs["meanet-fl-personal-ext"]["extra"]["per_device"])
    assert all(d["hard_classes"] == [] for d in runs["meanet-fl-personal-prior"]["extra"]["per_device"])
    assert runs["meanet-fl-personal-prior"]["macs_per_inference"] == fedavg["macs_per_inference"]  # main block only
    assert glob["bytes_up"] > fedavg["bytes_up"] and glob["extra"]["hard_classes"]  # the averaged extension travels
    share = personal["extra"]["extension_fraction"]
    assert 0 <= share <= 1 and personal["macs_per_inference"] >= fedavg["macs_per_inference"]
    assert personal["extra"]["macs_vs_all_blocks"] <= 1


def test_a_seed_reruns_to_the_same_numbers_and_a_registered_row_shares_fedavg(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def meanet_like(ctx: Context) -> MethodResult:  # what benchmarks/personal/meanet.py registers, in miniature
        shared = fedavg_module.shared_fedavg(ctx)
        model = load(new_model(ctx), shared.global_state)
        fedavg = METHODS["fedavg"].run(ctx)  # the same trajectory: no second computation
        return MethodResult(
            "meanet-fl-test", ctx.seed, fedavg.accuracies, shared.bytes_up, shared.bytes_down,
            shared.trained_edge_images, shared.trained_server_images, shared.seconds, main_block_macs(model), 0.1,
        )  # fmt: skip

    monkeypatch.setitem(METHODS, "meanet-fl-test", MethodSpec(meanet_like, "meanet", "a test row"))
    computed = []
    real = fedavg_module._compute_fedavg
    monkeypatch.setattr(fedavg_module, "_compute_fedavg", lambda ctx: computed.append(1) or real(ctx))
    cfg = PersonalConfig.from_dict({**TINY, "methods": ["fedrep", "fedavg", "meanet-fl-test"], "data_dir": data_dir()})
    first = run_benchmark(cfg, None, progress=False, log=lambda _: None)
    fedavg_module.clear_cache()
    second = run_benchmark(cfg, None, progress=False, log=lambda _: None)
    assert computed == [1, 1]  # once per run, shared by fedavg and the registered row
    for name in cfg.methods:
        a, b = first["runs"]["0"][name], second["runs"]["0"][name]
        for key in ("accuracies", "bytes_up", "bytes_down", "trained_images", "macs_per_inference"):
            assert a[key] == b[key], (name, key)
    assert first["families"]["meanet-fl-test"] == "meanet"
    assert first["runs"]["0"]["meanet-fl-test"]["accuracies"] == first["runs"]["0"]["fedavg"]["accuracies"]


def test_a_rerun_skips_finished_methods_and_other_settings_are_refused(bench_out: Path) -> None:
    base = ["bench", "personal", "--data-dir", data_dir(), "--no-progress", "--out", str(bench_out)]
    again = CliRunner().invoke(app, [*base, *cli_args(), "--methods", "fedavg,fedper"])
    assert again.exit_code == 0, again.output
    assert "fedavg already done" in again.output and "fedper already done" in again.output
    stored = json.loads((bench_out / "seed-0" / "fedavg-ft.json").read_text())["result"]
    (bench_out / "seed-0" / "fedavg-ft.json").unlink()  # recomputed from the stored FedAvg trajectory (fedavg.pt)
    redo = CliRunner().invoke(app, [*base, *cli_args(), "--methods", "fedavg-ft"])
    assert redo.exit_code == 0, redo.output
    result = json.loads((bench_out / "seed-0" / "fedavg-ft.json").read_text())["result"]
    assert result["accuracies"] == stored["accuracies"] and result["bytes_up"] == stored["bytes_up"]
    assert result["seconds"]["shared_fedavg"] == stored["seconds"]["shared_fedavg"]  # loaded, not recomputed
    other = CliRunner().invoke(app, [*base, *cli_args(rounds=3), "--methods", "fedavg"])
    assert other.exit_code == 2 and "other settings" in other.output
