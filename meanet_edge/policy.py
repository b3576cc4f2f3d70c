"""Routing on the device, in numpy: the policies of :mod:`meanet_core.inference.policies`, read from the dict an
edge package's manifest records (``Policy.as_dict()``).

* ``paper``: normalised entropy of the main softmax above ``entropy_threshold`` -> cloud; otherwise a hard top-1
  goes on to the extension, an easy one exits at the main block.
* ``calibrated``: an easy top-1 stays when its max-probability reaches ``main_threshold``, else -> cloud; a hard
  top-1 goes to the extension, whose answer stays when its max-probability reaches ``extension_threshold``, else ->
  cloud. With ``use_extension = false`` a hard top-1 stays at the main exit when the main block's max-probability
  reaches ``extension_threshold``, else -> cloud (the extension never runs).

The torch engine and this one route the same inputs the same way (tests/unit/test_edge_runtime.py compares them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_ENTROPY_THRESHOLD = 0.5


class NoCalibratedThresholds(ValueError):
    """The calibrated policy was asked for, but the model records no calibrated thresholds."""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax of ``logits`` (B, K), in float32, stable for large logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def normalized_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy of each row of ``probs`` (B, K) divided by log(K): 0 = certain, 1 = uniform."""
    k = probs.shape[1]
    return -(probs * np.log(np.maximum(probs, 1e-12))).sum(axis=1) / math.log(k)


@dataclass(frozen=True)
class EdgePolicy:
    """A routing policy: ``name`` is ``paper`` or ``calibrated``; the thresholds are those of its ``as_dict()``."""

    name: str
    entropy_threshold: float = DEFAULT_ENTROPY_THRESHOLD
    main_threshold: float = 0.0
    extension_threshold: float = 0.0
    use_extension: bool = True

    def after_main(self, main_probs: np.ndarray, top1_hard: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(to_cloud, to_extension) boolean masks over the batch; disjoint."""
        if self.name == "paper":
            to_cloud = normalized_entropy(main_probs) > self.entropy_threshold
            return to_cloud, top1_hard & ~to_cloud
        conf = main_probs.max(axis=1)
        confident = conf >= self.main_threshold
        if not self.use_extension:
            hard_cloud = top1_hard & (conf < self.extension_threshold)
            return (~top1_hard & ~confident) | hard_cloud, np.zeros_like(top1_hard)
        return ~top1_hard & ~confident, top1_hard.copy()

    def after_extension(self, ext_probs: np.ndarray) -> np.ndarray:
        """Boolean mask over the extension's inputs that are still offloaded."""
        if self.name == "paper":
            return np.zeros(ext_probs.shape[0], dtype=bool)
        return ext_probs.max(axis=1) < self.extension_threshold

    def as_dict(self) -> dict[str, object]:
        if self.name == "paper":
            return {"name": "paper", "entropy_threshold": self.entropy_threshold}
        return {
            "name": "calibrated",
            "main_threshold": self.main_threshold,
            "extension_threshold": self.extension_threshold,
            "use_extension": self.use_extension,
        }


def policy_from_dict(values: Mapping[str, Any]) -> EdgePolicy:
    """The policy a manifest records (``{"name": "calibrated", "main_threshold": ..., ...}``); ValueError when it
    lacks or mistypes a field."""
    name = values.get("name")
    try:
        if name == "calibrated":
            use_extension = values.get("use_extension", True)
            if not isinstance(use_extension, bool):
                raise TypeError(f"use_extension must be true or false, not {use_extension!r}")
            return EdgePolicy(
                "calibrated",
                main_threshold=float(values["main_threshold"]),
                extension_threshold=float(values["extension_threshold"]),
                use_extension=use_extension,
            )
        if name == "paper":
            threshold = float(values["entropy_threshold"])
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(f"entropy_threshold is a normalised entropy in [0, 1]; got {threshold}")
            return EdgePolicy("paper", entropy_threshold=threshold)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"the {name} policy {dict(values)!r} lacks or mistypes a threshold ({e})") from e
    raise ValueError(f"a policy must be named paper or calibrated; found {name!r} in {dict(values)!r}")


def choose_policy(
    recorded: Mapping[str, Any] | None, name: str | None = None, entropy_threshold: float | None = None
) -> EdgePolicy:
    """The policy to route with: ``name`` (``paper`` | ``calibrated``; default: the recorded one, else paper).

    ``calibrated`` needs the thresholds recorded at export; ``paper`` takes ``entropy_threshold``, else the recorded
    one, else :data:`DEFAULT_ENTROPY_THRESHOLD`.
    """
    recorded = recorded or {}
    name = name or str(recorded.get("name", "paper"))
    if name == "calibrated":
        if recorded.get("name") != "calibrated":
            raise NoCalibratedThresholds(
                "this edge model holds no calibrated thresholds (its run recorded "
                f"{recorded.get('name', 'no policy')!r}): route with the paper policy, or export it from a run "
                "evaluated with the calibrated policy (meanet evaluate --policy calibrated, or a federation with "
                "policy=calibrated whose newest experience was evaluated)"
            )
        return policy_from_dict(recorded)
    if name == "paper":
        if entropy_threshold is None:
            recorded_t = recorded.get("entropy_threshold") if recorded.get("name") == "paper" else None
            entropy_threshold = float(recorded_t) if recorded_t is not None else DEFAULT_ENTROPY_THRESHOLD
        return policy_from_dict({"name": "paper", "entropy_threshold": entropy_threshold})
    raise ValueError(f"--policy must be paper or calibrated; got {name!r}")


__all__ = [
    "DEFAULT_ENTROPY_THRESHOLD",
    "EdgePolicy",
    "choose_policy",
    "normalized_entropy",
    "policy_from_dict",
    "softmax",
]
