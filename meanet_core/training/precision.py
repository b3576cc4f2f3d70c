"""Numeric precision of training and inference passes: float32, or bfloat16 autocast where the hardware has it.

``bf16`` runs the convolutions and matrix products under ``torch.autocast`` in bfloat16 (weights, optimiser state,
losses and returned logits stay float32; autocast keeps softmax, log-softmax and the losses in float32). On a CPU
with native bfloat16 instructions (AVX512-BF16 or AMX) and on recent GPUs that is faster, measured in
docs/results.md: about 1.6x for training and 2x for inference on this project's CPU. Without native support
bfloat16 is emulated and slower, so ``auto`` (the usual default) picks ``bf16`` only where it is native.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import torch

PRECISIONS = ("fp32", "bf16")
"""The concrete precisions; settings also accept ``auto`` (``resolve_precision``)."""


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no way to tell here, so no claim of native bfloat16
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 natively (CPU: the AVX512-BF16 or AMX-BF16 flag; CUDA: what torch says)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type == "cpu":
        return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())
    return False


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """``fp32`` or ``bf16`` for a setting of ``fp32``, ``bf16`` or ``auto`` (``bf16`` where native, else ``fp32``)."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    check_precision(precision)
    return precision


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(
            f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)} (or 'auto': bf16 where the hardware "
            "computes it natively, else fp32)"
        )


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str = "cpu") -> Iterator[None]:
    """The context a forward pass runs in at ``precision`` (``fp32``: nothing changes)."""
    check_precision(precision)
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
        yield
