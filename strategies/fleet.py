"""Which edges take part in a round: a quorum with a bounded wait, and a seeded sample of the connected edges.

Flower's ``FedAvg`` samples with ``sample_nodes``, which sleeps until ``min_available_nodes`` edges are connected,
with no deadline (a device that never comes back stalls the run forever), and draws from Python's global ``random``.
:class:`FleetSampling` is mixed into :class:`~strategies.MEANetStrategy` ahead of ``FedAvg`` and replaces that
sampling in ``configure_train`` and ``configure_evaluate``:

- the round starts once ``min_available_nodes`` edges are connected (the ``min-edges`` quorum), waiting at most
  ``quorum_wait`` seconds; then :class:`QuorumError` ends the run with a message naming what was missing;
- it samples ``edges_per_round`` of the connected edges (or FedAvg's ``fraction_*`` / ``min_*_nodes`` when that is
  ``None``), drawn from a generator seeded by ``(sample_seed, experience, scope, round, kind)`` over the edges in
  the order of their *names* (their partition id or node-config id, asked once per node with a query message the
  first time a round samples: Flower's node ids are random per run): a rerun of the same run config trains the same
  devices;
- it remembers whom it sampled (:attr:`FleetSampling.sampled`), so the round's report can name the edges that missed
  the deadline (Flower's ``Strategy.start(timeout=...)`` drops the replies that come later);
- an edge that missed a round rests for :data:`REST_SECONDS` (sampled only as the quorum needs it, the one that
  missed longest ago first): Flower lists a device that died as connected until it misses its heartbeats
  (2 x 30 s), and without the rest every round until then would wait its whole deadline for it. A device that
  comes back as a new node is sampled at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL, HEARTBEAT_PATIENCE, ErrorCode
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from meanet_core.keys import CONFIG, DEVICE_NAME, EDGE_INFO, EXPERIENCE, QUERY, SCOPE

REST_SECONDS = float(HEARTBEAT_PATIENCE * HEARTBEAT_DEFAULT_INTERVAL)
"""How long an edge that missed a round is left out of the sample: until Flower's own liveness check has decided."""
_KINDS = {MessageType.TRAIN: 0, MessageType.EVALUATE: 1}
_SCOPES = {"edge": 0, "main": 1}


class QuorumError(RuntimeError):
    """Fewer edges than the quorum were connected when the round's wait ran out."""


