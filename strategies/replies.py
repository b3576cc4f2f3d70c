"""What the strategy reads from the edges' replies (decoding compressed updates) and records about each round."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import numpy.typing as npt
from flwr.app import Message, RecordDict

from meanet_core.keys import (
    ARRAYS,
    CLIENT,
    CLOUD_BACKEND,
    EDGE_INFO,
    ENCODE_SECONDS,
    ENCODING,
    MAIN_DIGEST,
    METRICS,
    OFFLOAD_METRICS,
    TRAIN_ENDED,
    TRAIN_STARTED,
)
from meanet_core.wire.compression import PayloadError, decode_update
from strategies.aggregation import Arrays

__all__ = ["TrainRoundReport", "evaluation_per_node", "offload_totals"]


class _RoundEvaluation(TypedDict, total=False):
    client_evaluation: dict[str, Any]
    """The round's aggregated client evaluation (set by ``aggregate_evaluate``, which Flower runs after training)."""
    client_evaluation_per_node: dict[int, dict[str, Any]]
    """Node id -> that edge's evaluation metrics, with its client index and cloud backend (``remote``/``local``/
    ``none``) where it reported them (:func:`evaluation_per_node`)."""
    client_offload_totals: dict[str, int]
    """Inputs offloaded, fallbacks and bytes sent, summed over the edges (:func:`offload_totals`)."""
    personal_edges: dict[int, dict[str, Any]]
    """A personal round: node id -> what the edge said of its own blocks (client index, hard classes, the digest of
    its personal blocks: never the blocks themselves), from its ``edge-info``."""


class TrainRoundReport(_RoundEvaluation):
    """What happened to the replies of one training round (``MEANetStrategy.last_round``)."""

    server_round: int
    sampled_nodes: list[int]
    """Node ids the round was sent to (:mod:`strategies.fleet`)."""
    connected_nodes: int
    """How many edges were connected when the round was sampled."""
    missed_nodes: list[int]
    """Sampled node ids with no reply by the round's deadline, or that Flower found unavailable (missed heartbeats)."""
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
    """The absolute ceiling of the norm bound (``max-norm-ratio``; ``None``: none)."""
    norm_bound: float | None
    """The bound in force this round: ``norm_bound_factor`` x the lower median of the round's norm ratios, never
    above :attr:`max_norm_ratio` (``None``: no bound)."""
    norm_bound_relative: float | None
    """``norm_bound_factor`` x the lower median ratio, before the ceiling (``None``: the relative bound is off)."""
    claims: dict[int, float]
    """Node id -> the example count it claimed (``num-examples``), for every reply that passed the checks."""
    clipped_claims: list[tuple[int, str]]
    """``(node id, reason)`` for every claim the server did not take at face value (see
    :func:`strategies.robust.bound_claims`); the weight then used is in the reason."""
    rule: str
    """The aggregation rule applied (``mean``, ``median``, ``trimmed-mean``, ``multi-krum``, ``fltrust``); a rule
    that cannot work with this many updates says so in :attr:`rule_note`."""
    rule_note: str
    """What the rule did beyond averaging: the trim, the Multi-Krum selection, FLTrust's scores ('' if nothing)."""
    ignored_by_rule: list[tuple[int, str]]
    """``(node id, reason)`` for accepted updates the rule gave no weight (not selected by Multi-Krum, trust score 0
    under FLTrust)."""
    trust_scores: dict[int, float]
    """Node id -> FLTrust trust score (``fltrust`` only)."""
    encodings: dict[int, str]
    """Node id -> the encoding of its accepted update (``float32``, ``fp16``, ``int8``)."""
    encode_seconds: float
    """Mean time the accepted edges spent encoding their update (as they report it)."""
    decode_seconds: float
    """Mean time the server spent decoding an accepted update."""
    bytes_sent_per_client: float
    """Mean bytes of the arrays in this round's training instructions (a full state, or a delta without the main
    block to an edge that holds it)."""
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


class Reply(TypedDict):
    """A reply decoded for aggregation."""

    arrays: Arrays
    weight: float
    metrics: Mapping[str, float | Sequence[float]]
    encoding: str
    """How the edge encoded its arrays (``float32``, ``fp16``, ``int8``)."""
    encode_seconds: float
    """The time the edge says it spent encoding."""
    decode_seconds: float
    """The time the server spent decoding."""


