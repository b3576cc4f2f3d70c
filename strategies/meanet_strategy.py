"""MEANet-FL's server strategy: validate and aggregate the edge blocks, keep the cloud's main block untouched.

The server sends every sampled edge the full MEANet state dict (main + adaptive + extension, plus the normalisation
and hard-class buffers). Each edge fine-tunes only the adaptive and extension blocks and replies with those entries
alone (parameters and BatchNorm buffers) in one ``ArrayRecord``, and one ``MetricRecord`` holding ``num-examples``
and its training metrics. This strategy checks every reply against what was sent (keys, shapes, dtypes, finite
values, an optional norm bound), drops the bad ones with a logged reason, aggregates the good ones with the chosen
rule (example-weighted mean, coordinate median, or trimmed mean; maths in :mod:`strategies.aggregation`), and returns
the aggregate merged with the **unchanged** cloud-owned entries, byte for byte as sent.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from logging import INFO, WARNING
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError
from flwr.serverapp.strategy import FedAvg

from meanet_core.keys import (
    ARRAYS,
    CLIENT,
    CLOUD_ARRAYS,
    CONFIG,
    EDGE_INFO,
    EDGE_PREFIXES,
    MAIN_DIGEST,
    METRICS,
    NUM_EXAMPLES,
    TRAIN_ENDED,
    TRAIN_SECONDS,
    TRAIN_STARTED,
    is_edge_key,
)
from strategies.aggregation import (
    AGGREGATORS,
    Arrays,
    aggregate_metrics,
    trimmed_count,
    update_norm_ratio,
    validate_update,
)

__all__ = ["MEANetStrategy", "TrainRoundReport"]


class _RoundEvaluation(TypedDict, total=False):
    client_evaluation: dict[str, Any]
    """The round's aggregated client evaluation (set by ``aggregate_evaluate``, which Flower runs after training)."""


class TrainRoundReport(_RoundEvaluation):
    """What happened to the replies of one training round (``MEANetStrategy.last_round``)."""

    server_round: int
    received: int
    """Replies received, error replies included."""
    accepted: int
    """Replies aggregated."""
    accepted_nodes: list[int]
    """Node ids of the aggregated replies."""
    dropped: list[tuple[int, str]]
    """``(node id, reason)`` for every reply rejected: error replies, malformed replies, failed validation."""
    skipped: list[tuple[int, str]]
    """``(node id, reason)`` for valid replies with nothing to aggregate (trained on 0 examples)."""
    num_examples: float
    """Total ``num-examples`` of the aggregated replies."""
    bytes_received_per_client: float
    """Mean size in bytes of the ArrayRecords received (every non-error reply carrying exactly one)."""
    main_digests: dict[int, str]
    """Node id -> the main-block digest the edge reported (``edge-info``/``main-digest``), where it sent one."""
    clients: dict[int, int]
    """Node id -> the client (partition) index the edge reported (``edge-info``/``client``), where it sent one."""
    norm_ratios: dict[int, float]
    """Node id -> ``||update - sent|| / ||sent||`` for every reply that passed the structural checks (keys, shapes,
    dtypes, finite values), whether the norm bound then accepted it or not."""
    max_norm_ratio: float | None
    """The norm bound in force (``None``: off)."""
    train_phase_seconds: float
    """From sending the instructions to the start of aggregation: local training plus communication and waiting."""
    client_train_seconds: list[float]
    """The ``train-seconds`` each accepted edge reported (its local fine-tuning time)."""
    aggregation_seconds: float
    """Time spent in ``aggregate_train`` (validation, aggregation, merging)."""
    client_train_intervals: list[tuple[float, float]]
    """``(start, end)`` of each accepted edge's fine-tuning, in seconds after the instructions were sent, from the
    wall-clock times the edges reported (``edge-info`` ``train-started``/``train-ended``); meaningful where the edges
    share the server's clock (simulation, loopback)."""


class _Reply(TypedDict):
    """A reply decoded for aggregation."""

    arrays: Arrays
    weight: float
    metrics: Mapping[str, float | Sequence[float]]


