"""Throwaway TLS material for tests, benchmarks and a first try of the cloud service on one machine.

``write_dev_certificates`` makes a private certificate authority, a server certificate for the given host names and
IP addresses, and a client certificate (for mutual TLS), all signed by that CA, and writes them as PEM files. The
keys are written unencrypted (mode 0600): use them on loopback or a trusted network only; a real deployment uses
certificates from its own CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class DevCertificates:
    """Paths of the PEM files written by :func:`write_dev_certificates`."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "MEANet-FL dev"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    days: int,
    *,
    ca: bool = False,
    sans: Sequence[x509.GeneralName] = (),
    usage: Sequence[x509.ObjectIdentifier] = (),
) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usage)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def write_dev_certificates(
    out_dir: str | os.PathLike[str],
    hosts: Sequence[str] = ("127.0.0.1", "localhost", "::1"),
    days: int = 7,
) -> DevCertificates:
    """Write ``ca.pem``, ``server.pem`` + ``server.key`` (valid for ``hosts``), ``client.pem`` + ``client.key``."""
    if not hosts:
        raise ValueError("hosts must name at least one host name or IP address the server is reached at")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("MEANet-FL dev CA", ca_key, _name("MEANet-FL dev CA"), ca_key, days, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue(
        hosts[0], server_key, ca_cert.subject, ca_key, days, sans=sans, usage=[ExtendedKeyUsageOID.SERVER_AUTH]
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _issue(
        "meanet-edge", client_key, ca_cert.subject, ca_key, days, usage=[ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    paths = DevCertificates(
        out / "ca.pem", out / "server.pem", out / "server.key", out / "client.pem", out / "client.key"
    )
    for cert, path in ((ca_cert, paths.ca_cert), (server_cert, paths.server_cert), (client_cert, paths.client_cert)):
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, paths.server_key)
    _write_key(client_key, paths.client_key)
    return paths
