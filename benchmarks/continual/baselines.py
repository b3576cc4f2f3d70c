"""Baselines trained on the backbone classifier: Avalanche's ``Naive`` / ``Cumulative`` (``naive``, and ``joint``
as the upper bound), and FedAvg of the whole edge model over the same edges (``fedavg-*``)."""

from __future__ import annotations

import time

import numpy as np
import torch

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
)
from benchmarks.continual.edge import MainClassifier, experience_of, make_strategy, replay_memory, trained_images
from benchmarks.continual.shared import main_block_logits, stage
from meanet_core.training.stages import train_main
from meanet_core.trust.broadcast import main_state
from strategies.aggregation import weighted_average


class AvalancheBaseline(Method):
    """``naive`` (Avalanche ``Naive``) or ``joint`` (Avalanche ``Cumulative``) on the backbone classifier."""

    def __init__(self, ctx: Context, kind: str) -> None:
        super().__init__(ctx)
        self.name = kind
        cfg = ctx.cfg
        self.meanet = ctx.trajectory.new_meanet()
        self.classifier = MainClassifier(self.meanet, cfg.precision)
        self.strategy = make_strategy(
            kind, self.classifier, lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=ctx.seed
        )

    def run_experience(self, t: int) -> ExperienceOutcome:
        ctx = self.ctx
        exp = ctx.scenario.benchmark.train_stream[t]
        torch.manual_seed(ctx.seed * 1000 + t)
        t0 = time.perf_counter()
        before = trained_images(self.strategy)
        with quiet():
            self.strategy.train(exp)
        train_s = time.perf_counter() - t0
        trained = trained_images(self.strategy) - before
        t0 = time.perf_counter()
        test = ctx.scenario.test_data(t)
        labels = main_block_logits(self.meanet, test, precision=ctx.cfg.precision)[0].argmax(1)
        eval_s = time.perf_counter() - t0
        main = {k: v for k, v in self.meanet.state_dict().items() if k.startswith(("main.", "normalize."))}
        new = len(ctx.scenario.experiences[t].train)
        sent = {"data_up": image_bytes(ctx, new), "model_down": ctx.cfg.clients * state_bytes(main)}
        stored = getattr(self.strategy, "dataset", None)  # Cumulative keeps every experience's data; Naive nothing
        return ExperienceOutcome(
            accuracies=per_experience(labels, ctx, t),
            costs=edge_costs(ctx, len(test)),
            bytes_sent=sent,
            seconds={"training": train_s, "evaluation": eval_s},
            extra={
                "budget": budget_of(
                    ctx,
                    t,
                    sent,
                    cloud_new=new,
                    cloud_stored=0 if stored is None else len(stored),
                    trained_cloud=trained,
                )
            },
        )


