"""What the benchmarks' reports share: an atomic JSON write, mean ± spread over seeds, and a table cell of it."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def write_json(obj: Any, path: Path) -> None:
    """Write JSON atomically (a crash never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def mean_std(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Mean and sample standard deviation (0 for one value) of the non-missing values."""
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not kept:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(kept)), "std": float(np.std(kept, ddof=1)) if len(kept) > 1 else 0.0, "n": len(kept)}


def cell(stat: dict[str, Any], scale: float, fmt: str, seeds: int) -> str:
    """``mean`` (x ``scale``, in ``fmt``), with ``± std`` when more than one seed ran; ``n/a`` when none."""
    if stat["mean"] is None:
        return "n/a"
    text = fmt.format(stat["mean"] * scale)
    return f"{text} ± {fmt.format(stat['std'] * scale).lstrip('+')}" if seeds > 1 else text
