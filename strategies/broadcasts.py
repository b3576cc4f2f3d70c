"""What goes down to the edges: delta broadcasts that leave out a main block the edge already holds.

A MEANet broadcast is the whole state (main block + edge blocks + buffers); the main block changes only when the
cloud retrains it (an experience's first round). :class:`DeltaBroadcasts` is mixed into
:class:`~strategies.MEANetStrategy` ahead of Flower's ``FedAvg`` and replaces ``FedAvg._construct_messages``: an edge
that reported holding the current main block (its last training reply's ``main-digest``) gets the instruction without
it, plus the digest of the block to use (``held-main-digest``), sealed by :meth:`DeltaBroadcasts.seal` (signed by
:class:`~strategies.SignedMEANetStrategy`); every other edge gets the full state. The edge side is
:mod:`fl_client.transport`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from meanet_core.keys import HELD_MAIN, is_main_key


class DeltaBroadcasts:
    """The delta-broadcast part of :class:`~strategies.MEANetStrategy` (see the module docstring)."""

    arrayrecord_key: str
    configrecord_key: str
    delta_broadcast: bool
    holds: dict[int, str]
    """Node id -> the main-block digest its last training reply reported."""
    sent_main_digest: str | None
    """Digest of the main block of the arrays being sent."""

    def _construct_messages(self, record: RecordDict, node_ids: list[int], message_type: str) -> Iterable[Message]:
        """FedAvg's one message per node, except that an edge holding the current main block gets a delta."""
        delta: RecordDict | None = None
        messages = []
        for node in node_ids:
            content = record
            if self.delta_broadcast and self.sent_main_digest and self.holds.get(node) == self.sent_main_digest:
                delta = delta or self._delta_record(record, message_type)
                content = delta
            messages.append(Message(content=content, message_type=message_type, dst_node_id=node))
        return messages

    def _delta_record(self, record: RecordDict, purpose: str) -> RecordDict:
        """``record`` without the main block, with the digest of the one to use, sealed by :meth:`seal`."""
        arrays = record[self.arrayrecord_key]
        config = record[self.configrecord_key]
        assert isinstance(arrays, ArrayRecord) and isinstance(config, ConfigRecord)  # FedAvg built them
        kept = ArrayRecord({k: v for k, v in arrays.items() if not is_main_key(k)})
        held = ConfigRecord({**dict(config.items()), HELD_MAIN: self.sent_main_digest or ""})
        return RecordDict({self.arrayrecord_key: kept, self.configrecord_key: self.seal(kept, held, purpose)})

    def seal(self, arrays: ArrayRecord, config: ConfigRecord, purpose: str) -> ConfigRecord:
        """The config of an instruction built here (a delta): as it is; :class:`~strategies.SignedMEANetStrategy`
        signs it."""
        return config


def mean_array_bytes(messages: list[Message]) -> float:
    """Mean bytes of the arrays (every ArrayRecord) the instructions carry: what a broadcast costs each edge."""
    sizes = [sum(r.count_bytes() for r in m.content.array_records.values()) for m in messages]
    return float(np.mean(sizes)) if sizes else 0.0
