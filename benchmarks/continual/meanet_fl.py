"""Ours: MEANet-FL, in the benchmark (see ``methods.py`` for the list of methods and what each does).

``MEANetFL``: per experience the cloud's main block (the shared trajectory's), its cloud model (the trajectory's, or
its own: grown from the main block and/or distilling it, with the offloaded images it labelled), the hard classes,
adaptive + extension trained by the cloud (distilling the cloud model by class id), then one federated edge round
with an Avalanche strategy in class space, and the evaluation of the whole routing. ``MEANetFLMain``: the same with
the method's own main block, trained in main rounds by the edges and by the cloud.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from benchmarks.continual.budget import count_training_images
from benchmarks.continual.common import (
    Context,
    ExperienceOutcome,
    Method,
    block_macs,
    cloud_share_budget,
    image_bytes,
    quiet,
    state_bytes,
    trained_by_cloud,
)
from benchmarks.continual.edge import EdgeClassSpace, experience_of, make_strategy, replay_memory, trained_images
from benchmarks.continual.routing import evaluate_meanet
from benchmarks.continual.shared import (
    Snapshot,
    block_costs,
    choose_hard_classes,
    cloud_model_logits,
    cloud_stage,
    main_block_logits,
    stage,
)
from meanet_core.data import ImageTensors
from meanet_core.data.streams import concat
from meanet_core.models import grow_from_main
from meanet_core.training.stages import hard_subset, train_cloud, train_extension, train_main
from meanet_core.trust.broadcast import digest, edge_state, main_state
from meanet_core.wire.broadcast_delta import broadcast_change
from meanet_core.wire.compression import decode_update, encode_update, payload_bytes
from strategies.aggregation import coordinate_median, weighted_average


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


@dataclass
class CloudPart:
    """The cloud model a MEANet-FL method runs experience ``t`` with (in its ``cloud``), and what it cost."""

    val_cloud: torch.Tensor  # its logits on scenario.val_data(t)
    test_cloud: torch.Tensor  # and on scenario.test_data(t)
    training_seconds: float
    outputs_seconds: float
    trained_images: int  # epochs x images of its training this experience


class MEANetFL(Method):
    """Ours: cloud retraining + redistribution + federated edge fine-tuning with an Avalanche strategy."""

    def __init__(self, ctx: Context, strategy: str) -> None:
        super().__init__(ctx)
        self.name = f"meanet-fl-{strategy}"
        self.strategy = strategy
        self.model = ctx.trajectory.new_meanet()
        self.cloud = ctx.trajectory.new_cloud()
        cfg = ctx.cfg
        # its own cloud model (grown from its main block and/or distilling it), else the shared trajectory's
        self.own_cloud = cfg.cloud_init != "scratch" or cfg.cloud_distill > 0 or cfg.offload_labels > 0
        self.labelled: list[ImageTensors] = []  # offloaded edge images the cloud labelled (``offload_labels``)
        self.client_models = [ctx.trajectory.new_meanet() for _ in range(cfg.clients)]
        self.client_edges = [EdgeClassSpace(m, cfg.precision) for m in self.client_models]
        self.client_strategies = [
            make_strategy(
                strategy,
                edge,
                lr=cfg.edge_lr,
                epochs=cfg.extension_epochs or cfg.epochs,
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
        self.reference: dict[str, np.ndarray] = {}  # what every edge holds: the state last sent (broadcast-encoding)

    def _send(self, target: dict[str, torch.Tensor]) -> tuple[int, dict[str, torch.Tensor]]:
        """What one edge downloads for ``target`` and the state it loads, counted as the federation sends it
        (``broadcast_encoding``: the whole state, or the change from what every edge holds, here the last state)."""
        encoding = self.ctx.cfg.broadcast_encoding
        if encoding == "full":
            return state_bytes(target), target
        payload, state = broadcast_change({k: v.numpy() for k, v in target.items()}, self.reference, encoding)
        self.reference.update(state)
        return payload_bytes(payload), {k: torch.from_numpy(np.array(v)) for k, v in state.items()}

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

    def _label_offloaded(self, t: int) -> int:
        """``offload_labels`` > 0: the edges' images of experience ``t`` pass the main block; the K least confident
        (what the edges would offload) are labelled at the cloud and kept. Returns how many."""
        k = self.ctx.cfg.offload_labels
        if k <= 0:
            return 0
        images = concat(list(self.ctx.scenario.experiences[t].clients))
        if len(images) == 0:
            return 0
        self.model.eval()
        (logits,) = main_block_logits(self.model, images, precision=self.ctx.cfg.precision)
        pick = logits.softmax(1).max(1).values.argsort()[:k]
        self.labelled.append(images.subset(pick.sort().values))
        return len(pick)

    def _cloud_data(self, t: int) -> ImageTensors:
        """What this method's cloud trains its cloud model and extension on: its share of every experience so far,
        and the offloaded images it labelled."""
        return concat([self.ctx.scenario.cloud_data(t), *self.labelled])

    def _cloud_model(self, t: int, snap: Snapshot) -> CloudPart:
        """Put experience ``t``'s cloud model into ``self.cloud``: the trajectory's, or (``own_cloud``) this method's
        own, trained on everything the cloud holds with the cloud's schedule (``cloud_stage``), grown from the main
        block first with ``cloud_init = "main"``, distilling it with ``cloud_distill``."""
        ctx, cfg = self.ctx, self.ctx.cfg
        if not self.own_cloud:
            self.cloud.load_state_dict(snap.cloud_state)
            return CloudPart(
                snap.val_cloud,
                snap.test_cloud,
                snap.seconds["cloud"],
                snap.seconds["cloud_outputs"],
                trained_by_cloud(snap, "cloud"),
            )
        t0 = time.perf_counter()
        if cfg.cloud_init == "main-every" or (cfg.cloud_init == "main" and t == 0):
            grow_from_main(self.cloud, self.model.main, self.model.normalize)
        with count_training_images(self.cloud.normalize) as images:
            train_cloud(
                self.cloud,
                self._cloud_data(t),
                cloud_stage(cfg, own=True),
                teacher=self.model,
                distill_weight=cfg.cloud_distill,
                seed=ctx.seed * 1000 + t,
                progress=False,
                channels_last=True,
            )
        training = time.perf_counter() - t0
        self.cloud.eval()
        t0 = time.perf_counter()
        scenario = ctx.scenario
        val, test = cloud_model_logits(self.cloud, scenario.val_data(t), scenario.test_data(t), precision=cfg.precision)
        return CloudPart(val, test, training, time.perf_counter() - t0, images.images)

    def run_experience(self, t: int) -> ExperienceOutcome:
        ctx, cfg = self.ctx, self.ctx.cfg
        snap = ctx.trajectory.snapshot(t)
        main = self._main_block(t, snap)
        labelled = self._label_offloaded(t)
        cloud = self._cloud_model(t, snap)
        if not self.cloud_macs:
            self.cloud_macs = block_costs(self.model, self.cloud).cloud_macs
        seconds = {**main.seconds, "cloud_training": cloud.training_seconds}
        t0 = time.perf_counter()
        with count_training_images(self.model.normalize) as ext:
            train_extension(
                self.model,
                self._cloud_data(t),
                replace(stage(cfg), epochs=cfg.extension_epochs or cfg.epochs),
                teacher=self.cloud,
                distill_weight=cfg.extension_distill,
                seed=ctx.seed + t,
                progress=False,
            )
        seconds["extension_training"] = time.perf_counter() - t0
        down, broadcast = self._send({k: v.clone() for k, v in self.model.state_dict().items()})
        self.model.load_state_dict(broadcast)  # the cloud keeps what its edges load (a quantised change)
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
            # encoded as the federation uploads it (upload_encoding; one round, so no error feedback carried): the
            # bytes are the payload's, and the cloud aggregates what it decodes from it
            payload, _ = encode_update(trained_edge, sent_edge, cfg.upload_encoding)
            edge_up += payload_bytes(payload)
            updates.append((decode_update(payload, sent_edge, cfg.upload_encoding), len(data)))
        if updates:
            merged = weighted_average(updates)
            self.model.load_state_dict({**broadcast, **{k: torch.from_numpy(v) for k, v in merged.items()}})
        # the clients run one after the other here; on real devices they run side by side: count the slowest
        seconds["edge_training"] = max(client_seconds, default=0.0)
        accs, costs, _, eval_s = evaluate_meanet(
            ctx,
            self.model,
            self.cloud_macs,
            t,
            main.test_main,
            cloud.test_cloud,
            val_main=main.val_main,
            val_cloud=cloud.val_cloud,
        )
        # the cached main-block and cloud outputs this evaluation reuses were computed for it: count them
        seconds["evaluation"] = eval_s + main.outputs_seconds + cloud.outputs_seconds
        sent = {
            "data_up": image_bytes(ctx, len(ctx.scenario.experiences[t].cloud) + labelled),
            "model_down": cfg.clients * down + main.bytes_down,
            "model_up": edge_up + main.bytes_up,
        }
        exp = ctx.scenario.experiences[t]
        macs = block_macs(ctx)
        budget = cloud_share_budget(
            ctx,
            t,
            sent,
            labelled=labelled,
            labelled_kept=sum(len(x) for x in self.labelled),
            edge_new=sum(len(c) for c in exp.clients),
            edge_used=max(edge_used, main.edge_used),  # the hard-class samples are among the main rounds' images
            edge_stored=sum(replay_memory(s) for s in self.client_strategies),
            trained_cloud=main.trained_cloud + cloud.trained_images + ext.images,
            trained_edge=main.trained_edge + edge_trained,
            trained_cloud_macs=main.trained_cloud * macs.main_macs
            + cloud.trained_images * macs.cloud_macs
            + ext.images * (macs.main_macs + macs.extension_macs),
            trained_edge_macs=main.trained_edge * macs.main_macs
            + edge_trained * (macs.main_macs + macs.extension_macs),
        )
        extra = {
            "hard_classes": main.hard_classes,
            "clients_trained": len(updates),
            "client_seconds": client_seconds,
            "edge_round_trained": edge_trained,
            "offloaded_labelled": labelled,
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
            # the main block (and no edge block), to every edge: in full, or the change from what they hold
            one, sent = self._send({k: v.detach().clone() for k, v in main_state(self.model.state_dict()).items()})
            self.model.load_state_dict({**self.model.state_dict(), **sent})
            sent_arrays = {k: v.numpy() for k, v in sent.items()}
            down += cfg.clients * one
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
                # the upload encoded as in the federation (upload_encoding): its bytes are counted from the payload
                # itself, and the cloud aggregates what it decodes from it (the quantisation is simulated)
                payload, residual[i] = encode_update(trained_arrays, sent_arrays, cfg.upload_encoding, residual.get(i))
                up += payload_bytes(payload)
                updates.append((decode_update(payload, sent_arrays, cfg.upload_encoding), len(data)))
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
