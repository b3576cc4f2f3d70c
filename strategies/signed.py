"""The cloud's strategy with signed broadcasts: :class:`~strategies.MEANetStrategy`, plus a signature on every
instruction it sends (training and evaluation), made just before Flower builds the messages.

Signing happens here, in ``configure_train``/``configure_evaluate``, because that is where the exact arrays of each
round are known (the edge blocks change every round: they are the last aggregate). What the signature covers and
the replay rule are described in :mod:`meanet_core.trust.signing`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from meanet_core import keys
from meanet_core.trust.signing import sign_broadcast
from strategies.meanet_strategy import MEANetStrategy


def numpy_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """An ArrayRecord's arrays as numpy, exactly as an edge decodes them (what the signature digests)."""
    return {name: array.numpy() for name, array in record.items()}


class SignedMEANetStrategy(MEANetStrategy):
    """:class:`~strategies.MEANetStrategy` that signs every broadcast with the cloud's Ed25519 key.

    Parameters
    ----------
    signing_key : Ed25519PrivateKey
        The cloud's key; the edges pin its public key.
    run_id : int
        The Flower run id, bound into every signature (a broadcast of another run does not verify).
    **kwargs
        Passed to :class:`~strategies.MEANetStrategy`.

    Attributes
    ----------
    round_offset : int
        Rounds of the current experience already done before this ``start`` (a resumed server): the signed round is
        ``round_offset + server_round``. The experience is the instruction config's ``experience`` entry.
    """

    def __init__(self, signing_key: Ed25519PrivateKey, *, run_id: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.signing_key = signing_key
        self.run_id = run_id
        self.round_offset = 0

    def with_round(self, server_round: int, config: ConfigRecord) -> ConfigRecord:
        """A copy of ``config`` with the signed round (``round_offset + server_round``)."""
        with_round = ConfigRecord(dict(config.items()))
        with_round[keys.BROADCAST_ROUND] = self.round_offset + server_round
        return with_round

    def signed_config(
        self,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        purpose: str,
        cloud_arrays: ArrayRecord | None = None,
    ) -> ConfigRecord:
        """A copy of ``config`` with the signed round and the signature of (arrays, config, purpose, run) added."""
        return self._sign(arrays, self.with_round(server_round, config), purpose, cloud_arrays)

    def seal(self, arrays: ArrayRecord, config: ConfigRecord, purpose: str) -> ConfigRecord:
        """Sign an instruction as sent (the full state or the change, :mod:`strategies.broadcasts`): the signature
        covers exactly its arrays and config, the digests of the state to rebuild and of its base included, at the
        round :meth:`with_round` set, and the cloud model of an evaluation instruction when it rides along."""
        return self._sign(arrays, config, purpose, self.cloud_arrays if purpose == "evaluate" else None)

    def _sign(
        self, arrays: ArrayRecord, config: ConfigRecord, purpose: str, cloud_arrays: ArrayRecord | None
    ) -> ConfigRecord:
        signed = ConfigRecord({k: v for k, v in config.items() if k != keys.BROADCAST_SIGNATURE})
        signed[keys.BROADCAST_SIGNATURE] = sign_broadcast(
            self.signing_key,
            numpy_arrays(arrays),
            dict(signed),
            purpose=purpose,
            run_id=self.run_id,
            cloud_arrays=numpy_arrays(cloud_arrays) if cloud_arrays is not None else None,
        )
        return signed

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return super().configure_train(server_round, arrays, self.with_round(server_round, config), grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if not self.evaluates(server_round):
            return []  # no client evaluation this round: nothing to sign
        # each instruction is signed as built (seal); MEANetStrategy adds `cloud_arrays`, which the signature covers
        return super().configure_evaluate(server_round, arrays, self.with_round(server_round, config), grid)
