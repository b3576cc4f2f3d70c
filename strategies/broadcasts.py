"""What goes down to the edges: each round's state as a change from the state the edges already hold.

:class:`DeltaBroadcasts` is mixed into :class:`~strategies.MEANetStrategy` ahead of Flower's ``FedAvg``.

* **What a round covers.** A main round trains only the main block: its broadcast carries every entry but the edge
  blocks (:func:`~meanet_core.keys.covers`). An edge round and an evaluation carry the whole state.
* **One reference.** The strategy keeps :attr:`~DeltaBroadcasts.reference`, the state the edges were last sent, and
  turns each round's arrays into a change from it (:func:`~meanet_core.wire.broadcast_delta.encode_broadcast`: unchanged
  entries left out, changed weights as 6- or 8-bit changes). The state every edge of the round loads is the
  *reconstruction*, computed here exactly as the edge computes it, so the arrays the strategy validates the replies
  against, keeps and signs are bit for bit the ones the edges hold (:meth:`~DeltaBroadcasts.prepare_broadcast`).
* **Who gets what.** An edge whose last reply succeeded holds the reference (per group of entries: the edge blocks,
  the rest), and gets the change with the digests of its base and of the result (``base-digest``, ``state-digest``),
  sealed by :meth:`~DeltaBroadcasts.seal` (signed by :class:`~strategies.SignedMEANetStrategy`).
* **Catching up.** An edge that was not sent the last broadcasts (not sampled in those rounds) still holds an older
  reconstruction. The strategy keeps, per group of entries, the changes of the last :data:`HISTORY` broadcasts that
  covered it, and such an edge gets, in one message, each group's changes since the state it holds of that group
  (:data:`~meanet_core.keys.CATCH_UP`), when they weigh less than the full state. Each step rebuilds exactly the
  reconstruction it rebuilt for everyone else, so the edge ends on the same signed state.
* Every other edge (new, restarted, one whose reply failed or missed the deadline, or too far behind) gets the
  reconstruction in full. The edge side is :mod:`fl_client.transport`.

``broadcast_encoding = "float32"`` keeps changed entries exact (only unchanged ones are left out); ``delta_broadcast =
False`` sends every edge the full state of each round, with no reference.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from meanet_core.keys import BASE_DIGEST, CATCH_UP, STATE_DIGEST, covers, group_of
from meanet_core.trust.broadcast import digest
from meanet_core.wire.broadcast_delta import ENCODINGS, broadcast_change, payload_entry

BROADCAST_ENCODINGS: tuple[str, ...] = ENCODINGS
"""How a changed weight goes down: a 6- or 8-bit change (the error stays on the server), or exactly."""

HISTORY = 8
"""How many broadcasts back an edge can catch up from with their changes (rather than the full state)."""

Arrays = dict[str, npt.NDArray[Any]]


def group_digests(state: Arrays, keys: Iterable[str]) -> dict[str, str]:
    """The digest of ``state`` over each group's share of ``keys`` (every key must be in ``state``)."""
    by_group: dict[str, list[str]] = {}
    for key in keys:
        by_group.setdefault(group_of(key), []).append(key)
    return {group: digest({k: state[k] for k in names}, prefix="") for group, names in by_group.items()}


@dataclass
class BroadcastPlan:
    """One round's broadcast: the state the edges load and the change that makes it from the reference."""

    state: Arrays
    """The reconstruction over the covered keys: what every edge of the round loads."""
    state_digest: str
    base_digest: str | None
    """Digest of the reference over the covered keys it has (``None``: it has none, everyone gets the state)."""
    held_before: dict[str, str]
    """Per group, the reference's digest an edge must hold to take the change."""
    held_after: dict[str, str]
    """Per group, the digest an edge holds once it took this broadcast."""
    change: Arrays | None
    """The change's payload (``None`` with ``delta_broadcast`` off)."""
    full_bytes: int = 0
    """Bytes of :attr:`state`: a catch-up that weighs as much goes as the full state instead."""
    sealed: dict[str, RecordDict] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """One past broadcast's change to one group of entries (the edge blocks, or the rest), kept so that an edge that
    missed it can still apply it (:data:`HISTORY`)."""

    group: str
    change: Arrays
    base_digest: str | None
    """The group's digest before (``None``: the group was new to the edges, the change is from nothing)."""
    state_digest: str
    nbytes: int


