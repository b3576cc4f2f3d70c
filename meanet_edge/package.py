"""Edge packages: the signed file ``meanet export --format onnx`` writes and ``meanet edge predict`` runs.

An edge package is a zip archive (deflated: the graphs' names and scales compress, int8 weights a little) holding

* ``manifest.json``: what the device needs to route (see :data:`MANIFEST_FIELDS`): the model's name, class count
  and input size, the class names (index = class id), the hard classes, the routing policy, the input
  normalisation (informational: each graph normalises its own input), the precision (``float32`` | ``int8``) and
  its calibration, the versions that wrote it, the per-block costs (MACs, parameters, bytes) and, per block
  (``main``, ``adaptive``, ``extension``), its graph's file name and SHA-256;
* one ONNX graph per block (``main.onnx``, ``adaptive.onnx``, ``extension.onnx``);
* ``signature.json``: Ed25519 over :func:`manifest_hash` (a domain tag and the canonical JSON of the manifest, which
  names every graph's digest) and the signer's fingerprint (for messages only; it decides nothing).

:func:`read_package` checks the signature against the pinned public key, then every graph's digest, *before*
anything is built from the graphs: a package changed after signing, signed by another key, unsigned, or not a
package at all is refused with an :class:`EdgePackageError` that says which and what to do.

The graphs' interface (float32 images in [0, 1], NCHW):

* ``main``: ``images`` (B, 3, S, S) -> ``logits`` (B, K) (the device's class prior included), ``features``
  (B, C, h, w);
* ``adaptive``: ``images`` -> ``adaptive`` (B, Ca, h, w);
* ``extension``: ``features``, ``adaptive``, ``main_hard_logits`` (B, H: the main logits of the hard classes, in
  the order of ``hard_classes``) -> ``logits`` (B, H).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from meanet_edge.keys import key_fingerprint, load_verify_key

PACKAGE_FORMAT = "meanet-fl/edge-package/1"
_DOMAIN = "meanet-fl/edge-package/v1"
BLOCKS: tuple[str, ...] = ("main", "adaptive", "extension")
MANIFEST, SIGNATURE = "manifest.json", "signature.json"
MANIFEST_FIELDS: tuple[str, ...] = (
    "format",
    "arch",
    "num_classes",
    "input_size",
    "class_names",
    "hard_classes",
    "policy",
    "mean",
    "std",
    "precision",
    "calibration",
    "versions",
    "costs",
    "blocks",
    "source",
)
"""Every field of a manifest, all covered by the signature."""
PRECISIONS = ("float32", "int8")


class EdgePackageError(ValueError):
    """An edge package is missing, unsigned, changed after signing, signed by another key, or not one at all."""


@dataclass(frozen=True)
class EdgePackage:
    """A verified package: its manifest and its graphs (ONNX bytes by block), and who signed it."""

    path: Path
    manifest: dict[str, Any]
    graphs: dict[str, bytes]
    signer: str

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.manifest["class_names"])

    @property
    def input_size(self) -> int:
        return int(self.manifest["input_size"])

    @property
    def hard_classes(self) -> tuple[int, ...]:
        return tuple(int(c) for c in self.manifest["hard_classes"])


def canonical(value: Any) -> bytes:
    """The canonical JSON of ``value``: sorted keys, no spaces, ASCII, no NaN (the bytes that are hashed)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def manifest_hash(manifest: Mapping[str, Any]) -> bytes:
    """SHA-256 of the domain tag and the canonical manifest: what the package's signature signs."""
    return hashlib.sha256(canonical({"domain": _DOMAIN, "manifest": dict(manifest)})).digest()


