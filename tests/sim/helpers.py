"""Shared checks of the loopback Flower tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psutil

from meanet_core.training.checkpoint import CheckpointError, safe_load


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


def saved_position(state: Path) -> dict[str, Any] | None:
    try:
        return dict(safe_load(state)["position"])
    except CheckpointError:  # not written yet
        return None


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once (collected first, so none is orphaned and missed)."""
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(family, timeout=30)
