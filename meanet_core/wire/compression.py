"""Compressed edge updates: what an edge uploads instead of its float32 edge blocks (pure numpy, shared by both sides).

An edge sends the *change* of each floating edge array from what the cloud sent it, encoded:

=========== ============================================================================================================
``float32`` the trained arrays themselves, as before (no change is taken; nothing is lost)
``fp16``    the change in float16 (half the bytes)
``int8``    the change quantised to int8 with one float32 scale per output channel (row of dimension 0; one per tensor
            for 0-d and 1-d arrays): ``q = round(change / scale)``, ``scale = max |change| / 127`` (a quarter of the
            bytes plus the scales)
``int4``    the same with 15 levels, ``scale = max |change| / 7``, two values packed in a byte (``q + 8`` in each
            nibble, low nibble first): an eighth of the bytes plus the scales
=========== ============================================================================================================

Integer entries (BatchNorm's ``num_batches_tracked``) always travel as they are. ``int8`` and ``fp16`` keep **error
feedback**: what the encoding lost this round (``change - decoded change``) is returned as a residual, which the edge
keeps in its state and adds to its next change, so nothing is lost for good (Seide et al. 2014; Karimireddy et al.
2019). An ``int8`` payload carries, for each floating key ``k``, ``k`` (int8) and ``k + SCALE_SUFFIX`` (float32); an
``int4`` payload ``k`` (uint8, ``ceil(size / 2)`` packed bytes) and the same scales.

:func:`decode_update` is the server's side: it rebuilds the arrays ``sent + change`` with the dtypes sent, or raises
:class:`PayloadError` naming what is malformed (a missing or extra key, a wrong dtype or shape, a non-finite or
negative scale), so that the strategy drops such an update with the reason, as it drops any bad update.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

ENCODINGS: tuple[str, ...] = ("float32", "fp16", "int8", "int4")
"""Upload encodings, by their run-config name (``upload-encoding``)."""

SCALE_SUFFIX = "|scale"
"""Suffix of the key holding an int8 array's scales (no state-dict key contains ``|``)."""

Arrays = dict[str, npt.NDArray[Any]]


class PayloadError(ValueError):
    """A compressed update that cannot be decoded against what was sent; the message says what and where."""


def _floating(value: npt.NDArray[Any]) -> bool:
    return bool(np.issubdtype(np.asarray(value).dtype, np.floating))


_LEVELS = {"int8": 127, "int4": 7}
"""The largest quantised magnitude of each integer encoding."""


def _scales(change: npt.NDArray[np.float64], levels: int = 127) -> npt.NDArray[np.float32]:
    """One scale per row of dimension 0 (per tensor for 0-d and 1-d arrays): ``max |change| / levels``."""
    if change.ndim <= 1:
        return np.asarray(np.max(np.abs(change), initial=0.0) / levels, dtype=np.float32)
    return (np.max(np.abs(change.reshape(change.shape[0], -1)), axis=1, initial=0.0) / levels).astype(np.float32)