def is_package(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a zip archive with a ``manifest.json`` at its top: an edge package (a ``.pt`` edge model
    is a zip archive too, of ``torch.save``, with no manifest)."""
    try:
        with zipfile.ZipFile(path) as z:
            return MANIFEST in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def write_package(
    path: str | os.PathLike[str], manifest: Mapping[str, Any], graphs: Mapping[str, bytes], key: Ed25519PrivateKey
) -> Path:
    """Sign ``manifest`` (completed with each graph's file, digest and size) and write the package atomically."""
    missing = [b for b in BLOCKS if b not in graphs]
    if missing:
        raise ValueError(f"an edge package needs a graph for every block {BLOCKS}; missing {missing}")
    manifest = dict(manifest)
    manifest["format"] = PACKAGE_FORMAT
    blocks = dict(manifest.get("blocks") or {})
    for name in BLOCKS:
        blocks[name] = {
            **blocks.get(name, {}),
            "file": f"{name}.onnx",
            "sha256": hashlib.sha256(graphs[name]).hexdigest(),
            "bytes": len(graphs[name]),
        }
    manifest["blocks"] = blocks
    unknown = sorted(set(manifest) - set(MANIFEST_FIELDS))
    absent = sorted(set(MANIFEST_FIELDS) - set(manifest))
    if unknown or absent:
        raise ValueError(f"manifest fields: unknown {unknown}, missing {absent}; expected {MANIFEST_FIELDS}")
    signature = {"signer": key_fingerprint(key.public_key()), "signature": key.sign(manifest_hash(manifest)).hex()}
    out = Path(path)
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; expected a file path such as {out / 'model.zip'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
            z.writestr(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False))
            for name in BLOCKS:
                z.writestr(blocks[name]["file"], graphs[name])
            z.writestr(SIGNATURE, json.dumps(signature))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def read_package(path: str | os.PathLike[str], verify_key: str | os.PathLike[str] | Ed25519PublicKey) -> EdgePackage:
    """The package at ``path``, verified against the pinned ``verify_key`` (a PEM file or a key) before anything
    else is read from it.

    Raises
    ------
    EdgePackageError
        Not a package, unsigned, signed by another key, changed after signing, or a graph that does not match its
        signed digest.
    FileNotFoundError
        ``path`` or the key file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"edge package {path} does not exist (meanet export --format onnx writes one)")
    key = verify_key if isinstance(verify_key, Ed25519PublicKey) else load_verify_key(verify_key)
    try:
        archive = zipfile.ZipFile(io.BytesIO(path.read_bytes()))
        names = set(archive.namelist())
    except zipfile.BadZipFile as e:
        raise EdgePackageError(
            f"{path} is not an edge package (not a zip archive: {e}); export one with meanet export --format onnx, "
            "or pass a .pt edge model to the full install's meanet edge predict"
        ) from e
    with archive:
        if MANIFEST not in names:
            raise EdgePackageError(f"{path} holds no {MANIFEST}: it is not an edge package; re-export it")
        if SIGNATURE not in names:
            raise EdgePackageError(f"{path} is unsigned (no {SIGNATURE}): refuse it, and re-export from the run")
        try:
            manifest = json.loads(archive.read(MANIFEST))
            signed = json.loads(archive.read(SIGNATURE))
            signature = bytes.fromhex(str(signed["signature"]))
            signer = str(signed.get("signer", "?"))
        except (ValueError, KeyError, TypeError) as e:
            raise EdgePackageError(f"{path}: its manifest or signature is not readable JSON ({e}); re-export it") from e
        if not isinstance(manifest, dict) or manifest.get("format") != PACKAGE_FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
            raise EdgePackageError(
                f"{path} is a package of format {found!r}; this runtime reads {PACKAGE_FORMAT!r}: export it again "
                "with this version, or install the runtime that matches it"
            )
        try:
            key.verify(signature, manifest_hash(manifest))
        except (InvalidSignature, ValueError) as e:
            pinned = key_fingerprint(key)
            raise EdgePackageError(
                f"{path}: the signature does not verify with the pinned key {pinned} (signed by {signer}): the "
                "package was changed after signing, or another cloud signed it. Do not run it; export it again, "
                "or pin the right key (--verify-key)"
            ) from e
        graphs: dict[str, bytes] = {}
        for block in BLOCKS:
            entry = manifest["blocks"][block]
            if entry["file"] not in names:
                raise EdgePackageError(f"{path}: the signed manifest names {entry['file']}, which is missing")
            data = archive.read(entry["file"])
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise EdgePackageError(
                    f"{path}: the graph {entry['file']} does not match its signed digest (changed after signing); "
                    "do not run it, export it again"
                )
            graphs[block] = data
    return EdgePackage(path, manifest, graphs, signer)


__all__ = [
    "BLOCKS",
    "MANIFEST_FIELDS",
    "PACKAGE_FORMAT",
    "PRECISIONS",
    "EdgePackage",
    "EdgePackageError",
    "canonical",
    "is_package",
    "manifest_hash",
    "read_package",
    "write_package",
]
