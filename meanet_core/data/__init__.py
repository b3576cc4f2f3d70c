"""Datasets held in memory as uint8 tensors, federated partitions, and fast tensor batches."""

from meanet_core.data.datasets import (
    DATA_DIR_ENV,
    DATASETS,
    DatasetSplits,
    ImageTensors,
    data_dir_from_env,
    load_dataset,
    train_val_split,
)
from meanet_core.data.images import BAD_IMAGE_POLICIES, BadImageError, SkippedImage
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
