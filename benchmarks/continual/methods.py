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
  EWC importances, LwF's previous model, the replay memory, all in class space: see ``edge.py``), uploads the change
  of its edge blocks int8-encoded (as ``meanet federate`` does), and the cloud aggregates the decoded edge blocks
  with ``strategies.aggregation.weighted_average`` (weights = examples trained). The clients run in this process,
  one after the other; the Flower simulation of the same exchange is tested in ``tests/sim/test_federation.py``.
  Inference: the adaptive engine with the calibrated policy fitted on the cloud's validation images so that at most
  ``cfg.target_cloud_fraction`` of the inputs are offloaded.
* ``meanet-fl-main-{naive,lwf,replay}`` (ours, with main rounds, as ``meanet federate`` with ``main-rounds``): the
  same, except that the edges' images also reach the main block. The method keeps its own main block across
  experiences; per experience ``cfg.main_rounds`` main rounds: each edge trains a copy on its whole partition of the
  new experience (``train_main`` with LwF distillation, weight 1, on the classes seen before and, after the first
  experience, a softmax over the classes it holds; the rounds follow one learning-rate cycle), uploads the change
  int8-encoded
  (``meanet_core.wire.compression``, error feedback per edge), and the cloud takes the coordinate-wise median of the
  decoded ``main.*`` states (``strategies.aggregation.coordinate_median``); then the cloud trains it on everything it
  holds. The hard classes are then chosen on this
  main block, adaptive + extension trained on the cloud's data, and the edge round runs as above. The cloud model is
  the shared trajectory's (trained on the cloud's data only).
* ``fedavg-{naive,lwf,replay}``: the baseline a user would otherwise pick, FedAvg of the *whole* edge model (the
  backbone classifier) over the same edges and the same cloud share: per experience the cloud trains the global
  model on what it has stored, then each edge trains it on its whole partition of the experience with the Avalanche
  strategy (``Naive``, ``LwF``, ``Replay``; state kept per edge), and one round of ``weighted_average`` gives the
  next global model, which answers every input on the device. ``fedavg-cloud-last-*``: the same in
  ``meanet-fl-main-*``'s order, the edges' round first and the cloud's epochs on what it holds last.
* ``naive``: Avalanche's ``Naive`` fine-tuning of the backbone classifier on each experience's data, centralised.
* ``joint`` (upper bound, not a competitor): Avalanche's ``Cumulative``: the backbone classifier retrained
  centrally on *all* the data seen so far, every experience.

