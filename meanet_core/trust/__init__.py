"""The trust room: what makes a model or a connection something an edge can believe.

- :mod:`~meanet_core.trust.broadcast`: the split of a MEANet state into main and edge parts, and its digest;
- :mod:`~meanet_core.trust.signing`: signed broadcasts (Ed25519), positions that refuse replays;
- :mod:`~meanet_core.trust.certs`: everything a secure deployment needs, in one folder (``meanet certs``);
- :mod:`~meanet_core.trust.tls`: throwaway TLS material for tests and a first try on one machine.

Imports run one way: this room may import ``models`` and the record keys.
"""

from meanet_core.trust.broadcast import digest, edge_state, main_state
from meanet_core.trust.certs import CertsError, write_deployment_keys
from meanet_core.trust.signing import BroadcastRejected, sign_broadcast, verify_broadcast
from meanet_core.trust.tls import write_dev_certificates

__all__ = [
    "BroadcastRejected",
    "CertsError",
    "digest",
    "edge_state",
    "main_state",
    "sign_broadcast",
    "verify_broadcast",
    "write_deployment_keys",
    "write_dev_certificates",
]
