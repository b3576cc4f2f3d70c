"""Where an edge's complex inputs go during a federation's evaluation.

* the run config names a ``cloud-url``: the real cloud offload service over HTTPS (:class:`RemoteCloud`, with its
  batching, deadline, retries and fallback), reached with credentials from the **SuperNode's node config**, never from
  the run config (which every node of the run receives, and the SuperLink stores):

  ================================  =====================================================================
  ``cloud-ca``                      CA certificate (PEM) that signed the service's certificate
  ``cloud-token``                   bearer token; or ``cloud-token-file`` (a file holding it); else
                                    ``$MEANET_CLOUD_TOKEN`` in the SuperNode's environment
  ``cloud-client-cert``/``-key``    the edge's certificate and key, for a service with mutual TLS
  ``cloud-timeout``                 deadline of one offload request in seconds, retries included (default 2)
  ================================  =====================================================================

* else the service the cloud server runs on loopback for a federation without ``cloud-url`` (a simulation, a loopback
  deployment), whose URL the evaluation instruction names (``offload-url``): the same :class:`RemoteCloud`, with the
  token of the node config or else the run's ``REPORT_DIR/offload-token`` (:func:`loopback_cloud`);
* else the cloud model shipped in the evaluation instruction (tests that build one by hand): an in-process
  :class:`LocalCloud`;
* else nowhere: :class:`EdgeOnly` keeps the edge's own answer for every input the policy would offload, flagged as a
  fallback.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fl_client.offload import RemoteCloud
from fl_client.predict import EdgeOnly, connect_cloud
from meanet_core.inference.engine import CloudBackend
from meanet_core.keys import OFFLOAD_TOKEN_FILE
from meanet_core.models import MEANet

log = logging.getLogger("meanet.edge")

REMOTE, LOCAL, NONE = "remote", "local", "none"
"""Where the complex inputs went (the evaluation reply's ``edge-info`` ``cloud`` entry)."""


def _text(node_config: Mapping[str, Any], key: str) -> str | None:
    value = node_config.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise TypeError(f"node config '{key}' must be a string (a path or a token); got {type(value).__name__}")
    return value


def cloud_options(node_config: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`RemoteCloud` keyword arguments from a SuperNode's node config (see the module's table)."""
    token = _text(node_config, "cloud-token")
    token_file = _text(node_config, "cloud-token-file")
    if token is not None and token_file is not None:
        raise ValueError("the node config names both 'cloud-token' and 'cloud-token-file'; keep one")
    if token_file is not None:
        try:
            token = Path(token_file).expanduser().read_text().strip()
        except OSError as e:
            raise ValueError(f"node config 'cloud-token-file': cannot read {token_file}: {e}") from e
    paths = {
        "ca_certfile": _text(node_config, "cloud-ca"),
        "client_certfile": _text(node_config, "cloud-client-cert"),
        "client_keyfile": _text(node_config, "cloud-client-key"),
    }
    options: dict[str, Any] = {k: str(Path(v).expanduser()) for k, v in paths.items() if v is not None}
    if token is not None:
        options["token"] = token
    timeout = node_config.get("cloud-timeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float | str):
            raise TypeError(f"node config 'cloud-timeout' must be a number of seconds; got {timeout!r}")
        options["timeout_s"] = float(timeout)
    return options


def remote_cloud(url: str, model: MEANet, node_config: Mapping[str, Any]) -> RemoteCloud:
    """The cloud offload service at ``url`` for ``model``, checked once (:func:`fl_client.predict.connect_cloud`):
    a service that is down is not an error (its inputs fall back), one that refuses the credentials, whose certificate
    does not verify, or that serves another run's cloud model is (``ValueError``)."""
    return connect_cloud(url, model, **cloud_options(node_config))


def loopback_cloud(url: str, model: MEANet, node_config: Mapping[str, Any], report_dir: Path) -> CloudBackend:
    """The server's loopback offload service at ``url``, with the node config's credentials, else the run's token
    file; :class:`EdgeOnly` when there is neither (an edge on another machine: it cannot reach that loopback)."""
    host = urlsplit(url).hostname
    if not url.startswith("http://") or host not in ("127.0.0.1", "::1", "localhost"):
        raise ValueError(f"the instruction's offload-url {url!r} is not a plain-HTTP loopback address; refused")
    options = {**cloud_options(node_config), "allow_insecure": True}  # the bytes never leave the machine
    if "token" not in options:
        try:
            options["token"] = (report_dir / OFFLOAD_TOKEN_FILE).read_text().strip()
        except OSError:
            log.warning("no token for the cloud's loopback offload service %s: answering every input here", url)
            return EdgeOnly()
    return connect_cloud(url, model, **options)


def backend_name(cloud: CloudBackend) -> str:
    """``remote``, ``local`` or ``none``: where a backend sends the complex inputs."""
    if isinstance(cloud, RemoteCloud):
        return REMOTE
    if isinstance(cloud, EdgeOnly):
        return NONE
    return LOCAL


__all__ = ["LOCAL", "NONE", "REMOTE", "backend_name", "cloud_options", "loopback_cloud", "remote_cloud"]