def read_reply(content: RecordDict, weighted_by_key: str, sent: Arrays) -> Reply | str:
    """Decode a training reply's arrays (by its ``edge-info`` encoding, against the edge arrays ``sent``), weight and
    metrics, or say why it cannot be used."""
    array_records = content.array_records
    if len(array_records) != 1:
        return (
            f"expected exactly one ArrayRecord (under '{ARRAYS}') holding the edge arrays; "
            f"found {len(array_records)}: {list(array_records)}"
        )
    metric_records = content.metric_records
    if len(metric_records) != 1:
        return (
            f"expected exactly one MetricRecord (under '{METRICS}') holding '{weighted_by_key}'; "
            f"found {len(metric_records)}: {list(metric_records)}"
        )
    record = next(iter(array_records.values()))
    metric_record = next(iter(metric_records.values()))
    if weighted_by_key not in metric_record:
        return (
            f"the MetricRecord has no '{weighted_by_key}' entry (the number of examples trained on); "
            f"found {sorted(metric_record)}"
        )
    weight = metric_record[weighted_by_key]
    if isinstance(weight, list) or not (math.isfinite(weight) and weight >= 0):
        return f"'{weighted_by_key}' is {weight!r}; expected a number of examples (finite, >= 0)"

    payload: dict[str, npt.NDArray[Any]] = {}
    for key, array in record.items():
        try:
            payload[key] = array.numpy()
        except (TypeError, ValueError, OSError, EOFError) as exc:
            return f"array '{key}' could not be decoded as a numpy array ({type(exc).__name__}: {exc})"
    info = content.config_records.get(EDGE_INFO)
    encoding = info.get(ENCODING, "float32") if info is not None else "float32"
    started = time.perf_counter()
    try:
        arrays = decode_update(payload, sent, str(encoding))
    except PayloadError as exc:
        return f"malformed compressed update: {exc}"
    metrics = {k: v for k, v in metric_record.items() if k != weighted_by_key}
    encode = info.get(ENCODE_SECONDS) if info is not None else None
    return Reply(
        arrays=arrays,
        weight=float(weight),
        metrics=metrics,
        encoding=str(encoding),
        encode_seconds=float(encode) if isinstance(encode, float) else 0.0,
        decode_seconds=time.perf_counter() - started,
    )


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def short_error(reason: str | None, limit: int = 300) -> str:
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


def client_index(content: RecordDict) -> int | None:
    """The client (partition) index an edge reported in its ``edge-info`` ConfigRecord, if any."""
    info = content.config_records.get(EDGE_INFO)
    value = info.get(CLIENT) if info is not None else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def train_interval(content: RecordDict) -> tuple[float, float] | None:
    """The wall-clock ``(start, end)`` of the edge's fine-tuning from its ``edge-info`` ConfigRecord, if it sent one."""
    info = content.config_records.get(EDGE_INFO)
    if info is None:
        return None
    start, end = info.get(TRAIN_STARTED), info.get(TRAIN_ENDED)
    if not isinstance(start, float) or not isinstance(end, float) or not math.isfinite(start) or not end >= start:
        return None
    return start, end


def main_digest(content: RecordDict) -> str | None:
    """The main-block digest an edge reported in its ``edge-info`` ConfigRecord, if any."""
    info = content.config_records.get(EDGE_INFO)
    value = info.get(MAIN_DIGEST) if info is not None else None
    return value if isinstance(value, str) else None


def evaluation_per_node(replies: Sequence[Message]) -> dict[int, dict[str, Any]]:
    """Each node's evaluation metrics (node id -> metrics), with the client index and cloud backend it reported in its
    ``edge-info``, if any; error replies and replies without metrics are left out."""
    per_node: dict[int, dict[str, Any]] = {}
    for msg in replies:
        if msg.has_error() or METRICS not in msg.content.metric_records:
            continue
        entry: dict[str, Any] = dict(msg.content.metric_records[METRICS].items())
        if (client := client_index(msg.content)) is not None:
            entry["client"] = client
        info = msg.content.config_records.get(EDGE_INFO)
        backend = info.get(CLOUD_BACKEND) if info is not None else None
        if isinstance(backend, str):
            entry["cloud"] = backend
        per_node[msg.metadata.src_node_id] = entry
    return per_node


def offload_totals(per_node: Mapping[int, Mapping[str, Any]]) -> dict[str, int]:
    """The offload counts (inputs sent, fallbacks, bytes) summed over the nodes that reported them."""
    return {
        key: int(sum(m[key] for m in per_node.values() if isinstance(m.get(key), int | float)))
        for key in OFFLOAD_METRICS
    }
