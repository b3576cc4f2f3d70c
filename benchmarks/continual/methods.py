"""The methods compared, each a class with ``run_experience(t)``: train on experience ``t``, evaluate on 0..t.

Every method uses the same backbone (``cfg.model``, a MEANet edge model; its main block is the classifier of the
edge-only, naive and joint methods), the same cloud model where there is one (``cfg.cloud_model``), the same
scenario and federated split, and ``cfg.epochs`` epochs per experience.

* ``cloud-only``: every input is sent to the cloud model, which the cloud retrains on everything it has received.
* ``edge-only``: the main block alone on the device (trained by the cloud, never offloading, no extension).
* ``meanet-static``: a MEANet (main, adaptive + extension, cloud) trained once on the first experience, never updated.
* ``meanet-fl-{naive,ewc,lwf,replay}`` (ours): per experience the cloud retrains the main block and the cloud model
  on its data, re-chooses the hard classes, retrains adaptive + extension on its data and redistributes; then
  ``cfg.clients`` simulated edge clients fine-tune adaptive + extension with the Avalanche strategy on the hard-class
  samples of their partition of the new experience (one federated round; each client keeps its own strategy state:
  EWC importances, LwF's previous model, the replay buffer), and the cloud aggregates the edge blocks with
  ``strategies.aggregation.weighted_average`` (weights = examples trained). The clients run in this process, one
  after the other; the Flower simulation of the same exchange is tested in ``tests/sim/test_federation.py``.
  Inference: the adaptive engine with the calibrated policy fitted on the cloud's validation images so that at most
  ``cfg.target_cloud_fraction`` of the inputs are offloaded.
* ``naive``: Avalanche's ``Naive`` fine-tuning of the backbone classifier on each experience's data, centralised.
* ``joint``: Avalanche's ``Cumulative``: the backbone classifier retrained on all data seen so far (upper bound).
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from benchmarks.continual.config import MEANET_FL_METHODS, BenchConfig
from benchmarks.continual.edge import EdgeClassSpace, MainClassifier, experience_of, make_strategy
from benchmarks.continual.metrics import accuracy
from benchmarks.continual.scenarios import Scenario
from benchmarks.continual.shared import (
    EVAL_BATCH,
    CloudTrajectory,
    Macs,
    calibrate,
    cost_summary,
    meanet_outputs,
    stage,
)
from meanet_core.broadcast import edge_state
from meanet_core.engine import EXIT_CLOUD, EXIT_MAIN, route_outputs
from meanet_core.models import MEANet
from meanet_core.policies import Policy
from meanet_core.training import hard_subset, predict_logits, train_extension
from strategies.aggregation import weighted_average


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    return int(sum(v.numel() * v.element_size() for v in state.values()))


@dataclass
class ExperienceOutcome:
    """What a method reports after experience ``t``."""

    accuracies: list[float]  # accuracy on the test images of experiences 0..t
    costs: dict[str, Any]  # cost_summary over the test images of experiences 0..t
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


def _per_experience(labels: torch.Tensor, ctx: Context, t: int) -> list[float]:
    test, offsets = ctx.scenario.test_data(t), ctx.scenario.test_offsets(t)
    return [accuracy(labels[a:b], test.y[a:b]) for a, b in itertools.pairwise(offsets)]


def _image_bytes(ctx: Context, n: int) -> int:
    x = ctx.scenario.experiences[0].train.x
    return int(n * x[0].numel() * x.element_size())


class Method:
    """A continual-learning method; subclasses implement ``run_experience``."""

    name = "method"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def run_experience(self, t: int) -> ExperienceOutcome:
        raise NotImplementedError


class CloudOnly(Method):
    name = "cloud-only"

    def run_experience(self, t: int) -> ExperienceOutcome:
        snap = self.ctx.trajectory.snapshot(t)
        n = len(snap.test_cloud)
        macs = Macs(0.0, 0.0, self._cloud_macs(), _image_bytes(self.ctx, 1))
        costs = cost_summary(torch.full((n,), EXIT_CLOUD, dtype=torch.int8), torch.zeros(n, dtype=torch.bool), macs)
        return ExperienceOutcome(
            accuracies=_per_experience(snap.test_cloud.argmax(1), self.ctx, t),
            costs=costs,
            bytes_sent={"data_up": _image_bytes(self.ctx, len(self.ctx.scenario.experiences[t].cloud))},
            seconds={"cloud_training": snap.seconds["cloud"], "evaluation": snap.seconds["cloud_outputs"]},
        )

    def _cloud_macs(self) -> float:
        cloud = self.ctx.trajectory.new_cloud()
        return Macs.of(self.ctx.trajectory.new_meanet(), cloud, _NullPolicy()).cloud


class _NullPolicy:
    """A policy that keeps everything at the main exit (only used to count MACs)."""

    name = "none"

    def after_main(self, main_probs: torch.Tensor, top1_hard: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.zeros(main_probs.shape[0], dtype=torch.bool)
        return z, z

    def after_extension(self, ext_probs: torch.Tensor) -> torch.Tensor:
        return torch.zeros(ext_probs.shape[0], dtype=torch.bool)

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name}


def _edge_costs(ctx: Context, n: int) -> dict[str, Any]:
    meanet = ctx.trajectory.new_meanet()
    macs = Macs.of(meanet, None, _NullPolicy())
    return cost_summary(
        torch.full((n,), EXIT_MAIN, dtype=torch.int8),
        torch.zeros(n, dtype=torch.bool),
        Macs(macs.main, 0.0, 0.0, macs.image_bytes),
    )


class EdgeOnly(Method):
    name = "edge-only"

    def run_experience(self, t: int) -> ExperienceOutcome:
        snap = self.ctx.trajectory.snapshot(t)
        main_bytes = state_bytes(snap.main_state)
        return ExperienceOutcome(
            accuracies=_per_experience(snap.test_main.argmax(1), self.ctx, t),
            costs=_edge_costs(self.ctx, len(snap.test_main)),
            bytes_sent={
                "data_up": _image_bytes(self.ctx, len(self.ctx.scenario.experiences[t].cloud)),
                "model_down": self.ctx.cfg.clients * main_bytes,
            },
            seconds={"main_training": snap.seconds["main"], "evaluation": snap.seconds["main_outputs"]},
        )


def _evaluate_meanet(
    ctx: Context,
    model: MEANet,
    cloud_macs: float,
    t: int,
    test_main: torch.Tensor,
    test_cloud: torch.Tensor,
    policy: Policy | None = None,
) -> tuple[list[float], dict[str, Any], Policy, float]:
    """Route the test images of experiences 0..t (main and cloud logits given) through ``model``; without a
    ``policy``, calibrate one on the cloud's validation images of snapshot ``t``."""
    t0 = time.perf_counter()
    test_out = meanet_outputs(model, ctx.scenario.test_data(t), test_main, test_cloud)
    if policy is None:
        snap = ctx.trajectory.snapshot(t)
        val_out = meanet_outputs(model, ctx.scenario.val_data(t), snap.val_main, snap.val_cloud)
        policy = calibrate(model, val_out, ctx.cfg.target_cloud_fraction)
    routed = route_outputs(model, policy, test_out.main, test_out.extension, test_out.cloud.argmax(1))
    macs = Macs.of(model, None, policy)
    costs = cost_summary(
        routed.exit, routed.ran_extension, Macs(macs.main, macs.extension, cloud_macs, macs.image_bytes)
    )
    costs["policy"] = policy.as_dict()
    costs["reference_accuracy"] = {
        "main_only": accuracy(test_out.main.argmax(1), test_out.labels),
        "cloud_only": accuracy(test_out.cloud.argmax(1), test_out.labels),
    }
    return _per_experience(routed.labels, ctx, t), costs, policy, time.perf_counter() - t0


