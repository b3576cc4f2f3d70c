"""The offload service a federation without ``cloud-url`` starts for its own edges: the real service, on loopback.

A simulation's edges (and a loopback deployment's) then offload exactly as deployed edges do: through
:class:`~fl_client.offload.RemoteCloud` over HTTP to ``meanet cloud serve``'s app, which follows the run's serving
file (``REPORT_DIR/cloud-serving.pt``) as the cloud retrains. No cloud model rides in any broadcast.

The service listens on ``127.0.0.1`` (plain HTTP: the bytes never leave the machine) and checks a bearer token made
for the run, written to ``REPORT_DIR/offload-token`` (mode 0600). The evaluation instruction names the service's URL
(``offload-url``, signed with the rest); an edge reads the token from its node config (``cloud-token``/
``cloud-token-file``) or else from that file, which an edge on another machine does not have: it then answers every
input itself, as an edge with no cloud does.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Any

import httpx

from fl_server.offload.handoff import load_served
from fl_server.offload.service import BackgroundServer, ServiceConfig, create_app
from meanet_core.keys import OFFLOAD_TOKEN_FILE as TOKEN_FILE

log = logging.getLogger("meanet.server")


class LoopbackOffload:
    """The run's offload service on ``127.0.0.1`` (a daemon thread of the server process), started on first use."""

    def __init__(self, report_dir: Path, serving_path: Path) -> None:
        self.report_dir, self.serving_path = report_dir, serving_path
        self.server: BackgroundServer | None = None
        self.token = ""

    @property
    def url(self) -> str:
        """The service's URL, starting it if needed (the serving file must exist)."""
        if self.server is None:
            self.token = secrets.token_urlsafe(32)
            path = self.report_dir / TOKEN_FILE
            path.unlink(missing_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.token)
            app = create_app(load_served(self.serving_path), ServiceConfig(token=self.token), watch=self.serving_path)
            self.server = BackgroundServer(app).start()
            log.info("offload service for the edges on %s (following %s)", self.server.url, self.serving_path)
        return self.server.url

    def metrics(self) -> dict[str, Any]:
        """The service's JSON summary, ``/metrics.json`` (``{}`` before it started)."""
        if self.server is None:
            return {}
        auth = {"Authorization": f"Bearer {self.token}"}
        answer = httpx.get(f"{self.server.url}/metrics.json", headers=auth, timeout=10)
        answer.raise_for_status()
        return dict(answer.json())

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


__all__ = ["TOKEN_FILE", "LoopbackOffload"]
