"""Signed broadcasts: the cloud signs every model it sends, the edges check the signature before loading anything.

What is signed (:func:`broadcast_hash`): SHA-256 over a canonical JSON document holding

* ``arrays``: :func:`meanet_core.trust.broadcast.digest` over **every** entry of the broadcast state dict (names,
dtypes,
  shapes and bytes, in name order): the main block, the normalisation and hard-class buffers, and the adaptive and
  extension blocks as the server sends them this round;
* ``cloud``: the same digest of the cloud model's arrays when the instruction carries them (evaluation in
  simulation), else ``null``;
* ``config``: every entry of the instruction's ConfigRecord except the signature itself and Flower's ``server-round``
  (Flower's strategy injects that after the server signs): the experience, the hard-class set, the signed round
  (:data:`~meanet_core.keys.BROADCAST_ROUND`), the routing policy and its thresholds, each value tagged with its type;
* ``purpose`` (``"train"`` or ``"evaluate"``: a training broadcast cannot be passed off as an evaluation one) and the
  Flower ``run`` id (a broadcast of another run does not verify).

The signature is Ed25519 over those 32 bytes, carried in the ConfigRecord under
:data:`~meanet_core.keys.BROADCAST_SIGNATURE`.

**Replay.** Every broadcast has a position ``(experience, round)``, ``round`` counting the rounds of edge fine-tuning
of that experience from 1 (a resumed server continues the count). An edge remembers the newest position it accepted
and refuses a broadcast whose signed position is *older* (lexicographic order). The same position is accepted again:
the training and the evaluation instruction of one round share it, and a re-sent copy of an accepted broadcast
changes nothing.

This module is plain ``cryptography`` + numpy (no Flower): the ClientApp and the ServerApp call it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from meanet_core import keys
from meanet_core.trust.broadcast import digest
from meanet_edge.keys import VERIFY_KEY_FILE, key_fingerprint, load_verify_key

SIGNING_KEY_FILE = "broadcast-signing.key"
"""File name of the cloud's Ed25519 private key (PEM, PKCS#8, mode 0600)."""


PURPOSES = ("train", "evaluate")
_DOMAIN = "meanet-fl/broadcast/v1"
_UNSIGNED_CONFIG_KEYS = frozenset({keys.BROADCAST_SIGNATURE, keys.SERVER_ROUND})


class BroadcastRejected(ValueError):
    """A broadcast is unsigned, does not match its signature, or is older than one already accepted."""


@dataclass(frozen=True, order=True)
class BroadcastPosition:
    """Where a broadcast sits in the run: experience first, then the round of edge fine-tuning within it."""

    experience: int
    round: int

    def __str__(self) -> str:
        return f"experience {self.experience}, round {self.round}"


# ------------------------------------------------------------------------------------------------- keys on disk
def _write_private(path: Path, pem: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # a new file, so the mode below holds even if an old one was readable by others
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    encoding, pkcs8 = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    return key.private_bytes(encoding, pkcs8, serialization.NoEncryption())


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def write_key_pair(key: Ed25519PrivateKey, private_path: Path, public_path: Path) -> None:
    """Write the private key (mode 0600) and its public key."""
    _write_private(private_path, private_key_pem(key))
    public_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.write_bytes(public_key_pem(key.public_key()))


def load_signing_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """The cloud's Ed25519 private key from a PEM file (as ``meanet certs`` writes it)."""
    path = Path(path).expanduser()
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"signing key {path} does not exist (meanet certs writes one)") from e
    except (ValueError, TypeError) as e:
        raise ValueError(f"signing key {path} is not an unencrypted PEM private key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"signing key {path} holds a {type(key).__name__}; expected an Ed25519 private key")
    return key


def ensure_signing_key(configured: str, report_dir: Path) -> tuple[Ed25519PrivateKey, Path]:
    """The server's signing key, and where its public key now lies (``REPORT_DIR/broadcast-signing.pub``).

    ``configured`` is the run config's ``signing-key``: a path to a PEM private key, or ``""``: use
    ``REPORT_DIR/broadcast-signing.key``, generating it on first start (a restarted server keeps its key). Either way
    the public key is (re)written beside the report, where simulated edges find it by default.
    """
    if configured:
        key = load_signing_key(configured)
    else:
        path = report_dir / SIGNING_KEY_FILE
        if path.exists():
            key = load_signing_key(path)
        else:
            key = Ed25519PrivateKey.generate()
            _write_private(path, private_key_pem(key))
    public = report_dir / VERIFY_KEY_FILE
    report_dir.mkdir(parents=True, exist_ok=True)
    pem = public_key_pem(key.public_key())
    if not public.exists() or public.read_bytes() != pem:
        public.write_bytes(pem)
    return key, public


# ------------------------------------------------------------------------------------------------- the signed bytes
def tagged(value: Any) -> Any:
    """A value as JSON with its type kept (1, 1.0 and True differ; bytes as hex; dict keys in order), for hashing."""
    if value is None:
        return ["none", None]
    if isinstance(value, bool):
        return ["bool", value]
    if isinstance(value, int):
        return ["int", int(value)]
    if isinstance(value, float):  # np.float64 too (a float subclass): its repr differs, its hex does not
        return ["float", float(value).hex()]
    if isinstance(value, str):
        return ["str", value]
    if isinstance(value, bytes):
        return ["bytes", value.hex()]
    if isinstance(value, (list, tuple)):
        return ["list", [tagged(v) for v in value]]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return ["dict", [[k, tagged(value[k])] for k in sorted(value)]]
    raise TypeError(f"cannot sign a value of type {type(value).__name__}: {value!r}")


def canonical_hash(document: Mapping[str, Any]) -> bytes:
    """SHA-256 of ``document`` as canonical JSON (sorted keys, no spaces): what a signature covers."""
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).digest()


