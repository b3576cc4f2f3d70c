"""The edge's view of the data stream: its own partition of each experience, loaded once per process."""

from __future__ import annotations

from functools import lru_cache

from meanet_core.config import FederationConfig
from meanet_core.data import DatasetSplits, ImageTensors, load_dataset, partition
from meanet_core.streams import Experience, make_stream


@lru_cache(maxsize=2)
def stream_for(cfg: FederationConfig) -> tuple[DatasetSplits, tuple[Experience, ...]]:
    """The dataset and its stream, built the same way on the server and every client (same seed)."""
    splits = load_dataset(
        cfg.dataset,
        data_dir=cfg.data_dir or None,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        limit_train=cfg.limit_train or None,
    )
    stream = make_stream(
        splits,
        kind=cfg.stream,
        num_experiences=cfg.experiences,
        num_clients=cfg.num_clients,
        cloud_share=cfg.cloud_share,
        partition_scheme=cfg.partition,
        alpha=cfg.alpha,
        seed=cfg.seed,
    )
    return splits, tuple(stream)


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
