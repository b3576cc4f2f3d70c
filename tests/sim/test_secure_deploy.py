"""The secure deployment on loopback as ``meanet federate --deployment --secure`` runs it (the launcher's wiring): a TLS
SuperLink with SuperNode authentication, keys from ``meanet certs``.

Real components throughout: Flower's SuperLink, SuperNodes and CLI as subprocesses, TLS with the certificates
``meanet certs`` writes, node authentication with its P-384 key pairs, and the app's signed broadcasts. The same
deployment by hand, as the README gives it, with an unregistered SuperNode refused, is
``tests/sim/test_readme_deploy.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fl_server.launch import run_deployment
from meanet_cli.main import app
from tests.sim.helpers import left_behind


def _certs(out: Path, supernodes: int) -> Path:
    result = CliRunner().invoke(app, ["certs", "--out", str(out), "--supernodes", str(supernodes)])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.sim
@pytest.mark.deploy
@pytest.mark.slow  # about 3 minutes on 2 loaded cores: two SuperNodes each start ClientApp processes with torch
@pytest.mark.timeout(600)
def test_a_signed_run_over_tls_with_authenticated_supernodes_finishes(tmp_path: Path) -> None:
    # The smallest full run: digits (no data files), 1 experience, 1 round, tiny models and budgets.
    certs = _certs(tmp_path / "certs", 2)
    report = tmp_path / "report"
    run_config: dict[str, object] = {
        "dataset": "digits", "model": "resnet20_cifar", "cloud-model": "resnet20_cifar", "num-clients": 2,
        "experiences": 1, "rounds-per-experience": 1, "cloud-epochs": 1, "local-epochs": 1, "batch-size": 64,
        "cloud-model-epochs": 1, "extension-epochs": 1,
        "limit-train": 400, "report-dir": str(report),
    }  # fmt: skip
    run = run_deployment(run_config, 2, timeout=400, home=tmp_path / "flwr", secure=certs)
    assert run.ok, f"{run.status}: {run.details}\n{run.logs[-4000:]}"
    result = json.loads((report / "report.json").read_text())
    rounds = result["rounds"]  # main rounds (the app's default) and the edge round, whatever their number
    assert rounds and [r["phase"] for r in rounds][-1] == "edge", rounds
    for rnd in rounds:  # both edges verified every signed broadcast and trained
        assert rnd["accepted"] == 2 and rnd["dropped"] == [], rnd
    assert rounds[-1]["client_evaluation"], rounds[-1]  # and verified the signed evaluation broadcast
    # the server signed with the key from `meanet certs` (whose public key the SuperNodes pinned)
    assert (report / "broadcast-signing.pub").read_bytes() == (certs / "broadcast-signing.pub").read_bytes()
    assert not (report / "broadcast-signing.key").exists()
    assert left_behind(tmp_path / "flwr") == []
