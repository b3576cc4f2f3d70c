"""The federated rounds of one experience, for :class:`~fl_server.cloud.CloudServer`: its bookkeeping per round.

* :func:`federate_main`: *main rounds*, in which the edges train the main block on their own images and the strategy
  aggregates ``main.*``;
* :func:`federate_edges`: the rounds after the cloud's training: *edge rounds* (the edges fine-tune adaptive +
  extension, the strategy aggregates them) or, with ``personal = true``, *personal rounds* (each edge makes those
  blocks its own and keeps them: :mod:`fl_client.personal_round`; nothing comes back but metrics).

Each round's record goes into the report, and the server's state is saved after every round (a restarted server
resumes at the round it reached).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid

from fl_server.report import round_record
from meanet_core import keys
from meanet_core.config import FederationConfig
from meanet_core.data.datasets import DatasetSplits
from meanet_core.data.streams import Experience
from meanet_core.inference.policies import Policy
from meanet_core.models import CloudModel, MEANet
from meanet_core.training.stages import predict_logits
from meanet_core.trust.broadcast import digest
from strategies.evaluation import CLOUD_MODEL_BYTES
from strategies.signed import SignedMEANetStrategy


class CloudServer(Protocol):
    """What the rounds use of :class:`fl_server.cloud.CloudServer` (no import of it: imports run one way)."""

    cfg: FederationConfig
    model: MEANet
    cloud: CloudModel
    splits: DatasetSplits
    stream: tuple[Experience, ...]
    strategy: SignedMEANetStrategy
    report: dict[str, Any]
    position: dict[str, Any]
    offload: Any
    say: Callable[[str], None]
    _service_images: int

    def _save(self) -> None: ...

    def _old_classes(self, e: int) -> list[int]: ...

    def _policy(self, e: int) -> Policy: ...

    def _policy_config(self, policy: Policy) -> dict[str, Any]: ...


def cloud_val_accuracy(server: CloudServer, e: int) -> float:
    """The cloud model's accuracy on the cloud's validation images of the classes seen at experience ``e``: what an
    edge counts on for the inputs it would offload when it calibrates its own policy (personal rounds)."""
    val = server.stream[e].val
    if not len(val):
        return 0.0
    server.cloud.eval()
    return float((predict_logits(server.cloud, val).argmax(1) == val.y).float().mean())


def federate_main(server: CloudServer, e: int, start_round: int, grid: Grid) -> None:
    """Main rounds: the edges train the main block on their own images; the strategy aggregates ``main.*``."""
    cfg = server.cfg
    hard = [int(c) for c in server.model.hard_classes.tolist()]  # as they were; the edges do not train on them
    broadcast = ArrayRecord(server.model.state_dict())
    full_bytes = broadcast.count_bytes()
    sent_digest = digest(server.model.state_dict())
    config = ConfigRecord(
        {
            keys.EXPERIENCE: e,
            keys.HARD_CLASSES: hard,
            keys.CLASS_NAMES: [*server.splits.class_names],
            keys.SCOPE: "main",
            keys.OLD_CLASSES: server._old_classes(e),
        }
    )
    server.strategy.aggregation = cfg.rule("main")
    server.strategy.cloud_arrays = None
    server.strategy.round_offset = start_round
    server.strategy.evaluate_rounds = lambda r: False  # the edges evaluate after the edge rounds
    rounds_left = cfg.main_rounds - start_round
    server.say(
        f"experience {e}: {rounds_left} main round(s): the edges train the main block on their own images "
        f"({cfg.rule('main')}, distillation weight {cfg.main_distill:g} on {len(server._old_classes(e))} old classes)"
    )
    round_start = time.perf_counter()

    def after_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        nonlocal round_start
        if server_round == 0:
            return None
        server.model.load_state_dict({**server.model.state_dict(), **arrays.to_torch_state_dict()})
        record = round_record(
            server.strategy, server.report["rounds"], e, "main", start_round + server_round, round_start, full_bytes
        )
        record["main_block_changed"] = digest(server.model.state_dict()) != sent_digest
        server.report["rounds"].append(record)
        server.position = {"experience": e, "phase": "main-federation", "round": start_round + server_round}
        server._save()
        round_start = time.perf_counter()
        return None

    server.strategy.start(
        grid=grid,
        initial_arrays=broadcast,
        num_rounds=rounds_left,
        train_config=config,
        evaluate_config=config,
        evaluate_fn=after_round,
        timeout=cfg.round_timeout,  # a reply after it is dropped (its edge: missed_nodes)
    )
    server.strategy.aggregation = cfg.rule("edge")


def federate_edges(server: CloudServer, e: int, start_round: int, grid: Grid) -> None:
    cfg = server.cfg
    hard = [int(c) for c in server.model.hard_classes.tolist()]
    state = server.model.state_dict()
    broadcast = ArrayRecord(state)
    full_bytes = broadcast.count_bytes()
    server.strategy.cloud_arrays = None  # the edges call the offload service: cloud-url, or ours on loopback
    # the class list is the cloud's: it travels (signed) to edges that read their own folders (fl_client.local_data)
    config = ConfigRecord({keys.EXPERIENCE: e, keys.HARD_CLASSES: hard, keys.CLASS_NAMES: [*server.splits.class_names]})
    phase = "personal" if cfg.personal else "edge"
    if cfg.personal:  # the edges make the edge blocks their own and keep them: nothing comes back
        config[keys.SCOPE] = "personal"
        config[keys.CLOUD_ACCURACY] = cloud_val_accuracy(server, e)
    # The edges evaluate with thresholds fitted to the blocks as broadcast (the server's final evaluation refits).
    routing = server._policy_config(server._policy(e))
    rounds_left = cfg.rounds_per_experience - start_round
    # the signed round counts from the experience's first round, main rounds included
    server.strategy.round_offset = cfg.main_rounds + start_round
    every, last = cfg.evaluate_every, cfg.rounds_per_experience
    server.strategy.evaluate_rounds = lambda r: (
        start_round + r == last or (every > 0 and (start_round + r) % every == 0)
    )
    round_start = time.perf_counter()

    def after_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        nonlocal round_start
        if server_round == 0:
            return None
        server.model.load_state_dict({**server.model.state_dict(), **arrays.to_torch_state_dict()})
        info: dict[str, Any] = dict(server.strategy.last_round or {})  # `last` is the experience's last round
        digests: dict[int, str] = info.get("main_digests", {})
        evaluated = server.strategy.evaluates(server_round)
        record = round_record(
            server.strategy, server.report["rounds"], e, "edge", start_round + server_round, round_start, full_bytes
        )
        # Flower runs the edges' evaluation before this callback; 0 on rounds without one
        record["client_evaluation_seconds"] = server.strategy.last_evaluation_seconds.pop(server_round, 0.0)
        # the main block the edges loaded: as broadcast this round (with int8 broadcasts, its reconstruction)
        sent_main = server.strategy.sent_main_digest
        record["main_digest_matches"] = len(digests) > 0 and all(d == sent_main for d in digests.values())
        record["main_block_unchanged"] = digest(server.model.state_dict()) == sent_main
        # what each edge received: the training instruction (full state, or a delta without the main block)
        # and, on rounds with a client evaluation, the evaluation instruction (with the cloud model if sent)
        record["bytes_evaluate_per_client"] = server.strategy.bytes_sent.pop("evaluate", 0.0) if evaluated else 0.0
        cloud_bytes = server.strategy.bytes_sent.pop(CLOUD_MODEL_BYTES, 0.0)
        record["bytes_cloud_model_per_client"] = cloud_bytes if evaluated else 0.0  # within the evaluation bytes
        record["broadcast_seconds"] += server.strategy.broadcast_seconds.pop("evaluate", 0.0)
        if evaluated and server.offload is not None:  # what the loopback service classified for the edges
            images = int(server.offload.metrics().get("images", 0))
            record["offload_service_images"], server._service_images = images - server._service_images, images
        server.report["rounds"].append(record)
        server.position = {"experience": e, "phase": "federation", "round": start_round + server_round}
        server._save()
        round_start = time.perf_counter()
        return None

    result = server.strategy.start(
        grid=grid,
        initial_arrays=broadcast,
        num_rounds=rounds_left,
        train_config=config,
        evaluate_config=ConfigRecord(
            {**config, **routing, **({keys.OFFLOAD_URL: server.offload.url} if server.offload else {})}
        ),
        evaluate_fn=after_round,
        timeout=cfg.round_timeout,  # a reply after it is dropped (its edge: missed_nodes)
    )
    for r, metrics in result.evaluate_metrics_clientapp.items():
        for rec in server.report["rounds"]:
            if rec["experience"] == e and rec.get("phase", "edge") == "edge" and rec["round"] == start_round + r:
                rec["client_evaluation"] = dict(metrics)
    server.say(f"experience {e}: {rounds_left} rounds of {phase} fine-tuning done")
