"""Compressed broadcasts: the cloud sends an edge the *change* of the model from the state the edge already holds.

Both ends keep the same **reference**: the state the edges were last sent. For a new target state the cloud encodes,
key by key over the keys the broadcast covers:

=============== ======================================================================================================
unchanged       a key whose target equals the reference byte for byte is left out (the edge keeps its copy)
``k|q8``        a changed float32 weight of two or more dimensions: the change ``target - reference`` quantised with one
``k|q6``        float32 scale per output channel (``k|scale``, ``max |change| / levels``; 127 levels each side in 8
                bits, 31 in 6), the values packed ``bits`` to a value (uint8). A key the reference lacks is a change
                from zeros, with its dimensions in ``k|shape`` (int64)
``k``           anything else that changed, or is new (1-d and 0-d arrays, integer buffers, a new dtype): the target
                itself, exactly
=============== ======================================================================================================

The state both ends load is the **reconstruction** ``reference + decoded change``, not the target: the cloud computes
it with :func:`decode_broadcast`, the very function the edge runs, so the two are bit for bit the same and the cloud
signs its digest. The next broadcast's change is taken from the reconstruction, so what one quantisation lost is in
the next change of that key (the error stays on the server, as in DoubleSqueeze and EF21-BC).

:func:`decode_broadcast` never trusts the payload: an unknown or unpaired key, a wrong dtype, length or shape, a
non-finite or negative scale, or a change against a base that lacks the key raises :class:`PayloadError`. The caller
checks the reconstruction's digest against the signed one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from meanet_core.wire.compression import SCALE_SUFFIX, PayloadError

BITS: tuple[int, ...] = (8, 6)
"""Bits per value of a quantised change."""

SHAPE_SUFFIX = "|shape"
"""Suffix of the key holding the dimensions of a quantised array the reference lacks (a change from zeros)."""

Arrays = dict[str, npt.NDArray[Any]]


def q_suffix(bits: int) -> str:
    """Suffix of the key holding a change's packed values: ``|q8`` or ``|q6``."""
    return f"|q{bits}"


def _quantised(key: str, value: npt.NDArray[Any]) -> bool:
    """Whether a changed array travels as a quantised change: a float32 weight of two or more dimensions (a
    convolution's or a linear layer's; buffers such as the input normalisation go exactly)."""
    return key.endswith("weight") and value.dtype == np.float32 and value.ndim >= 2


def pack(q: npt.NDArray[Any], bits: int) -> npt.NDArray[np.uint8]:
    """Integers in ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]`` as ``ceil(size * bits / 8)`` bytes, ``bits`` each
    (offset by ``2**(bits-1)``, most significant bit first)."""
    u = (np.asarray(q, dtype=np.int16).reshape(-1) + (1 << (bits - 1))).astype(np.uint8)
    if bits == 8:
        return u
    return np.packbits(np.unpackbits(u[:, None], axis=1)[:, 8 - bits :].reshape(-1))


def unpack(packed: npt.NDArray[np.uint8], size: int, bits: int) -> npt.NDArray[np.int16]:
    """The ``size`` integers :func:`pack` packed; :class:`PayloadError` for a wrong length or an out-of-range value."""
    want = (size * bits + 7) // 8
    if packed.dtype != np.uint8 or packed.shape != (want,):
        raise PayloadError(f"{packed.dtype} {packed.shape}; expected uint8 ({want},) for {size} values of {bits} bits")
    if bits == 8:
        u = packed
    else:
        row = np.unpackbits(packed)[: size * bits].reshape(size, bits)
        u = np.packbits(np.pad(row, ((0, 0), (8 - bits, 0))), axis=1).reshape(size)
    q = u.astype(np.int16) - (1 << (bits - 1))
    if np.any(q < -((1 << (bits - 1)) - 1)):
        raise PayloadError(f"a value below -{(1 << (bits - 1)) - 1}: not a {bits}-bit change")
    return q


