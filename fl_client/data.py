"""The edge's view of the data: which partition is its own, and where its training and test images come from.

Two sources (:func:`edge_data`):

* the SuperNode's own images, when its node config names them (``--node-config 'data-dir="/data/edge-3"'``; layout in
  :mod:`fl_client.local_data`): only that path is read, never the run's shared dataset. The number of classes and the
  normalisation come from the broadcast model state (``hard_index``, ``normalize.mean``/``normalize.std``), the class
  names from the broadcast's ``class-names`` (else the run config's dataset), the image side from the run config's
  dataset;
* otherwise (simulation) this client's ``partition-id`` slice of the shared stream and its share of the test
  images (:func:`meanet_core.data.streams.edge_slice`: exactly what the cloud's
  :func:`~meanet_core.data.streams.stream_for`
  deals this client, read without building the stream: only this client's rows of the source).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fl_client.local_data import class_names_for, federation_image_size, node_data_dir, read_edge_data
from meanet_core.config import FederationConfig
from meanet_core.data import streams
from meanet_core.data.streams import EdgeView


def client_index(node_config: Mapping[str, object], cfg: FederationConfig) -> int:
    """This edge's index: its ``partition-id`` (``--node-config "partition-id=I num-partitions=N"``; simulation sets
    both).

    * An edge without its own images takes slice ``I`` of the shared stream, so ``num-partitions`` must equal the
      run's ``num-clients`` and ``I`` lie below it.
    * An edge with its own ``data-dir`` reads nothing of the shared stream: its ``partition-id`` is only its name in
      the reports and its training seed (any distinct integer >= 0), ``num-partitions`` is not needed, and the fleet
      is whoever connects, however many (``num-clients`` counts only the shared stream's slices).

    Raises
    ------
    ValueError
        Naming the node config and what to start the SuperNode with.
    """
    own = node_data_dir(node_config) is not None
    try:
        index = int(node_config["partition-id"])  # type: ignore[call-overload]
        count = None if own else int(node_config["num-partitions"])  # type: ignore[call-overload]
    except (KeyError, TypeError, ValueError) as e:
        wanted = "'partition-id=I' (any distinct I >= 0: its name in the reports)" if own else (
            f"'partition-id=I num-partitions={cfg.num_clients}'")  # fmt: skip
        raise ValueError(
            f"this SuperNode has no valid partition: start it with --node-config {wanted} (got node config "
            f"{dict(node_config)})"
        ) from e
    if index < 0:
        raise ValueError(f"node config partition-id={index}: an edge's partition-id must be >= 0")
    if count is not None and (count != cfg.num_clients or index >= count):
        raise ValueError(
            f"node config partition-id={index} num-partitions={count} does not fit the run's "
            f"num-clients={cfg.num_clients}: an edge without its own data-dir takes a slice of the shared stream, so "
            f"give each of the {cfg.num_clients} slices' SuperNodes a distinct partition-id below {cfg.num_clients} "
            f"(or name the device's own images with data-dir)"
        )
    return index


def edge_data(
    purpose: str,
    config: Mapping[str, Any],
    node_config: Mapping[str, Any],
    cfg: FederationConfig,
    client: int,
    experience: int,
    state: Mapping[str, torch.Tensor],
) -> EdgeView:
    """The images this edge trains on (``purpose="train"``) or evaluates on (``"evaluate"``) at ``experience``.

    ``config`` is the (verified) instruction's config, ``state`` the broadcast MEANet state.
    """
    if purpose not in ("train", "evaluate"):
        raise ValueError(f"purpose must be 'train' or 'evaluate'; got {purpose!r}")
    root = node_data_dir(node_config)
    if root is None:
        return streams.edge_slice(cfg, experience, client, purpose)
    try:
        num_classes = int(state["hard_index"].numel())
        mean = tuple(float(v) for v in state["normalize.mean"].flatten().tolist())
        std = tuple(float(v) for v in state["normalize.std"].flatten().tolist())
    except KeyError as e:
        raise ValueError(f"the broadcast MEANet state lacks {e}: an edge with its own data needs it") from e
    names = class_names_for(config, cfg, num_classes)
    own = read_edge_data(root, names, image_size=federation_image_size(cfg), seed=cfg.seed)
    return EdgeView(num_classes, mean, std, own.train(experience) if purpose == "train" else own.test(experience))
