"""What every method of the personalised-FL benchmark shares: the budget, the context, the backbone and its head/body
split, training and scoring helpers, and the result each method reports.

**The backbone** is the MEANet's main block (``meanet_core.models.build_meanet(...).main``); only its entries travel
(``backbone_state``: the floating-point ``main.*`` state entries, parameters and BatchNorm statistics, as float32
arrays). Its *head* is the last ``nn.Linear`` of the main block (``main.fc`` for the CIFAR ResNets), its *body* every
other entry (``head_keys`` / ``body_keys``).

**Bytes** are what a method actually sends, as float32 arrays (``payload_bytes``): a whole backbone for FedAvg, the
body alone for FedPer/FedRep/FedBABU; per round, a download and an upload per sampled device.

**Training images** are images processed by training (epochs x images, every stage, the server's warm start
included); ``fit``'s loops run every image of every epoch, so the counts are exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from benchmarks.personal.config import PersonalConfig
from benchmarks.personal.scenario import PersonalScenario
from meanet_core.data import ImageTensors
from meanet_core.inference.engine import input_memory_format
from meanet_core.inference.fastpath import optimize_for_inference
from meanet_core.models import MEANet, build_meanet, describe_meanet
from meanet_core.training.stages import StageConfig, fit, predict_logits, train_main

EVAL_BATCH = 64  # the continual benchmark's measured sweet spot on CPU
WORST_FRACTION = 0.1

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Budget:
    """The training budget every method shares (and what the shared FedAvg trajectory depends on)."""

    model: str
    rounds: int
    local_epochs: int
    edges_per_round: int
    batch_size: int
    lr: float
    server_epochs: int
    precision: str

    @classmethod
    def of(cls, cfg: PersonalConfig) -> Budget:
        return cls(**{f: getattr(cfg, f) for f in cls.__dataclass_fields__})

    def stage(self, epochs: int, cycle: tuple[float, float] = (0.0, 1.0)) -> StageConfig:
        """SGD with Nesterov momentum, one-cycle; ``cycle``: the part of one schedule this stage runs (a round
        ``r`` of ``R`` runs ``(r/R, (r+1)/R)``, so the rounds warm up once and anneal once)."""
        return StageConfig(epochs=epochs, lr=self.lr, batch_size=self.batch_size, precision=self.precision, cycle=cycle)

    def round_cycle(self, r: int) -> tuple[float, float]:
        return (r / self.rounds, (r + 1) / self.rounds)


@dataclass
class Context:
    """One seed of one benchmark: the settings, the fleet, the budget; ``cache_dir`` keeps shared trajectories."""

    cfg: PersonalConfig
    scenario: PersonalScenario
    seed: int
    progress: bool = False
    cache_dir: Path | None = None

    @property
    def budget(self) -> Budget:
        return Budget.of(self.cfg)

    def sampled(self, r: int) -> list[int]:
        """The devices of round ``r``: seeded by (seed, round) only, so every method of a seed gets the same."""
        n, k = len(self.scenario), self.cfg.edges_per_round
        return sorted(int(i) for i in np.random.default_rng([self.seed, r, 7]).choice(n, k, replace=False))

    def participation(self) -> list[int]:
        """How many rounds each device is sampled in."""
        counts = [0] * len(self.scenario)
        for r in range(self.cfg.rounds):
            for i in self.sampled(r):
                counts[i] += 1
        return counts

    def seed_of(self, r: int, i: int, stage: int = 0) -> int:
        """The shuffling/augmentation seed of device ``i``'s training in round ``r`` (``stage`` tells stages apart)."""
        return self.seed * 1_000_003 + r * 10_007 + i * 11 + stage


@dataclass
class MethodResult:
    """What a method reports for one seed. ``accuracies``: per device, in device order, on its own test split."""

    method: str
    seed: int
    accuracies: list[float]
    bytes_up: int
    bytes_down: int
    trained_edge_images: int
    trained_server_images: int
    wall_seconds: float
    macs_per_inference: int
    offload_fraction: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_accuracy(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def worst_accuracy(self) -> float:
        return worst_fraction_mean(self.accuracies)

    @property
    def trained_images(self) -> int:
        return self.trained_edge_images + self.trained_server_images

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "mean_accuracy": self.mean_accuracy,
            "worst10_accuracy": self.worst_accuracy,
            "trained_images": self.trained_images,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MethodResult:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def worst_fraction_mean(accuracies: Sequence[float], fraction: float = WORST_FRACTION) -> float:
    """The mean accuracy of the worst ``ceil(fraction * devices)`` devices (at least one)."""
    if not accuracies:
        raise ValueError("no per-device accuracy to summarise")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1]; got {fraction}")
    n = max(1, math.ceil(fraction * len(accuracies) - 1e-9))
    return float(np.mean(sorted(accuracies)[:n]))


# ---------------------------------------------------------------------------------------------------- backbone
def new_model(ctx: Context) -> MEANet:
    """A fresh MEANet of the benchmark's backbone, initialised from the seed (every method starts from this)."""
    torch.manual_seed(ctx.seed)
    s = ctx.scenario
    return build_meanet(ctx.cfg.model, s.num_classes, mean=s.mean, std=s.std)


def backbone_state(model: MEANet) -> State:
    """A copy of the main block's floating-point state entries (``main.*``): what travels."""
    return {
        k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith("main.") and v.is_floating_point()
    }


