"""Checkpoints: atomic writes, weights-only loads, and a clear error for a file that is not what it should be."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from meanet_core.models import CloudModel, MEANet, build_cloud, build_meanet

FORMAT = "meanet-fl/1"


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


def meanet_payload(model: MEANet) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "kind": "meanet",
        "arch": model.arch,
        "num_classes": model.num_classes,
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
        "mean": model.normalize.mean.flatten().tolist(),
        "std": model.normalize.std.flatten().tolist(),
        "state_dict": model.state_dict(),
    }


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the weights do not fit the model its header names ({e})") from e


def _kind(obj: dict[str, Any], kind: str, path: Path) -> None:
    if obj.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {obj.get('kind')!r} model, not a {kind!r} one")


def load_meanet(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> MEANet:
    path = Path(path)
    obj = safe_load(path, map_location)
    _kind(obj, "meanet", path)
    model = build_meanet(
        obj["arch"],
        int(obj["num_classes"]),
        obj["hard_classes"],
        mean=obj["mean"],
        std=obj["std"],
        adaptive_width=int(obj["adaptive_width"]),
        extension_width=int(obj["extension_width"]),
        extension_blocks=int(obj["extension_blocks"]),
    )
    _load_state(model, obj["state_dict"], path)
    return model.eval()


def load_cloud(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> CloudModel:
    path = Path(path)
    obj = safe_load(path, map_location)
    _kind(obj, "cloud", path)
    model = build_cloud(obj["arch"], int(obj["num_classes"]), mean=obj["mean"], std=obj["std"])
    _load_state(model, obj["state_dict"], path)
    return model.eval()
