"""The evaluation half of :class:`~strategies.MEANetStrategy`: which rounds the edges evaluate, what the instruction
carries besides the MEANet, and each edge's own metrics and offload counts in the round's report."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from meanet_core.keys import CLOUD_ARRAYS, is_main_key
from meanet_core.trust.broadcast import digest
from strategies.broadcasts import mean_array_bytes
from strategies.replies import TrainRoundReport, evaluation_per_node, offload_totals

CLOUD_MODEL_BYTES = "evaluate-cloud-model"
"""Key of :attr:`bytes_sent`: the bytes of the cloud model each evaluation instruction carried (simulation)."""


class EdgeEvaluation(FedAvg):
    """FedAvg's evaluation, with the rounds chosen by :attr:`evaluate_rounds`, :attr:`cloud_arrays` added to every
    instruction when set, and the per-edge results kept in :attr:`round_reports`."""

    sent_main_digest: str | None
    bytes_sent: dict[str, float]
    round_reports: dict[int, TrainRoundReport]
    cloud_arrays: ArrayRecord | None
    evaluate_rounds: Callable[[int], bool] | None
    last_evaluation_seconds: dict[int, float]
    _evaluate_sent_at: float | None
    _evaluate_sent_to: list[int]

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's evaluation instructions, plus :attr:`cloud_arrays` under ``"cloud-arrays"`` when it is set.

        ``aggregate_evaluate`` is FedAvg's own: an average of the replies' metrics weighted by ``num-examples``.
        """
        if not self.evaluates(server_round):
            return []  # Flower's Strategy.start sends nothing and aggregates nothing this round
        arrays = self.prepare_broadcast(arrays, "edge", MessageType.EVALUATE)
        self.sent_main_digest = digest({k: v.numpy() for k, v in arrays.items() if is_main_key(k)})
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        if self.cloud_arrays is not None:
            for msg in messages:  # the full and the delta instructions each share one RecordDict: harmless
                msg.content[CLOUD_ARRAYS] = self.cloud_arrays
        self._evaluate_sent_to = [m.metadata.dst_node_id for m in messages]
        self.bytes_sent[MessageType.EVALUATE] = mean_array_bytes(messages)
        self.bytes_sent[CLOUD_MODEL_BYTES] = float(self.cloud_arrays.count_bytes()) if self.cloud_arrays else 0.0
        self._evaluate_sent_at = time.perf_counter()
        return messages

    def prepare_broadcast(self, arrays: ArrayRecord, scope: str, message_type: str) -> ArrayRecord:
        """The state to send: ``arrays`` (:class:`~strategies.broadcasts.DeltaBroadcasts`, ahead of this class in
        :class:`~strategies.MEANetStrategy`, makes it the edges' reconstruction)."""
        return arrays

    def took_broadcast(self, node: int, message_type: str, ok: bool) -> None:
        """Record an edge's reply to a broadcast (see :class:`~strategies.broadcasts.DeltaBroadcasts`)."""

    def evaluates(self, server_round: int) -> bool:
        """Whether the edges evaluate after ``server_round`` (:attr:`evaluate_rounds`; every round when unset)."""
        return self.evaluate_rounds is None or self.evaluate_rounds(server_round)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """FedAvg's weighted average of the evaluation metrics, also kept in the round's report, with each node's own
        metrics (``client_evaluation_per_node``: node id -> metrics, client index, cloud backend) and the offload counts
        summed over the nodes (``client_offload_totals``).

        Flower evaluates right after each training round and before the ServerApp's ``evaluate_fn``, so a server
        that checkpoints its round records there (``fl_server.cloud``) saves them with their client evaluation.
        """
        if self._evaluate_sent_at is not None:
            self.last_evaluation_seconds[server_round] = time.perf_counter() - self._evaluate_sent_at
            self._evaluate_sent_at = None
        replies = list(replies)
        answered = {m.metadata.src_node_id: not m.has_error() for m in replies}
        for node in self._evaluate_sent_to:  # none on a round without evaluation
            self.took_broadcast(node, MessageType.EVALUATE, answered.get(node, False))
        self._evaluate_sent_to = []
        metrics = super().aggregate_evaluate(server_round, replies)
        report = self.round_reports.get(server_round)
        if report is not None:
            if metrics is not None:
                report["client_evaluation"] = dict(metrics.items())
            # per edge: what each one evaluated, offloaded, fell back on and sent (FedAvg's average mixes them)
            per_node = evaluation_per_node(replies)
            report["client_evaluation_per_node"] = per_node
            report["client_offload_totals"] = offload_totals(per_node)
        return metrics
