"""Shared checks of the loopback Flower tests."""

from __future__ import annotations

from pathlib import Path

import psutil


def left_behind(home: Path) -> list[str]:
    """Processes still running with this Flower home (the SuperLink, SuperNodes, flwr-simulation, Ray's workers)."""
    left = []
    for p in psutil.process_iter(["pid", "name"]):
        try:
            if p.environ().get("FLWR_HOME") == str(home) and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{p.pid} {p.name()}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return left
