"""What each method pays for its accuracy: the labelled data it sees, the images it trains on, the bytes it moves.

Every method reports a ``Budget`` per experience (in ``ExperienceOutcome.extra["budget"]``), filled from what it
actually did: the image counts come from the training loops themselves (``count_training_images`` on the stages
of ``meanet_core.training.stages``, ``edge.TrainedImagesPlugin`` on Avalanche strategies: epochs x images, replayed
images
included), the data counts from the sets it trained on, the bytes from the states and images it sent.
``summarize`` turns a run's per-experience budgets into the report's columns.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from meanet_core.training.memory import probing


@dataclass
class ImageCount:
    images: int = 0


@contextmanager
def count_training_images(*modules: nn.Module) -> Iterator[ImageCount]:
    """Count the images that pass through ``modules`` in training forwards (module in train mode, gradients on).

    Hook a module every training step calls exactly once per batch: a MEANet's or cloud model's ``normalize``
    (``train_main`` runs it once with gradients; ``train_extension`` runs the main block under ``no_grad`` and the
    adaptive path's ``normalize`` with gradients, so each stage counts once per image). Evaluation never counts.
    """
    count = ImageCount()

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        if module.training and torch.is_grad_enabled() and not probing():  # a memory probe trains nothing
            count.images += int(args[0].shape[0])

    handles = [m.register_forward_pre_hook(hook) for m in modules]
    try:
        yield count
    finally:
        for h in handles:
            h.remove()


@dataclass
class Budget:
    """One experience of one method: labelled images seen and kept, images trained on, bytes moved.

    ``experience``: the experience's training images (100%). ``cloud_new`` / ``edge_new``: how many of them the
    cloud and the edges (all together) received; ``edge_used``: how many of the edges' the edges trained on (the
    hard-class subset for MEANet-FL); ``cloud_stored`` / ``edge_stored``: labelled images kept after the experience
    (the cloud's store, the edges' replay memories). ``trained_cloud`` / ``trained_edge``: images processed by
    training (epochs x images, every stage, replayed images included; edges summed over clients);
    ``trained_cloud_macs`` / ``trained_edge_macs``: the same passes weighed by the forward MACs of the network each
    image went through (the main block, the cloud model, or main + adaptive + extension for the extension), so a
    bigger cloud model or more cloud epochs show up as compute, not as a hidden advantage. ``bytes_up``: images
    and model updates sent to the cloud; ``bytes_down``: models sent to the edges. ``labelled``: offloaded edge
    images the cloud labelled (a labelling budget; among ``cloud_new``, and the edges' images besides).
    """

    experience: int
    cloud_new: int = 0
    cloud_stored: int = 0
    edge_new: int = 0
    edge_used: int = 0
    edge_stored: int = 0
    trained_cloud: int = 0
    trained_edge: int = 0
    trained_cloud_macs: int = 0
    trained_edge_macs: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    labelled: int = 0

    @staticmethod
    def traffic(bytes_sent: Mapping[str, int]) -> tuple[int, int]:
        """(up, down) of a method's ``bytes_sent``: ``data_up`` and ``model_up`` go up, ``model_down`` down."""
        return int(bytes_sent.get("data_up", 0) + bytes_sent.get("model_up", 0)), int(bytes_sent.get("model_down", 0))

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _share(values: Sequence[float]) -> str:
    """'30% of each exp' (all equal), '30% of exp 0' (only the first), or 'mean 30% per exp'."""
    nonzero = [v for v in values if v > 0]
    if not nonzero:
        return ""
    if len(nonzero) == 1 and values[0] > 0 and len(values) > 1:
        return f"{values[0]:.0%} of exp 0"
    if max(values) - min(values) < 0.01:
        return f"{values[0]:.0%} of each exp"
    return f"mean {sum(values) / len(values):.0%} per exp"


def data_seen(budgets: Sequence[Mapping[str, int]]) -> str:
    """A one-line description of the labelled data a run saw and kept, from its per-experience budgets."""
    size = [max(b["experience"], 1) for b in budgets]
    parts = []
    cloud = _share([b["cloud_new"] / n for b, n in zip(budgets, size, strict=True)])
    if cloud:
        kept = budgets[-1]["cloud_stored"] > budgets[-1]["cloud_new"]
        parts.append(f"cloud {cloud}" + (", all kept" if kept else ""))
    edge = _share([b["edge_new"] / n for b, n in zip(budgets, size, strict=True)])
    if edge:
        used = [b["edge_used"] / max(b["edge_new"], 1) for b in budgets]
        text = f"edges {edge}"
        if min(used) < 0.995:
            text += f" (train on {sum(used) / len(used):.0%} of it)"
        if budgets[-1]["edge_stored"]:
            text += f", {budgets[-1]['edge_stored']} kept for replay"
        parts.append(text)
    labelled = [b.get("labelled", 0) for b in budgets]
    if any(labelled):
        parts.append(f"{max(labelled)} offloaded edge images labelled at the cloud per exp, kept")
    return "; ".join(parts) or "none"


def summarize(budgets: Sequence[Mapping[str, int]]) -> dict[str, Any]:
    """A run's budget: totals over the stream (images trained on), means per experience (bytes), and the
    description of the data it saw."""
    n = max(len(budgets), 1)
    return {
        "data_seen": data_seen(budgets) if budgets else "none",
        "trained_edge_images": int(sum(b["trained_edge"] for b in budgets)),
        "trained_cloud_images": int(sum(b["trained_cloud"] for b in budgets)),
        "trained_edge_macs": int(sum(b.get("trained_edge_macs", 0) for b in budgets)),
        "trained_cloud_macs": int(sum(b.get("trained_cloud_macs", 0) for b in budgets)),
        "bytes_up_per_experience": sum(b["bytes_up"] for b in budgets) / n,
        "bytes_down_per_experience": sum(b["bytes_down"] for b in budgets) / n,
        "labelled_images_seen": int(sum(b["cloud_new"] + b["edge_new"] for b in budgets)),
        "labelled_images_stored": int(budgets[-1]["cloud_stored"] + budgets[-1]["edge_stored"]) if budgets else 0,
    }
