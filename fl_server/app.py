"""The cloud as a Flower ServerApp: ``flwr run`` starts ``app`` (see ``[tool.flwr.app.components]``)."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fl_server.cloud import CloudServer
from meanet_core.config import FederationConfig

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Parse the run config once, then run the experience/round loop."""
    cfg = FederationConfig.from_run_config(dict(context.run_config))
    CloudServer(cfg, run_id=context.run_id, log_fn=lambda s: print(f"[meanet] {s}", flush=True)).run(grid)
