"""What several methods share: the cloud's training trajectory, and evaluation of the adaptive engine from it.

**The cloud trajectory.** After each experience ``t`` the cloud retrains the MEANet main block and the cloud model on
everything it has received so far (its ``cloud_share`` of every experience up to ``t``), continuing from where it
stopped, for ``epochs`` epochs each, the cloud model ``cloud_epochs`` when set
(``meanet_core.training.stages.train_main`` /
``train_cloud``); then it chooses the hard classes on its validation images of the seen classes. None of this depends on
what the edges do (edges never touch the main block), so it is computed once per seed and shared by cloud-only,
edge-only, MEANet-static and the four MEANet-FL variants; each method's wall time counts the shared stages it uses. The
``meanet-fl-main-*`` methods, whose edges do train the main block (main rounds), keep their own main block and take only
the cloud model from here. Snapshots (weights, hard classes, the main block's and the cloud model's logits on the
validation and test images seen so far, stage seconds) are cached in ``DIR/seed-S/cloud/`` so a rerun does not retrain;
the hard classes are chosen again from the cached logits whenever a snapshot is loaded, so the hard-class settings
never retrain it.

**Evaluation.** Every pass over images runs an inference copy of the model (``meanet_core.inference.fastpath``:
BatchNorm
folded into the convolutions, channels-last weights and inputs; the same logits up to float rounding, about twice as
fast on CPU). A routing policy is applied with ``meanet_core.inference.engine.predictions_from_outputs``, the routing
code of
``AdaptiveEngine`` (the repository checks that both give the same labels, exits and costs), to the cached main and
cloud logits and to extension logits computed only for the samples whose main top-1 is a hard class: the only ones
any policy sends to the extension. Costs are the engine's own: each route priced by
``meanet_core.inference.engine.priced``
(MACs measured with ``torch.utils.flop_counter``, energy and bytes from ``meanet_core.inference.cost.CostConfig``) and
summarised by ``meanet_core.inference.evaluation.summarize``; ``costs`` only renames its numbers for the benchmark's
results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.continual.budget import count_training_images
from benchmarks.continual.config import BenchConfig
from benchmarks.continual.scenarios import Scenario
from meanet_core.data import ImageTensors
from meanet_core.inference.cost import CostConfig
from meanet_core.inference.engine import (
    AdaptiveEngine,
    BlockCosts,
    LocalCloud,
    Predictions,
    input_memory_format,
    to_model_input,
)
from meanet_core.inference.evaluation import BranchOutputs, fit_calibrated, summarize
from meanet_core.inference.fastpath import optimize_for_inference
from meanet_core.inference.policies import CalibratedPolicy, Policy
from meanet_core.models import CloudModel, MEANet, build_cloud, build_meanet
from meanet_core.training.checkpoint import FORMAT, atomic_save, safe_load
from meanet_core.training.precision import autocast
from meanet_core.training.stages import StageConfig, predict_logits, select_hard_classes, train_cloud, train_main

EVAL_BATCH = 64  # small batches keep the activations in cache: fastest on CPU (64 beat 128 to 256 by 1.2-1.4x)


def stage(cfg: BenchConfig, lr: float | None = None) -> StageConfig:
    """The optimiser and schedule every method trains with: ``epochs`` per experience, at ``cfg.precision``."""
    return StageConfig(epochs=cfg.epochs, lr=lr or cfg.lr, batch_size=cfg.batch_size, precision=cfg.precision)


def cloud_stage(cfg: BenchConfig, own: bool = False) -> StageConfig:
    """The cloud model's schedule: ``cloud_epochs`` (default ``epochs``); for a MEANet-FL method's own cloud model
    (``own``) also its learning rate ``cloud_lr`` (default ``lr``)."""
    lr = (cfg.cloud_lr or cfg.lr) if own else cfg.lr
    return replace(stage(cfg), epochs=cfg.cloud_epochs or cfg.epochs, lr=lr)


@dataclass
class Snapshot:
    """The cloud after experience ``t``."""

    t: int
    main_state: dict[str, torch.Tensor]  # MEANet state-dict entries of the main block ("main.*")
    cloud_state: dict[str, torch.Tensor]
    hard_classes: list[int]
    seconds: dict[str, float]  # main, cloud (training), hard, main_outputs, cloud_outputs
    val_main: torch.Tensor  # (Nv, K) main-block logits on scenario.val_data(t)
    val_cloud: torch.Tensor  # (Nv, K) cloud logits on the same
    test_main: torch.Tensor  # (Nt, K) on scenario.test_data(t)
    test_cloud: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)

    def as_payload(self) -> dict[str, Any]:
        return {"format": FORMAT, **{k: getattr(self, k) for k in self.__dataclass_fields__}}


def _candidates(cfg: BenchConfig, scenario: Scenario, t: int) -> tuple[int, ...]:
    """The classes the hard ones are chosen among after experience ``t``: the seen ones, or (``hard_candidates =
    "new"``) the experience's own, whose images the edges hold."""
    exp = scenario.experiences[t]
    new = tuple(sorted({int(c) for c in exp.train.y.unique().tolist()}))
    return new if cfg.hard_candidates == "new" and len(new) >= 2 else exp.seen_classes


