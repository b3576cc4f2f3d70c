"""What crosses the network for an edge, and what it keeps between messages (in Flower's ``context.state``).

* **Down: delta broadcasts.** A full broadcast carries the whole MEANet; the edge keeps its main block
  (:data:`~meanet_core.keys.MAIN_CACHE`). Once the cloud knows an edge holds the current main block (the edge reported
  its digest), it sends only the rest and the digest of the main block to use (:data:`~meanet_core.keys.HELD_MAIN`,
  covered by the signature). :func:`broadcast_state` rebuilds the full state from the cache, or refuses with a reason
  when the edge does not hold that block (then the cloud sends the full state in the next round).
* **Up: compressed updates.** :func:`encode_reply` encodes the trained edge arrays (:mod:`meanet_core.wire.compression`)
  and keeps the error-feedback residual for the next round of the same experience.
"""

from __future__ import annotations

from logging import WARNING
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.common import log

from meanet_core import keys
from meanet_core.trust.broadcast import digest, main_state
from meanet_core.wire.compression import encode_update

Arrays = dict[str, npt.NDArray[Any]]


class MissingMainBlock(RuntimeError):
    """A delta broadcast names a main block this edge does not hold (a restarted SuperNode, a missed round)."""


def broadcast_state(msg: Message, context: Context) -> dict[str, torch.Tensor]:
    """The full MEANet state a (verified) broadcast stands for; keeps the main block of a full one for later.

    Raises
    ------
    MissingMainBlock
        A delta broadcast whose main block (by digest) this edge does not hold.
    """
    record = msg.content[keys.ARRAYS]
    assert isinstance(record, ArrayRecord)  # checked by verify()
    config = msg.content[keys.CONFIG]
    held = config.get(keys.HELD_MAIN)
    if held is None:
        state = record.to_torch_state_dict()
        context.state[keys.MAIN_CACHE] = ArrayRecord(main_state(state))
        return state
    cache = context.state.array_records.get(keys.MAIN_CACHE)
    cached = cache.to_torch_state_dict() if cache is not None else {}
    if not cached or digest(cached) != held:
        have = digest(cached)[:12] if cached else "none"
        raise MissingMainBlock(
            f"the broadcast leaves out main block {str(held)[:12]}..., which this edge does not hold (it holds "
            f"{have}); the cloud sends the full state to this edge in the next round"
        )
    return {**cached, **record.to_torch_state_dict()}


def encode_reply(
    arrays: Arrays, sent: Arrays, encoding: str, context: Context, experience: int, scope: str = "edge"
) -> tuple[ArrayRecord, str]:
    """The reply's ArrayRecord for the trained ``arrays`` (of a round of ``scope``) and the encoding it carries.

    The residual of earlier rounds of this experience and scope is added (error feedback) and the new one kept in
    ``context.state``. Arrays that do not match ``sent`` (only a fault-injecting test makes them) go as they are,
    labelled ``float32``, so the server's checks see exactly what is wrong with them.
    """
    info = context.state.config_records.get(keys.RESIDUAL_INFO)
    saved = context.state.array_records.get(keys.UPLOAD_RESIDUAL)
    residual = None
    if (
        saved is not None
        and info is not None
        and info.get(keys.EXPERIENCE) == experience
        and info.get(keys.SCOPE, "edge") == scope
    ):
        residual = {k: v.numpy() for k, v in saved.items()}
    try:
        payload, left = encode_update(arrays, sent, encoding, residual)
    except ValueError as e:
        log(WARNING, "upload: the arrays do not match what was sent (%s); sending them as float32", e)
        payload, left, encoding = arrays, {}, "float32"
    context.state[keys.UPLOAD_RESIDUAL] = ArrayRecord({k: Array(np.array(v, order="C")) for k, v in left.items()})
    context.state[keys.RESIDUAL_INFO] = ConfigRecord({keys.EXPERIENCE: experience, keys.SCOPE: scope})
    return ArrayRecord({k: Array(np.array(v, order="C")) for k, v in payload.items()}), encoding  # 0-d stays 0-d
