"""What crosses the network for an edge, and what it keeps between messages (in Flower's ``context.state``).

* **Down: changes.** The edge keeps the state it last rebuilt (:data:`~meanet_core.keys.STATE_CACHE`). A broadcast is
  either that state in full, or the change from the state the edge holds (:mod:`meanet_core.wire.broadcast_delta`)
  with the digest of that base (:data:`~meanet_core.keys.BASE_DIGEST`); both carry the digest of the state to load
  (:data:`~meanet_core.keys.STATE_DIGEST`), and the signature covers them. :func:`broadcast_state` rebuilds the state
  and checks it bit for bit against that digest, or refuses with the reason (then the cloud sends the full state in
  the next round). An edge that missed the last broadcasts may get a catch-up: per group of entries (the edge
  blocks, the rest), the changes since what it holds of that group (:data:`~meanet_core.keys.CATCH_UP`), each step
  checked against its group's digests. A main round's broadcast covers everything
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
from meanet_core.wire.broadcast_delta import decode_broadcast, payload_entries, payload_entry
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
    if keys.CATCH_UP in config:
        for group, step_base, step_digest, change in _steps(arrays, config):
            _catch_up_group(change, cache, group, step_base, step_digest)
        state = {k: v for k, v in cache.items() if keys.covers(k, scope)}
    elif base is None:
        state = arrays
    else:
        held = {k: v for k, v in cache.items() if keys.covers(k, scope)}
        if not held or digest(held, prefix="") != base:
            have = digest(held, prefix="")[:12] if held else "nothing"
            raise MissingBase(
                f"the broadcast is a change from state {str(base)[:12]}..., which this edge does not hold (it holds "
                f"{have}); the cloud sends the full state to this edge in the next round"
            )
        try:
            # the entries the edge holds, and any new one the change carries in full
            state = decode_broadcast(arrays, held, [*held, *sorted(payload_entries(arrays) - set(held))])
        except PayloadError as e:
            raise MissingBase(f"the broadcast's change does not apply: {e}") from e
    expected = config.get(keys.STATE_DIGEST)
    if expected is not None and digest(state, prefix="") != expected:
        raise MissingBase(
            f"the broadcast rebuilds state {digest(state, prefix='')[:12]}..., not the signed {str(expected)[:12]}...; "
            "refused (the cloud sends the full state in the next round)"
        )
    cache.update(state)
    context.state[keys.STATE_CACHE] = ArrayRecord({k: Array(np.array(v, order="C")) for k, v in cache.items()})
    return {k: torch.from_numpy(np.array(v)) for k, v in state.items()}


def _steps(arrays: Arrays, config: Any) -> list[tuple[str, str, str, Arrays]]:
    """A catch-up's changes, in order: ``(group, base digest or "", state digest, payload)``
    (:data:`~meanet_core.keys.CATCH_UP`: step *i*'s arrays prefixed ``"i>"``)."""
    try:
        steps = [str(entry).split(":") for entry in config[keys.CATCH_UP]]
        if not steps or any(len(parts) != 3 or parts[0] not in keys.GROUPS or not parts[2] for parts in steps):
            raise ValueError("each step must be 'group:base digest:state digest', group 'edge' or 'rest'")
        payloads: list[Arrays] = [{} for _ in steps]
        for key, value in arrays.items():
            index, sep, name = key.partition(">")
            if not sep or not index.isdigit() or int(index) >= len(steps):
                raise ValueError(f"array {key!r} names no step of {len(steps)}")
            if keys.group_of(payload_entry(name)) != steps[int(index)][0]:
                raise ValueError(f"array {key!r} is not of step {index}'s group {steps[int(index)][0]!r}")
            payloads[int(index)][name] = value
    except (TypeError, ValueError) as e:
        raise MissingBase(f"the broadcast's catch-up is malformed: {e}") from e
    return [(g, b, d, payload) for (g, b, d), payload in zip(steps, payloads, strict=True)]


def _catch_up_group(change: Arrays, cache: Arrays, group: str, base: str, expected: str) -> None:
    """Apply one group's change to what the edge holds of that group (whose digest must be ``base``; ``""``: the
    group is new, the change is from nothing), check the result against ``expected``, and keep it in ``cache``."""
    held = {k: v for k, v in cache.items() if keys.group_of(k) == group} if base else {}
    if base and (not held or digest(held, prefix="") != base):
        raise MissingBase(
            f"a catch-up step applies to {group} state {base[:12]}..., which this edge does not hold; the cloud "
            "sends the full state to this edge in the next round"
        )
    try:
        state = decode_broadcast(change, held, [*held, *sorted(payload_entries(change) - set(held))])
    except PayloadError as e:
        raise MissingBase(f"a catch-up step does not apply: {e}") from e
    if digest(state, prefix="") != expected:
        raise MissingBase(
            f"a catch-up step rebuilds {group} state {digest(state, prefix='')[:12]}..., not the signed "
            f"{expected[:12]}...; refused (the cloud sends the full state in the next round)"
        )
    for key in [k for k in cache if keys.group_of(k) == group]:
        del cache[key]
    cache.update(state)


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
