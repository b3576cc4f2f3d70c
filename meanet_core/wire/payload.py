"""The binary payload of the cloud offload service, for torch tensors: the frame of :mod:`meanet_edge.payload`.

The frame (an 18-byte little-endian header, then the raw ``(n, c, h, w)`` bytes) is written and read by
:mod:`meanet_edge.payload` alone, in numpy, so that a device without torch and the service agree byte for byte. This
module keeps the tensor API that the service and the torch edge client call: it converts tensors to numpy arrays
and back, and re-exports the frame's constants, :class:`Header`, :func:`decode_header`, :func:`body_limit` and
:class:`PayloadError` (a ``ValueError`` that says what was expected, what was found and the fix).
"""

from __future__ import annotations

import torch

from meanet_edge import payload as _frame
from meanet_edge.payload import (
    _HEADER,  # noqa: F401  (tests pack raw headers with it)
    DTYPE_FLOAT32,
    DTYPE_INT32,
    DTYPE_NAMES,
    DTYPE_UINT8,
    HEADER_BYTES,
    IMAGES_CONTENT_TYPE,
    KIND_IMAGES,
    KIND_LABELS,
    LABELS_CONTENT_TYPE,
    MAGIC,
    VERSION,
    Buffer,
    Header,
    PayloadError,
    body_limit,
    decode_header,
)

__all__ = [
    "DTYPE_FLOAT32",
    "DTYPE_INT32",
    "DTYPE_NAMES",
    "DTYPE_UINT8",
    "HEADER_BYTES",
    "IMAGES_CONTENT_TYPE",
    "KIND_IMAGES",
    "KIND_LABELS",
    "LABELS_CONTENT_TYPE",
    "MAGIC",
    "VERSION",
    "Header",
    "PayloadError",
    "body_limit",
    "decode_header",
    "decode_images",
    "decode_labels",
    "encode_images",
    "encode_labels",
]

_TORCH_DTYPES = (torch.uint8, torch.float32, torch.int32)


def encode_images(images: torch.Tensor) -> bytes:
    """A request frame for a batch ``(n, C, H, W)``; uint8 is what the service accepts (float32 is framed too)."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"encode_images takes a torch.Tensor (n, C, H, W); got {type(images).__name__}")
    if images.dtype not in _TORCH_DTYPES:
        raise TypeError(f"the payload carries uint8, float32 or int32 tensors; got {images.dtype}")
    return _frame.encode_images(images.detach().cpu().contiguous().numpy())


def encode_labels(labels: torch.Tensor) -> bytes:
    """A reply frame for predicted classes ``(n,)`` (sent as int32 ``(n, 1, 1, 1)``)."""
    if labels.dim() != 1:
        raise ValueError(f"labels must have shape (n,); got {tuple(labels.shape)}")
    return _frame.encode_labels(labels.detach().cpu().to(torch.int64).numpy())


def decode_images(buf: Buffer) -> torch.Tensor:
    """A request frame -> a ``(n, c, h, w)`` tensor of its dtype (uint8 or float32); :class:`PayloadError` else."""
    return torch.from_numpy(_frame.decode_images(buf))


def decode_labels(buf: Buffer, expected: int | None = None) -> torch.Tensor:
    """A reply frame -> int64 labels ``(n,)``; checks ``n == expected`` when given."""
    return torch.from_numpy(_frame.decode_labels(buf, expected))
