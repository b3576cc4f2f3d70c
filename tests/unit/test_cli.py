import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meanet_cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    args = [
        "train", "--dataset", "digits", "--model", "resnet20_cifar", "--cloud-model", "resnet20_cifar",
        "--epochs", "3", "--limit-train", "400", "--hard-count", "3", "--batch-size", "32", "--out", str(out),
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("policy", ["paper", "calibrated"])
def test_train_then_evaluate_writes_the_report_and_plots(trained_run: Path, tmp_path: Path, policy: str) -> None:
    report_path = tmp_path / "eval.json"
    args = [
        "evaluate", "--run", str(trained_run), "--policy", policy, "--json", str(report_path),
        "--plots", str(tmp_path / "plots"), "--target-cloud-fraction", "0.2",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    r = json.loads(report_path.read_text())
    for key in (
        "accuracy", "macs_per_image", "macs_all_branches_per_image", "macs_cloud_only_per_image",
        "energy_per_image_joule", "bytes_offloaded_per_image", "images_per_second", "measured_energy_per_image_joule",
    ):  # fmt: skip
        assert isinstance(r[key], float), key
    assert "5 W stated" in r["energy_models"]["measured_energy_per_image_joule"]  # each energy says its model
    assert all("measured_energy_per_image_joule" in p for p in r["sweep"]) and "mJ measured" in result.output
    fractions = [r["exits"][e]["fraction"] for e in ("main", "extension", "cloud")]
    assert sum(fractions) == pytest.approx(1.0)
    assert r["num_images"] == 359  # digits: round(20% of 1797) held out as the test split
    assert r["macs_per_image"] < r["macs_all_branches_per_image"]
    assert r["all_branches_agree"]
    if policy == "calibrated":
        assert r["exits"]["cloud"]["fraction"] <= 0.2 + 0.15  # fitted on validation, checked on test
    assert r["accuracy"] > 0.2, r["accuracy"]  # chance is 0.1 (10 classes)
    for name in ("exit_distribution.png", "accuracy_per_exit.png", "accuracy_vs_energy.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000


def test_bad_options_give_clear_errors(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--model", "resnet33", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "valid" in result.output and "resnet32_cifar" in result.output
    result = runner.invoke(app, ["evaluate", "--run", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "meanet train" in result.output


def test_models_lists_every_registered_name() -> None:
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    for name in ("resnet32_cifar", "mobilenetv2_cifar", "resnet18", "resnet110_cifar", "resnet152"):
        assert name in result.output


def test_federate_refuses_the_state_of_another_config_before_starting(tmp_path: Path) -> None:
    import torch

    report = tmp_path / "report"
    report.mkdir()
    from meanet_core.training.checkpoint import FORMAT

    stale = {
        "format": FORMAT, "config": {"num-clients": 99},
        "position": {"experience": 0, "phase": "federation", "round": 1},
        "hard_classes": [], "meanet": {}, "cloud": {}, "report": "{}",
    }  # fmt: skip
    torch.save(stale, report / "state.pt")
    result = runner.invoke(app, ["federate", "--report-dir", str(report)])
    assert result.exit_code != 0
    assert "belongs to a run with other settings" in result.output and "--fresh" in result.output
    assert "running the federation" not in result.output  # nothing was started


def test_federate_refuses_a_quorum_larger_than_its_edges_before_starting(tmp_path: Path) -> None:
    result = runner.invoke(app, ["federate", "--report-dir", str(tmp_path / "r"), "-c", "min-edges=4"])
    assert result.exit_code != 0
    assert "min-edges=4 is more than the 3 edge(s)" in result.output and "-c min-edges=3" in result.output
    assert "running the federation" not in result.output