class MEANetStatic(Method):
    """Trained once on the first experience (cloud stages + adaptive/extension on the cloud's data), then frozen."""

    name = "meanet-static"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.model = ctx.trajectory.new_meanet()
        self.cloud = ctx.trajectory.new_cloud()
        self.policy: Policy | None = None
        self.cloud_macs = 0.0
        self.test_main: list[torch.Tensor] = []  # the frozen models' logits on each experience's test images
        self.test_cloud: list[torch.Tensor] = []

    def run_experience(self, t: int) -> ExperienceOutcome:
        ctx = self.ctx
        seconds: dict[str, float] = {}
        sent: dict[str, int] = {}
        if t == 0:
            snap = ctx.trajectory.load_into(0, self.model, self.cloud)
            t0 = time.perf_counter()
            train_extension(self.model, ctx.scenario.cloud_data(0), stage(ctx.cfg), seed=ctx.seed, progress=False)
            seconds = {
                "main_training": snap.seconds["main"],
                "cloud_training": snap.seconds["cloud"],
                "extension_training": time.perf_counter() - t0,
            }
            self.cloud_macs = Macs.of(self.model, self.cloud, _NullPolicy()).cloud
            sent = {
                "data_up": _image_bytes(ctx, len(ctx.scenario.experiences[0].cloud)),
                "model_down": ctx.cfg.clients * state_bytes(self.model.state_dict()),
            }
            seconds["outputs"] = snap.seconds["main_outputs"] + snap.seconds["cloud_outputs"]
            self.test_main.append(snap.test_main)
            self.test_cloud.append(snap.test_cloud)
        else:
            t0 = time.perf_counter()
            self.model.eval()
            test = ctx.scenario.experiences[t].test
            self.test_main.append(predict_logits(lambda x: self.model.forward_main(x).logits, test, EVAL_BATCH))
            self.test_cloud.append(predict_logits(self.cloud.eval(), test, EVAL_BATCH))
            seconds["outputs"] = time.perf_counter() - t0
        accs, costs, self.policy, eval_s = _evaluate_meanet(
            ctx, self.model, self.cloud_macs, t, torch.cat(self.test_main), torch.cat(self.test_cloud), self.policy
        )
        seconds["evaluation"] = eval_s + seconds.pop("outputs", 0.0)
        return ExperienceOutcome(accs, costs, sent, seconds)


