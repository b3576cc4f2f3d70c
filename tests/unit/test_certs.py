"""``meanet certs``: the files a secure deployment needs, in the formats Flower and the cloud service load."""

from __future__ import annotations

import stat
from pathlib import Path

from typer.testing import CliRunner

from meanet_cli.main import app


def _certs(out: Path, supernodes: int) -> Path:
    result = CliRunner().invoke(app, ["certs", "--out", str(out), "--supernodes", str(supernodes)])
    assert result.exit_code == 0, result.output
    return out


def test_meanet_certs_writes_flower_compatible_keys_with_private_modes(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    out = _certs(tmp_path / "certs", 2)
    for name in ("ca.key", "server.key", "client.key", "supernode-0.key", "supernode-1.key", "broadcast-signing.key"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name
    # exactly what flower-supernode --auth-supernode-private-key and flwr supernode register load
    private = load_ssh_private_key((out / "supernode-0.key").read_bytes(), None)
    public = load_ssh_public_key((out / "supernode-0.pub").read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(public, ec.EllipticCurvePublicKey)
    assert private.curve.name == "secp384r1" and private.public_key() == public
    again = CliRunner().invoke(app, ["certs", "--out", str(out), "--supernodes", "1"])
    assert again.exit_code == 2 and "pass --force" in again.output, again.output
    assert CliRunner().invoke(app, ["certs", "--out", str(out), "--force"]).exit_code == 0
    bad = CliRunner().invoke(app, ["certs", "--out", str(tmp_path / "b"), "--host", "bad host"])
    assert bad.exit_code == 2 and "valid DNS name" in bad.output, bad.output
    negative = CliRunner().invoke(app, ["certs", "--out", str(tmp_path / "c"), "--supernodes", "-1"])
    assert negative.exit_code == 2 and "--supernodes must be >= 0" in negative.output
