"""The inference commands' batches, bounded by the memory available (``meanet_core.training.memory``)."""

from __future__ import annotations

from collections.abc import Sequence

import typer
from torch import nn


def bounded(models: Sequence[nn.Module], input_size: int, requested: int, option: str) -> int:
    """``requested``, or the largest batch that fits in memory, with a note naming ``option`` when it is lower."""
    from meanet_core.training.memory import inference_batch

    batch = inference_batch(models, input_size, requested)
    if batch < requested:
        typer.echo(f"note: {option} {requested} lowered to {batch}: a larger model call would not fit in memory")
    return batch