def broadcast_hash(
    arrays: Mapping[str, np.ndarray],
    config: Mapping[str, Any],
    *,
    purpose: str,
    run_id: int,
    cloud_arrays: Mapping[str, np.ndarray] | None = None,
) -> bytes:
    """SHA-256 of everything a broadcast's signature covers (see the module docstring)."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}; got {purpose!r}")
    document = {
        "domain": _DOMAIN,
        "purpose": purpose,
        "run": int(run_id),
        "arrays": digest(arrays, prefix=""),
        "cloud": None if cloud_arrays is None else digest(cloud_arrays, prefix=""),
        "config": {k: tagged(v) for k, v in config.items() if k not in _UNSIGNED_CONFIG_KEYS},
    }
    return canonical_hash(document)


def position_of(config: Mapping[str, Any]) -> BroadcastPosition:
    """The ``(experience, round)`` a broadcast's config claims; raises :class:`BroadcastRejected` when it has none."""
    try:
        experience, rnd = config[keys.EXPERIENCE], config[keys.BROADCAST_ROUND]
    except KeyError as e:
        raise BroadcastRejected(f"the broadcast config has no {e.args[0]!r} entry: it is not a signed broadcast") from e
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (experience, rnd)):
        raise BroadcastRejected(f"the broadcast position is ({experience!r}, {rnd!r}); expected two integers")
    return BroadcastPosition(experience, rnd)


def sign_broadcast(
    key: Ed25519PrivateKey,
    arrays: Mapping[str, np.ndarray],
    config: Mapping[str, Any],
    *,
    purpose: str,
    run_id: int,
    cloud_arrays: Mapping[str, np.ndarray] | None = None,
) -> bytes:
    """The Ed25519 signature of a broadcast; ``config`` must already hold its experience and round."""
    position_of(config)
    return key.sign(broadcast_hash(arrays, config, purpose=purpose, run_id=run_id, cloud_arrays=cloud_arrays))


def verify_broadcast(
    key: Ed25519PublicKey,
    arrays: Mapping[str, np.ndarray],
    config: Mapping[str, Any],
    *,
    purpose: str,
    run_id: int,
    cloud_arrays: Mapping[str, np.ndarray] | None = None,
    newest: BroadcastPosition | None = None,
) -> BroadcastPosition:
    """Check a broadcast against the pinned public key; return its position.

    Raises
    ------
    BroadcastRejected
        If the broadcast carries no signature, if the signature does not match the arrays, config, purpose and run
        (tampered, or signed by another key), or if its position is older than ``newest`` (a replay).
    """
    signature = config.get(keys.BROADCAST_SIGNATURE)
    if signature is None:
        raise BroadcastRejected(f"the broadcast is unsigned (no {keys.BROADCAST_SIGNATURE!r} in its config)")
    if not isinstance(signature, bytes):
        raise BroadcastRejected(f"the broadcast signature is a {type(signature).__name__}; expected bytes")
    position = position_of(config)
    try:
        key.verify(signature, broadcast_hash(arrays, config, purpose=purpose, run_id=run_id, cloud_arrays=cloud_arrays))
    except InvalidSignature as e:
        raise BroadcastRejected(
            f"the {purpose} broadcast ({position}) does not match its signature: its arrays or config were changed "
            "after signing, it belongs to another run, or it was signed by a key other than the pinned one"
        ) from e
    if newest is not None and position < newest:
        raise BroadcastRejected(f"replayed broadcast: signed for {position}, older than the accepted {newest}")
    return position


__all__ = [
    "SIGNING_KEY_FILE",
    "VERIFY_KEY_FILE",
    "BroadcastPosition",
    "BroadcastRejected",
    "broadcast_hash",
    "canonical_hash",
    "ensure_signing_key",
    "key_fingerprint",
    "load_signing_key",
    "load_verify_key",
    "position_of",
    "sign_broadcast",
    "tagged",
    "verify_broadcast",
    "write_key_pair",
]