def wait_for_quorum(
    nodes: Callable[[], Iterable[int]],
    need: int,
    wait: float,
    *,
    what: str = "the round",
    poll: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[int]:
    """The connected node ids (sorted) once at least ``need`` are connected; waits at most ``wait`` seconds.

    Raises
    ------
    QuorumError
        If fewer than ``need`` are connected after ``wait`` seconds; the message says how many were and what to change.
    """
    start = clock()
    last_said = start
    while len(connected := sorted(nodes())) < need:
        waited = clock() - start
        if waited >= wait:
            raise QuorumError(
                f"{what} needs {need} connected edge(s) (min-edges) and {len(connected)} were connected after "
                f"{wait:g} s (quorum-wait): start more SuperNodes, lower min-edges, or raise quorum-wait. The run's "
                "checkpoint is kept: the same command resumes it"
            )
        if clock() - last_said >= 10 or waited == 0:
            log(INFO, "%s: waiting for edges: %d connected, %d needed (%.0f s of %g)", what, len(connected), need,
                waited, wait)  # fmt: skip
            last_said = clock()
        sleep(min(poll, max(0.0, wait - waited)))
    return connected


def draw(connected: Sequence[int], size: int, seed: Sequence[int], names: Mapping[int, str] | None = None) -> list[int]:
    """``size`` of the ``connected`` node ids (all of them when ``size`` is not smaller), sorted; the same ``seed``
    and the same connected set draw the same sample. With ``names`` (node id -> the device's name), the draw goes by
    the names' order, so the same devices are drawn whatever node ids a run gave them."""
    if size >= len(connected):
        return sorted(connected)
    rng = np.random.default_rng([int(s) for s in seed])
    known = names or {}
    # node ids are uint64: drawn by position, never through a numpy array of the ids
    nodes = sorted(connected, key=lambda n: (0, _name_key(known[n]), n) if n in known else (1, "", n))
    return sorted(nodes[int(i)] for i in rng.choice(len(nodes), size=size, replace=False))


def _name_key(name: str) -> str:
    """Names sort as numbers where they are (partition ids: 2 before 10), else as text."""
    return f"{int(name):020d}" if name.isdigit() else f"~{name}"


def ask_names(grid: Grid, nodes: Sequence[int], timeout: float = 30.0) -> dict[int, str]:
    """The device names of ``nodes`` (a query message each; the edge answers with its name in ``edge-info``); a node
    that does not answer in ``timeout`` seconds, or answers without a name, is left out (it is drawn by node id)."""
    messages = [
        Message(RecordDict({CONFIG: ConfigRecord({QUERY: DEVICE_NAME})}), dst_node_id=n, message_type=MessageType.QUERY)
        for n in nodes
    ]
    names: dict[int, str] = {}
    try:
        replies = list(grid.send_and_receive(messages, timeout=timeout))
    except (RuntimeError, TypeError, ValueError) as e:  # a Grid that cannot send (a test's stand-in)
        log(WARNING, "could not ask the edges their names (%s); sampling by node id", e)
        return names
    for reply in replies:
        info = None if reply.has_error() else reply.content.config_records.get(EDGE_INFO)
        name = info.get(DEVICE_NAME) if info is not None else None
        if isinstance(name, str) and name:
            names[reply.metadata.src_node_id] = name
    return names


class FleetSampling(FedAvg):
    """The sampling part of :class:`~strategies.MEANetStrategy` (see the module docstring)."""

    edges_per_round: int | None = None
    """Edges sampled per round (``None``: FedAvg's ``fraction_train``/``fraction_evaluate`` of the connected ones)."""
    quorum_wait: float = 300.0
    """Seconds a round waits for ``min_available_nodes`` connected edges before :class:`QuorumError`."""
    sample_seed: int = 0
    sampled: dict[str, list[int]]
    """Message type -> the node ids sampled for the round last configured."""
    connected: dict[str, int]
    """Message type -> how many edges were connected when that round was configured."""
    missed_at: dict[int, float]
    """Node id -> when (``time.monotonic``) it last missed a round; it rests :data:`REST_SECONDS` from then."""
    names: dict[int, str]
    """Node id -> the device's name (its answer to :func:`ask_names`), for draws that repeat run to run."""

    def _sample(self, server_round: int, config: ConfigRecord, grid: Grid, kind: str) -> list[int]:
        fraction, floor = (
            (self.fraction_train, self.min_train_nodes)
            if kind == MessageType.TRAIN
            else (self.fraction_evaluate, self.min_evaluate_nodes)
        )
        what = f"{'training' if kind == MessageType.TRAIN else 'evaluation'} round {server_round}"
        need = max(self.min_available_nodes, floor if self.edges_per_round is None else 1)
        listed = connected = wait_for_quorum(grid.get_node_ids, need, self.quorum_wait, what=what)
        now, missed_at = time.monotonic(), getattr(self, "missed_at", {})
        awake = [n for n in connected if n not in missed_at or now - missed_at[n] >= REST_SECONDS]
        resting = sorted(set(connected) - set(awake), key=lambda n: missed_at[n])  # the longest-rested first
        connected = awake + resting[: max(0, need - len(awake))]  # resting edges only as the quorum needs them
        size = self.edges_per_round or max(int(len(connected) * fraction), floor)
        experience = config.get(EXPERIENCE, 0)
        scope = _SCOPES.get(str(config.get(SCOPE, "edge")), 0)
        position = getattr(self, "round_offset", 0) + server_round  # the round within the experience, on resume too
        seed = (self.sample_seed, int(experience) if isinstance(experience, int) else 0, scope, position)
        names = getattr(self, "names", {})
        if size < len(connected) and (unknown := [n for n in connected if n not in names]):
            names = {**names, **ask_names(grid, unknown)}
            self.names = names
        nodes = draw(connected, size, (*seed, _KINDS[kind]), names)
        self.sampled = {**getattr(self, "sampled", {}), kind: nodes}
        self.connected = {**getattr(self, "connected", {}), kind: len(listed)}
        rest = f" ({len(listed) - len(connected)} resting after a missed round)" if len(listed) > len(connected) else ""
        log(INFO, "%s: sampled %d of %d connected edges%s", what, len(nodes), len(listed), rest)
        return nodes

    def _instructions(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid, kind: str
    ) -> Iterable[Message]:
        """FedAvg's instructions of ``kind``, to a seeded sample drawn once the quorum is connected."""
        if (self.fraction_train if kind == MessageType.TRAIN else self.fraction_evaluate) == 0.0:
            return []
        nodes = self._sample(server_round, config, grid, kind)
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, nodes, kind)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's training instructions, to a seeded sample drawn once the quorum is connected."""
        return self._instructions(server_round, arrays, config, grid, MessageType.TRAIN)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's evaluation instructions, to a seeded sample drawn once the quorum is connected."""
        return self._instructions(server_round, arrays, config, grid, MessageType.EVALUATE)

    def missed(self, replies: Sequence[Message], kind: str = MessageType.TRAIN) -> list[int]:
        """The sampled node ids with no reply among ``replies`` (after the round's deadline), or whose reply is
        Flower's own "node unavailable" error (the device stopped answering heartbeats)."""
        answered = {
            m.metadata.src_node_id
            for m in replies
            if not (m.has_error() and m.error.code == ErrorCode.NODE_UNAVAILABLE)
        }
        missing = [n for n in getattr(self, "sampled", {}).get(kind, []) if n not in answered]
        self.missed_at = {**getattr(self, "missed_at", {}), **dict.fromkeys(missing, time.monotonic())}
        if missing:
            log(WARNING, "%d sampled edge(s) missed the round: nodes %s", len(missing), missing)
        return missing
