"""What a device keeps for itself, as bytes: its personal blocks, hard classes, class prior and routing policy.

A personal state never leaves the device (no upload carries it); it lives in Flower's ``Context.state`` in a
simulation and in a file under the SuperNode's own folder in a deployment (``fl_client.personal``), and
``meanet export --personal FILE`` reads it. The bytes are::

    b"MEANET-PERSONAL 1\\n"  magic and format version
    64 hex digits + "\\n"    SHA-256 of the body
    body                     an .npz archive: the arrays, and "__meta__" (a JSON document, as uint8)

:func:`decode_personal` never trusts its input: a foreign magic, another version, a checksum that does not match, an
archive that does not open, or meta that does not describe the arrays raise :class:`PersonalStateError`, a
``ValueError`` that says what is wrong and what happens next. :func:`check_owner` tells a state of another model,
class count or federation apart from this device's own.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

MAGIC = b"MEANET-PERSONAL 1\n"
_META = "__meta__"
_REQUIRED_META = ("arch", "num_classes", "federation", "device", "experience", "hard_classes", "policy")


class PersonalStateError(ValueError):
    """A personal state that cannot be used: corrupt, of another format, or of another model or federation."""


@dataclass
class PersonalState:
    """A device's own blocks and choices.

    ``arrays``: the MEANet state entries that are the device's own (``adaptive.*``, ``extension.*``, ``hard_classes``,
    ``hard_index``, ``class_prior``). ``meta``: ``arch`` and ``num_classes`` (the model it fits), ``federation`` (whose
    fleet it belongs to: the fingerprint of the pinned broadcast key), ``device`` (its name), ``experience`` (when it
    was last trained), ``hard_classes``, ``policy`` (the routing policy's ``as_dict()``), and anything else worth
    keeping (the prior's strength, validation accuracies).
    """

    arrays: dict[str, npt.NDArray[Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def hard_classes(self) -> list[int]:
        return [int(c) for c in self.meta.get("hard_classes", [])]


def encode_personal(state: PersonalState) -> bytes:
    """The bytes of ``state`` (see the module docstring)."""
    missing = [k for k in _REQUIRED_META if k not in state.meta]
    if missing:
        raise ValueError(f"a personal state's meta needs {missing}; got {sorted(state.meta)}")
    if _META in state.arrays:
        raise ValueError(f"an array may not be named {_META!r}")
    buffer = io.BytesIO()
    meta = np.frombuffer(json.dumps(state.meta, sort_keys=True).encode(), dtype=np.uint8)
    entries: dict[str, Any] = {_META: meta, **{k: np.array(v, order="C") for k, v in state.arrays.items()}}
    np.savez(buffer, **entries)
    body = buffer.getvalue()
    return MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body


def decode_personal(data: bytes) -> PersonalState:
    """The state in ``data``, checked against its checksum.

    Raises
    ------
    PersonalStateError
        Not a personal state, another format version, a checksum that does not match (a corrupt or edited file), or
        an archive whose meta is missing or malformed.
    """
    if not data.startswith(MAGIC):
        head = data[: len(MAGIC)]
        if head.startswith(b"MEANET-PERSONAL"):
            raise PersonalStateError(f"a personal state of another format ({head!r}); this version reads {MAGIC!r}")
        raise PersonalStateError(f"not a MEANet personal state (it starts {head[:16]!r}, expected {MAGIC!r})")
    rest = data[len(MAGIC) :]
    checksum, sep, body = rest[:64], rest[64:65], rest[65:]
    if sep != b"\n" or len(checksum) != 64:
        raise PersonalStateError("the personal state's checksum line is missing or truncated")
    if hashlib.sha256(body).hexdigest().encode() != checksum:
        raise PersonalStateError("the personal state's checksum does not match its contents: the file is corrupt")
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as archive:
            arrays = {k: np.array(archive[k]) for k in archive.files}
        meta = json.loads(bytes(arrays.pop(_META)).decode())
    except (KeyError, ValueError, OSError, EOFError, UnicodeDecodeError) as e:
        raise PersonalStateError(f"the personal state does not open ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict) or (missing := [k for k in _REQUIRED_META if k not in meta]):
        raise PersonalStateError(f"the personal state's meta lacks {missing if isinstance(meta, dict) else 'all'}")
    return PersonalState(arrays, meta)


def check_owner(state: PersonalState, *, arch: str, num_classes: int, federation: str) -> None:
    """Raise :class:`PersonalStateError` when ``state`` belongs to another model, class count or federation."""
    meta: Mapping[str, Any] = state.meta
    for name, expected in (("arch", arch), ("num_classes", num_classes), ("federation", federation)):
        if meta.get(name) != expected:
            raise PersonalStateError(
                f"a foreign personal state: its {name} is {meta.get(name)!r}, this device's is {expected!r}"
            )


__all__ = ["MAGIC", "PersonalState", "PersonalStateError", "check_owner", "decode_personal", "encode_personal"]
