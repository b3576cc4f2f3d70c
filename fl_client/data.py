"""The edge's view of the data stream: which partition is its own, and its share of the test images.

The stream itself (:func:`meanet_core.streams.stream_for`) is built the same way by the cloud and every edge.
"""

from __future__ import annotations

from meanet_core.config import FederationConfig
from meanet_core.data import ImageTensors, partition
from meanet_core.streams import Experience


def client_index(node_config: dict[str, object], cfg: FederationConfig) -> int:
    """This node's partition id, from ``--node-config "partition-id=I num-partitions=N"`` (simulation sets both)."""
    try:
        index, count = int(node_config["partition-id"]), int(node_config["num-partitions"])  # type: ignore[call-overload]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(
            "this SuperNode has no valid partition: start it with --node-config "
            f"'partition-id=I num-partitions={cfg.num_clients}' (got node config {node_config})"
        ) from e
    if count != cfg.num_clients or not 0 <= index < count:
        raise ValueError(
            f"node config partition-id={index} num-partitions={count} does not fit the run's "
            f"num-clients={cfg.num_clients}: give each of the {cfg.num_clients} SuperNodes a distinct partition-id"
        )
    return index


def local_test(experience: Experience, client: int, num_clients: int, seed: int) -> ImageTensors:
    """The client's shard of the experience's test images (IID over clients)."""
    parts = partition(experience.test.y, num_clients, "iid", seed=seed + 7919 * experience.index)
    return experience.test.subset(parts[client])
