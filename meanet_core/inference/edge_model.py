"""Signed, weights-only edge model files: what ``meanet export`` writes and an edge device loads.

An edge model file is a ``torch.save`` of plain data, read back with ``torch.load(weights_only=True)`` (no code
runs), holding

* ``format``: :data:`EDGE_MODEL_FORMAT`;
* ``header``: the MEANet's architecture (``arch``, ``num_classes``, ``input_size``, ``adaptive_width``,
  ``extension_width``, ``extension_blocks``), its ``hard_classes``, the ``class_names`` (index = class id), the
  normalisation ``mean``/``std``, the routing ``policy`` it was calibrated with (``Policy.as_dict()``, or None when
  unknown) and its ``source`` (the run it was exported from);
* ``state_dict``: the MEANet's tensors;
* ``signer``: the fingerprint of the public key that signed it (used in messages only; it decides nothing);
* ``signature``: Ed25519 over :func:`edge_model_hash`, the SHA-256 of a canonical JSON document holding a domain
  tag, the digest of every tensor (names, dtypes, shapes and bytes; :func:`meanet_core.trust.broadcast.digest`) and
  every
  header field tagged with its type (:func:`meanet_core.trust.signing.tagged`), as a broadcast is signed.

:func:`load_edge_model` checks the signature against a pinned public key *before* it builds anything; a file that
was changed after signing, signed by another key, unsigned, or not an edge model file is refused with an
:class:`EdgeModelError` that says which and what to do.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from meanet_core.inference.policies import CalibratedPolicy, PaperPolicy, Policy
from meanet_core.models import MEANet, build_meanet
from meanet_core.training.checkpoint import FORMAT as CHECKPOINT_FORMAT
from meanet_core.training.checkpoint import atomic_save
from meanet_core.trust.broadcast import digest
from meanet_core.trust.signing import canonical_hash, key_fingerprint, load_verify_key, tagged
from meanet_edge.policy import NoCalibratedThresholds, choose_policy
from meanet_edge.policy import policy_from_dict as edge_policy_from_dict
from meanet_edge.report import describe_policy

EDGE_MODEL_FORMAT = "meanet-fl/edge-model/1"
_DOMAIN = "meanet-fl/edge-model/v1"
HEADER_FIELDS: tuple[str, ...] = (
    "arch",
    "num_classes",
    "input_size",
    "adaptive_width",
    "extension_width",
    "extension_blocks",
    "hard_classes",
    "class_names",
    "mean",
    "std",
    "policy",
    "source",
)
"""Every field of an edge model's header, all covered by its signature."""


class EdgeModelError(ValueError):
    """An edge model file is missing, unsigned, changed after signing, signed by another key, or not one at all."""


@dataclass(frozen=True)
class EdgeModel:
    """A verified edge model: the MEANet, its classes and the routing policy it was calibrated with (if known)."""

    model: MEANet
    class_names: tuple[str, ...]
    policy: dict[str, Any] | None
    source: str
    signer: str

    def routing_policy(self, name: str | None = None, entropy_threshold: float | None = None) -> Policy:
        """The policy to route with: ``name`` (``paper`` | ``calibrated``; default: the recorded one, else paper),
        chosen as the edge runtime chooses it (:func:`meanet_edge.policy.choose_policy`).

        ``calibrated`` needs the thresholds recorded at export; ``paper`` takes ``entropy_threshold``, else the
        recorded one, else :data:`DEFAULT_ENTROPY_THRESHOLD`.
        """
        try:
            chosen = choose_policy(self.policy, name, entropy_threshold)
        except NoCalibratedThresholds as e:
            raise EdgeModelError(str(e)) from e
        return policy_from_dict(chosen.as_dict())


def policy_from_dict(values: Mapping[str, Any]) -> Policy:
    """A routing policy from its ``as_dict()`` form (as reports and edge model files record it), checked as the edge
    runtime checks it (:func:`meanet_edge.policy.policy_from_dict`)."""
    checked = edge_policy_from_dict(values)
    if checked.name == "calibrated":
        return CalibratedPolicy(
            checked.main_threshold, checked.extension_threshold, use_extension=checked.use_extension
        )
    return PaperPolicy(checked.entropy_threshold)