class FedAvgWhole(Method):
    """Baseline: FedAvg of the whole edge model (the backbone classifier) over the same edges and cloud share.

    Per experience: the cloud trains the global model (``train_main``, as the shared trajectory trains MEANet's main
    block) on everything it has stored, its ``cloud_share`` of every experience so far; it broadcasts the model;
    each edge trains it on its whole partition of the new experience with its Avalanche strategy (``Naive``,
    ``LwF`` or ``Replay`` on the classifier over all classes, so already in class space; one strategy per edge,
    kept across experiences, with the edge's own LwF teacher and replay memory); one round of FedAvg
    (``strategies.aggregation.weighted_average``, weights = the edges' example counts, as MEANet-FL aggregates its
    edge blocks) gives the next global model. Every inference runs on the device (no offloading).

    ``cloud_last``: the edges' round first, then the cloud's epochs on the averaged model, the order of
    ``meanet-fl-main-*`` (whose edges' rounds also come before the cloud's epochs), so the model that answers has
    last trained on every class the cloud holds rather than on the edges' new classes only.
    """

    def __init__(self, ctx: Context, strategy: str, *, cloud_last: bool = False) -> None:
        super().__init__(ctx)
        self.name = f"fedavg-cloud-last-{strategy}" if cloud_last else f"fedavg-{strategy}"
        self.cloud_last = cloud_last
        cfg = ctx.cfg
        self.model = ctx.trajectory.new_meanet()
        self.client_models = [ctx.trajectory.new_meanet() for _ in range(cfg.clients)]
        self.client_strategies = [
            make_strategy(
                strategy,
                MainClassifier(m, cfg.precision),
                lr=cfg.lr,
                epochs=cfg.epochs,
                batch_size=cfg.batch_size,
                seed=ctx.seed * 100 + i,
                lwf_alpha=cfg.lwf_alpha,
                lwf_temperature=cfg.lwf_temperature,
                mem_size=cfg.replay_mem_size,
            )
            for i, m in enumerate(self.client_models)
        ]

    def run_experience(self, t: int) -> ExperienceOutcome:
        ctx, cfg = self.ctx, self.ctx.cfg
        exp = ctx.scenario.experiences[t]
        seconds: dict[str, float] = {}
        trained_cloud = 0 if self.cloud_last else self._cloud_epochs(t, seconds)
        broadcast = {k: v.clone() for k, v in main_state(self.model.state_dict()).items()}
        updates: list[tuple[dict[str, np.ndarray], float]] = []
        client_seconds = []
        edge_trained = 0
        for i, (model, strategy) in enumerate(zip(self.client_models, self.client_strategies, strict=True)):
            data = exp.clients[i]
            if len(data) == 0:
                continue
            model.load_state_dict(broadcast, strict=False)
            model.freeze_main(False)
            torch.manual_seed(ctx.seed * 1000 + 10 * t + i)
            t1 = time.perf_counter()
            before = trained_images(strategy)
            with quiet():
                strategy.train(experience_of(data, t, f"edge-{i}"))
            client_seconds.append(time.perf_counter() - t1)
            edge_trained += trained_images(strategy) - before
            updates.append(({k: v.detach().numpy() for k, v in main_state(model.state_dict()).items()}, len(data)))
        if updates:
            merged = weighted_average(updates)
            self.model.load_state_dict({k: torch.from_numpy(v) for k, v in merged.items()}, strict=False)
        seconds["edge_training"] = max(client_seconds, default=0.0)  # edges run side by side on real devices
        if self.cloud_last:
            trained_cloud = self._cloud_epochs(t, seconds)
        t0 = time.perf_counter()
        test = ctx.scenario.test_data(t)
        labels = main_block_logits(self.model, test, precision=cfg.precision)[0].argmax(1)
        seconds["evaluation"] = time.perf_counter() - t0
        model_bytes = state_bytes(broadcast)
        sent = {
            "data_up": image_bytes(ctx, len(exp.cloud)),
            "model_down": cfg.clients * model_bytes,
            "model_up": len(updates) * model_bytes,
        }
        budget = cloud_share_budget(
            ctx,
            t,
            sent,
            edge_new=sum(len(c) for c in exp.clients),
            edge_used=sum(len(c) for c in exp.clients),
            edge_stored=sum(replay_memory(s) for s in self.client_strategies),
            trained_cloud=trained_cloud,
            trained_edge=edge_trained,
        )
        extra = {"clients_trained": len(updates), "client_seconds": client_seconds, "budget": budget}
        return ExperienceOutcome(per_experience(labels, ctx, t), edge_costs(ctx, len(test)), sent, seconds, extra)

    def _cloud_epochs(self, t: int, seconds: dict[str, float]) -> int:
        """The cloud trains the global model on everything it has stored (as the shared trajectory trains the main
        block); returns the images its epochs processed."""
        ctx = self.ctx
        t0 = time.perf_counter()
        with count_training_images(self.model.normalize) as cloud:
            data = ctx.scenario.cloud_data(t)
            train_main(self.model, data, stage(ctx.cfg), seed=ctx.seed * 1000 + t, progress=False, channels_last=True)
        seconds["cloud_training"] = time.perf_counter() - t0
        return cloud.images
