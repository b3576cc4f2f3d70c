"""The binary payload of the cloud offload service: a small fixed header, then the raw tensor bytes.

A request carries a batch of images, a reply the predicted labels; both are one tensor ``(n, c, h, w)`` framed by
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
the fix. This module is pure (numpy + torch only) so that the edge client and the service share it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import torch

MAGIC = b"MEAN"
VERSION = 1
KIND_IMAGES, KIND_LABELS = 1, 2
DTYPE_UINT8, DTYPE_FLOAT32, DTYPE_INT32 = 1, 2, 3
IMAGES_CONTENT_TYPE = "application/vnd.meanet.images"
LABELS_CONTENT_TYPE = "application/vnd.meanet.labels"

_HEADER = struct.Struct("<4sBBBBIHHH")
HEADER_BYTES = _HEADER.size  # 18
_KIND_NAMES = {KIND_IMAGES: "images", KIND_LABELS: "labels"}
_NUMPY_DTYPES: dict[int, np.dtype] = {
    DTYPE_UINT8: np.dtype("u1"),
    DTYPE_FLOAT32: np.dtype("<f4"),
    DTYPE_INT32: np.dtype("<i4"),
}
_TORCH_TO_CODE = {torch.uint8: DTYPE_UINT8, torch.float32: DTYPE_FLOAT32, torch.int32: DTYPE_INT32}
DTYPE_NAMES = {DTYPE_UINT8: "uint8", DTYPE_FLOAT32: "float32", DTYPE_INT32: "int32"}


class PayloadError(ValueError):
    """A payload that is not a well-formed MEANet tensor frame (the service answers 400 with this message)."""


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
def _encode(tensor: torch.Tensor, kind: int) -> bytes:
    code = _TORCH_TO_CODE.get(tensor.dtype)
    if code is None:
        raise TypeError(f"the payload carries uint8, float32 or int32 tensors; got {tensor.dtype}")
    if tensor.dim() != 4:
        raise ValueError(f"the payload carries (n, c, h, w) tensors; got shape {tuple(tensor.shape)}")
    n, c, h, w = (int(s) for s in tensor.shape)
    if n < 1 or n > 0xFFFFFFFF or not all(1 <= s <= 0xFFFF for s in (c, h, w)):
        raise ValueError(f"shape {tuple(tensor.shape)} does not fit the header (1 <= n < 2**32, 1 <= c, h, w < 2**16)")
    data = tensor.detach().cpu().contiguous().numpy().astype(_NUMPY_DTYPES[code], copy=False)
    return _HEADER.pack(MAGIC, VERSION, kind, code, 0, n, c, h, w) + data.tobytes()


def encode_images(images: torch.Tensor) -> bytes:
    """A request frame for a batch ``(n, C, H, W)``; uint8 is what the service accepts (float32 is framed too)."""
    return _encode(images, KIND_IMAGES)


def encode_labels(labels: torch.Tensor) -> bytes:
    """A reply frame for predicted classes ``(n,)`` (sent as int32 ``(n, 1, 1, 1)``)."""
    if labels.dim() != 1:
        raise ValueError(f"labels must have shape (n,); got {tuple(labels.shape)}")
    return _encode(labels.to(torch.int32).view(-1, 1, 1, 1), KIND_LABELS)


# -------------------------------------------------------------------------------------------------- decoding
def decode_header(buf: bytes | bytearray | memoryview) -> Header:
    """Parse and check the fixed header of a frame (the body length is checked by the decoders)."""
    if len(buf) < HEADER_BYTES:
        raise PayloadError(
            f"payload too short for its header: expected at least {HEADER_BYTES} bytes, found {len(buf)}; "
            "encode requests with meanet_core.wire.payload.encode_images"
        )
    magic, version, kind, dtype, flags, n, c, h, w = _HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise PayloadError(
            f"bad magic: expected {MAGIC!r}, found {bytes(magic)!r}; the body is not a MEANet payload "
            "(encode it with meanet_core.wire.payload.encode_images, not JSON or an image file)"
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


def _decode(buf: bytes | bytearray | memoryview, kind: int) -> tuple[Header, torch.Tensor]:
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
    return header, torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=True))


def decode_images(buf: bytes | bytearray | memoryview) -> torch.Tensor:
    """A request frame -> a ``(n, c, h, w)`` tensor of its dtype (uint8 or float32); :class:`PayloadError` else."""
    return _decode(buf, KIND_IMAGES)[1]


def decode_labels(buf: bytes | bytearray | memoryview, expected: int | None = None) -> torch.Tensor:
    """A reply frame -> int64 labels ``(n,)``; checks ``n == expected`` when given."""
    header, tensor = _decode(buf, KIND_LABELS)
    if header.dtype != DTYPE_INT32 or header.shape[1:] != (1, 1, 1):
        raise PayloadError(f"a labels frame holds int32 (n, 1, 1, 1); found {header.dtype_name} {header.shape}")
    if expected is not None and header.n != expected:
        raise PayloadError(f"the reply holds {header.n} labels for {expected} images sent")
    return tensor.view(-1).to(torch.int64)