class MEANetFL(Method):
    """Ours: cloud retraining + redistribution + federated edge fine-tuning with an Avalanche strategy."""

    def __init__(self, ctx: Context, strategy: str) -> None:
        super().__init__(ctx)
        self.name = f"meanet-fl-{strategy}"
        self.strategy = strategy
        self.model = ctx.trajectory.new_meanet()
        self.cloud = ctx.trajectory.new_cloud()
        cfg = ctx.cfg
        self.client_models = [ctx.trajectory.new_meanet() for _ in range(cfg.clients)]
        self.client_strategies = [
            make_strategy(
                strategy,
                EdgeClassSpace(m),
                lr=cfg.edge_lr,
                epochs=cfg.epochs,
                batch_size=cfg.batch_size,
                seed=ctx.seed * 100 + i,
                ewc_lambda=cfg.ewc_lambda,
                lwf_alpha=cfg.lwf_alpha,
                lwf_temperature=cfg.lwf_temperature,
                mem_size=cfg.replay_mem_size,
            )
            for i, m in enumerate(self.client_models)
        ]
        self.cloud_macs = 0.0

    def run_experience(self, t: int) -> ExperienceOutcome:
        ctx, cfg = self.ctx, self.ctx.cfg
        snap = ctx.trajectory.load_into(t, self.model, self.cloud)
        if not self.cloud_macs:
            self.cloud_macs = Macs.of(self.model, self.cloud, _NullPolicy()).cloud
        seconds = {"main_training": snap.seconds["main"], "cloud_training": snap.seconds["cloud"]}
        t0 = time.perf_counter()
        train_extension(self.model, ctx.scenario.cloud_data(t), stage(ctx.cfg), seed=ctx.seed + t, progress=False)
        seconds["extension_training"] = time.perf_counter() - t0
        broadcast = {k: v.clone() for k, v in self.model.state_dict().items()}
        updates: list[tuple[dict[str, np.ndarray], float]] = []
        client_seconds = []
        for i, (model, strategy) in enumerate(zip(self.client_models, self.client_strategies, strict=True)):
            model.set_hard_classes(snap.hard_classes)
            model.load_state_dict(broadcast)
            model.freeze_main(True)
            data = hard_subset(model, ctx.scenario.experiences[t].clients[i])
            if len(data) == 0:
                continue
            torch.manual_seed(ctx.seed * 1000 + 10 * t + i)
            t1 = time.perf_counter()
            with quiet():
                strategy.train(experience_of(data, t, f"edge-{i}"))
            client_seconds.append(time.perf_counter() - t1)
            updates.append(({k: v.detach().numpy() for k, v in edge_state(model.state_dict()).items()}, len(data)))
        if updates:
            merged = weighted_average(updates)
            self.model.load_state_dict({**broadcast, **{k: torch.from_numpy(v) for k, v in merged.items()}})
        # the clients run one after the other here; on real devices they run side by side: count the slowest
        seconds["edge_training"] = max(client_seconds, default=0.0)
        accs, costs, _, eval_s = _evaluate_meanet(ctx, self.model, self.cloud_macs, t, snap.test_main, snap.test_cloud)
        # the cached main-block and cloud outputs this evaluation reuses were computed for it: count them
        seconds["evaluation"] = eval_s + snap.seconds["main_outputs"] + snap.seconds["cloud_outputs"]
        edge_bytes = state_bytes(edge_state(broadcast))
        sent = {
            "data_up": _image_bytes(ctx, len(ctx.scenario.experiences[t].cloud)),
            "model_down": cfg.clients * state_bytes(broadcast),
            "model_up": len(updates) * edge_bytes,
        }
        extra = {"hard_classes": snap.hard_classes, "clients_trained": len(updates), "client_seconds": client_seconds}
        return ExperienceOutcome(accs, costs, sent, seconds, extra)


