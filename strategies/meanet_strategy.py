"""MEANet-FL's server strategy: validate and aggregate the edge blocks, keep the cloud's main block untouched.

The server sends every sampled edge the full MEANet state dict (main + adaptive + extension, plus the normalisation
and hard-class buffers). Each edge fine-tunes only the adaptive and extension blocks and replies with those entries
alone (parameters and BatchNorm buffers) in one ``ArrayRecord``, and one ``MetricRecord`` holding ``num-examples``
and its training metrics. This strategy checks every reply against what was sent (keys, shapes, dtypes, finite
values, the main-block digest the edge loaded, a norm bound that follows the round), drops the bad ones with a logged
reason, bounds each example count it cannot verify, aggregates the good ones with the chosen rule (example-weighted
mean, coordinate median, trimmed mean, Multi-Krum, or FLTrust against a reference update computed on the server's own
data; maths in :mod:`strategies.aggregation` and :mod:`strategies.robust`), and returns the aggregate merged with the
**unchanged** cloud-owned entries, byte for byte as sent.

*Main rounds* (instruction config ``scope = "main"``, see :data:`meanet_core.keys.SCOPE`) are the same exchange over
the main block: the edges train it on their own images when the data evolves and send back only ``main.*``; the same
checks apply to those keys, and the edge blocks are kept as sent.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError

from meanet_core.keys import (
    ARRAYS,
    CONFIG,
    EDGE_PREFIXES,
    EXPERIENCE,
    MAIN_PREFIX,
    NUM_EXAMPLES,
    SCOPE,
    SCOPES,
    TRAIN_SECONDS,
    in_scope,
)
from meanet_core.trust.broadcast import digest
from strategies.aggregation import (
    Arrays,
    aggregate_metrics,
    trimmed_count,
    update_norm_ratio,
    validate_update,
)
from strategies.bounds import UpdateBounds
from strategies.broadcasts import BROADCAST_ENCODINGS, DeltaBroadcasts, mean_array_bytes
from strategies.evaluation import EdgeEvaluation
from strategies.fleet import FleetSampling
from strategies.personal import PersonalRounds
from strategies.replies import (
    Reply,
    TrainRoundReport,
    client_index,
    main_digest,
    read_reply,
    short_error,
    train_interval,
)
from strategies.robust import RULES, apply_rule

ReferenceFn = Callable[[Arrays], Arrays]
"""``sent full state -> edge arrays``: the server's own update of the edge blocks on its clean data (FLTrust)."""

__all__ = ["MEANetStrategy", "TrainRoundReport"]


