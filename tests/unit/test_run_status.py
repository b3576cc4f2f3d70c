"""A failed Flower run is a failure: `meanet federate` and the README's status check exit non-zero, whatever `flwr run`
returned (it exits 0 either way); the real thing runs in tests/sim/test_readme_deploy.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fl_server import launch
from meanet_cli.main import app


@pytest.mark.parametrize("deployment", [False, True], ids=["simulation", "deployment"])
def test_federate_exits_non_zero_when_the_run_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deployment: bool
) -> None:
    def failed(run_config: dict[str, object], num_supernodes: int, **_: Any) -> launch.FlowerRun:
        return launch.FlowerRun("7", "finished:failed", "ServerApp raised ConfigError", "", tmp_path)

    monkeypatch.setattr(launch, "run_deployment" if deployment else "run_simulation", failed)
    args = ["federate", "--report-dir", str(tmp_path / "report"), *(["--deployment"] if deployment else [])]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0, result.output
    assert "run 7 ended finished:failed: ServerApp raised ConfigError" in result.output


@pytest.mark.parametrize(
    ("status", "code"), [("finished:completed", 0), ("finished:failed", 1), ("finished:stopped", 1)]
)
def test_the_status_check_exits_zero_only_for_a_completed_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], status: str, code: int
) -> None:
    asked: list[str] = []

    def info(flwr: str, connection: str, run_id: str, env: dict[str, str]) -> dict[str, object]:
        asked.append(run_id)
        return {"run-id": run_id, "status": "running" if len(asked) == 1 else status, "status-details": ""}

    monkeypatch.setattr(launch, "newest_run", lambda connection, env: "42")
    monkeypatch.setattr(launch, "_run_info", info)
    monkeypatch.setattr(launch, "FIRST_POLL_SECONDS", 0.01)
    assert launch.main(["status", "edge-cloud"]) == code
    assert asked == ["42", "42"]  # polled until the run had finished
    assert f"run 42: {status}" in capsys.readouterr().out


def test_the_status_check_says_when_there_is_no_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def none(connection: str, env: dict[str, str]) -> str:
        raise RuntimeError("no run on edge-cloud yet")

    monkeypatch.setattr(launch, "newest_run", none)
    assert launch.main(["status", "edge-cloud"]) == 2
    assert "no run on edge-cloud yet" in capsys.readouterr().err