class AvalancheBaseline(Method):
    """``naive`` (Avalanche ``Naive``) or ``joint`` (Avalanche ``Cumulative``) on the backbone classifier."""

    def __init__(self, ctx: Context, kind: str) -> None:
        super().__init__(ctx)
        self.name = kind
        cfg = ctx.cfg
        self.meanet = ctx.trajectory.new_meanet()
        self.classifier = MainClassifier(self.meanet)
        self.strategy = make_strategy(
            kind, self.classifier, lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=ctx.seed
        )

    def run_experience(self, t: int) -> ExperienceOutcome:
        ctx = self.ctx
        exp = ctx.scenario.benchmark.train_stream[t]
        torch.manual_seed(ctx.seed * 1000 + t)
        t0 = time.perf_counter()
        with quiet():
            self.strategy.train(exp)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.classifier.eval()
        test = ctx.scenario.test_data(t)
        labels = predict_logits(self.classifier, test, EVAL_BATCH).argmax(1)
        eval_s = time.perf_counter() - t0
        main = {k: v for k, v in self.meanet.state_dict().items() if k.startswith(("main.", "normalize."))}
        return ExperienceOutcome(
            accuracies=_per_experience(labels, ctx, t),
            costs=_edge_costs(ctx, len(test)),
            bytes_sent={
                "data_up": _image_bytes(ctx, len(ctx.scenario.experiences[t].train)),
                "model_down": ctx.cfg.clients * state_bytes(main),
            },
            seconds={"training": train_s, "evaluation": eval_s},
        )


def build_method(name: str, ctx: Context) -> Method:
    """The method registered as ``name`` (see ``benchmarks.continual.config.METHODS``)."""
    if name == "cloud-only":
        return CloudOnly(ctx)
    if name == "edge-only":
        return EdgeOnly(ctx)
    if name == "meanet-static":
        return MEANetStatic(ctx)
    if name in MEANET_FL_METHODS:
        return MEANetFL(ctx, name.removeprefix("meanet-fl-"))
    if name in ("naive", "joint"):
        return AvalancheBaseline(ctx, name)
    raise ValueError(f"unknown method {name!r}")