class MEANetStrategy(UpdateBounds, DeltaBroadcasts, EdgeEvaluation, FleetSampling, PersonalRounds):
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
    aggregation : str (default: ``"trimmed-mean"``)
        ``"mean"`` (example-weighted average, with bounded claims), ``"median"`` (coordinate-wise median),
        ``"trimmed-mean"``, ``"multi-krum"`` (Flower's Multi-Krum selection, then the weighted mean of the selected)
        or ``"fltrust"`` (cosine trust scores against ``reference_fn``'s update; needs ``reference_fn``). The median,
        trimmed mean and FLTrust ignore the example counts for the arrays, so a client cannot buy influence.
    trim_fraction : float (default: 0.2)
        For ``"trimmed-mean"``: the fraction cut from each end at every coordinate, in ``[0, 0.5)`` (at least one
        from each end when there are three updates or more, see :func:`strategies.aggregation.trimmed_count`).
    max_norm_ratio : float, optional
        The absolute ceiling of the norm bound: drop an update whose change ``||update - sent||`` exceeds
        ``max_norm_ratio * ||sent||`` (over the floating edge arrays). Default 1.0; ``None``: no ceiling. Edge rounds
        only: in a main round the relative bound (``norm_bound_factor``) alone applies, since a main block trained
        from scratch moves further than its own norm in its first round.
    norm_bound_factor : float, optional
        The bound that follows the round: drop an update whose norm ratio exceeds this multiple of the lower median
        ratio of the round's valid updates (never above ``max_norm_ratio``). Default 3.0; ``None``: off.
    claim_factor : float, optional
        Weigh an example count at most this multiple of the median count of the round's other clients. Default 2.0;
        ``None``: off.
    max_claim : float, optional
        Weigh an example count at most this much. An edge's count may also never exceed the count it reported earlier
        in the same experience (the instruction config's ``experience``). Clipped claims are recorded with the reason.
    krum_malicious : int (default: 1)
        For ``"multi-krum"``: the number of malicious clients ``f`` tolerated; ``n - f`` updates are selected.
    reference_fn : callable, optional
        ``sent full state -> edge arrays``: the server's own update of the edge blocks on clean data, for FLTrust.
    require_main_digest : bool (default: False)
        Drop a reply that does not report the main-block digest it loaded. A reported digest that differs from the
        digest of the main block sent is always dropped.
    delta_broadcast : bool (default: False)
        Send an edge that holds the last broadcast state (its last reply succeeded) the change from it, with the
        digests of its base and of the state to rebuild (``base-digest``, ``state-digest``); every other edge gets the
        full state (:mod:`strategies.broadcasts`). :attr:`bytes_sent` says what each costs. Either way a main round
        sends no edge block.
    broadcast_encoding : str (default: "int6")
        With ``delta_broadcast``: ``"int6"``/``"int8"`` send changed weights as 6-/8-bit changes (the edges load the
        reconstruction, which is also what this strategy checks and keeps), ``"float32"`` exactly.
    edges_per_round : int, optional
        Edges sampled per round (seeded by ``sample_seed``, the experience and the round); ``None`` (default):
        ``fraction_train``/``fraction_evaluate`` of the connected edges, as in FedAvg. A round starts once
        ``min_available_nodes`` edges are connected, and waits at most ``quorum_wait`` seconds (default 300) for them
        before it raises :class:`~strategies.fleet.QuorumError` (:mod:`strategies.fleet`).

    Safe by default: built bare, ``MEANetStrategy()`` holds against a lying client (an inflated example count behind
    a step inside the bounds) with no extra argument: the trimmed mean ignores the counts for the arrays, the round's
    norm bound (3 x the median ratio, under a ceiling of 1.0) drops a step further than the honest ones, and claims
    weigh at most 2 x the others' median in the metrics. Pass ``None`` to switch a bound off.

    For FLTrust (what ``meanet federate`` and the Flower app use), pass ``aggregation="fltrust"`` and a
    ``reference_fn`` that trains the edge blocks on the server's own clean data from the sent state and returns the
    edge arrays (the app's is ``fl_server.cloud``'s server update on the cloud's validation images), e.g.
    ``MEANetStrategy(aggregation="fltrust", reference_fn=my_server_update)``.

    Attributes
    ----------
    scope : str
        The blocks of the current training round, from the instruction config's ``"scope"`` (default ``"edge"``):
        ``"edge"`` rounds aggregate ``adaptive.*``/``extension.*`` and keep the main block as sent; ``"main"`` rounds
        (the edges' data refreshing the main block) aggregate ``main.*`` and keep the rest as sent. Every check
        (keys, shapes, finite values, digest, norm bound, claims, robust rule) applies to the round's scope.
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
        aggregation: str = "trimmed-mean",
        trim_fraction: float = 0.2,
        max_norm_ratio: float | None = 1.0,
        norm_bound_factor: float | None = 3.0,
        claim_factor: float | None = 2.0,
        max_claim: float | None = None,
        krum_malicious: int = 1,
        reference_fn: ReferenceFn | None = None,
        require_main_digest: bool = False,
        delta_broadcast: bool = False,
        broadcast_encoding: str = "int6",
        edges_per_round: int | None = None,
        quorum_wait: float = 300.0,
        sample_seed: int = 0,
    ) -> None:
        if aggregation not in RULES:
            raise ValueError(f"unknown aggregation {aggregation!r}; expected one of {', '.join(RULES)}")
        if aggregation == "fltrust" and reference_fn is None:
            raise ValueError(
                "aggregation 'fltrust' needs reference_fn (the server's own update of the edge blocks on clean data); "
                "pass one, or choose another rule"
            )
        if not 0.0 <= trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must lie in [0, 0.5); got {trim_fraction!r}")
        for name, value in (
            ("max_norm_ratio", max_norm_ratio),
            ("norm_bound_factor", norm_bound_factor),
            ("claim_factor", claim_factor),
            ("max_claim", max_claim),
        ):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number or None (off); got {value!r}")
        if broadcast_encoding not in BROADCAST_ENCODINGS:
            raise ValueError(
                f"unknown broadcast_encoding {broadcast_encoding!r}; expected one of {', '.join(BROADCAST_ENCODINGS)}"
            )
        if krum_malicious < 0:
            raise ValueError(f"krum_malicious must be >= 0; got {krum_malicious}")
        if (edges_per_round is not None and edges_per_round < 1) or not quorum_wait >= 0:
            raise ValueError(
                f"edges_per_round must be >= 1 or None, quorum_wait >= 0; got {edges_per_round}, {quorum_wait}"
            )
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
        self.norm_bound_factor = norm_bound_factor
        self.claim_factor = claim_factor
        self.max_claim = max_claim
        self.krum_malicious = krum_malicious
        self.reference_fn = reference_fn
        self.require_main_digest = require_main_digest
        self.delta_broadcast, self.broadcast_encoding = delta_broadcast, broadcast_encoding
        self.reference, self.node_holds, self.plans, self.broadcast_seconds, self.history = {}, {}, {}, {}, {}
        self.edges_per_round, self.quorum_wait, self.sample_seed = edges_per_round, quorum_wait, sample_seed
        self.sampled, self.connected, self.missed_at, self.names = {}, {}, {}, {}
        self.scope = "edge"  # the blocks of the current training round (the instruction config's "scope")
        self.bytes_sent: dict[str, float] = {}  # message type -> mean array bytes per instruction, last sent
        self.sent_main_digest: str | None = None
        self._claims: dict[int, float] = {}  # node -> the weight it was allowed earlier in this experience
        self._claims_experience: object = None
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
        self._evaluate_sent_to: list[int] = []

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> MEANetStrategy settings:")
        log(INFO, "\t│\t├── Aggregated entries: %s (the rest is kept as sent)", ", ".join(EDGE_PREFIXES))
        log(INFO, "\t│\t├── Aggregation: %s", self.aggregation)
        if self.aggregation == "trimmed-mean":
            log(INFO, "\t│\t├── Trim fraction: %s", self.trim_fraction)
        log(
            INFO,
            "\t│\t├── Norm bound: %s x the round's median ratio, ceiling %s",
            self.norm_bound_factor or "off",
            "none" if self.max_norm_ratio is None else self.max_norm_ratio,
        )
        log(
            INFO,
            "\t│\t└── Claims: at most %s x the others' median, cap %s",
            self.claim_factor or "any",
            self.max_claim or "none",
        )
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
        scope = str(config.get(SCOPE, "edge"))
        if scope not in SCOPES:
            raise ValueError(f"configure_train: config '{SCOPE}' is {scope!r}; expected one of {', '.join(SCOPES)}")
        self.scope = scope
        if not any(in_scope(k, "edge" if scope == "personal" else scope) for k in arrays):
            raise ValueError(
                f"configure_train: the arrays to send hold no entry of the {scope} round's blocks "
                f"({' or '.join(EDGE_PREFIXES) if scope == 'edge' else MAIN_PREFIX}); "
                f"expected a full MEANet state dict (found {len(arrays)} entries, e.g. {list(arrays)[:3]})"
            )
        # what the edges load (a main round: no edge block; a compressed broadcast: the reconstruction), kept as a
        # snapshot sharing the (immutable) bytes: later changes to `arrays` cannot alter what we compare against
        arrays = self.prepare_broadcast(arrays, scope, MessageType.TRAIN)
        self.current_arrays = ArrayRecord.from_array_dict(dict(arrays.items()))
        self.current_round = server_round
        self.sent_main_digest = digest({k: v.numpy() for k, v in self.current_arrays.items()})
        experience = config.get(EXPERIENCE)
        if (experience, scope) != self._claims_experience:  # new data on the edges, or other samples: new counts
            self._claims, self._claims_experience = {}, (experience, scope)
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.bytes_sent[MessageType.TRAIN] = mean_array_bytes(messages)
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
        if self.scope == "personal":  # nothing comes up: strategies.personal
            return self.aggregate_personal(server_round, replies)
        started = time.perf_counter()
        replies = list(replies)
        valid_replies, error_replies = self._check_and_log_replies(replies, is_train=True, validate=False)

        dropped: list[tuple[int, str]] = [
            (msg.metadata.src_node_id, f"error reply (code {msg.error.code}): {short_error(msg.error.reason)}")
            for msg in error_replies
        ]
        for node_id, _ in dropped:
            self.took_broadcast(node_id, MessageType.TRAIN, ok=False)  # it may have lost its state: the full one next
        for node_id, error in dropped:
            log(WARNING, "aggregate_train: round %d: no update from node %d: %s", server_round, node_id, error)
        reference = {k: v.numpy() for k, v in self.current_arrays.items() if in_scope(k, self.scope)}
        candidates: list[tuple[Message, Reply]] = []
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
            self.took_broadcast(node_id, MessageType.TRAIN, ok=True)  # it keeps what it rebuilt (fl_client.transport)
            if (reported := main_digest(content)) is not None:
                main_digests[node_id] = reported
            if (client := client_index(content)) is not None:
                clients[node_id] = client
            verdict = self._judge(content, reference, reported)
            if isinstance(verdict, str):
                self._drop(dropped, server_round, node_id, client, verdict)
            elif verdict["weight"] == 0:
                skipped.append((node_id, f"'{self.weighted_by_key}' is 0: trained on nothing, nothing to aggregate"))
                log(INFO, "aggregate_train: round %d: node %d trained on 0 examples; skipped", server_round, node_id)
            else:
                norm_ratios[node_id] = update_norm_ratio(verdict["arrays"], reference, scope=self.scope)
                candidates.append((msg, verdict))

        accepted, bound, relative = self._norm_bound(candidates, reference, norm_ratios, clients, dropped, server_round)
        nodes = [msg.metadata.src_node_id for msg, _ in accepted]
        claims, clipped_claims = self._weigh_claims(nodes, [r for _, r in accepted], server_round)

        report = TrainRoundReport(
            server_round=server_round,
            sampled_nodes=list(self.sampled.get(MessageType.TRAIN, [])),
            connected_nodes=self.connected.get(MessageType.TRAIN, 0),
            missed_nodes=self._missed_train(replies),
            received=len(replies),
            accepted=len(accepted),
            accepted_nodes=nodes,
            dropped=dropped,
            skipped=skipped,
            num_examples=float(sum(r["weight"] for _, r in accepted)),
            bytes_received_per_client=float(np.mean(received_bytes)) if received_bytes else 0.0,
            main_digests=main_digests,
            clients=clients,
            norm_ratios=norm_ratios,
            max_norm_ratio=self.max_norm_ratio,
            norm_bound=bound,
            norm_bound_relative=relative,
            claims={node: claim.claimed for node, claim in zip(nodes, claims, strict=True)},
            clipped_claims=clipped_claims,
            rule=self.aggregation,
            rule_note="",
            ignored_by_rule=[],
            trust_scores={},
            encodings={node: r["encoding"] for node, (_, r) in zip(nodes, accepted, strict=True)},
            encode_seconds=float(np.mean([r["encode_seconds"] for _, r in accepted])) if accepted else 0.0,
            decode_seconds=float(np.mean([r["decode_seconds"] for _, r in accepted])) if accepted else 0.0,
            bytes_sent_per_client=self.bytes_sent.get(MessageType.TRAIN, 0.0),
            train_phase_seconds=started - self._sent_at if self._sent_at is not None else 0.0,
            client_train_seconds=[float(r["metrics"].get(TRAIN_SECONDS, 0.0)) for _, r in accepted],  # type: ignore[arg-type]
            aggregation_seconds=0.0,
            client_train_intervals=[
                (interval[0] - self._sent_wall, interval[1] - self._sent_wall)
                for msg, _ in accepted
                if self._sent_wall is not None and (interval := train_interval(msg.content)) is not None
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

        aggregated = self._aggregate_arrays(accepted, reference, report)
        arrays = self._merge_with_sent(aggregated)
        metrics = self._aggregate_train_metrics(accepted)
        report["aggregation_seconds"] = time.perf_counter() - started
        log(
            INFO,
            "aggregate_train: round %d: aggregated %d of %d updates (%s%s, %g examples); %d dropped",
            server_round,
            len(accepted),
            len(replies),
            self.aggregation,
            f": {report['rule_note']}" if report["rule_note"] else "",
            report["num_examples"],
            len(dropped),
        )
        return arrays, metrics

    def _missed_train(self, replies: list[Message]) -> list[int]:
        missed = self.missed(replies)
        for node in missed:
            self.took_broadcast(node, MessageType.TRAIN, ok=False)
        return missed

    def _aggregate_arrays(
        self, accepted: list[tuple[Message, Reply]], reference: Arrays, report: TrainRoundReport
    ) -> Arrays:
        """The accepted updates combined by the configured rule; what the rule did goes into ``report``."""
        nodes = [msg.metadata.src_node_id for msg, _ in accepted]
        server_update = None
        if self.aggregation == "fltrust":
            assert self.reference_fn is not None and self.current_arrays is not None  # checked in __init__ / above
            server_update = self.reference_fn({k: v.numpy() for k, v in self.current_arrays.items()})
        result = apply_rule(
            self.aggregation,
            [(r["arrays"], r["weight"]) for _, r in accepted],
            trim_fraction=self.trim_fraction,
            krum_malicious=self.krum_malicious,
            reference=server_update,
            sent=reference,
        )
        report["rule_note"] = result.note
        report["ignored_by_rule"] = [(nodes[i], reason) for i, reason in result.ignored]
        report["trust_scores"] = dict(zip(nodes, result.scores, strict=False))
        if self.aggregation == "trimmed-mean" and trimmed_count(len(nodes), self.trim_fraction) == 0:
            log(WARNING, "aggregate_train: trimmed-mean: %s", result.note)
        return result.arrays

    # ------------------------------------------------------------------------------------------------- helpers
    def _judge(self, content: RecordDict, reference: Arrays, reported_digest: str | None) -> Reply | str:
        """The decoded reply if it is readable, holds the main block that was sent and passes
        :func:`validate_update`'s structural checks (keys, shapes, dtypes, finite values), else the reason it does
        not. The norm bound is applied afterwards, once the round's ratios are known."""
        if reported_digest is not None and reported_digest != self.sent_main_digest:
            return (
                f"the edge trained against main block {reported_digest[:12]}..., not the one broadcast this round "
                f"({(self.sent_main_digest or '?')[:12]}...): its update was computed on other features"
            )
        if reported_digest is None and self.require_main_digest:
            return "the reply reports no main-block digest (edge-info 'main-digest'); this server requires one"
        reply = read_reply(content, self.weighted_by_key, reference)
        if isinstance(reply, str):
            return reply
        reason = validate_update(reply["arrays"], reference, max_norm_ratio=None, scope=self.scope)
        return reply if reason is None else reason

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

    def _aggregate_train_metrics(self, accepted: list[tuple[Message, Reply]]) -> MetricRecord:
        """Example-weighted training metrics of the accepted replies (or the user's ``train_metrics_aggr_fn``)."""
        if self._custom_train_metrics_aggr_fn is not None:
            return self._custom_train_metrics_aggr_fn([msg.content for msg, _ in accepted], self.weighted_by_key)
        averaged = aggregate_metrics([(r["metrics"], r["weight"]) for _, r in accepted])
        record = MetricRecord()
        for key, value in averaged.items():
            record[key] = value
        return record