class MEANetStrategy(FedAvg):
    """FedAvg over MEANet's edge blocks, with per-update validation and robust aggregation options.

    Parameters
    ----------
    fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes, min_available_nodes
        Node sampling, exactly as in :class:`flwr.serverapp.strategy.FedAvg`.
    weighted_by_key : str (default: ``"num-examples"``)
        The ``MetricRecord`` entry holding a client's example count: the weight of its update and metrics.
    arrayrecord_key, configrecord_key : str (default: ``"arrays"``, ``"config"``)
        Keys of the records in the instructions sent to the edges.
    train_metrics_aggr_fn : callable, optional
        ``(list[RecordDict], weighted_by_key) -> MetricRecord`` for the *accepted* training replies. Default:
        :func:`strategies.aggregation.aggregate_metrics` (example-weighted, each metric over the replies reporting it).
    evaluate_metrics_aggr_fn : callable, optional
        As in FedAvg: ``aggregate_evaluate`` is FedAvg's, an example-weighted average by default; the result is also
        stored in the round's report (``last_round["client_evaluation"]``).
    aggregation : str (default: ``"mean"``)
        ``"mean"`` (example-weighted average), ``"median"`` (coordinate-wise median) or ``"trimmed-mean"``.
        The robust rules ignore the example counts for the arrays, so a client cannot buy influence.
    trim_fraction : float (default: 0.2)
        For ``"trimmed-mean"``: the fraction cut from each end at every coordinate, in ``[0, 0.5)``.
    max_norm_ratio : float, optional
        Drop an update whose change ``||update - sent||`` exceeds ``max_norm_ratio * ||sent||`` (over the floating
        edge arrays). ``None`` (default) disables the bound.

    Attributes
    ----------
    current_arrays : ArrayRecord | None
        A snapshot of the arrays last sent by :meth:`configure_train` (updates are checked against them, and their
        non-edge entries are returned unchanged).
    last_round : TrainRoundReport | None
        Bookkeeping of the last :meth:`aggregate_train` call; ``round_reports`` keeps them all by round.
    last_evaluation_seconds : dict[int, float]
        Round -> seconds from sending the evaluation instructions to aggregating the replies (rounds that evaluated).
    cloud_arrays : ArrayRecord | None
        If set, added to every evaluation instruction under ``"cloud-arrays"`` (the cloud model's state dict, for
        edges that evaluate with a local stand-in for the cloud). ``None`` (default): evaluation sends the MEANet only.
    evaluate_rounds : callable, optional
        ``server_round -> bool``: whether the edges evaluate after this round. ``None`` (default): every round, as in
        FedAvg. On a round where it says no, :meth:`configure_evaluate` sends nothing (Flower then skips the round's
        client evaluation).

    Replies that trained on 0 examples are validated but not aggregated (they are listed in ``skipped``): with the
    robust rules they would otherwise vote for "no change".
    """

    # pylint: disable=too-many-arguments,too-many-positional-arguments
    def __init__(
        self,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        weighted_by_key: str = NUM_EXAMPLES,
        arrayrecord_key: str = ARRAYS,
        configrecord_key: str = CONFIG,
        train_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
        evaluate_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
        aggregation: str = "mean",
        trim_fraction: float = 0.2,
        max_norm_ratio: float | None = None,
    ) -> None:
        if aggregation not in AGGREGATORS:
            raise ValueError(f"unknown aggregation {aggregation!r}; expected one of {sorted(AGGREGATORS)}")
        if not 0.0 <= trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must lie in [0, 0.5); got {trim_fraction!r}")
        if max_norm_ratio is not None and not (math.isfinite(max_norm_ratio) and max_norm_ratio > 0):
            raise ValueError(f"max_norm_ratio must be a positive finite number or None; got {max_norm_ratio!r}")
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            weighted_by_key=weighted_by_key,
            arrayrecord_key=arrayrecord_key,
            configrecord_key=configrecord_key,
            train_metrics_aggr_fn=train_metrics_aggr_fn,
            evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
        )
        # FedAvg replaces None with its own aggregator; remember whether the user chose one.
        self._custom_train_metrics_aggr_fn = train_metrics_aggr_fn
        self.aggregation = aggregation
        self.trim_fraction = trim_fraction
        self.max_norm_ratio = max_norm_ratio
        self.current_arrays: ArrayRecord | None = None
        self.current_round: int | None = None
        self.last_round: TrainRoundReport | None = None
        self.round_reports: dict[int, TrainRoundReport] = {}
        self.cloud_arrays: ArrayRecord | None = None
        self._sent_at: float | None = None
        self._sent_wall: float | None = None
        self.evaluate_rounds: Callable[[int], bool] | None = None
        self.last_evaluation_seconds: dict[int, float] = {}
        self._evaluate_sent_at: float | None = None

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> MEANetStrategy settings:")
        log(INFO, "\t│\t├── Aggregated entries: %s (the rest is kept as sent)", ", ".join(EDGE_PREFIXES))
        log(INFO, "\t│\t├── Aggregation: %s", self.aggregation)
        if self.aggregation == "trimmed-mean":
            log(INFO, "\t│\t├── Trim fraction: %s", self.trim_fraction)
        log(INFO, "\t│\t└── Max norm ratio: %s", "off" if self.max_norm_ratio is None else self.max_norm_ratio)
        super().summary()

    # ------------------------------------------------------------------------------------------------- train
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember what is sent (to validate updates and keep the main block), then sample and send as FedAvg does.

        Raises
        ------
        ValueError
            If ``arrays`` holds no ``adaptive.*``/``extension.*`` entry: the edges would have nothing to train.
        """
        if not any(is_edge_key(k) for k in arrays):
            raise ValueError(
                f"configure_train: the arrays to send hold no entry starting with {' or '.join(EDGE_PREFIXES)}; "
                f"expected a full MEANet state dict (found {len(arrays)} entries, e.g. {list(arrays)[:3]})"
            )
        # A snapshot sharing the (immutable) bytes: later changes to `arrays` cannot alter what we compare against.
        self.current_arrays = ArrayRecord.from_array_dict(dict(arrays.items()))
        self.current_round = server_round
        messages = super().configure_train(server_round, arrays, config, grid)
        self._sent_at = time.perf_counter()  # the grid sends right after this returns
        self._sent_wall = time.time()
        return messages

    def aggregate_train(
        self,
        server_round: int,
        replies: Iterable[Message],
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate the edge updates, aggregate the accepted ones, and merge them with the main block as sent.

        Returns
        -------
        tuple[ArrayRecord | None, MetricRecord | None]
            The full state dict (aggregated edge entries, every other entry exactly as sent) and the aggregated
            training metrics; ``(None, None)`` when no reply could be aggregated (the server then keeps its arrays).

        Raises
        ------
        AggregationError
            If :meth:`configure_train` has not been called, so there is nothing to validate against.
        """
        if self.current_arrays is None:
            raise AggregationError(
                "MEANetStrategy.aggregate_train was called before configure_train: there are no sent arrays to "
                "validate the updates against. Call configure_train (Strategy.start does) first."
            )
        if self.current_round is not None and server_round != self.current_round:
            log(
                WARNING,
                "aggregate_train: round %d, but the arrays were last sent in round %d; validating against those",
                server_round,
                self.current_round,
            )
        started = time.perf_counter()
        replies = list(replies)
        valid_replies, error_replies = self._check_and_log_replies(replies, is_train=True, validate=False)

        dropped: list[tuple[int, str]] = [
            (msg.metadata.src_node_id, f"error reply (code {msg.error.code}): {_short_error(msg.error.reason)}")
            for msg in error_replies
        ]
        for node_id, reason in dropped:
            log(WARNING, "aggregate_train: round %d: no update from node %d: %s", server_round, node_id, reason)
        reference = {k: v.numpy() for k, v in self.current_arrays.items() if is_edge_key(k)}
        accepted: list[tuple[Message, _Reply]] = []
        skipped: list[tuple[int, str]] = []
        main_digests: dict[int, str] = {}
        clients: dict[int, int] = {}
        norm_ratios: dict[int, float] = {}
        received_bytes: list[int] = []
        for msg in valid_replies:
            node_id = msg.metadata.src_node_id
            content = msg.content
            if len(content.array_records) == 1:
                received_bytes.append(next(iter(content.array_records.values())).count_bytes())
            if (main_digest := _main_digest(content)) is not None:
                main_digests[node_id] = main_digest
            if (client := _client_index(content)) is not None:
                clients[node_id] = client
            verdict, ratio = self._judge(content, reference)
            if ratio is not None:
                norm_ratios[node_id] = ratio
            if isinstance(verdict, str):
                dropped.append((node_id, verdict))
                log(
                    WARNING,
                    "aggregate_train: round %d: dropped the update from node %d%s: %s",
                    server_round,
                    node_id,
                    "" if client is None else f" (client {client})",
                    verdict,
                )
            elif verdict["weight"] == 0:
                skipped.append((node_id, f"'{self.weighted_by_key}' is 0: trained on nothing, nothing to aggregate"))
                log(INFO, "aggregate_train: round %d: node %d trained on 0 examples; skipped", server_round, node_id)
            else:
                accepted.append((msg, verdict))

        report = TrainRoundReport(
            server_round=server_round,
            received=len(replies),
            accepted=len(accepted),
            accepted_nodes=[msg.metadata.src_node_id for msg, _ in accepted],
            dropped=dropped,
            skipped=skipped,
            num_examples=float(sum(r["weight"] for _, r in accepted)),
            bytes_received_per_client=float(np.mean(received_bytes)) if received_bytes else 0.0,
            main_digests=main_digests,
            clients=clients,
            norm_ratios=norm_ratios,
            max_norm_ratio=self.max_norm_ratio,
            train_phase_seconds=started - self._sent_at if self._sent_at is not None else 0.0,
            client_train_seconds=[float(r["metrics"].get(TRAIN_SECONDS, 0.0)) for _, r in accepted],  # type: ignore[arg-type]
            aggregation_seconds=0.0,
            client_train_intervals=[
                (interval[0] - self._sent_wall, interval[1] - self._sent_wall)
                for msg, _ in accepted
                if self._sent_wall is not None and (interval := _train_interval(msg.content)) is not None
            ],
        )
        self.last_round = report
        self.round_reports[server_round] = report

        if not accepted:
            log(
                WARNING,
                "aggregate_train: round %d: no usable update among %d replies (%d dropped, %d skipped); "
                "keeping the current arrays",
                server_round,
                len(replies),
                len(dropped),
                len(skipped),
            )
            return None, None

        if self.aggregation == "trimmed-mean" and trimmed_count(len(accepted), self.trim_fraction) == 0:
            log(
                WARNING,
                "aggregate_train: round %d: trim_fraction %s trims nothing from %d updates; this round is a plain mean",
                server_round,
                self.trim_fraction,
                len(accepted),
            )
        aggregated = AGGREGATORS[self.aggregation](
            [(r["arrays"], r["weight"]) for _, r in accepted], self.trim_fraction
        )
        arrays = self._merge_with_sent(aggregated)
        metrics = self._aggregate_train_metrics(accepted)
        report["aggregation_seconds"] = time.perf_counter() - started
        log(
            INFO,
            "aggregate_train: round %d: aggregated %d of %d updates (%s, %g examples); %d dropped",
            server_round,
            len(accepted),
            len(replies),
            self.aggregation,
            report["num_examples"],
            len(dropped),
        )
        return arrays, metrics

    # ------------------------------------------------------------------------------------------------- evaluate
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's evaluation instructions, plus :attr:`cloud_arrays` under ``"cloud-arrays"`` when it is set.

        ``aggregate_evaluate`` is FedAvg's own: an average of the replies' metrics weighted by ``num-examples``.
        """
        if not self.evaluates(server_round):
            return []  # Flower's Strategy.start sends nothing and aggregates nothing this round
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        if self.cloud_arrays is not None:
            for msg in messages:  # FedAvg shares one RecordDict among the messages: setting it again is harmless
                msg.content[CLOUD_ARRAYS] = self.cloud_arrays
        self._evaluate_sent_at = time.perf_counter()
        return messages

    def evaluates(self, server_round: int) -> bool:
        """Whether the edges evaluate after ``server_round`` (:attr:`evaluate_rounds`; every round when unset)."""
        return self.evaluate_rounds is None or self.evaluate_rounds(server_round)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """FedAvg's weighted average of the evaluation metrics, also kept in the round's report.

        Flower evaluates right after each training round and before the ServerApp's ``evaluate_fn``, so a server
        that checkpoints its round records there (``fl_server.cloud``) saves them with their client evaluation.
        """
        if self._evaluate_sent_at is not None:
            self.last_evaluation_seconds[server_round] = time.perf_counter() - self._evaluate_sent_at
            self._evaluate_sent_at = None
        metrics = super().aggregate_evaluate(server_round, replies)
        report = self.round_reports.get(server_round)
        if metrics is not None and report is not None:
            report["client_evaluation"] = dict(metrics.items())
        return metrics

    # ------------------------------------------------------------------------------------------------- helpers
    def _judge(self, content: RecordDict, reference: Arrays) -> tuple[_Reply | str, float | None]:
        """The decoded reply if it is readable and passes :func:`validate_update`, else the reason it does not; and
        the update's norm ratio when its structure (keys, shapes, dtypes, finite values) is sound, else ``None``."""
        reply = self._read_reply(content)
        if isinstance(reply, str):
            return reply, None
        reason = validate_update(reply["arrays"], reference, max_norm_ratio=None)
        if reason is not None:
            return reason, None
        ratio = update_norm_ratio(reply["arrays"], reference)
        if self.max_norm_ratio is not None:
            reason = validate_update(reply["arrays"], reference, max_norm_ratio=self.max_norm_ratio)
        return (reply if reason is None else reason), ratio

    def _read_reply(self, content: RecordDict) -> _Reply | str:
        """Decode a reply's arrays, weight and metrics, or say why it cannot be used."""
        array_records = content.array_records
        if len(array_records) != 1:
            return (
                f"expected exactly one ArrayRecord (under '{self.arrayrecord_key}') holding the edge arrays; "
                f"found {len(array_records)}: {list(array_records)}"
            )
        metric_records = content.metric_records
        if len(metric_records) != 1:
            return (
                f"expected exactly one MetricRecord (under '{METRICS}') holding '{self.weighted_by_key}'; "
                f"found {len(metric_records)}: {list(metric_records)}"
            )
        record = next(iter(array_records.values()))
        metric_record = next(iter(metric_records.values()))
        if self.weighted_by_key not in metric_record:
            return (
                f"the MetricRecord has no '{self.weighted_by_key}' entry (the number of examples trained on); "
                f"found {sorted(metric_record)}"
            )
        weight = metric_record[self.weighted_by_key]
        if isinstance(weight, list) or not (math.isfinite(weight) and weight >= 0):
            return f"'{self.weighted_by_key}' is {weight!r}; expected a number of examples (finite, >= 0)"

        arrays: dict[str, npt.NDArray[Any]] = {}
        for key, array in record.items():
            try:
                arrays[key] = array.numpy()
            except (TypeError, ValueError, OSError, EOFError) as exc:
                return f"array '{key}' could not be decoded as a numpy array ({type(exc).__name__}: {exc})"
        metrics = {k: v for k, v in metric_record.items() if k != self.weighted_by_key}
        return _Reply(arrays=arrays, weight=float(weight), metrics=metrics)

    def _merge_with_sent(self, aggregated: Arrays) -> ArrayRecord:
        """The sent state dict, in order, with the edge entries replaced by the aggregate; the rest byte for byte."""
        assert self.current_arrays is not None  # checked by aggregate_train
        merged = ArrayRecord()
        for key, sent in self.current_arrays.items():
            if key in aggregated:
                merged[key] = Array(
                    np.array(aggregated[key], order="C")
                )  # keeps 0-d arrays 0-d (ascontiguousarray would not)
            else:
                merged[key] = Array(dtype=sent.dtype, shape=tuple(sent.shape), stype=sent.stype, data=sent.data)
        return merged

    def _aggregate_train_metrics(self, accepted: list[tuple[Message, _Reply]]) -> MetricRecord:
        """Example-weighted training metrics of the accepted replies (or the user's ``train_metrics_aggr_fn``)."""
        if self._custom_train_metrics_aggr_fn is not None:
            return self._custom_train_metrics_aggr_fn([msg.content for msg, _ in accepted], self.weighted_by_key)
        averaged = aggregate_metrics([(r["metrics"], r["weight"]) for _, r in accepted])
        record = MetricRecord()
        for key, value in averaged.items():
            record[key] = value
        return record


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _short_error(reason: str | None, limit: int = 300) -> str:
    """The gist of an error reply's reason: Flower's simulation wraps the ClientApp's exception in a Ray traceback
    (with colour codes); keep the exception's own message, at most ``limit`` characters (FedAvg logs it in full)."""
    text = _ANSI.sub("", reason or "")
    if "Message: " in text:
        text = text.rsplit("Message: ", 1)[1]
    else:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        text = lines[-1] if lines else "(no reason given)"
    text = text.strip().removesuffix("'>").strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _client_index(content: RecordDict) -> int | None:
    """The client (partition) index an edge reported in its ``edge-info`` ConfigRecord, if any."""
    info = content.config_records.get(EDGE_INFO)
    value = info.get(CLIENT) if info is not None else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _train_interval(content: RecordDict) -> tuple[float, float] | None:
    """The wall-clock ``(start, end)`` of the edge's fine-tuning from its ``edge-info`` ConfigRecord, if it sent one."""
    info = content.config_records.get(EDGE_INFO)
    if info is None:
        return None
    start, end = info.get(TRAIN_STARTED), info.get(TRAIN_ENDED)
    if not isinstance(start, float) or not isinstance(end, float) or not math.isfinite(start) or not end >= start:
        return None
    return start, end


def _main_digest(content: RecordDict) -> str | None:
    """The main-block digest an edge reported in its ``edge-info`` ConfigRecord, if any."""
    info = content.config_records.get(EDGE_INFO)
    value = info.get(MAIN_DIGEST) if info is not None else None
    return value if isinstance(value, str) else None