def _scales(change: npt.NDArray[np.float64], levels: int) -> npt.NDArray[np.float32]:
    return (np.max(np.abs(change.reshape(change.shape[0], -1)), axis=1, initial=0.0) / levels).astype(np.float32)


def encode_broadcast(
    target: Mapping[str, npt.NDArray[Any]], reference: Mapping[str, npt.NDArray[Any]], bits: int = 8
) -> tuple[Arrays, Arrays]:
    """The payload taking ``reference`` towards ``target`` (over ``target``'s keys) and the state it reconstructs.

    Returns
    -------
    tuple[Arrays, Arrays]
        The payload (see the module docstring) and the reconstruction over ``target``'s keys, exactly what
        :func:`decode_broadcast` gives an edge holding ``reference``.
    """
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}; got {bits}")
    levels = (1 << (bits - 1)) - 1
    payload: Arrays = {}
    for key, value in target.items():
        value = np.asarray(value)
        ref = reference.get(key)
        if ref is not None:
            ref = np.asarray(ref)
            if ref.dtype == value.dtype and ref.shape == value.shape and np.array_equal(ref, value):
                continue  # unchanged: the edge keeps its copy
            if ref.dtype != value.dtype or ref.shape != value.shape:
                ref = None  # another shape (the hard classes changed): a change from zeros
        change = value.astype(np.float64) - (0.0 if ref is None else ref.astype(np.float64))
        if not _quantised(key, value) or not np.all(np.isfinite(change)):
            payload[key] = np.array(value, order="C")  # exact (a non-finite one: the checks judge it)
            continue
        scale = _scales(change, levels)
        full = scale.astype(np.float64).reshape((-1,) + (1,) * (change.ndim - 1))
        q = np.clip(np.rint(np.divide(change, full, out=np.zeros_like(change), where=full > 0)), -levels, levels)
        payload[key + q_suffix(bits)] = pack(q, bits)
        payload[key + SCALE_SUFFIX] = scale
        if ref is None:
            payload[key + SHAPE_SUFFIX] = np.array(value.shape, dtype=np.int64)
    held = {k: v for k, v in reference.items() if k in target and np.shape(v) == np.shape(target[k])}
    return payload, decode_broadcast(payload, held, target.keys())


ENCODINGS: tuple[str, ...] = ("int6", "int8", "float32")
"""How a broadcast's changed weights go down (``broadcast-encoding``)."""


