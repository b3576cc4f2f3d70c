"""The edge's offload client: the cloud service as a ``CloudBackend`` of the adaptive inference engine.

``AdaptiveEngine(model, policy, RemoteCloud("https://cloud:8443", token=..., ca_certfile="ca.pem"))`` sends the complex
samples of each inference batch in one request (a uint8 :mod:`meanet_edge.payload` frame, byte for byte what
:mod:`meanet_core.wire.payload` writes for tensors). Each call has a deadline; transient failures (timeouts, refused
connections, 408/429/5xx answers) are retried a bounded number of times with exponential back-off inside that deadline.
When the cloud still does not answer, or answers with an error, the reply marks every sample ``ok=False``: the engine
keeps the edge's own best prediction for them and flags them as fallbacks, so no prediction is lost and the caller knows
which ones the cloud did not make. After ``circuit_failures`` failed calls in a row the client stops trying for
``circuit_cooldown_s`` (fallbacks are then immediate), then tries again.

All of that is :class:`meanet_edge.cloud.CloudClient`, the torch-free client a device runs on numpy arrays; this
module only adds the tensor side: :meth:`RemoteCloud.classify` takes a tensor (float images in [0, 1] are converted
to uint8) and answers a :class:`~meanet_core.inference.engine.CloudReply`.
"""

from __future__ import annotations

import torch

from meanet_core.inference.engine import CloudBackend, CloudReply, to_uint8
from meanet_edge.cloud import RETRYABLE_STATUS, TOKEN_ENV, CloudClient, OffloadStats

__all__ = ["RETRYABLE_STATUS", "TOKEN_ENV", "OffloadStats", "RemoteCloud"]


class RemoteCloud(CloudClient):
    """A ``CloudBackend`` that classifies over HTTPS with the cloud offload service (``meanet cloud serve``).

    Its arguments, ``stats``, ``info``, ``macs_per_image``, ``last_error``, ``refresh_info()``, ``health()`` and
    ``close()`` are :class:`~meanet_edge.cloud.CloudClient`'s (see there).
    """

    def classify(self, images: torch.Tensor) -> CloudReply:
        """Labels for uint8 images (n, C, H, W); ``ok`` is False everywhere when the cloud did not answer."""
        answer = self.classify_array(to_uint8(images.detach().cpu()).contiguous().numpy())
        return CloudReply(torch.from_numpy(answer.labels), torch.from_numpy(answer.ok))


def _is_a_cloud_backend(cloud: RemoteCloud) -> CloudBackend:
    return cloud  # mypy checks that RemoteCloud fits the engine's CloudBackend protocol, as LocalCloud does
