"""The data room: datasets held in memory as uint8 tensors, federated partitions, fast tensor batches, and the stream
of experiences that evolves over time.

- :mod:`~meanet_core.data.datasets`: the splits (``DatasetSplits``, ``ImageTensors``) and the seeded carve-out;
- :mod:`~meanet_core.data.sources`: one reader per dataset (CIFAR, digits, image folders), cached as arrays;
- :mod:`~meanet_core.data.load`: ``load_dataset``, any dataset as train/val/test splits;
- :mod:`~meanet_core.data.images`, :mod:`~meanet_core.data.cache`: image files and the array cache;
- :mod:`~meanet_core.data.partition`: iid and Dirichlet partitions across edges;
- :mod:`~meanet_core.data.loader`: fast batches straight from tensors;
- :mod:`~meanet_core.data.streams`: the experiences, each split between the cloud and the edges.

Imports run one way: this room imports nothing else of ``meanet_core``.
"""

from meanet_core.data.datasets import (
    DATA_DIR_ENV,
    DATASETS,
    DatasetSplits,
    ImageTensors,
    data_dir_from_env,
    train_val_split,
)
from meanet_core.data.images import BAD_IMAGE_POLICIES, BadImageError, SkippedImage
from meanet_core.data.load import load_dataset
from meanet_core.data.loader import TensorBatches, to_float
from meanet_core.data.partition import PARTITION_SCHEMES, dirichlet_partition, iid_partition, partition

__all__ = [
    "BAD_IMAGE_POLICIES",
    "DATASETS",
    "DATA_DIR_ENV",
    "PARTITION_SCHEMES",
    "BadImageError",
    "DatasetSplits",
    "ImageTensors",
    "SkippedImage",
    "TensorBatches",
    "data_dir_from_env",
    "dirichlet_partition",
    "iid_partition",
    "load_dataset",
    "partition",
    "to_float",
    "train_val_split",
]
