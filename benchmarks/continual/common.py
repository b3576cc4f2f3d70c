"""What every method of the continual benchmark shares: its context, what it reports per experience, and the
helpers that count accuracy, bytes and budgets the same way for all of them."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from benchmarks.continual.budget import Budget
from benchmarks.continual.config import BenchConfig
from benchmarks.continual.metrics import accuracy
from benchmarks.continual.scenarios import Scenario
from benchmarks.continual.shared import CloudTrajectory, Snapshot, block_costs, costs
from meanet_core.inference.engine import EXIT_MAIN, BlockCosts, priced


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    return int(sum(v.numel() * v.element_size() for v in state.values()))


@dataclass
class ExperienceOutcome:
    """What a method reports after experience ``t``."""

    accuracies: list[float]  # accuracy on the test images of experiences 0..t
    costs: dict[str, Any]  # shared.costs of the predictions on the test images of experiences 0..t
    bytes_sent: dict[str, int]  # training-time traffic of this experience
    seconds: dict[str, float]  # wall time of the stages this method ran or relied on
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    cfg: BenchConfig
    scenario: Scenario
    seed: int
    trajectory: CloudTrajectory


@contextmanager
def quiet() -> Iterator[None]:
    """Swallow the warnings Avalanche 0.6 raises about its own internals during training (its ``deprecated``
    decorator forces them on; EWC's ``ParamData.expand`` indexes with a list), so progress bars stay readable."""
    with warnings.catch_warnings(record=True):
        yield


def per_experience(labels: torch.Tensor, ctx: Context, t: int) -> list[float]:
    test, offsets = ctx.scenario.test_data(t), ctx.scenario.test_offsets(t)
    return [accuracy(labels[a:b], test.y[a:b]) for a, b in itertools.pairwise(offsets)]


def image_bytes(ctx: Context, n: int) -> int:
    x = ctx.scenario.experiences[0].train.x
    return int(n * x[0].numel() * x.element_size())


def cloud_stored(ctx: Context, t: int) -> int:
    """Labelled images the cloud holds after experience ``t`` (its share of every experience so far)."""
    return sum(len(e.cloud) for e in ctx.scenario.experiences[: t + 1])


def block_macs(ctx: Context) -> BlockCosts:
    """Forward MACs per image of the benchmark's main block, adaptive + extension, and cloud model."""
    return block_costs(ctx.trajectory.new_meanet(), ctx.trajectory.new_cloud())


def budget_of(ctx: Context, t: int, sent: dict[str, int], **counts: int) -> dict[str, int]:
    """The ``Budget`` of experience ``t`` as a JSON-ready dict (traffic from ``sent``). Training MACs not given are
    the images trained times the main block's MACs (every method that trains only the main block)."""
    up, down = Budget.traffic(sent)
    macs = block_macs(ctx).main_macs
    counts.setdefault("trained_cloud_macs", counts.get("trained_cloud", 0) * macs)
    counts.setdefault("trained_edge_macs", counts.get("trained_edge", 0) * macs)
    return Budget(len(ctx.scenario.experiences[t].train), bytes_up=up, bytes_down=down, **counts).as_dict()


def cloud_share_budget(
    ctx: Context, t: int, sent: dict[str, int], labelled: int = 0, labelled_kept: int = 0, **counts: int
) -> dict[str, int]:
    """``budget_of`` for a method whose cloud receives its ``cloud_share`` of experience ``t`` and keeps it with the
    earlier ones (``cloud_new`` and ``cloud_stored`` filled in); ``labelled``: offloaded edge images it labelled this
    experience, ``labelled_kept``: all it keeps (in ``cloud_stored``)."""
    new = len(ctx.scenario.experiences[t].cloud)
    stored = cloud_stored(ctx, t) + labelled_kept
    return budget_of(ctx, t, sent, cloud_new=new, cloud_stored=stored, labelled=labelled, **counts)


def trained_by_cloud(snap: Snapshot, *stages: str) -> int:
    """Images the shared cloud trajectory's ``stages`` ("main", "cloud") trained on for snapshot ``snap``."""
    return int(sum(snap.extra["trained_images"][s] for s in stages))


class Method:
    """A continual-learning method; subclasses implement ``run_experience``."""

    name = "method"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def run_experience(self, t: int) -> ExperienceOutcome:
        raise NotImplementedError


def edge_costs(ctx: Context, n: int) -> dict[str, Any]:
    """Costs of ``n`` inferences by the main block alone on the device (nothing offloaded; labels are not read)."""
    blocks = block_costs(ctx.trajectory.new_meanet())
    exits = torch.full((n,), EXIT_MAIN, dtype=torch.int8)
    return costs(priced(torch.zeros(n, dtype=torch.int64), exits, torch.zeros(n, dtype=torch.bool), blocks))
