"""Everything a secure deployment needs, in one folder (``meanet certs --out DIR``).

==========================  ===================================================================================
file                        use
==========================  ===================================================================================
``ca.pem``                  the private CA: ``--ssl-ca-certfile`` of the SuperLink, ``--root-certificates`` of every
                            SuperNode, ``root-certificates`` of the ``flwr`` connection; the client CA of the cloud
                            offload service (``meanet cloud serve --ca-certfile``) and the server CA of the edges
``ca.key``                  the CA's private key (0600): only to issue more certificates; keep it off the machines
``server.pem``/``.key``     the SuperLink's and the offload service's TLS certificate, valid for ``--host`` names
``client.pem``/``.key``     an edge's client certificate for mutual TLS with the offload service
``supernode-I.key``/``.pub``  SuperNode ``I``'s authentication key pair: ECDSA P-384, private key in OpenSSH format
                            (``flower-supernode --auth-supernode-private-key``), public key as an OpenSSH line
                            (``flwr supernode register supernode-I.pub``)
``broadcast-signing.key``   the cloud's Ed25519 key signing every model broadcast (run config ``signing-key``)
``broadcast-signing.pub``   its public key, which every edge pins (``--node-config 'verify-key="..."'``)
==========================  ===================================================================================

Private keys are written unencrypted with mode 0600; nothing is overwritten unless ``force`` is set.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID

from meanet_core.trust.signing import SIGNING_KEY_FILE, VERIFY_KEY_FILE, private_key_pem, public_key_pem
from meanet_core.trust.tls import _issue, _name

DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


class CertsError(ValueError):
    """Bad arguments, or files that would be overwritten without ``force``."""


@dataclass(frozen=True)
class DeploymentKeys:
    """Paths of the files :func:`write_deployment_keys` wrote."""

    out: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    supernode_keys: list[tuple[Path, Path]] = field(default_factory=list)
    """``(private key, public key)`` of each SuperNode."""
    signing_key: Path = Path()
    verify_key: Path = Path()

    @property
    def private_keys(self) -> list[Path]:
        return [self.ca_key, self.server_key, self.client_key, *(k for k, _ in self.supernode_keys), self.signing_key]


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _HOSTNAME.match(host):
        raise CertsError(f"--host {host!r} is neither an IP address nor a valid DNS name")
    return x509.DNSName(host)


def _write(path: Path, data: bytes, *, private: bool) -> None:
    path.unlink(missing_ok=True)  # a new file: a private key never inherits an old file's wider mode
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem(key: ec.EllipticCurvePrivateKey, fmt: serialization.PrivateFormat) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def supernode_key_pair() -> tuple[bytes, bytes]:
    """A SuperNode authentication key pair as Flower takes it: ECDSA P-384, the private key in OpenSSH format (what
    ``flower-supernode --auth-supernode-private-key`` loads), the public key as an OpenSSH line (what
    ``flwr supernode register`` loads); the same formats as ``ssh-keygen -t ecdsa -b 384``."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = _pem(key, serialization.PrivateFormat.OpenSSH)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + b"\n"


def planned_files(out: Path, supernodes: int) -> list[Path]:
    names = ["ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key"]
    names += [f"supernode-{i}.{ext}" for i in range(supernodes) for ext in ("key", "pub")]
    names += [SIGNING_KEY_FILE, VERIFY_KEY_FILE]
    return [out / n for n in names]


def write_deployment_keys(
    out_dir: str | os.PathLike[str],
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    supernodes: int = 2,
    days: int = 365,
    force: bool = False,
) -> DeploymentKeys:
    """Write the CA, server and client certificates, ``supernodes`` SuperNode key pairs and the broadcast signing key
    pair into ``out_dir`` (see the module docstring for what each file is for).

    Raises
    ------
    CertsError
        No host, an invalid host name, ``supernodes < 0``, ``days < 1``, ``out_dir`` is a file, or a file to be
        written exists and ``force`` is not set.
    """
    hosts = [h.strip() for h in hosts if h.strip()]
    if not hosts:
        raise CertsError("--host needs at least one host name or IP address the SuperLink is reached at")
    if supernodes < 0:
        raise CertsError(f"--supernodes must be >= 0; got {supernodes}")
    if days < 1:
        raise CertsError(f"--days must be >= 1; got {days}")
    sans = [_san(h) for h in hosts]
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise CertsError(f"--out {out} is a file; expected a folder")
    planned = planned_files(out, supernodes)
    existing = [p.name for p in planned if p.exists()]
    if existing and not force:
        raise CertsError(
            f"{out} already holds {', '.join(existing)}; pass --force to overwrite, or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = _name("MEANet-FL CA")
    ca_cert = _issue("MEANet-FL CA", ca_key, ca_name, ca_key, days, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_usage = [ExtendedKeyUsageOID.SERVER_AUTH]
    server_cert = _issue(hosts[0], server_key, ca_cert.subject, ca_key, days, sans=sans, usage=server_usage)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_usage = [ExtendedKeyUsageOID.CLIENT_AUTH]
    client_cert = _issue("meanet-edge", client_key, ca_cert.subject, ca_key, days, usage=client_usage)

    pkcs8 = serialization.PrivateFormat.PKCS8
    files = iter(planned)
    written: list[Path] = []
    for data, private in (
        (ca_cert.public_bytes(serialization.Encoding.PEM), False),
        (_pem(ca_key, pkcs8), True),
        (server_cert.public_bytes(serialization.Encoding.PEM), False),
        (_pem(server_key, pkcs8), True),
        (client_cert.public_bytes(serialization.Encoding.PEM), False),
        (_pem(client_key, pkcs8), True),
    ):
        path = next(files)
        _write(path, data, private=private)
        written.append(path)
    pairs: list[tuple[Path, Path]] = []
    for _ in range(supernodes):
        private_bytes, public_bytes = supernode_key_pair()
        private_path, public_path = next(files), next(files)
        _write(private_path, private_bytes, private=True)
        _write(public_path, public_bytes, private=False)
        pairs.append((private_path, public_path))
    signing = Ed25519PrivateKey.generate()
    signing_path, verify_path = next(files), next(files)
    _write(signing_path, private_key_pem(signing), private=True)
    _write(verify_path, public_key_pem(signing.public_key()), private=False)
    ca_cert_path, ca_key_path, server_cert_path, server_key_path, client_cert_path, client_key_path = written
    return DeploymentKeys(
        out, ca_cert_path, ca_key_path, server_cert_path, server_key_path, client_cert_path, client_key_path,
        supernode_keys=pairs, signing_key=signing_path, verify_key=verify_path,
    )  # fmt: skip


__all__ = [
    "DEFAULT_HOSTS",
    "CertsError",
    "DeploymentKeys",
    "planned_files",
    "supernode_key_pair",
    "write_deployment_keys",
]
