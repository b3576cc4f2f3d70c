"""The cloud's public key on the device: loading the pinned key and naming it (shared with
:mod:`meanet_core.trust.signing`, which signs)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

VERIFY_KEY_FILE = "broadcast-signing.pub"
"""File name of the cloud's public key (PEM, SubjectPublicKeyInfo): what an edge pins."""


def key_fingerprint(key: Ed25519PublicKey) -> str:
    """A short name of a public key (SHA-256 of its raw bytes, 16 hex digits), to tell keys apart in messages."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_verify_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """A pinned Ed25519 public key from a PEM (or OpenSSH ``ssh-ed25519 ...``) file."""
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"the pinned broadcast verify key {path} does not exist: copy the cloud's {VERIFY_KEY_FILE} there "
            "(set verify-key in the SuperNode's --node-config)"
        ) from e
    try:
        key = (
            serialization.load_ssh_public_key(data)
            if data.startswith(b"ssh-")
            else serialization.load_pem_public_key(data)
        )
    except (ValueError, TypeError) as e:
        raise ValueError(f"verify key {path} is not a PEM or OpenSSH public key: {e}") from e
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"verify key {path} holds a {type(key).__name__}; expected an Ed25519 public key")
    return key


__all__ = ["VERIFY_KEY_FILE", "key_fingerprint", "load_verify_key"]