def choose_hard_classes(cfg: BenchConfig, scenario: Scenario, t: int, val_main: torch.Tensor) -> list[int]:
    """The hard classes after experience ``t``, from a main block's logits ``val_main`` on ``scenario.val_data(t)``
    (the cloud's validation images of the classes seen so far): ``cfg.hard_fraction`` of the seen classes, by
    ``cfg.hard_method``."""
    return select_hard_classes(
        val_main.argmax(1).numpy(),
        scenario.val_data(t).y.numpy(),
        scenario.num_classes,
        method=cfg.hard_method,
        fraction=cfg.hard_fraction,
        candidates=_candidates(cfg, scenario, t),
    )


class CloudTrajectory:
    """Computes (or loads from ``cache_dir``) the cloud's snapshot after each experience, in order."""

    def __init__(
        self, cfg: BenchConfig, scenario: Scenario, seed: int, cache_dir: Path | None, progress: bool = False
    ) -> None:
        self.cfg, self.scenario, self.seed, self.cache_dir = cfg, scenario, seed, cache_dir
        self.progress = progress
        self._snapshots: dict[int, Snapshot] = {}

    def new_meanet(self) -> MEANet:
        torch.manual_seed(self.seed)
        s = self.scenario
        return build_meanet(self.cfg.model, s.num_classes, mean=s.mean, std=s.std)

    def new_cloud(self) -> CloudModel:
        torch.manual_seed(self.seed + 1)
        s = self.scenario
        return build_cloud(self.cfg.cloud_model, s.num_classes, mean=s.mean, std=s.std)

    def _path(self, t: int) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"exp-{t}.pt"

    def snapshot(self, t: int) -> Snapshot:
        if t in self._snapshots:
            return self._snapshots[t]
        path = self._path(t)
        if path is not None and path.is_file():
            saved = safe_load(path)
            extra = saved.get("extra", {})
            if self.cfg.matches(extra.get("fingerprint") or {}) and "trained_images" in extra:
                saved.pop("format")
                snap = Snapshot(**saved)
                snap.hard_classes = choose_hard_classes(self.cfg, self.scenario, t, snap.val_main)
                self._snapshots[t] = snap
                return snap
        self._snapshots[t] = snap = self._compute(t)
        if path is not None:
            atomic_save(snap.as_payload(), path)
        return snap

    def _compute(self, t: int) -> Snapshot:
        cfg, scenario = self.cfg, self.scenario
        model, cloud = self.new_meanet(), self.new_cloud()
        if t > 0:
            prev = self.snapshot(t - 1)
            model.load_state_dict({**model.state_dict(), **prev.main_state})
            cloud.load_state_dict(prev.cloud_state)
        data = scenario.cloud_data(t)
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        kw: dict[str, Any] = dict(seed=self.seed * 1000 + t, progress=self.progress, channels_last=True)
        with count_training_images(model.normalize) as main_images:
            train_main(model, data, stage(cfg), **kw)
        seconds["main"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with count_training_images(cloud.normalize) as cloud_images:
            train_cloud(cloud, data, cloud_stage(cfg), **kw)
        seconds["cloud"] = time.perf_counter() - t0
        model.eval()
        cloud.eval()
        val, test = scenario.val_data(t), scenario.test_data(t)
        t0 = time.perf_counter()
        val_main, test_main = main_block_logits(model, val, test, precision=cfg.precision)
        seconds["main_outputs"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        hard = choose_hard_classes(cfg, scenario, t, val_main)
        seconds["hard"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        val_cloud, test_cloud = cloud_model_logits(cloud, val, test, precision=cfg.precision)
        seconds["cloud_outputs"] = time.perf_counter() - t0
        return Snapshot(
            t=t,
            main_state={k: v.clone() for k, v in model.state_dict().items() if k.startswith("main.")},
            cloud_state={k: v.clone() for k, v in cloud.state_dict().items()},
            hard_classes=hard,
            seconds=seconds,
            val_main=val_main,
            val_cloud=val_cloud,
            test_main=test_main,
            test_cloud=test_cloud,
            extra={
                "fingerprint": self.cfg.fingerprint(),
                "seed": self.seed,
                "trained_images": {"main": main_images.images, "cloud": cloud_images.images},  # epochs x images
            },
        )

    def load_into(self, t: int, model: MEANet | None = None, cloud: CloudModel | None = None) -> Snapshot:
        """Put the cloud's main block (and hard classes) into ``model`` and its cloud weights into ``cloud``."""
        snap = self.snapshot(t)
        if model is not None:
            model.set_hard_classes(snap.hard_classes)
            model.load_state_dict({**model.state_dict(), **snap.main_state})
        if cloud is not None:
            cloud.load_state_dict(snap.cloud_state)
        return snap


# ------------------------------------------------------------------------------------------------ evaluation
def main_block_logits(model: MEANet, *splits: ImageTensors, precision: str = "fp32") -> list[torch.Tensor]:
    """(N, K) main-block logits of ``model`` on each split, from its inference copy (fused BatchNorm, channels-last),
    at ``precision``."""
    fast = optimize_for_inference(model)
    fmt = input_memory_format(fast)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return fast.forward_main(x).logits

    return [predict_logits(fn, d, EVAL_BATCH, memory_format=fmt, precision=precision) for d in splits]


def cloud_model_logits(cloud: CloudModel, *splits: ImageTensors, precision: str = "fp32") -> list[torch.Tensor]:
    """(N, K) logits of the cloud model on each split, from its inference copy (fused BatchNorm, channels-last),
    at ``precision``."""
    fast = optimize_for_inference(cloud)
    fmt = input_memory_format(fast)
    return [predict_logits(fast, d, EVAL_BATCH, memory_format=fmt, precision=precision) for d in splits]


@torch.inference_mode()
def extension_logits(
    model: MEANet, data: ImageTensors, main_logits: torch.Tensor, precision: str = "fp32"
) -> torch.Tensor:
    """(N, H) extension logits for the samples whose main top-1 is a hard class; zeros elsewhere (never read)."""
    fast = optimize_for_inference(model)
    fmt = input_memory_format(fast)
    out = torch.zeros(len(data), max(model.num_hard, 1))
    idx = (model.hard_index[main_logits.argmax(1)] >= 0).nonzero().flatten()
    for start in range(0, len(idx), EVAL_BATCH):
        sel = idx[start : start + EVAL_BATCH]
        x = to_model_input(data.x[sel], fmt)
        with autocast(precision):
            out[sel] = fast.forward_extension(x, fast.forward_main(x).features).float()
    return out


def block_costs(model: MEANet, cloud: CloudModel | None = None) -> BlockCosts:
    """What one image costs in each block of ``model`` (and ``cloud``): ``AdaptiveEngine.blocks``, counted with
    ``torch.utils.flop_counter`` once per architecture and number of hard classes (cloud MACs 0 without ``cloud``)."""
    key = (model.arch, model.num_classes, model.num_hard, None if cloud is None else cloud.arch)
    if key not in _BLOCKS:
        backend = LocalCloud(cloud) if cloud is not None else None
        _BLOCKS[key] = AdaptiveEngine(model, CalibratedPolicy(), backend).blocks
    return _BLOCKS[key]


_BLOCKS: dict[tuple[object, ...], BlockCosts] = {}  # MACs depend only on the architectures and number of hard classes


def costs(pred: Predictions) -> dict[str, Any]:
    """The cost record of a method after an experience: ``meanet_core.inference.evaluation.summarize`` of the engine's
    predictions (exits, MACs, energy and bytes priced by ``meanet_core.inference.engine.priced``), under the names the
    benchmark's results use (fractions of the inferences, and per inference)."""
    s = summarize(pred, None)
    return {
        "exits": {name: e["fraction"] for name, e in s["exits"].items()},
        "cloud_fraction": s["exits"]["cloud"]["fraction"],
        "macs_per_inference": s["macs_per_image"],
        "edge_macs_per_inference": s["edge_macs_per_image"],
        "energy_per_inference_joule": s["energy_per_image_joule"],
        "bytes_sent_per_inference": s["bytes_offloaded_per_image"],
    }


def calibrate(model: MEANet, val: BranchOutputs, target_cloud_fraction: float) -> Policy:
    """The calibrated policy fitted on validation outputs to offload at most ``target_cloud_fraction``."""
    return fit_calibrated(model, val, CostConfig(), 0, 0, 0, target_cloud_fraction=target_cloud_fraction)


def meanet_outputs(
    model: MEANet, data: ImageTensors, main_logits: torch.Tensor, cloud_logits: torch.Tensor, precision: str = "fp32"
) -> BranchOutputs:
    """Branch outputs of ``model`` on ``data``, reusing the cached main and cloud logits."""
    ext = extension_logits(model, data, main_logits, precision)
    return BranchOutputs(main_logits, ext, cloud_logits, data.y)