def head_prefix(model: MEANet) -> str:
    """State-dict prefix of the main block's head: its last ``nn.Linear`` (``"main.fc."`` for the CIFAR ResNets)."""
    linears = [name for name, m in model.main.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{model.arch}: the main block has no nn.Linear head to split off")
    return f"main.{linears[-1]}."


def head_keys(model: MEANet) -> list[str]:
    prefix = head_prefix(model)
    return [k for k in backbone_state(model) if k.startswith(prefix)]


def body_keys(model: MEANet) -> list[str]:
    prefix = head_prefix(model)
    return [k for k in backbone_state(model) if not k.startswith(prefix)]


def payload_bytes(state: Mapping[str, torch.Tensor], keys: Sequence[str] | None = None) -> int:
    """Bytes of ``state``'s entries ``keys`` (default all) sent as float32 arrays."""
    return int(sum(4 * state[k].numel() for k in (state if keys is None else keys)))


def load(model: MEANet, state: Mapping[str, torch.Tensor]) -> MEANet:
    """Put backbone entries into ``model`` (the other entries stay)."""
    missing = [k for k in state if k not in model.state_dict()]
    if missing:
        raise KeyError(f"entries {missing[:3]} are not in a {model.arch} MEANet")
    model.load_state_dict(dict(state), strict=False)
    return model


_MACS: dict[tuple[str, int], int] = {}


def main_block_macs(model: MEANet) -> int:
    """Forward MACs per image of the main block (``describe_meanet``, counted once per architecture)."""
    key = (model.arch, model.num_classes)
    if key not in _MACS:
        _MACS[key] = describe_meanet(model)[0].macs
    return _MACS[key]


# ---------------------------------------------------------------------------------------------------- training
@contextmanager
def trains_only(model: MEANet, params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Gradients for ``params`` only (the rest of the main block gets none: no wasted backward), restored after."""
    keep = {id(p) for p in params}
    before = [(p, p.requires_grad) for p in model.main.parameters()]
    for p, _ in before:
        p.requires_grad_(id(p) in keep)
    try:
        yield
    finally:
        for p, flag in before:
            p.requires_grad_(flag)


def train_whole(model: MEANet, data: ImageTensors, stage: StageConfig, seed: int, progress: bool = False) -> int:
    """Every parameter of the backbone (``train_main``); returns the images processed."""
    if stage.epochs == 0 or len(data) == 0:
        return 0
    train_main(model, data, stage, seed=seed, progress=progress, channels_last=True)
    return stage.epochs * len(data)


def train_part(
    model: MEANet,
    data: ImageTensors,
    stage: StageConfig,
    part: str,
    seed: int,
    *,
    anchor: Mapping[str, torch.Tensor] | None = None,
    prox: float = 0.0,
    progress: bool = False,
) -> int:
    """Train the backbone's ``part``: ``"head"`` (the body frozen, its BatchNorm statistics too), ``"body"`` (the head
    frozen) or ``"whole"``; cross-entropy, plus ``prox / 2 * ||w - anchor||^2`` over the trained parameters when an
    ``anchor`` state is given (Ditto). Returns the images processed."""
    if stage.epochs == 0 or len(data) == 0:
        return 0
    if part not in ("head", "body", "whole"):
        raise ValueError(f"part must be head, body or whole; got {part!r}")
    prefix = head_prefix(model)
    named = [(f"main.{n}", p) for n, p in model.main.named_parameters()]
    chosen = [(n, p) for n, p in named if part == "whole" or (n.startswith(prefix) == (part == "head"))]
    params = [p for _, p in chosen]
    targets = [anchor[n].detach() for n, _ in chosen] if anchor is not None and prox > 0 else []

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model.forward_main(x).logits
        loss = F.cross_entropy(logits, y)
        if targets:
            loss = loss + prox / 2 * sum(((p - t) ** 2).sum() for p, t in zip(params, targets, strict=True))
        return loss, logits

    module: nn.Module = model.main
    model.freeze_main(False)
    if part == "head":  # the body in eval mode: its BatchNorm statistics stay as received
        model.eval()
        module = model.main.get_submodule(prefix[len("main.") : -1])
    with trains_only(model, params):
        fit(step, module, params, data, stage, desc=part, seed=seed, progress=progress, channels_last=True)
    return stage.epochs * len(data)


# ---------------------------------------------------------------------------------------------------- scoring
def accuracies(model: MEANet, splits: Sequence[ImageTensors], precision: str) -> list[float]:
    """Accuracy of ``model``'s main block on each split (inference copy: BatchNorm folded, channels-last)."""
    fast = optimize_for_inference(model)
    fmt = input_memory_format(fast)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return fast.forward_main(x).logits

    out = []
    for data in splits:
        logits = predict_logits(fn, data, EVAL_BATCH, memory_format=fmt, precision=precision)
        out.append(float((logits.argmax(1) == data.y).float().mean()))
    return out


def score_personal(
    ctx: Context, states: Sequence[Mapping[str, torch.Tensor]], tune: Callable[[MEANet, int], int] | None = None
) -> tuple[list[float], int]:
    """Per device ``i``: load ``states[i]``, optionally ``tune(model, i)`` (local fine-tuning, returning the images it
    processed), and score on the device's test split. Returns the accuracies and the images tuned."""
    model = new_model(ctx)
    accs, tuned = [], 0
    devices = ctx.scenario.devices
    desc = f"seed {ctx.seed} devices" + (" (tuning)" if tune is not None else "")
    for i, device in enumerate(tqdm(devices, desc=desc, disable=not ctx.progress or tune is None, leave=False)):
        load(model, states[i])
        if tune is not None:
            tuned += tune(model, i)
        accs.extend(accuracies(model, [device.test], ctx.cfg.precision))
    return accs, tuned


def with_replaced(state: Mapping[str, torch.Tensor], part: Mapping[str, torch.Tensor]) -> State:
    """``state`` with the entries of ``part`` put in (clones, so neither is shared)."""
    return {k: v.clone() for k, v in {**state, **part}.items()}
