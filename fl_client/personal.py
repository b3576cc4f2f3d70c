"""Where a device keeps what is its own: one load/save pair over its personal state.

A personal state (:mod:`meanet_core.wire.personal_state`: the device's adaptive + extension blocks, hard classes,
class prior and routing policy) lives

* in Flower's ``Context.state`` (:data:`~meanet_core.keys.PERSONAL_STATE`), which a simulation keeps per node for the
  run, and
* in a file under the SuperNode's own folder when its node config names one: ``state-dir``, else
  ``data-dir``/``.meanet`` (deployment: a killed and restarted SuperNode loads it and goes on where it stopped).

The ``Context.state`` copy wins (it is this process's newest); the file is the one a restarted SuperNode finds. A
corrupt state, one of another model or class count, or one of another federation (its broadcast key is not the one
this device pins) is refused with the reason logged, and the device starts fresh from the broadcast: never a
traceback, never a model built from someone else's blocks. Nothing here ever goes into a message.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from logging import ERROR, INFO
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context
from flwr.common import log

from meanet_core import keys
from meanet_core.wire.personal_state import (
    PersonalState,
    PersonalStateError,
    check_owner,
    decode_personal,
    encode_personal,
)

STATE_FILE = "personal.state"


def federation_of(verify_key: Path) -> str:
    """The fleet a personal state belongs to: the SHA-256 (16 hex digits) of the broadcast key this device pins."""
    try:
        return hashlib.sha256(verify_key.read_bytes()).hexdigest()[:16]
    except OSError:
        return "unknown"


def state_file(node_config: Mapping[str, Any]) -> Path | None:
    """The personal state's file for this SuperNode (``state-dir``, else ``data-dir``/``.meanet``), or ``None``."""
    for key, sub in (("state-dir", ""), ("data-dir", ".meanet")):
        value = node_config.get(key)
        if isinstance(value, str) and value:
            return Path(value).expanduser() / sub / STATE_FILE
    return None


class PersonalStore:
    """Load and save one device's personal state (see the module docstring)."""

    def __init__(self, context: Context, *, arch: str, num_classes: int, federation: str, device: int | str) -> None:
        self.context = context
        self.owner = {"arch": arch, "num_classes": num_classes, "federation": federation}
        self.device = str(device)
        self.path = state_file(context.node_config)
        self.refused: str = ""
        """Why the last :meth:`load` refused a state ('' when it did not)."""

    def load(self) -> PersonalState | None:
        """This device's personal state, or ``None`` (none yet, or one refused: see :attr:`refused`)."""
        self.refused = ""
        data, where = self._read()
        if data is None:
            return None
        try:
            state = decode_personal(data)
            check_owner(state, **self.owner)  # type: ignore[arg-type]
        except PersonalStateError as e:
            self.refused = f"{where}: {e}"
            log(ERROR, "edge %s: personal state refused (%s); starting fresh from the broadcast", self.device, e)
            return None
        return state

    def _read(self) -> tuple[bytes | None, str]:
        record = self.context.state.config_records.get(keys.PERSONAL_STATE)
        if record is not None and isinstance(value := record.get("bytes"), bytes):
            return value, "context state"
        if self.path is not None and self.path.is_file():
            try:
                return self.path.read_bytes(), str(self.path)
            except OSError as e:
                self.refused = f"{self.path}: {e}"
                log(ERROR, "edge %s: cannot read %s (%s); starting fresh", self.device, self.path, e)
        return None, ""

    def save(self, arrays: Mapping[str, Any], meta: Mapping[str, Any]) -> PersonalState:
        """Keep ``arrays`` and ``meta`` as this device's personal state (context state, and the file if any)."""
        state = PersonalState(dict(arrays), {**meta, **self.owner, "device": self.device})
        data = encode_personal(state)
        self.context.state[keys.PERSONAL_STATE] = ConfigRecord({"bytes": data})
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".personal-", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.chmod(tmp, 0o600)
                os.replace(tmp, self.path)  # atomic: a crash leaves the old state or the new one
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            log(INFO, "edge %s: personal state saved to %s (%d bytes)", self.device, self.path, len(data))
        return state
