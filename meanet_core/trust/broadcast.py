"""What the cloud sends the edges and what they send back: the split of a MEANet state into main and edge parts.

The cloud broadcasts the whole MEANet state (main block + adaptive + extension) with the hard-class set; an edge
loads it, freezes the main block and replies with only the adaptive and extension entries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from meanet_core.keys import EDGE_PREFIXES, MAIN_PREFIX, covers, in_scope, is_edge_key
from meanet_core.models import MEANet, build_meanet


def edge_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adaptive and extension entries (parameters and BatchNorm buffers) of a MEANet state dict."""
    return {k: v for k, v in state.items() if is_edge_key(k)}


def scoped_state(state: Mapping[str, torch.Tensor], scope: str) -> dict[str, torch.Tensor]:
    """The entries an edge trains and uploads in a round of ``scope``: :func:`edge_state` or :func:`main_state`."""
    return {k: v for k, v in state.items() if in_scope(k, scope)}


def main_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(MAIN_PREFIX)}


def digest(state: Mapping[str, torch.Tensor | np.ndarray], prefix: str = MAIN_PREFIX) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of the entries under ``prefix``, in name order."""
    h = hashlib.sha256()
    for name in sorted(k for k in state if k.startswith(prefix)):
        value = state[name]
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        array = np.ascontiguousarray(array)
        h.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def model_from_broadcast(
    arch: str,
    num_classes: int,
    hard_classes: Sequence[int],
    state: Mapping[str, torch.Tensor],
    mean: Sequence[float],
    std: Sequence[float],
    scope: str = "edge",
) -> MEANet:
    """Build the MEANet an edge runs from a broadcast for a round of ``scope``; every key the broadcast covers must
    match (strict load). A main round's broadcast has no edge block: those stay as built (they are not used)."""
    model = build_meanet(arch, num_classes, hard_classes, mean=mean, std=std)
    try:
        missing, unexpected = model.load_state_dict(dict(state), strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"the broadcast does not fit a {arch} MEANet: {e}") from e
    missing = [k for k in missing if covers(k, scope)]
    if missing or unexpected:
        raise ValueError(
            f"the broadcast does not fit a {arch} MEANet with {len(hard_classes)} hard classes: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return model


__all__ = ["EDGE_PREFIXES", "digest", "edge_state", "main_state", "model_from_broadcast", "scoped_state"]