def broadcast_change(
    target: Mapping[str, npt.NDArray[Any]], reference: Mapping[str, npt.NDArray[Any]], encoding: str
) -> tuple[Arrays, Arrays]:
    """The change an edge holding ``reference`` receives for ``target``, and the state it then loads.

    ``int6``/``int8``: :func:`encode_broadcast`; ``float32``: the entries that differ, exactly. With nothing of
    ``target`` in ``reference`` (the first broadcast), the target itself, exactly: nobody holds a base to change.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown broadcast encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    if not any(k in reference for k in target):
        return dict(target), dict(target)
    if encoding != "float32":
        return encode_broadcast(target, reference, bits=int(encoding[3:]))
    change = {
        k: v
        for k, v in target.items()
        if k not in reference
        or np.shape(reference[k]) != np.shape(v)
        or np.asarray(reference[k]).dtype != np.asarray(v).dtype
        or not np.array_equal(reference[k], v)
    }
    return change, {k: change[k] if k in change else reference[k] for k in target}


def _split(key: str) -> tuple[str, str]:
    """``(entry, suffix)`` of a payload key (suffix ``""`` for an exact value)."""
    for suffix in (*(q_suffix(b) for b in BITS), SCALE_SUFFIX, SHAPE_SUFFIX):
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix
    return key, ""


def payload_entry(key: str) -> str:
    """The state entry a payload key belongs to (``"w|q6"`` -> ``"w"``)."""
    return _split(key)[0]


def payload_entries(payload: Mapping[str, Any]) -> set[str]:
    """The state entries a payload carries (exactly, or as a change)."""
    return {payload_entry(k) for k in payload}


def decode_broadcast(
    payload: Mapping[str, npt.NDArray[Any]], base: Mapping[str, npt.NDArray[Any]], keys: Iterable[str]
) -> Arrays:
    """The state over ``keys`` that ``payload`` makes of ``base`` (what the edge holds); see the module docstring.

    Raises
    ------
    PayloadError
        A payload key outside ``keys`` or unpaired, a key of ``keys`` that neither the payload nor ``base`` has, or
        malformed values, scales or dimensions.
    """
    wanted = list(keys)
    parts: dict[str, set[str]] = {}
    for key in payload:
        entry, suffix = _split(key)
        parts.setdefault(entry, set()).add(suffix)
    stray = sorted(e for e in parts if e not in set(wanted))
    bad = sorted(
        e
        for e, got in parts.items()
        if got != {""} and not (len(got & {q_suffix(b) for b in BITS}) == 1 and SCALE_SUFFIX in got and "" not in got)
    )
    if stray or bad:
        raise PayloadError(f"broadcast delta: unexpected or unpaired key(s) {(stray + bad)[:5]}")
    out: Arrays = {}
    for key in wanted:
        got = parts.get(key)
        if got == {""}:
            out[key] = np.asarray(payload[key])
            continue
        if got is None:
            if key not in base:
                raise PayloadError(f"broadcast delta: '{key}' is neither sent nor held by this edge")
            out[key] = np.asarray(base[key])
            continue
        out[key] = _apply(payload, key, got, base)
    return out


def _apply(payload: Mapping[str, npt.NDArray[Any]], key: str, got: set[str], base: Mapping[str, Any]) -> Any:
    """``key``'s base (or zeros of its ``|shape``) plus its decoded change."""
    bits = next(b for b in BITS if q_suffix(b) in got)
    if SHAPE_SUFFIX in got:
        dims = np.asarray(payload[key + SHAPE_SUFFIX])
        if (
            dims.dtype != np.int64
            or dims.ndim != 1
            or not 2 <= dims.size <= 8
            or np.any(dims < 1)
            or dims.prod() > 1 << 28
        ):
            raise PayloadError(f"broadcast delta: '{key}{SHAPE_SUFFIX}' is not the dimensions of a weight array")
        ref = np.zeros(tuple(int(d) for d in dims), dtype=np.float32)
    elif key in base:
        ref = np.asarray(base[key])
    else:
        raise PayloadError(f"broadcast delta: '{key}' is a change from an entry this edge does not hold")
    if not _quantised(key, ref):
        raise PayloadError(f"broadcast delta: '{key}' is {ref.dtype} {ref.shape} here; it has no quantised change")
    scale = np.asarray(payload[key + SCALE_SUFFIX])
    if scale.dtype != np.float32 or scale.shape != (ref.shape[0],):
        raise PayloadError(
            f"broadcast delta: '{key}{SCALE_SUFFIX}' is {scale.dtype} {scale.shape}; expected float32 ({ref.shape[0]},)"
        )
    if not np.all(np.isfinite(scale)) or np.any(scale < 0):
        raise PayloadError(f"broadcast delta: '{key}{SCALE_SUFFIX}' has a negative or non-finite scale")
    try:
        q = unpack(np.asarray(payload[key + q_suffix(bits)]), ref.size, bits)
    except PayloadError as e:
        raise PayloadError(f"broadcast delta: '{key}{q_suffix(bits)}': {e}") from None
    full = scale.astype(np.float64).reshape((-1,) + (1,) * (ref.ndim - 1))
    return np.asarray((ref.astype(np.float64) + q.reshape(ref.shape) * full).astype(ref.dtype))


__all__ = [
    "BITS",
    "ENCODINGS",
    "SHAPE_SUFFIX",
    "broadcast_change",
    "decode_broadcast",
    "encode_broadcast",
    "pack",
    "payload_entries",
    "q_suffix",
    "unpack",
]