def edge_header(
    model: MEANet, class_names: Sequence[str], policy: Policy | Mapping[str, Any] | None, source: str
) -> dict[str, Any]:
    """The header of ``model``'s edge model file (validated: one unique name per class, a known policy)."""
    names = [str(n) for n in class_names]
    if len(names) != model.num_classes or len(set(names)) != len(names):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(
            f"an edge model needs one unique name per class: the model has {model.num_classes} classes, "
            f"found {len(names)} names" + (f" with duplicates {duplicates[:5]}" if duplicates else "")
        )
    recorded = None if policy is None else dict(policy if isinstance(policy, Mapping) else policy.as_dict())
    if recorded is not None:
        recorded = policy_from_dict(recorded).as_dict()  # validated, plain floats
    return {
        "arch": model.arch,
        "num_classes": int(model.num_classes),
        "input_size": int(model.input_size),
        "adaptive_width": int(model.adaptive_width),
        "extension_width": int(model.extension_width),
        "extension_blocks": int(model.extension_blocks),
        "hard_classes": [int(c) for c in model.hard_classes.tolist()],
        "class_names": names,
        "mean": [float(v) for v in model.normalize.mean.flatten().tolist()],
        "std": [float(v) for v in model.normalize.std.flatten().tolist()],
        "policy": recorded,
        "source": str(source),
    }


def edge_model_hash(header: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> bytes:
    """SHA-256 of everything an edge model's signature covers (see the module docstring)."""
    return canonical_hash(
        {
            "domain": _DOMAIN,
            "format": EDGE_MODEL_FORMAT,
            "arrays": digest(state, prefix=""),
            "header": {k: tagged(v) for k, v in header.items()},
        }
    )


def write_edge_model(
    model: MEANet,
    class_names: Sequence[str],
    key: Ed25519PrivateKey,
    out: str | os.PathLike[str],
    *,
    policy: Policy | Mapping[str, Any] | None = None,
    source: str = "",
) -> Path:
    """Sign ``model`` with ``key`` and write it (atomically) as an edge model file; returns its path."""
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; expected a file path such as {out / 'model.pt'}")
    header = edge_header(model, class_names, policy, source)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}  # plain, contiguous tensors
    atomic_save(
        {
            "format": EDGE_MODEL_FORMAT,
            "header": header,
            "state_dict": state,
            "signer": key_fingerprint(key.public_key()),
            "signature": key.sign(edge_model_hash(header, state)),
        },
        out,
    )
    return out


def load_edge_model(
    path: str | os.PathLike[str],
    verify_key: Ed25519PublicKey | str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
) -> EdgeModel:
    """The MEANet of a signed edge model file, after its signature checks out against the pinned ``verify_key``.

    Raises
    ------
    EdgeModelError
        If the file is missing, not a weights-only edge model file, unsigned, changed after signing (tampered or
        damaged), or signed by a key other than ``verify_key``.
    """
    path = Path(path)
    key = _pinned(verify_key)
    obj = _read(path, map_location)
    header, state, signature = obj["header"], obj["state_dict"], obj["signature"]
    try:
        expected = edge_model_hash(header, state)
    except (TypeError, ValueError, AttributeError) as e:  # a header value no export writes
        raise EdgeModelError(f"{path}: its header cannot be hashed ({e}); it was not written by meanet export") from e
    try:
        key.verify(signature, expected)
    except InvalidSignature as e:
        pinned, signer = key_fingerprint(key), str(obj.get("signer", "unknown"))
        if signer != pinned:
            raise EdgeModelError(
                f"{path} is signed by key {signer}, not by the pinned key {pinned}: pin the public key of the cloud "
                "that exported it (its broadcast-signing.pub), or export the model again with the pinned key's "
                "signing key (meanet export --signing-key)"
            ) from e
        raise EdgeModelError(
            f"{path} does not match its signature (key {pinned}): its weights or header changed after signing "
            "(tampered or damaged); export it again (meanet export) and copy it whole"
        ) from e
    model = _build(path, header, state)
    return EdgeModel(model, tuple(header["class_names"]), header["policy"], str(header["source"]), key_fingerprint(key))


