"""What crosses the network for an edge, and what it keeps between messages (in Flower's ``context.state``).

* **Down: changes.** The edge keeps the state it last rebuilt (:data:`~meanet_core.keys.STATE_CACHE`). A broadcast is
  either that state in full, or the change from the state the edge holds (:mod:`meanet_core.wire.broadcast_delta`)
  with the digest of that base (:data:`~meanet_core.keys.BASE_DIGEST`); both carry the digest of the state to load
  (:data:`~meanet_core.keys.STATE_DIGEST`), and the signature covers them. :func:`broadcast_state` rebuilds the state
  and checks it bit for bit against that digest, or refuses with the reason (then the cloud sends the full state in
  the next round). An edge that missed the last broadcasts may get a catch-up: their changes in order
  (:data:`~meanet_core.keys.CATCH_UP`), each checked against its digests. A main round's broadcast covers everything
  but the edge blocks (:func:`~meanet_core.keys.covers`).
* **Up: compressed updates.** :func:`encode_reply` encodes the trained arrays (:mod:`meanet_core.wire.compression`)
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
from meanet_core.trust.broadcast import digest
from meanet_core.wire.broadcast_delta import decode_broadcast, payload_entries
from meanet_core.wire.compression import PayloadError, encode_update

Arrays = dict[str, npt.NDArray[Any]]


class MissingBase(RuntimeError):
    """A broadcast's change applies to a state this edge does not hold (a restarted SuperNode, a missed round), or
    does not rebuild the state whose digest the cloud signed."""


def broadcast_state(msg: Message, context: Context, scope: str = "edge") -> dict[str, torch.Tensor]:
    """The state a (verified) broadcast for a round of ``scope`` stands for, kept for the next change.

    Returns the covered entries (:func:`~meanet_core.keys.covers`): a main round's state has no edge block.

    Raises
    ------
    MissingBase
        A change whose base (by digest) this edge does not hold, or whose result is not the signed state.
    """
    record = msg.content[keys.ARRAYS]
    assert isinstance(record, ArrayRecord)  # checked by verify()
    config = msg.content[keys.CONFIG]
    arrays = {k: v.numpy() for k, v in record.items()}
    saved = context.state.array_records.get(keys.STATE_CACHE)
    cache: Arrays = {k: v.numpy() for k, v in saved.items()} if saved is not None else {}
    base = config.get(keys.BASE_DIGEST)
    if base is None:
        state = arrays
    else:
        for step_scope, step_base, step_digest, change in _steps(arrays, config, scope, str(base)):
            state = _apply_change(change, cache, step_scope, step_base)
            if step_digest is not None and digest(state, prefix="") != step_digest:
                raise MissingBase(
                    f"a catch-up step rebuilds state {digest(state, prefix='')[:12]}..., not the signed "
                    f"{step_digest[:12]}...; refused (the cloud sends the full state in the next round)"
                )
            cache.update(state)
    expected = config.get(keys.STATE_DIGEST)
    if expected is not None and digest(state, prefix="") != expected:
        raise MissingBase(
            f"the broadcast rebuilds state {digest(state, prefix='')[:12]}..., not the signed {str(expected)[:12]}...; "
            "refused (the cloud sends the full state in the next round)"
        )
    cache.update(state)
    context.state[keys.STATE_CACHE] = ArrayRecord({k: Array(np.array(v, order="C")) for k, v in cache.items()})
    return {k: torch.from_numpy(np.array(v)) for k, v in state.items()}


def _steps(arrays: Arrays, config: Any, scope: str, base: str) -> list[tuple[str, str, str | None, Arrays]]:
    """The changes a broadcast carries, in order: ``(scope, base digest, state digest or None, payload)``. One change
    (:data:`~meanet_core.keys.BASE_DIGEST` alone; the last step's digest is checked by the caller), or a catch-up
    (:data:`~meanet_core.keys.CATCH_UP`: step *i*'s arrays prefixed ``"i>"``)."""
    catch_up = config.get(keys.CATCH_UP)
    if catch_up is None:
        return [(scope, base, None, arrays)]
    try:
        steps = [str(entry).split(":") for entry in catch_up]
        if not steps or any(len(parts) != 3 or parts[0] not in keys.SCOPES for parts in steps):
            raise ValueError("each step must be 'scope:base digest:state digest'")
        if steps[0][1] != base or steps[-1][0] != scope:
            raise ValueError("its first base or its last scope does not match the broadcast")
        payloads: list[Arrays] = [{} for _ in steps]
        for key, value in arrays.items():
            index, sep, name = key.partition(">")
            if not sep or not index.isdigit() or int(index) >= len(steps):
                raise ValueError(f"array {key!r} names no step of {len(steps)}")
            payloads[int(index)][name] = value
    except ValueError as e:
        raise MissingBase(f"the broadcast's catch-up is malformed: {e}") from e
    return [(s, b, d, payload) for (s, b, d), payload in zip(steps, payloads, strict=True)]


def _apply_change(change: Arrays, cache: Arrays, scope: str, base: str) -> Arrays:
    """The state one change makes of what the edge holds over ``scope``'s entries, whose digest must be ``base``."""
    held = {k: v for k, v in cache.items() if keys.covers(k, scope)}
    if not held or digest(held, prefix="") != base:
        have = digest(held, prefix="")[:12] if held else "nothing"
        raise MissingBase(
            f"the broadcast is a change from state {base[:12]}..., which this edge does not hold (it holds "
            f"{have}); the cloud sends the full state to this edge in the next round"
        )
    try:
        # the entries the edge holds, and any new one the change carries in full
        return decode_broadcast(change, held, [*held, *sorted(payload_entries(change) - set(held))])
    except PayloadError as e:
        raise MissingBase(f"the broadcast's change does not apply: {e}") from e


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