Each method also reports its budget (``budget.Budget``: labelled data seen and kept, images trained on by the
edges and by the cloud, bytes up and down), counted from what it ran.
"""

from __future__ import annotations

import time

import torch

from benchmarks.continual.baselines import AvalancheBaseline, FedAvgWhole
from benchmarks.continual.budget import count_training_images
from benchmarks.continual.common import (
    Context,
    ExperienceOutcome,
    Method,
    block_macs,
    budget_of,
    cloud_share_budget,
    edge_costs,
    image_bytes,
    per_experience,
    state_bytes,
    trained_by_cloud,
)
from benchmarks.continual.config import (
    FEDAVG_CLOUD_LAST_METHODS,
    FEDAVG_METHODS,
    MEANET_FL_MAIN_METHODS,
    MEANET_FL_METHODS,
)
from benchmarks.continual.meanet_fl import MEANetFL, MEANetFLMain
from benchmarks.continual.routing import evaluate_meanet
from benchmarks.continual.shared import (
    block_costs,
    cloud_model_logits,
    costs,
    main_block_logits,
    stage,
)
from meanet_core.inference.engine import EXIT_CLOUD, BlockCosts, priced
from meanet_core.inference.policies import Policy
from meanet_core.training.stages import train_extension

__all__ = ["Context", "ExperienceOutcome", "Method", "build_method"]


class CloudOnly(Method):
    name = "cloud-only"

    def run_experience(self, t: int) -> ExperienceOutcome:
        snap = self.ctx.trajectory.snapshot(t)
        n = len(snap.test_cloud)
        blocks = BlockCosts(0, 0, self._cloud_macs(), image_bytes(self.ctx, 1))  # nothing runs on the device
        exits = torch.full((n,), EXIT_CLOUD, dtype=torch.int8)
        pred = priced(snap.test_cloud.argmax(1), exits, torch.zeros(n, dtype=torch.bool), blocks)
        new = len(self.ctx.scenario.experiences[t].cloud)
        sent = {"data_up": image_bytes(self.ctx, new)}
        trained = trained_by_cloud(snap, "cloud")
        macs = trained * blocks.cloud_macs
        return ExperienceOutcome(
            accuracies=per_experience(pred.labels, self.ctx, t),
            costs=costs(pred),
            bytes_sent=sent,
            seconds={"cloud_training": snap.seconds["cloud"], "evaluation": snap.seconds["cloud_outputs"]},
            extra={"budget": cloud_share_budget(self.ctx, t, sent, trained_cloud=trained, trained_cloud_macs=macs)},
        )

    def _cloud_macs(self) -> int:
        return block_costs(self.ctx.trajectory.new_meanet(), self.ctx.trajectory.new_cloud()).cloud_macs


class EdgeOnly(Method):
    name = "edge-only"

    def run_experience(self, t: int) -> ExperienceOutcome:
        snap = self.ctx.trajectory.snapshot(t)
        main_bytes = state_bytes(snap.main_state)
        new = len(self.ctx.scenario.experiences[t].cloud)
        sent = {"data_up": image_bytes(self.ctx, new), "model_down": self.ctx.cfg.clients * main_bytes}
        return ExperienceOutcome(
            accuracies=per_experience(snap.test_main.argmax(1), self.ctx, t),
            costs=edge_costs(self.ctx, len(snap.test_main)),
            bytes_sent=sent,
            seconds={"main_training": snap.seconds["main"], "evaluation": snap.seconds["main_outputs"]},
            extra={"budget": cloud_share_budget(self.ctx, t, sent, trained_cloud=trained_by_cloud(snap, "main"))},
        )


class MEANetStatic(Method):
    """Trained once on the first experience (cloud stages + adaptive/extension on the cloud's data), then frozen."""

    name = "meanet-static"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.model = ctx.trajectory.new_meanet()
        self.cloud = ctx.trajectory.new_cloud()
        self.policy: Policy | None = None
        self.cloud_macs = 0
        self.test_main: list[torch.Tensor] = []  # the frozen models' logits on each experience's test images
        self.test_cloud: list[torch.Tensor] = []

    def run_experience(self, t: int) -> ExperienceOutcome:
        ctx = self.ctx
        seconds: dict[str, float] = {}
        sent: dict[str, int] = {}
        counts: dict[str, int] = {}
        if t == 0:
            snap = ctx.trajectory.load_into(0, self.model, self.cloud)
            t0 = time.perf_counter()
            with count_training_images(self.model.normalize) as ext:
                train_extension(self.model, ctx.scenario.cloud_data(0), stage(ctx.cfg), seed=ctx.seed, progress=False)
            new = len(ctx.scenario.experiences[0].cloud)
            trained = trained_by_cloud(snap, "main", "cloud") + ext.images
            b = block_macs(ctx)
            macs = (
                trained_by_cloud(snap, "main") * b.main_macs
                + trained_by_cloud(snap, "cloud") * b.cloud_macs
                + ext.images * (b.main_macs + b.extension_macs)
            )
            counts = dict(cloud_new=new, cloud_stored=new, trained_cloud=trained, trained_cloud_macs=macs)
            seconds = {
                "main_training": snap.seconds["main"],
                "cloud_training": snap.seconds["cloud"],
                "extension_training": time.perf_counter() - t0,
            }
            self.cloud_macs = block_costs(self.model, self.cloud).cloud_macs
            sent = {
                "data_up": image_bytes(ctx, len(ctx.scenario.experiences[0].cloud)),
                "model_down": ctx.cfg.clients * state_bytes(self.model.state_dict()),
            }
            seconds["outputs"] = snap.seconds["main_outputs"] + snap.seconds["cloud_outputs"]
            self.test_main.append(snap.test_main)
            self.test_cloud.append(snap.test_cloud)
        else:
            t0 = time.perf_counter()
            self.model.eval()
            test = ctx.scenario.experiences[t].test
            self.test_main += main_block_logits(self.model, test, precision=ctx.cfg.precision)
            self.test_cloud += cloud_model_logits(self.cloud, test, precision=ctx.cfg.precision)
            seconds["outputs"] = time.perf_counter() - t0
        val_main = val_cloud = None
        if t == len(ctx.scenario) - 1:  # the frozen models' logits on validation, for the accuracy-energy curves
            val = ctx.scenario.val_data(t)
            [val_main] = main_block_logits(self.model, val, precision=ctx.cfg.precision)
            [val_cloud] = cloud_model_logits(self.cloud, val, precision=ctx.cfg.precision)
        accs, costs, self.policy, eval_s = evaluate_meanet(
            ctx,
            self.model,
            self.cloud_macs,
            t,
            torch.cat(self.test_main),
            torch.cat(self.test_cloud),
            self.policy,
            val_main,
            val_cloud,
        )
        seconds["evaluation"] = eval_s + seconds.pop("outputs", 0.0)
        return ExperienceOutcome(accs, costs, sent, seconds, {"budget": budget_of(ctx, t, sent, **counts)})


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
    if name in MEANET_FL_MAIN_METHODS:
        return MEANetFLMain(ctx, name.removeprefix("meanet-fl-main-"))
    if name in FEDAVG_METHODS:
        return FedAvgWhole(ctx, name.removeprefix("fedavg-"))
    if name in FEDAVG_CLOUD_LAST_METHODS:
        return FedAvgWhole(ctx, name.removeprefix("fedavg-cloud-last-"), cloud_last=True)
    if name in ("naive", "joint"):
        return AvalancheBaseline(ctx, name)
    raise ValueError(f"unknown method {name!r}")
