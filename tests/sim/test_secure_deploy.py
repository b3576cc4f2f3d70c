"""The secure deployment on loopback: a TLS SuperLink with SuperNode authentication, keys from ``meanet certs``.

Real components throughout: Flower's SuperLink, SuperNodes and CLI as subprocesses, TLS with the certificates
``meanet certs`` writes, node authentication with its P-384 key pairs, and the app's signed broadcasts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fl_server.launch import list_supernodes, loopback_federation, run_deployment, start_supernode
from meanet_cli.main import app
from meanet_core.certs import supernode_key_pair
from tests.sim.helpers import left_behind


def _certs(out: Path, supernodes: int) -> Path:
    result = CliRunner().invoke(app, ["certs", "--out", str(out), "--supernodes", str(supernodes)])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.sim
@pytest.mark.deploy
@pytest.mark.timeout(300)
def test_tls_superlink_admits_the_registered_supernode_and_refuses_an_unregistered_one(tmp_path: Path) -> None:
    certs = _certs(tmp_path / "certs", 1)
    rogue_private, _ = supernode_key_pair()  # a well-formed key pair that nobody registered
    (tmp_path / "rogue.key").write_bytes(rogue_private)
    (tmp_path / "rogue.key").chmod(0o600)
    home = tmp_path / "flwr"
    with loopback_federation(simulation=False, num_supernodes=1, home=home, secure=certs) as fed:
        assert "root-certificates" in (home / "config.toml").read_text()  # flwr talks TLS to the SuperLink
        assert "insecure" not in (home / "config.toml").read_text()
        rogue, rogue_log = start_supernode(fed, 0, 1, auth_key=tmp_path / "rogue.key", log_name="rogue.log")
        deadline = time.monotonic() + 120
        nodes: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            nodes = list_supernodes(fed)
            if rogue.poll() is not None and any(n["status"] == "online" for n in nodes):
                break
            time.sleep(2)
        # the registered SuperNode authenticated and is online; it is the only node the SuperLink knows
        assert [n["status"] for n in nodes] == ["online"], nodes
        # the unregistered one was refused at activation and gave up
        assert rogue.poll() is not None and rogue.returncode != 0, rogue_log.read_text()[-2000:]
        assert "Failed to activate SuperNode" in rogue_log.read_text(), rogue_log.read_text()[-2000:]
        link_log = (home / "superlink.log").read_text()
        assert "No SuperNode found with the given public key" in link_log
        assert "Uvicorn running on https://127.0.0.1" in link_log  # the SuperLink served TLS only
    assert left_behind(home) == []


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
        "limit-train": 400, "report-dir": str(report),
    }  # fmt: skip
    run = run_deployment(run_config, 2, timeout=400, home=tmp_path / "flwr", secure=certs)
    assert run.ok, f"{run.status}: {run.details}\n{run.logs[-4000:]}"
    result = json.loads((report / "report.json").read_text())
    (rnd,) = result["rounds"]
    assert rnd["accepted"] == 2 and rnd["dropped"] == [], rnd  # both edges verified the signed broadcast and trained
    assert rnd["client_evaluation"], rnd  # and verified the signed evaluation broadcast
    # the server signed with the key from `meanet certs` (whose public key the SuperNodes pinned)
    assert (report / "broadcast-signing.pub").read_bytes() == (certs / "broadcast-signing.pub").read_bytes()
    assert not (report / "broadcast-signing.key").exists()
    assert left_behind(tmp_path / "flwr") == []
