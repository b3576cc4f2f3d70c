"""The cloud offload service, a process of its own (``meanet cloud serve``): the newest cloud model behind HTTPS.

* :mod:`fl_server.offload.service`: the FastAPI app, its checks and how it runs (uvicorn, TLS);
* :mod:`fl_server.offload.batching`: micro-batching;
* :mod:`fl_server.offload.metrics`: its metrics (Prometheus text at ``/metrics``, the JSON summary at
  ``/metrics.json``), in a registry of each service's own;
* :mod:`fl_server.offload.handoff`: the models it serves: a run's cloud model, the serving file the ServerApp writes
  after each cloud training, and the watcher that swaps the served model when it changes.

Importing this package imports nothing heavy: the ServerApp imports :mod:`~fl_server.offload.handoff` only.
"""