class DeltaBroadcasts:
    """The broadcast part of :class:`~strategies.MEANetStrategy` (see the module docstring)."""

    arrayrecord_key: str
    configrecord_key: str
    delta_broadcast: bool
    broadcast_encoding: str
    reference: Arrays
    """The state the edges were last sent (every entry ever sent, as they rebuilt it)."""
    node_holds: dict[int, dict[str, str]]
    """Node id -> group -> digest of what it holds (set when its reply to a broadcast succeeded)."""
    plans: dict[str, BroadcastPlan]
    """Message type -> the plan of the broadcast last prepared for it."""
    broadcast_seconds: dict[str, float]
    """Message type -> seconds the last :meth:`prepare_broadcast` took (encoding, and the edges' decoding, on the
    cloud)."""
    history: dict[str, list[Step]]
    """Group -> its changes in the last :data:`HISTORY` broadcasts that covered it, oldest first."""

    def prepare_broadcast(self, arrays: ArrayRecord, scope: str, message_type: str) -> ArrayRecord:
        """The state a round of ``scope`` broadcasts for ``arrays``: the reconstruction over the covered keys.

        The plan is kept for :meth:`_construct_messages` and :meth:`took_broadcast`; the reference moves to the new
        state (the edges that take it hold it).
        """
        started = time.perf_counter()
        target = {k: v.numpy() for k, v in arrays.items() if covers(k, scope)}
        # the change applies to the entries the reference has (a new entry, e.g. the edge blocks after main rounds
        # alone, goes in full within the change); an edge holds that base when it holds each of its groups
        known = [k for k in target if k in self.reference]
        before = group_digests(self.reference, known)
        base = digest({k: self.reference[k] for k in known}, prefix="") if known else None
        change: Arrays | None = None
        if not self.delta_broadcast:
            state = target
        else:
            change, state = broadcast_change(target, self.reference, self.broadcast_encoding)
        self.reference = {**self.reference, **state}
        after = group_digests(self.reference, target)
        plan = BroadcastPlan(
            state=state,
            state_digest=digest(state, prefix=""),
            base_digest=base,
            held_before=before,
            held_after=after,
            change=change,
            full_bytes=sum(int(np.asarray(v).nbytes) for v in state.values()),
        )
        self.plans[message_type] = plan
        if change is None or base is None:  # nothing to change from: nobody can catch up across this one
            self.history = {}
        else:
            for group, after_digest in after.items():
                part = {k: v for k, v in change.items() if group_of(payload_entry(k)) == group}
                nbytes = sum(int(np.asarray(v).nbytes) for v in part.values())
                step = Step(group, part, before.get(group), after_digest, nbytes)
                self.history[group] = [*self.history.get(group, []), step][-HISTORY:]
        self.broadcast_seconds[message_type] = time.perf_counter() - started
        return ArrayRecord({k: Array(np.array(v, order="C")) for k, v in state.items()})  # 0-d stays 0-d

    def _holds_base(self, node: int, plan: BroadcastPlan) -> bool:
        held = self.node_holds.get(node, {})
        return plan.base_digest is not None and all(held.get(g) == d for g, d in plan.held_before.items())

    def _catch_up(self, node: int, plan: BroadcastPlan) -> list[Step] | None:
        """Per group ``plan`` covers, the changes since the state ``node`` holds of it (from the group's
        :attr:`history`); ``None`` when a group has no such changes or they weigh as much as the full state."""
        held = self.node_holds.get(node)
        if not held or plan.change is None or plan.base_digest is None:
            return None
        steps: list[Step] = []
        for group in plan.held_after:
            history = self.history.get(group, [])
            start = next((i for i, step in enumerate(history) if step.base_digest == held.get(group)), None)
            if start is None:
                return None
            steps += history[start:]
        return steps if sum(step.nbytes for step in steps) < plan.full_bytes else None

    def took_broadcast(self, node: int, message_type: str, ok: bool) -> None:
        """Record an edge's reply to the broadcast of ``message_type``: on success it holds the new state; on an
        error (or no reply) what it holds is unknown, and it gets the full state next time."""
        plan = self.plans.get(message_type)
        if ok and plan is not None:
            self.node_holds[node] = {**self.node_holds.get(node, {}), **plan.held_after}
        else:
            self.node_holds.pop(node, None)

    def _construct_messages(self, record: RecordDict, node_ids: list[int], message_type: str) -> Iterable[Message]:
        """One message per node: the change to an edge that holds the reference, the changes since what it holds to
        an edge that missed the last broadcasts, the full state to the others; each kind built and sealed once."""
        plan = self.plans.get(message_type)
        messages = []
        for node in node_ids:
            if plan is None:  # prepare_broadcast not called: Flower's own path
                content = record
            else:
                if plan.change is not None and self._holds_base(node, plan):
                    kind, steps = "change", None
                else:
                    steps = self._catch_up(node, plan)
                    kind = "full" if steps is None else "catch-up from " + ",".join(f"{s.base_digest}" for s in steps)
                if kind not in plan.sealed:
                    plan.sealed[kind] = self._sealed_record(record, plan, kind, steps or [], message_type)
                content = plan.sealed[kind]
            messages.append(Message(content=content, message_type=message_type, dst_node_id=node))
        return messages

    def _sealed_record(
        self, record: RecordDict, plan: BroadcastPlan, kind: str, steps: list[Step], purpose: str
    ) -> RecordDict:
        """``record`` as the full state, the change, or a catch-up (``steps``, each one group's change, their arrays
        prefixed ``"i>"``), with the digests it must rebuild, sealed by :meth:`seal`."""
        arrays = record[self.arrayrecord_key]
        config = record[self.configrecord_key]
        assert isinstance(arrays, ArrayRecord) and isinstance(config, ConfigRecord)  # FedAvg built them
        entries: dict[str, Any] = {**dict(config.items()), STATE_DIGEST: plan.state_digest}
        if kind == "change":
            assert plan.change is not None and plan.base_digest is not None
            arrays = ArrayRecord({k: Array(np.array(v, order="C")) for k, v in plan.change.items()})
            entries[BASE_DIGEST] = plan.base_digest
        elif steps:
            arrays = ArrayRecord(
                {
                    f"{i}>{k}": Array(np.array(v, order="C"))
                    for i, step in enumerate(steps)
                    for k, v in step.change.items()
                }
            )
            entries[CATCH_UP] = [f"{step.group}:{step.base_digest or ''}:{step.state_digest}" for step in steps]
        sealed = self.seal(arrays, ConfigRecord(entries), purpose)
        return RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: sealed})

    def seal(self, arrays: ArrayRecord, config: ConfigRecord, purpose: str) -> ConfigRecord:
        """The config of an instruction as sent: as it is here; :class:`~strategies.SignedMEANetStrategy` signs it."""
        return config


def mean_array_bytes(messages: list[Message]) -> float:
    """Mean bytes of the arrays (every ArrayRecord) the instructions carry: what a broadcast costs each edge."""
    sizes = [sum(r.count_bytes() for r in m.content.array_records.values()) for m in messages]
    return float(np.mean(sizes)) if sizes else 0.0
