"""Checkpoints: atomic writes, weights-only loads, and a clear error for a file that is not what it should be."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from meanet_core.models import CloudModel, MEANet, build_cloud, build_meanet

FORMAT = "meanet-fl/1"
T = TypeVar("T")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, of another kind or another model."""


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def safe_load(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain types only: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train first (meanet train --out DIR)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or holds objects that are not plain data
        raise CheckpointError(
            f"checkpoint {path} cannot be read as a weights-only torch file ({type(e).__name__}: {e}); "
            "it is truncated, corrupt or not a MEANet-FL checkpoint: retrain or restore it"
        ) from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path} is not a {FORMAT} checkpoint (found format {found!r})")
    return obj


SERVER_STATE_FIELDS = ("config", "position", "hard_classes", "meanet", "cloud", "report")
"""What a federation server's ``state.pt`` holds (written by ``fl_server.cloud.CloudServer`` after every round)."""


def load_server_state(path: str | os.PathLike[str], config: dict[str, Any]) -> dict[str, Any]:
    """A federation server's ``state.pt``, weights only, checked to hold every field and to belong to ``config``.

    Raises
    ------
    CheckpointError
        If the file is truncated or not a weights-only MEANet-FL checkpoint, lacks a field, or was written by a run
        with other settings (the message lists the keys that differ and the way out).
    """
    path = Path(path)
    obj = safe_load(path)
    require(obj, SERVER_STATE_FIELDS, path)
    saved = obj["config"]
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: its config is a {type(saved).__name__}, not a run config")
    if saved != config:
        differ = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        shown = ", ".join(f"{k}: saved {saved.get(k)!r}, now {config.get(k)!r}" for k in differ[:5])
        raise CheckpointError(
            f"{path} belongs to a run with other settings ({shown}); set report-dir to a new folder, "
            "or delete the old state to start over"
        )
    position = obj["position"]
    if not isinstance(position, dict) or not {"experience", "phase", "round"} <= set(position):
        raise CheckpointError(f"{path}: its position {position!r} is not an experience/phase/round record")
    return obj


def meanet_payload(model: MEANet) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "kind": "meanet",
        "arch": model.arch,
        "num_classes": model.num_classes,
        "input_size": model.input_size,
        "hard_classes": [int(c) for c in model.hard_classes.tolist()],
        "mean": model.normalize.mean.flatten().tolist(),
        "std": model.normalize.std.flatten().tolist(),
        "adaptive_width": model.adaptive_width,
        "extension_width": model.extension_width,
        "extension_blocks": model.extension_blocks,
        "state_dict": model.state_dict(),
    }


def cloud_payload(model: CloudModel, num_classes: int) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "kind": "cloud",
        "arch": model.arch,
        "num_classes": num_classes,
        "input_size": model.input_size,
        "mean": model.normalize.mean.flatten().tolist(),
        "std": model.normalize.std.flatten().tolist(),
        "state_dict": model.state_dict(),
    }


def load_state(model: torch.nn.Module, state: Any, path: str | os.PathLike[str], what: str = "the model") -> None:
    """``model.load_state_dict(state, strict=True)``, or a :class:`CheckpointError` naming ``path`` if it won't fit."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: the weights of {what} are not a state dict of tensors")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"{path}: the weights do not fit {what} ({first} ...): the file belongs to another model or config"
        ) from e


def require(obj: dict[str, Any], names: tuple[str, ...], path: str | os.PathLike[str]) -> None:
    """Raise a :class:`CheckpointError` naming ``path`` unless ``obj`` has every field in ``names``."""
    missing = [n for n in names if n not in obj]
    if missing:
        raise CheckpointError(
            f"{path} lacks field(s) {missing} (found {sorted(obj)}): it was not written by this version of "
            "MEANet-FL or is damaged; retrain or restore it"
        )


def _build(path: Path, build: Callable[[], T]) -> T:
    try:
        return build()
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its header does not describe a model this version can build ({e})") from e


def _kind(obj: dict[str, Any], kind: str, path: Path) -> None:
    if obj.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {obj.get('kind')!r} model, not a {kind!r} one")


def _saved_input_size(obj: dict[str, Any], path: Path, default: int | None) -> int | None:
    """The image side the model was trained at: its header's ``input_size``; ``default`` for checkpoints written
    before it was recorded (None: the architecture's native size)."""
    size = obj.get("input_size", default)
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise CheckpointError(f"{path}: its input_size {size!r} is not a positive number of pixels; it is damaged")
    return size


def load_meanet(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu", *, default_input_size: int | None = None
) -> MEANet:
    """The MEANet of ``path``, taking images of the size it was trained at (``default_input_size`` for checkpoints
    that predate recording it; None: the architecture's native size)."""
    path = Path(path)
    obj = safe_load(path, map_location)
    _kind(obj, "meanet", path)
    require(obj, ("arch", "num_classes", "hard_classes", "mean", "std", "adaptive_width", "extension_width",
                  "extension_blocks", "state_dict"), path)  # fmt: skip
    model = _build(
        path,
        lambda: build_meanet(
            obj["arch"],
            int(obj["num_classes"]),
            obj["hard_classes"],
            mean=obj["mean"],
            std=obj["std"],
            adaptive_width=int(obj["adaptive_width"]),
            extension_width=int(obj["extension_width"]),
            extension_blocks=int(obj["extension_blocks"]),
            input_size=_saved_input_size(obj, path, default_input_size),
        ),
    )
    load_state(model, obj["state_dict"], path)
    return model.eval()


def load_cloud(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu", *, default_input_size: int | None = None
) -> CloudModel:
    """The cloud model of ``path``, taking images of the size it was trained at (see :func:`load_meanet`)."""
    path = Path(path)
    obj = safe_load(path, map_location)
    _kind(obj, "cloud", path)
    require(obj, ("arch", "num_classes", "mean", "std", "state_dict"), path)
    side = _saved_input_size(obj, path, default_input_size)
    model = _build(
        path,
        lambda: build_cloud(obj["arch"], int(obj["num_classes"]), mean=obj["mean"], std=obj["std"], input_size=side),
    )
    load_state(model, obj["state_dict"], path)
    return model.eval()
