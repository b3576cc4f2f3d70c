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
  (``meanet_core.compression``, error feedback per edge), and the cloud takes the coordinate-wise median of the
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
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from benchmarks.continual.baselines import AvalancheBaseline, FedAvgWhole
from benchmarks.continual.budget import count_training_images
from benchmarks.continual.common import (
    Context,
    ExperienceOutcome,
    Method,
    budget_of,
    cloud_share_budget,
    edge_costs,
    image_bytes,
    per_experience,
    quiet,
    state_bytes,
    trained_by_cloud,
)
from benchmarks.continual.config import (
    FEDAVG_CLOUD_LAST_METHODS,
    FEDAVG_METHODS,
    MEANET_FL_MAIN_METHODS,
    MEANET_FL_METHODS,
)
from benchmarks.continual.edge import (
    EdgeClassSpace,
    experience_of,
    make_strategy,
    replay_memory,
    trained_images,
)
from benchmarks.continual.metrics import accuracy
from benchmarks.continual.shared import (
    Snapshot,
    block_costs,
    calibrate,
    choose_hard_classes,
    cloud_model_logits,
    costs,
    main_block_logits,
    meanet_outputs,
    stage,
)
from meanet_core.broadcast import digest, edge_state, main_state
from meanet_core.compression import decode_update, encode_update, payload_bytes
from meanet_core.engine import EXIT_CLOUD, BlockCosts, predictions_from_outputs, priced
from meanet_core.evaluation import reference_accuracy
from meanet_core.models import MEANet
from meanet_core.policies import Policy
from meanet_core.training import hard_subset, train_extension, train_main
from strategies.aggregation import coordinate_median, weighted_average

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
        return ExperienceOutcome(
            accuracies=per_experience(pred.labels, self.ctx, t),
            costs=costs(pred),
            bytes_sent=sent,
            seconds={"cloud_training": snap.seconds["cloud"], "evaluation": snap.seconds["cloud_outputs"]},
            extra={"budget": cloud_share_budget(self.ctx, t, sent, trained_cloud=trained_by_cloud(snap, "cloud"))},
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


def _evaluate_meanet(
    ctx: Context,
    model: MEANet,
    cloud_macs: int,
    t: int,
    test_main: torch.Tensor,
    test_cloud: torch.Tensor,
    policy: Policy | None = None,
    val_main: torch.Tensor | None = None,
) -> tuple[list[float], dict[str, Any], Policy, float]:
    """Route the test images of experiences 0..t (main and cloud logits given) through ``model``; without a
    ``policy``, calibrate one on the cloud's validation images of snapshot ``t`` (with the main-block logits
    ``val_main`` on them when ``model``'s main block is not the snapshot's)."""
    t0 = time.perf_counter()
    test_out = meanet_outputs(model, ctx.scenario.test_data(t), test_main, test_cloud, ctx.cfg.precision)
    if policy is None:
        snap = ctx.trajectory.snapshot(t)
        val = snap.val_main if val_main is None else val_main
        val_out = meanet_outputs(model, ctx.scenario.val_data(t), val, snap.val_cloud, ctx.cfg.precision)
        policy = calibrate(model, val_out, ctx.cfg.target_cloud_fraction)
    blocks = replace(block_costs(model), cloud_macs=cloud_macs)
    pred = predictions_from_outputs(model, policy, blocks, test_out.main, test_out.extension, test_out.cloud)
    record = costs(pred)
    record["policy"] = policy.as_dict()
    # what each part adds, on the same images (``meanet evaluate``'s figures): the main block alone, main +
    # extension with nothing offloaded, with the cloud, the cloud alone; the edge's and the cloud's accuracy on the
    # inputs sent to the cloud
    record["reference_accuracy"] = reference_accuracy(model, policy, test_out, accuracy(pred.labels, test_out.labels))
    return per_experience(pred.labels, ctx, t), record, policy, time.perf_counter() - t0


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
            counts = dict(cloud_new=new, cloud_stored=new, trained_cloud=trained)
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
        accs, costs, self.policy, eval_s = _evaluate_meanet(
            ctx, self.model, self.cloud_macs, t, torch.cat(self.test_main), torch.cat(self.test_cloud), self.policy
        )
        seconds["evaluation"] = eval_s + seconds.pop("outputs", 0.0)
        return ExperienceOutcome(accs, costs, sent, seconds, {"budget": budget_of(ctx, t, sent, **counts)})


@dataclass
class MainBlock:
    """The main block a MEANet-FL method runs experience ``t`` with (loaded into its model), and what it cost."""

    hard_classes: list[int]  # chosen on this main block
    val_main: torch.Tensor  # its logits on scenario.val_data(t)
    test_main: torch.Tensor  # and on scenario.test_data(t)
    seconds: dict[str, float]  # training stages (cloud, main rounds)
    outputs_seconds: float  # computing val_main and test_main (and choosing the hard classes): evaluation time
    trained_cloud: int  # images the cloud's main-block training processed
    trained_edge: int = 0  # images the edges' main rounds processed
    edge_used: int = 0  # edge images the main rounds trained on (each once, however many rounds)
    bytes_up: int = 0  # main-round uploads
    bytes_down: int = 0  # main-round broadcasts
    extra: dict[str, Any] = field(default_factory=dict)


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
        self.client_edges = [EdgeClassSpace(m, cfg.precision) for m in self.client_models]
        self.client_strategies = [
            make_strategy(
                strategy,
                edge,
                lr=cfg.edge_lr,
                epochs=cfg.epochs,
                batch_size=cfg.batch_size,
                seed=ctx.seed * 100 + i,
                ewc_lambda=cfg.ewc_lambda,
                lwf_alpha=cfg.lwf_alpha,
                lwf_temperature=cfg.lwf_temperature,
                mem_size=cfg.replay_mem_size,
            )
            for i, edge in enumerate(self.client_edges)
        ]
        self.cloud_macs = 0

    def _main_block(self, t: int, snap: Snapshot) -> MainBlock:
        """Load the main block of experience ``t`` and its hard classes into ``self.model``: here the shared cloud
        trajectory's (``MEANetFLMain`` trains its own)."""
        self.ctx.trajectory.load_into(t, self.model)
        return MainBlock(
            hard_classes=snap.hard_classes,
            val_main=snap.val_main,
            test_main=snap.test_main,
            seconds={"main_training": snap.seconds["main"]},
            outputs_seconds=snap.seconds["main_outputs"],
            trained_cloud=trained_by_cloud(snap, "main"),
        )

    def run_experience(self, t: int) -> ExperienceOutcome:
        ctx, cfg = self.ctx, self.ctx.cfg
        snap = ctx.trajectory.load_into(t, cloud=self.cloud)
        main = self._main_block(t, snap)
        if not self.cloud_macs:
            self.cloud_macs = block_costs(self.model, self.cloud).cloud_macs
        seconds = {**main.seconds, "cloud_training": snap.seconds["cloud"]}
        t0 = time.perf_counter()
        with count_training_images(self.model.normalize) as ext:
            train_extension(self.model, ctx.scenario.cloud_data(t), stage(ctx.cfg), seed=ctx.seed + t, progress=False)
        seconds["extension_training"] = time.perf_counter() - t0
        broadcast = {k: v.clone() for k, v in self.model.state_dict().items()}
        sent_edge = {k: v.numpy() for k, v in edge_state(broadcast).items()}
        updates: list[tuple[dict[str, np.ndarray], float]] = []
        client_seconds = []
        edge_used = edge_trained = edge_up = 0
        clients = zip(self.client_models, self.client_edges, self.client_strategies, strict=True)
        for i, (model, edge, strategy) in enumerate(clients):
            model.set_hard_classes(main.hard_classes)
            model.load_state_dict(broadcast)
            model.freeze_main(True)
            edge.load_extension_rows()  # the broadcast classifier's rows, by class id, into the class-space head
            data = hard_subset(model, ctx.scenario.experiences[t].clients[i])
            if len(data) == 0:
                continue
            torch.manual_seed(ctx.seed * 1000 + 10 * t + i)
            t1 = time.perf_counter()
            before = trained_images(strategy)
            with quiet():
                strategy.train(experience_of(data, t, f"edge-{i}"))
            client_seconds.append(time.perf_counter() - t1)
            edge_trained += trained_images(strategy) - before
            edge_used += len(data)
            edge.store_extension_rows()  # and back, for the upload
            trained_edge = {k: v.detach().numpy().copy() for k, v in edge_state(model.state_dict()).items()}
            # int8 as the federation uploads it (upload-encoding int8; one round, so no error feedback carried): the
            # bytes are the payload's, and the cloud aggregates what it decodes from it
            payload, _ = encode_update(trained_edge, sent_edge, "int8")
            edge_up += payload_bytes(payload)
            updates.append((decode_update(payload, sent_edge, "int8"), len(data)))
        if updates:
            merged = weighted_average(updates)
            self.model.load_state_dict({**broadcast, **{k: torch.from_numpy(v) for k, v in merged.items()}})
        # the clients run one after the other here; on real devices they run side by side: count the slowest
        seconds["edge_training"] = max(client_seconds, default=0.0)
        accs, costs, _, eval_s = _evaluate_meanet(
            ctx, self.model, self.cloud_macs, t, main.test_main, snap.test_cloud, val_main=main.val_main
        )
        # the cached main-block and cloud outputs this evaluation reuses were computed for it: count them
        seconds["evaluation"] = eval_s + main.outputs_seconds + snap.seconds["cloud_outputs"]
        sent = {
            "data_up": image_bytes(ctx, len(ctx.scenario.experiences[t].cloud)),
            "model_down": cfg.clients * state_bytes(broadcast) + main.bytes_down,
            "model_up": edge_up + main.bytes_up,
        }
        exp = ctx.scenario.experiences[t]
        budget = cloud_share_budget(
            ctx,
            t,
            sent,
            edge_new=sum(len(c) for c in exp.clients),
            edge_used=max(edge_used, main.edge_used),  # the hard-class samples are among the main rounds' images
            edge_stored=sum(replay_memory(s) for s in self.client_strategies),
            trained_cloud=main.trained_cloud + trained_by_cloud(snap, "cloud") + ext.images,
            trained_edge=main.trained_edge + edge_trained,
        )
        extra = {
            "hard_classes": main.hard_classes,
            "clients_trained": len(updates),
            "client_seconds": client_seconds,
            "edge_round_trained": edge_trained,
            "main_digest": digest(self.model.state_dict()),  # sha-256 of the main block this experience ran with
            **main.extra,
            "budget": budget,
        }
        return ExperienceOutcome(accs, costs, sent, seconds, extra)


class MEANetFLMain(MEANetFL):
    """MEANet-FL with main rounds: the edges train the main block too (``meanet federate`` with ``main-rounds``).

    ``_main_block`` replaces the shared trajectory's main block by this method's own, carried from one experience to
    the next: the cloud trains it on everything it has stored (``train_main``, as the trajectory does), then
    ``cfg.main_rounds`` main rounds (see the module docstring), then the hard classes are chosen on it
    (``shared.choose_hard_classes``, the trajectory's code path). Everything after (adaptive + extension on the
    cloud's data, the edge round with the Avalanche strategy, evaluation) is ``MEANetFL``'s.
    """

    def __init__(self, ctx: Context, strategy: str) -> None:
        super().__init__(ctx, strategy)
        self.name = f"meanet-fl-main-{strategy}"
        self.scratch = ctx.trajectory.new_meanet()  # each edge's copy of the main block in a main round, in turn

    def _main_block(self, t: int, snap: Snapshot) -> MainBlock:
        ctx, cfg = self.ctx, self.ctx.cfg
        scenario = ctx.scenario
        seconds: dict[str, float] = {}
        # self.model holds this method's main block after experience t - 1 (a fresh one, as the trajectory's, at 0);
        # the edges' rounds come first, then the cloud's epochs on every class it holds (as ``meanet federate``)
        rounds = self._main_rounds(t)
        seconds["main_rounds"] = sum(rounds["round_seconds"])
        t0 = time.perf_counter()
        with count_training_images(self.model.normalize) as cloud_images:
            data = scenario.cloud_data(t)
            train_main(self.model, data, stage(cfg), seed=ctx.seed * 1000 + t, progress=False, channels_last=True)
        seconds["main_training"] = time.perf_counter() - t0
        self.model.eval()
        t0 = time.perf_counter()
        val_main, test_main = main_block_logits(
            self.model, scenario.val_data(t), scenario.test_data(t), precision=cfg.precision
        )
        hard = choose_hard_classes(cfg, scenario, t, val_main)
        self.model.set_hard_classes(hard)
        return MainBlock(
            hard_classes=hard,
            val_main=val_main,
            test_main=test_main,
            seconds=seconds,
            outputs_seconds=time.perf_counter() - t0,
            trained_cloud=cloud_images.images,
            trained_edge=rounds["trained_edge"],
            edge_used=rounds["edge_used"],
            bytes_up=rounds["model_up"],
            bytes_down=rounds["model_down"],
            extra={"main_rounds": rounds},
        )

    def _main_rounds(self, t: int) -> dict[str, Any]:
        """``cfg.main_rounds`` rounds of federated training of ``self.model``'s main block on the edges' images of
        experience ``t``; what they trained, moved and took."""
        ctx, cfg = self.ctx, self.ctx.cfg
        exp = ctx.scenario.experiences[t]
        old = list(ctx.scenario.experiences[t - 1].seen_classes) if t > 0 else []  # distilled (LwF)
        n_rounds = cfg.main_rounds
        residual: dict[int, dict[str, np.ndarray]] = {}  # each edge's int8 error feedback, over this experience
        up = down = trained = used = 0
        round_seconds, clients_trained = [], []
        for r in range(n_rounds):
            sent = {k: v.detach().clone() for k, v in main_state(self.model.state_dict()).items()}
            sent_arrays = {k: v.numpy() for k, v in sent.items()}
            down += cfg.clients * state_bytes(sent)  # the float32 main block, to every edge
            updates: list[tuple[dict[str, np.ndarray], float]] = []
            client_seconds = []
            for i, data in enumerate(exp.clients):
                if len(data) == 0:
                    continue
                self.scratch.load_state_dict(sent, strict=False)
                t0 = time.perf_counter()
                with count_training_images(self.scratch.normalize) as images:
                    train_main(
                        self.scratch,
                        data,
                        replace(stage(cfg), cycle=(r / n_rounds, (r + 1) / n_rounds)),  # one schedule over the rounds
                        distill_classes=old,
                        distill_weight=1.0,
                        label_classes=sorted({int(c) for c in data.y.tolist()}) if old else (),  # as an edge does
                        seed=ctx.seed * 1_000_000 + t * 10_000 + r * 100 + i,
                        progress=False,
                        channels_last=True,
                    )
                client_seconds.append(time.perf_counter() - t0)
                trained += images.images
                trained_arrays = {
                    k: v.detach().numpy().copy() for k, v in main_state(self.scratch.state_dict()).items()
                }
                # the upload is int8 as in the federation (upload-encoding int8): its bytes are counted from the
                # payload itself, and the cloud aggregates what it decodes from it (the quantisation is simulated)
                payload, residual[i] = encode_update(trained_arrays, sent_arrays, "int8", residual.get(i))
                up += payload_bytes(payload)
                updates.append((decode_update(payload, sent_arrays, "int8"), len(data)))
                if r == 0:
                    used += len(data)
            if updates:  # weights-free: the median ignores the example counts
                merged = {k: torch.from_numpy(v) for k, v in coordinate_median(updates).items()}
                self.model.load_state_dict({**self.model.state_dict(), **merged})
            # the edges run side by side on real devices: a round takes as long as its slowest edge
            round_seconds.append(max(client_seconds, default=0.0))
            clients_trained.append(len(updates))
        return {
            "rounds": n_rounds,
            "clients_trained": clients_trained,
            "round_seconds": round_seconds,
            "model_up": up,
            "model_down": down,
            "trained_edge": trained,
            "edge_used": used,
        }


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
