"""Personal rounds in :class:`~strategies.MEANetStrategy`: the edges train their own blocks and keep them.

In a federation with ``personal = true`` the edge rounds have scope ``"personal"`` (:data:`meanet_core.keys.SCOPES`):
the broadcast is the usual one (the shared main block, and the cloud's edge blocks as a start for a device that has
none of its own yet), and each reply must carry **no array**: only its metrics. The strategy checks exactly that,
drops a reply that carries anything (an edge must never send its personal copy), keeps the arrays as sent, and
averages the metrics with one vote per edge (they describe devices, not examples). Nothing personal reaches it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from logging import INFO, WARNING
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, Message, MessageType, MetricRecord
from flwr.common import log

from meanet_core.keys import EDGE_INFO, HARD_CLASSES, PERSONAL_BASE, PERSONAL_DIGEST
from strategies.aggregation import aggregate_metrics
from strategies.replies import TrainRoundReport, client_index, main_digest, short_error


def personal_reply_problem(msg: Message, weighted_by_key: str) -> str | None:
    """Why a personal round's reply cannot be taken, or ``None``: it must hold one metric record with
    ``weighted_by_key`` and no array at all."""
    carried = {name: len(record) for name, record in msg.content.array_records.items() if len(record)}
    if carried:
        return (
            f"a personal round's reply carries arrays ({', '.join(f'{k}: {n}' for k, n in carried.items())}): "
            "personal blocks stay on the device; refused"
        )
    records = list(msg.content.metric_records.values())
    if len(records) != 1 or weighted_by_key not in records[0]:
        return f"a personal round's reply needs one MetricRecord with '{weighted_by_key}'"
    return None


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def personal_info(msg: Message) -> dict[str, Any]:
    """What a personal round's reply says of the edge's own blocks: client index, hard classes, the digest of the
    blocks it started from (``""``: none kept) and of those it keeps."""
    info = msg.content.config_records.get(EDGE_INFO)
    out: dict[str, Any] = {"client": client_index(msg.content)}
    if info is not None:
        hard = info.get(HARD_CLASSES)
        out["hard_classes"] = [int(c) for c in hard] if isinstance(hard, list) else []
        out["digest"] = str(info.get(PERSONAL_DIGEST, ""))
        out["base"] = str(info.get(PERSONAL_BASE, ""))
    return out


class PersonalRounds:
    """The personal-round half of :class:`~strategies.MEANetStrategy` (see the module docstring)."""

    weighted_by_key: str
    current_arrays: ArrayRecord | None
    sampled: dict[str, list[int]]
    connected: dict[str, int]
    bytes_sent: dict[str, float]
    last_round: TrainRoundReport | None
    round_reports: dict[int, TrainRoundReport]
    _sent_at: float | None

    if TYPE_CHECKING:  # the other halves' (FleetSampling, DeltaBroadcasts)

        def missed(self, replies: Sequence[Message], kind: str = MessageType.TRAIN) -> list[int]: ...

        def took_broadcast(self, node: int, message_type: str, ok: bool) -> None: ...

    def aggregate_personal(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check a personal round's replies (no arrays), record the round, average the metrics per device; the
        arrays stay as sent (``None``)."""
        started = time.perf_counter()
        replies = list(replies)
        dropped: list[tuple[int, str]] = []
        accepted: list[Message] = []
        for msg in replies:
            node = msg.metadata.src_node_id
            problem = (
                f"error reply (code {msg.error.code}): {short_error(msg.error.reason)}"
                if msg.has_error()
                else personal_reply_problem(msg, self.weighted_by_key)
            )
            self.took_broadcast(node, MessageType.TRAIN, ok=not msg.has_error())
            if problem is None:
                accepted.append(msg)
            else:
                dropped.append((node, problem))
                log(WARNING, "personal round %d: node %d: %s", server_round, node, problem)
        missed = self.missed(replies)
        for node in missed:
            self.took_broadcast(node, MessageType.TRAIN, ok=False)
        nodes = [m.metadata.src_node_id for m in accepted]
        metrics = [next(iter(m.content.metric_records.values())) for m in accepted]
        report = TrainRoundReport(
            server_round=server_round,
            sampled_nodes=list(self.sampled.get(MessageType.TRAIN, [])),
            connected_nodes=self.connected.get(MessageType.TRAIN, 0),
            missed_nodes=missed,
            received=len(replies),
            accepted=len(accepted),
            accepted_nodes=nodes,
            dropped=dropped,
            skipped=[],
            num_examples=float(sum(_number(r[self.weighted_by_key]) for r in metrics)),
            bytes_received_per_client=0.0,
            main_digests={n: d for n, m in zip(nodes, accepted, strict=True) if (d := main_digest(m.content))},
            clients={n: c for n, m in zip(nodes, accepted, strict=True) if (c := client_index(m.content)) is not None},
            norm_ratios={},
            max_norm_ratio=None,
            norm_bound=None,
            norm_bound_relative=None,
            claims={},
            clipped_claims=[],
            rule="personal",
            rule_note="nothing shared: every edge keeps its own blocks",
            ignored_by_rule=[],
            trust_scores={},
            encodings={},
            encode_seconds=0.0,
            decode_seconds=0.0,
            bytes_sent_per_client=self.bytes_sent.get(MessageType.TRAIN, 0.0),
            train_phase_seconds=started - self._sent_at if self._sent_at is not None else 0.0,
            client_train_seconds=[_number(r.get("train-seconds", 0.0)) for r in metrics],
            aggregation_seconds=0.0,
            client_train_intervals=[],
        )
        report["personal_edges"] = {n: personal_info(m) for n, m in zip(nodes, accepted, strict=True)}
        self.last_round = report
        self.round_reports[server_round] = report
        log(INFO, "personal round %d: %d of %d edges trained their own blocks", server_round, len(nodes), len(replies))
        if not accepted:
            return None, None
        averaged = aggregate_metrics(
            [({k: v for k, v in r.items() if k != self.weighted_by_key}, 1.0) for r in metrics]
        )
        report["aggregation_seconds"] = time.perf_counter() - started
        return None, MetricRecord(dict(averaged))