def _pinned(verify_key: Ed25519PublicKey | str | os.PathLike[str]) -> Ed25519PublicKey:
    if isinstance(verify_key, Ed25519PublicKey):
        return verify_key
    path = Path(verify_key).expanduser()
    if not path.is_file():
        raise EdgeModelError(
            f"the pinned verify key {path} does not exist: copy the cloud's public key (broadcast-signing.pub in "
            "the federation's report folder, or beside the run meanet export signed) to the edge and pass its path"
        )
    try:
        return load_verify_key(path)
    except ValueError as e:
        raise EdgeModelError(f"{e}; pass the cloud's broadcast-signing.pub as the pinned verify key") from e


def _read(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    """The file's plain contents, checked to be a signed edge model file (nothing built, nothing trusted yet)."""
    if not path.is_file():
        raise EdgeModelError(f"edge model file {path} does not exist; write one with meanet export --out {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or holds objects other than plain data
        raise EdgeModelError(
            f"{path} is not an edge model file: it cannot be read as a weights-only torch file "
            f"({type(e).__name__}: {e}); write one with meanet export"
        ) from e
    found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
    if isinstance(obj, dict) and found == CHECKPOINT_FORMAT:
        raise EdgeModelError(
            f"{path} is a training checkpoint ({obj.get('kind', 'state')!r}), not a signed edge model file: "
            "export one with meanet export --run RUN (or --report-dir DIR) --out model.pt"
        )
    if not isinstance(obj, dict) or found != EDGE_MODEL_FORMAT:
        raise EdgeModelError(
            f"{path} is not an edge model file: expected format {EDGE_MODEL_FORMAT!r}, found {found!r}; "
            "write one with meanet export"
        )
    if obj.get("signature") is None:
        raise EdgeModelError(f"{path} is unsigned (no signature): export it with meanet export, which signs it")
    if not isinstance(obj["signature"], bytes):
        raise EdgeModelError(f"{path}: its signature is a {type(obj['signature']).__name__}; expected bytes")
    header, state = obj.get("header"), obj.get("state_dict")
    if not isinstance(header, dict) or sorted(header) != sorted(HEADER_FIELDS):
        found_fields = sorted(header) if isinstance(header, dict) else type(header).__name__
        raise EdgeModelError(f"{path}: its header holds {found_fields}; expected the fields {list(HEADER_FIELDS)}")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EdgeModelError(f"{path}: its state_dict is not a dict of tensors")
    return obj


def _build(path: Path, header: dict[str, Any], state: dict[str, torch.Tensor]) -> MEANet:
    """The model a verified header describes, with its weights (strict)."""
    names = header["class_names"]
    if not isinstance(names, list) or len(names) != header["num_classes"] or len(set(names)) != len(names):
        raise EdgeModelError(f"{path}: its class_names are not one unique name per class; export it again")
    try:
        if header["policy"] is not None:
            policy_from_dict(header["policy"])
        model = build_meanet(
            header["arch"], int(header["num_classes"]), header["hard_classes"], mean=header["mean"],
            std=header["std"], adaptive_width=int(header["adaptive_width"]),
            extension_width=int(header["extension_width"]), extension_blocks=int(header["extension_blocks"]),
            input_size=int(header["input_size"]),
        )  # fmt: skip
        model.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EdgeModelError(
            f"{path}: its header does not describe a model this version can build ({first}); export it again "
            "with this version of MEANet-FL"
        ) from e
    return model.eval()


__all__ = [
    "EDGE_MODEL_FORMAT",
    "HEADER_FIELDS",
    "EdgeModel",
    "EdgeModelError",
    "describe_policy",
    "edge_header",
    "edge_model_hash",
    "load_edge_model",
    "policy_from_dict",
    "write_edge_model",
]
