"""The training room: the complexity-aware training stages, numeric precision and checkpoints.

- :mod:`~meanet_core.training.stages`: the main block, the cloud model, the hard-class split, the adaptive and
  extension blocks, and the distillation between them;
- :mod:`~meanet_core.training.precision`: float32, or bfloat16 autocast where the hardware has it;
- :mod:`~meanet_core.training.checkpoint`: atomic writes, weights-only loads, clear errors.

``meanet train``'s resumable pipeline, which reads the run config, sits above the rooms: :mod:`meanet_core.pipeline`.

Imports run one way: this room may import ``models`` and ``data``.
"""

from meanet_core.training.checkpoint import CheckpointError, atomic_save, load_cloud, load_meanet, safe_load
from meanet_core.training.precision import PRECISIONS, autocast, resolve_precision
from meanet_core.training.stages import (
    HARD_METHODS,
    StageConfig,
    distillation,
    select_hard_classes,
    train_cloud,
    train_extension,
    train_main,
)

__all__ = [
    "HARD_METHODS",
    "PRECISIONS",
    "CheckpointError",
    "StageConfig",
    "atomic_save",
    "autocast",
    "distillation",
    "load_cloud",
    "load_meanet",
    "resolve_precision",
    "safe_load",
    "select_hard_classes",
    "train_cloud",
    "train_extension",
    "train_main",
]
