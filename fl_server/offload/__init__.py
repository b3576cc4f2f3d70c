"""The cloud offload service, a process of its own (``meanet cloud serve``): the newest cloud model behind HTTPS.

* :mod:`fl_server.offload.service`: the FastAPI app, its checks and how it runs (uvicorn, TLS);
* :mod:`fl_server.offload.batching`: micro-batching and metrics;
* :mod:`fl_server.offload.handoff`: the serving file the ServerApp writes after each cloud training, and the
  watcher that swaps the served model when it changes.

Importing this package imports nothing heavy: the ServerApp imports :mod:`~fl_server.offload.handoff` only.
"""