def pack_int4(q: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """Values in [-7, 7] (any shape) as ``ceil(size / 2)`` bytes: ``q + 8`` in each nibble, low nibble first."""
    flat = (np.asarray(q, dtype=np.int16).reshape(-1) + 8).astype(np.uint8)
    if flat.size % 2:
        flat = np.concatenate([flat, np.array([8], dtype=np.uint8)])  # a zero in the unused last nibble
    return np.ascontiguousarray(flat[0::2] | (flat[1::2] << 4))


def unpack_int4(packed: npt.NDArray[np.uint8], shape: tuple[int, ...]) -> npt.NDArray[np.int8]:
    """The values :func:`pack_int4` packed, in ``shape``; :class:`PayloadError` for a wrong length or a nibble 0."""
    size = int(np.prod(shape, dtype=np.int64))
    if packed.dtype != np.uint8 or packed.shape != ((size + 1) // 2,):
        raise PayloadError(f"int4 payload: {packed.dtype} {packed.shape}, expected uint8 ({(size + 1) // 2},)")
    nibbles = np.empty(2 * packed.size, dtype=np.uint8)
    nibbles[0::2], nibbles[1::2] = packed & 0x0F, packed >> 4
    if np.any(nibbles[:size] == 0):
        raise PayloadError("int4 payload: a nibble of 0 (values are stored as q + 8 with q in [-7, 7])")
    return (nibbles[:size].astype(np.int16) - 8).astype(np.int8).reshape(shape)


def _expand(scale: npt.NDArray[Any], ndim: int) -> npt.NDArray[np.float64]:
    """Scales shaped to broadcast over their array."""
    s = np.asarray(scale, dtype=np.float64)
    return s.reshape(s.shape + (1,) * (ndim - 1)) if s.ndim == 1 else s


def encode_update(
    update: Mapping[str, npt.NDArray[Any]],
    sent: Mapping[str, npt.NDArray[Any]],
    encoding: str,
    residual: Mapping[str, npt.NDArray[Any]] | None = None,
) -> tuple[Arrays, Arrays]:
    """The payload an edge uploads for ``update`` (its trained edge arrays) and the residual it keeps.

    Parameters
    ----------
    update, sent
        The edge arrays after and before local training, by key (the same keys and shapes).
    encoding
        One of :data:`ENCODINGS`.
    residual
        What earlier rounds' encoding lost (from the returned residual of the last call), added to this change; keys
        missing or of another shape (the hard classes changed) are taken as zero.

    Returns
    -------
    tuple[Arrays, Arrays]
        The payload (see the module docstring) and the new residual (``{}`` for ``float32``).

    Raises
    ------
    ValueError
        For an unknown encoding, ``update`` and ``sent`` with other keys, shapes or dtypes, or a non-finite update.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown upload encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    if set(update) != set(sent):
        raise ValueError(f"update and sent arrays differ in keys: {sorted(set(update) ^ set(sent))[:5]}")
    if encoding == "float32":
        return {k: np.asarray(v) for k, v in update.items()}, {}
    payload: Arrays = {}
    left: Arrays = {}
    for key, value in update.items():
        value = np.asarray(value)
        if value.shape != np.shape(sent[key]):
            raise ValueError(f"'{key}': update shape {value.shape}, sent {np.shape(sent[key])}")
        if value.dtype != np.asarray(sent[key]).dtype:
            raise ValueError(f"'{key}': update dtype {value.dtype}, sent {np.asarray(sent[key]).dtype}")
        if not _floating(value):
            payload[key] = value
            continue
        change = value.astype(np.float64) - np.asarray(sent[key], dtype=np.float64)
        if not np.all(np.isfinite(change)):
            raise ValueError(f"'{key}': the update has non-finite values; there is no change to encode")
        if residual is not None and key in residual and np.shape(residual[key]) == change.shape:
            change += np.asarray(residual[key], dtype=np.float64)
        if encoding == "fp16":
            coded = change.astype(np.float16)
            payload[key] = coded
            left[key] = (change - coded.astype(np.float64)).astype(np.float32)
            continue
        levels = _LEVELS[encoding]
        scale = _scales(change, levels)
        full = _expand(scale, change.ndim)
        q = np.clip(np.rint(np.divide(change, full, out=np.zeros_like(change), where=full > 0)), -levels, levels)
        payload[key] = q.astype(np.int8) if encoding == "int8" else pack_int4(q)
        payload[key + SCALE_SUFFIX] = scale
        left[key] = (change - q * full).astype(np.float32)
    return payload, left


def decode_update(
    payload: Mapping[str, npt.NDArray[Any]], sent: Mapping[str, npt.NDArray[Any]], encoding: str
) -> Arrays:
    """The edge arrays an encoded ``payload`` stands for: ``sent + change``, in the dtypes of ``sent``.

    ``sent`` holds the edge arrays the server sent (the keys the payload must cover). Raises :class:`PayloadError`
    for anything malformed; the values are not otherwise judged (the strategy's checks run on the result).
    """
    if encoding not in ENCODINGS:
        raise PayloadError(f"unknown upload encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    if encoding == "float32":
        return {k: np.asarray(v) for k, v in payload.items()}
    expected = set(sent)
    if encoding in _LEVELS:
        expected |= {k + SCALE_SUFFIX for k, v in sent.items() if _floating(v)}
    extra, missing = sorted(set(payload) - expected), sorted(expected - set(payload))
    if extra or missing:
        raise PayloadError(f"{encoding} payload: missing key(s) {missing[:5]}, unexpected key(s) {extra[:5]}")
    out: Arrays = {}
    for key, ref in sent.items():
        ref = np.asarray(ref)
        coded = np.asarray(payload[key])
        if encoding == "int4" and _floating(ref):
            try:
                coded = unpack_int4(coded, ref.shape)
            except PayloadError as e:
                raise PayloadError(f"'{key}': {e}") from None
        if coded.shape != ref.shape:
            raise PayloadError(f"{encoding} payload: '{key}' has shape {coded.shape}, expected {ref.shape}")
        if not _floating(ref):
            out[key] = coded
            continue
        want = np.float16 if encoding == "fp16" else np.int8  # int4: unpacked above
        if coded.dtype != want:
            raise PayloadError(f"{encoding} payload: '{key}' has dtype {coded.dtype}, expected {np.dtype(want)}")
        if encoding == "fp16":
            change = coded.astype(np.float64)
        else:
            scale = np.asarray(payload[key + SCALE_SUFFIX])
            rows = () if ref.ndim <= 1 else (ref.shape[0],)
            if scale.dtype != np.float32 or scale.shape != rows:
                raise PayloadError(
                    f"{encoding} payload: '{key}{SCALE_SUFFIX}' is {scale.dtype} {scale.shape}, expected float32 {rows}"
                )
            if not np.all(np.isfinite(scale)) or np.any(scale < 0):
                raise PayloadError(f"{encoding} payload: '{key}{SCALE_SUFFIX}' has a negative or non-finite scale")
            change = coded.astype(np.float64) * _expand(scale, ref.ndim)
        out[key] = np.asarray((ref.astype(np.float64) + change).astype(ref.dtype))
    return out


def payload_bytes(payload: Mapping[str, npt.NDArray[Any]]) -> int:
    """Bytes of the arrays' data (what dominates a message)."""
    return int(sum(np.asarray(v).nbytes for v in payload.values()))
