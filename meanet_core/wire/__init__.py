"""The wire formats, pure numpy and bytes, shared by both ends of a connection.

- :mod:`~meanet_core.wire.compression`: the compressed edge update an edge uploads (float32, fp16, int8, int4);
- :mod:`~meanet_core.wire.broadcast_delta`: the compressed broadcast, the change from the state an edge holds;
- :mod:`~meanet_core.wire.payload`: the binary payload of the cloud offload service (header, then tensor bytes), for
  torch tensors over :mod:`meanet_edge.payload`, its one numpy implementation.

Each module has its own ``PayloadError``; import it from the module. This room imports nothing else of
``meanet_core`` (``meanet_edge``, the torch-free layer below it, is allowed).
"""

from meanet_core.wire.broadcast_delta import broadcast_change, decode_broadcast, encode_broadcast
from meanet_core.wire.compression import ENCODINGS, decode_update, encode_update, payload_bytes
from meanet_core.wire.payload import decode_images, encode_images

__all__ = [
    "ENCODINGS",
    "broadcast_change",
    "decode_broadcast",
    "decode_images",
    "decode_update",
    "encode_broadcast",
    "encode_images",
    "encode_update",
    "payload_bytes",
]
