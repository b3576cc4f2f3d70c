"""The binary payload of the cloud offload service: a small fixed header, then the raw array bytes (numpy only).

A request carries a batch of images, a reply the predicted labels; both are one array ``(n, c, h, w)`` framed by
the same 18-byte little-endian header::

    offset  size  field
    0       4     magic    b"MEAN"
    4       1     version  1
    5       1     kind     1 = images (request), 2 = labels (reply)
    6       1     dtype    1 = uint8, 2 = float32, 3 = int32
    7       1     flags    0 (reserved)
    8       4     n        u32, number of images / labels (>= 1)
    12      2     c        u16, channels  (1 for labels)
    14      2     h        u16, height    (1 for labels)
    16      2     w        u16, width     (1 for labels)
    18      ...   n*c*h*w items of dtype, C order, little-endian

A 32x32 RGB image costs 3,072 bytes (JSON lists of floats would cost ~5x more and a parse). The decoders never trust
the header: every malformed input (short header, foreign magic, unknown version/kind/dtype, zero dimension, truncated
or over-long body) raises :class:`PayloadError`, a ``ValueError`` that says what was expected, what was found and
the fix.

This is the one implementation of the frame: the device speaks it with numpy arrays (here), the service and the
torch edge client through :mod:`meanet_core.wire.payload`, which converts tensors and calls these functions, so both
ends write the same bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

MAGIC = b"MEAN"
VERSION = 1
KIND_IMAGES, KIND_LABELS = 1, 2
DTYPE_UINT8, DTYPE_FLOAT32, DTYPE_INT32 = 1, 2, 3
IMAGES_CONTENT_TYPE = "application/vnd.meanet.images"
LABELS_CONTENT_TYPE = "application/vnd.meanet.labels"

_HEADER = struct.Struct("<4sBBBBIHHH")
HEADER_BYTES = _HEADER.size  # 18
_KIND_NAMES = {KIND_IMAGES: "images", KIND_LABELS: "labels"}
_NUMPY_DTYPES: dict[int, np.dtype[Any]] = {
    DTYPE_UINT8: np.dtype("u1"),
    DTYPE_FLOAT32: np.dtype("<f4"),
    DTYPE_INT32: np.dtype("<i4"),
}
_CODES = {(dt.kind, dt.itemsize): code for code, dt in _NUMPY_DTYPES.items()}  # any byte order of the three
DTYPE_NAMES = {DTYPE_UINT8: "uint8", DTYPE_FLOAT32: "float32", DTYPE_INT32: "int32"}
_INT32 = np.iinfo(np.int32)

Buffer: TypeAlias = bytes | bytearray | memoryview


class PayloadError(ValueError):
    """A payload that is not a well-formed MEANet frame (the service answers 400 with this message)."""


@dataclass(frozen=True)
class Header:
    """The decoded fixed header of one frame."""

    version: int
    kind: int
    dtype: int
    n: int
    c: int
    h: int
    w: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.h, self.w)

    @property
    def body_bytes(self) -> int:
        return self.n * self.c * self.h * self.w * _NUMPY_DTYPES[self.dtype].itemsize

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES[self.dtype]


def body_limit(max_images: int, channels: int, side: int) -> int:
    """Bytes of the largest well-formed uint8 request: header + ``max_images`` images of ``channels x side x side``."""
    return HEADER_BYTES + max_images * channels * side * side


# -------------------------------------------------------------------------------------------------- encoding
def _encode(array: npt.NDArray[Any], kind: int) -> bytes:
    if not isinstance(array, np.ndarray):
        raise TypeError(f"the payload carries numpy arrays (n, c, h, w); got {type(array).__name__}")
    code = _CODES.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise TypeError(f"the payload carries uint8, float32 or int32 arrays; got {array.dtype}")
    if array.ndim != 4:
        raise ValueError(f"the payload carries (n, c, h, w) arrays; got shape {array.shape}")
    n, c, h, w = (int(s) for s in array.shape)
    if n < 1 or n > 0xFFFFFFFF or not all(1 <= s <= 0xFFFF for s in (c, h, w)):
        raise ValueError(f"shape {array.shape} does not fit the header (1 <= n < 2**32, 1 <= c, h, w < 2**16)")
    data = np.ascontiguousarray(array, dtype=_NUMPY_DTYPES[code])
    return _HEADER.pack(MAGIC, VERSION, kind, code, 0, n, c, h, w) + data.tobytes()


def encode_images(images: npt.NDArray[Any]) -> bytes:
    """A request frame for a batch ``(n, C, H, W)``; uint8 is what the service accepts (float32 is framed too)."""
    return _encode(images, KIND_IMAGES)


def encode_labels(labels: npt.NDArray[np.integer[Any]]) -> bytes:
    """A reply frame for predicted classes ``(n,)`` of any integer dtype (sent as int32 ``(n, 1, 1, 1)``)."""
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"labels must be a numpy array of shape (n,); got {type(labels).__name__}")
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (n,); got {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers (class indices); got {labels.dtype}")
    if labels.size and (int(labels.min()) < _INT32.min or int(labels.max()) > _INT32.max):
        raise ValueError(f"labels must fit int32; found {int(labels.min())}..{int(labels.max())}")
    return _encode(labels.astype(np.int32).reshape(-1, 1, 1, 1), KIND_LABELS)


# -------------------------------------------------------------------------------------------------- decoding
def decode_header(buf: Buffer) -> Header:
    """Parse and check the fixed header of a frame (the body length is checked by the decoders)."""
    if len(buf) < HEADER_BYTES:
        raise PayloadError(
            f"payload too short for its header: expected at least {HEADER_BYTES} bytes, found {len(buf)}; "
            "encode requests with encode_images (meanet_edge.payload for arrays, meanet_core.wire.payload for tensors)"
        )
    magic, version, kind, dtype, flags, n, c, h, w = _HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise PayloadError(
            f"bad magic: expected {MAGIC!r}, found {bytes(magic)!r}; the body is not a MEANet payload "
            "(encode it with encode_images of meanet_edge.payload or meanet_core.wire.payload, not JSON or an "
            "image file)"
        )
    if version != VERSION:
        raise PayloadError(f"unsupported payload version {version}: this side speaks version {VERSION}; upgrade both")
    if kind not in _KIND_NAMES:
        raise PayloadError(f"unknown payload kind {kind}: expected {KIND_IMAGES} (images) or {KIND_LABELS} (labels)")
    if dtype not in _NUMPY_DTYPES:
        codes = ", ".join(f"{k} ({v})" for k, v in DTYPE_NAMES.items())
        raise PayloadError(f"unknown dtype code {dtype}: expected one of {codes}")
    if flags != 0:
        raise PayloadError(f"reserved flags byte must be 0; found {flags}")
    if min(n, c, h, w) == 0:
        raise PayloadError(f"empty tensor: shape (n, c, h, w) = {(n, c, h, w)} has a zero dimension; send >= 1 image")
    return Header(version, kind, dtype, n, c, h, w)


def _decode(buf: Buffer, kind: int) -> tuple[Header, npt.NDArray[Any]]:
    header = decode_header(buf)
    if header.kind != kind:
        raise PayloadError(
            f"expected a {_KIND_NAMES[kind]} frame (kind {kind}), found {_KIND_NAMES[header.kind]} (kind {header.kind})"
        )
    found = len(buf) - HEADER_BYTES
    if found != header.body_bytes:
        what = "truncated body" if found < header.body_bytes else "trailing bytes after the body"
        raise PayloadError(
            f"{what}: the header declares {header.dtype_name} {header.shape} = {header.body_bytes} bytes, "
            f"found {found}; send the whole frame exactly as encode_images wrote it"
        )
    array = np.frombuffer(buf, dtype=_NUMPY_DTYPES[header.dtype], offset=HEADER_BYTES).reshape(header.shape)
    return header, array.astype(array.dtype.newbyteorder("="), copy=True)  # native order, writable, own memory


def decode_images(buf: Buffer) -> npt.NDArray[Any]:
    """A request frame -> a ``(n, c, h, w)`` array of its dtype (uint8 or float32); :class:`PayloadError` else."""
    return _decode(buf, KIND_IMAGES)[1]


def decode_labels(buf: Buffer, expected: int | None = None) -> npt.NDArray[np.int64]:
    """A reply frame -> int64 labels ``(n,)``; checks ``n == expected`` when given."""
    header, array = _decode(buf, KIND_LABELS)
    if header.dtype != DTYPE_INT32 or header.shape[1:] != (1, 1, 1):
        raise PayloadError(f"a labels frame holds int32 (n, 1, 1, 1); found {header.dtype_name} {header.shape}")
    if expected is not None and header.n != expected:
        raise PayloadError(f"the reply holds {header.n} labels for {expected} images sent")
    return array.reshape(-1).astype(np.int64)
