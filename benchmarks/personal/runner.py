"""Run every method of the personalised-FL benchmark on every seed, checkpoint each finished method, aggregate, write
the report.

Layout of ``OUT``::

    results.json  results.md  accuracy_per_device.png  accuracy_vs_bytes.png
    seed-S/METHOD.json          one finished method (rerunning the same command skips it)
    seed-S/fedavg.pt            the FedAvg trajectory shared by fedavg, fedavg-ft, ditto and the MEANet-FL rows

A rerun with other settings into the same ``OUT`` stops with an error instead of mixing results.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.personal.common import Context, MethodResult
from benchmarks.personal.config import PersonalConfig, PersonalConfigError
from benchmarks.personal.methods import METHODS, resolve
from benchmarks.personal.report import aggregate, write_report
from benchmarks.personal.scenario import build_personal_scenario
from benchmarks.tables import write_json
from meanet_core.data import DatasetSplits


def run_seed(
    cfg: PersonalConfig,
    seed: int,
    methods: tuple[str, ...],
    seed_dir: Path | None,
    *,
    progress: bool = False,
    log: Callable[[str], None] = print,
    splits: DatasetSplits | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Every method of ``methods`` on seed ``seed`` (finished ones under ``seed_dir`` are read back): the results
    (``MethodResult.as_dict``) and the scenario's summary."""
    done: dict[str, dict[str, Any]] = {}
    todo = []
    for name in methods:
        path = None if seed_dir is None else seed_dir / f"{name}.json"
        if path is not None and path.is_file():
            saved = json.loads(path.read_text())
            if not cfg.matches(saved.get("fingerprint") or {}, name):
                raise PersonalConfigError(
                    f"{path} holds a result computed with other settings; pass another --out, or delete {seed_dir} "
                    "to recompute"
                )
            done[name] = saved["result"]
            log(f"seed {seed}: {name} already done ({path}), skipped")
        else:
            todo.append(name)
    scenario = build_personal_scenario(cfg, seed, splits)
    ctx = Context(cfg, scenario, seed, progress=progress, cache_dir=seed_dir)
    for name in todo:
        start = time.perf_counter()
        result: MethodResult = METHODS[name].run(ctx)
        if result.method != name or len(result.accuracies) != len(scenario):  # internal invariant of every runner
            raise AssertionError(f"{name} returned {result.method!r} with {len(result.accuracies)} accuracies")
        result.extra["process_seconds"] = time.perf_counter() - start
        row = result.as_dict()
        if seed_dir is not None:
            write_json({"fingerprint": cfg.fingerprint(name), "result": row}, seed_dir / f"{name}.json")
        done[name] = row
        log(
            f"seed {seed}: {name}: mean accuracy {result.mean_accuracy:.4f}, worst 10% {result.worst_accuracy:.4f}, "
            f"up {result.bytes_up / 1e6:.1f} MB, down {result.bytes_down / 1e6:.1f} MB, "
            f"{result.extra['process_seconds']:.0f}s"
        )
    return {name: done[name] for name in methods}, scenario.summary()


def run_benchmark(
    cfg: PersonalConfig,
    out: Path | None,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    write_plots: bool = True,
    splits: DatasetSplits | None = None,
) -> dict[str, Any]:
    """Run ``cfg`` (into ``out``, when given: results.json, results.md, plots, checkpoints); returns the results."""
    methods = resolve(cfg.methods)
    start = time.perf_counter()
    runs: dict[str, dict[str, dict[str, Any]]] = {}
    scenarios: dict[str, dict[str, Any]] = {}
    for seed in cfg.seeds:
        seed_dir = None if out is None else out / f"seed-{seed}"
        runs[str(seed)], scenarios[str(seed)] = run_seed(
            cfg, seed, methods, seed_dir, progress=progress, log=log, splits=splits
        )
    results: dict[str, Any] = {
        "config": {**cfg.as_dict(), "methods": list(methods)},
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "scenario": scenarios,
        "families": {name: METHODS[name].family for name in methods},
        "summary": aggregate(runs, methods),
        "runs": runs,
        "seconds_this_invocation": time.perf_counter() - start,
    }
    if out is not None:
        paths = write_report(results, out, plots=write_plots)
        log("report: " + ", ".join(str(p) for p in paths))
    return results
