"""Run every method of a benchmark on every seed, checkpoint each finished method, aggregate, write the report.

Layout of ``OUT``::

    results.json  results.md  accuracy_per_experience.png  accuracy_vs_energy.png
    seed-S/METHOD.json          one finished method (rerunning the same command skips it)
    seed-S/cloud/exp-T.pt       the cloud trajectory shared by the methods (see ``shared.py``)

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

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmarks.continual.config import BenchConfig, BenchConfigError
from benchmarks.continual.methods import Context, Method, build_method
from benchmarks.continual.metrics import new_matrix, summarize_matrix
from benchmarks.continual.report import write_report
from benchmarks.continual.scenarios import build_scenario
from benchmarks.continual.shared import CloudTrajectory
from benchmarks.tables import mean_std, write_json

MethodFactory = Callable[[str, Context], Method]
TABLE_METRICS = (
    "final_average_accuracy",
    "final_forgetting",
    "final_bwt",
    "cloud_fraction",
    "macs_per_inference",
    "energy_per_inference_joule",
    "bytes_sent_per_inference",
    "bytes_sent_per_experience",
    "wall_seconds",
)


def run_method(method: Method, ctx: Context, *, progress: bool = True) -> dict[str, Any]:
    """Train and evaluate ``method`` on every experience; its accuracy matrix, metrics, costs and times."""
    n = len(ctx.scenario)
    matrix = new_matrix(n)
    per_experience = []
    start = time.perf_counter()
    bar = tqdm(range(n), desc=f"seed {ctx.seed} {method.name}", disable=not progress, leave=True)
    for t in bar:
        outcome = method.run_experience(t)
        if len(outcome.accuracies) != t + 1:  # internal invariant of every method
            raise AssertionError(f"{method.name} returned {len(outcome.accuracies)} accuracies after experience {t}")
        matrix[t, : t + 1] = outcome.accuracies
        per_experience.append(
            {
                "experience": t,
                "accuracies": outcome.accuracies,
                "average_accuracy": float(np.mean(outcome.accuracies)),
                "costs": outcome.costs,
                "bytes_sent": outcome.bytes_sent,
                "bytes_sent_total": int(sum(outcome.bytes_sent.values())),
                "seconds": outcome.seconds,
                "wall_seconds": float(sum(outcome.seconds.values())),
                **({"extra": outcome.extra} if outcome.extra else {}),
            }
        )
        bar.set_postfix(avg_acc=f"{np.mean(outcome.accuracies):.3f}")
    summary = summarize_matrix(matrix)
    final = per_experience[-1]["costs"]
    return {
        "method": method.name,
        "seed": ctx.seed,
        **summary,
        "cloud_fraction": final["cloud_fraction"],
        "exits": final["exits"],
        "macs_per_inference": final["macs_per_inference"],
        "edge_macs_per_inference": final["edge_macs_per_inference"],
        "energy_per_inference_joule": final["energy_per_inference_joule"],
        "bytes_sent_per_inference": final["bytes_sent_per_inference"],
        "bytes_sent_per_experience": float(np.mean([e["bytes_sent_total"] for e in per_experience])),
        "wall_seconds": float(sum(e["wall_seconds"] for e in per_experience)),
        "process_seconds": time.perf_counter() - start,
        "experiences": per_experience,
    }


def aggregate(runs: dict[str, dict[str, dict[str, Any]]], methods: tuple[str, ...]) -> dict[str, Any]:
    """Mean and spread over the seeds of each method's headline numbers and average-accuracy curve."""
    out: dict[str, Any] = {}
    for name in methods:
        per_seed = [runs[s][name] for s in runs if name in runs[s]]
        if not per_seed:
            continue
        curves = np.array([r["average_accuracy"] for r in per_seed], dtype=np.float64)
        out[name] = {
            **{key: mean_std([r[key] for r in per_seed]) for key in TABLE_METRICS},
            "average_accuracy_curve": {
                "mean": curves.mean(axis=0).tolist(),
                "std": (curves.std(axis=0, ddof=1) if len(per_seed) > 1 else np.zeros(curves.shape[1])).tolist(),
            },
            "seeds": [r["seed"] for r in per_seed],
        }
    return out


def run_benchmark(
    cfg: BenchConfig,
    out: Path,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    method_factory: MethodFactory = build_method,
    write_plots: bool = True,
) -> dict[str, Any]:
    """Run ``cfg`` into ``out``; returns the results dict also written to ``out/results.json``."""

    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict[str, dict[str, Any]]] = {}
    start = time.perf_counter()
    for seed in cfg.seeds:
        seed_dir = out / f"seed-{seed}"
        runs[str(seed)] = {}
        todo = []
        for name in cfg.methods:
            path = seed_dir / f"{name}.json"
            if path.is_file():
                saved = json.loads(path.read_text())
                if not cfg.matches(saved.get("fingerprint") or {}, name):
                    raise BenchConfigError(
                        f"{path} holds a result computed with other settings; pass another --out, or delete "
                        f"{seed_dir} to recompute"
                    )
                runs[str(seed)][name] = saved["result"]
                log(f"seed {seed}: {name} already done ({path}), skipped")
            else:
                todo.append(name)
        if not todo:
            continue
        scenario = build_scenario(
            cfg.scenario,
            num_experiences=cfg.experiences,
            num_clients=cfg.clients,
            cloud_share=cfg.cloud_share,
            partition_scheme=cfg.partition,
            alpha=cfg.alpha,
            seed=seed,
            val_fraction=cfg.val_fraction,
            limit_train=cfg.limit_train,
            limit_test=cfg.limit_test,
            data_dir=cfg.data_dir,
        )
        ctx = Context(cfg, scenario, seed, CloudTrajectory(cfg, scenario, seed, seed_dir / "cloud", progress))
        for name in todo:
            result = run_method(method_factory(name, ctx), ctx, progress=progress)
            write_json({"fingerprint": cfg.fingerprint(name), "result": result}, seed_dir / f"{name}.json")
            runs[str(seed)][name] = result
            log(
                f"seed {seed}: {name}: final average accuracy {result['final_average_accuracy']:.4f}, "
                f"forgetting {result['final_forgetting']:.4f}, cloud fraction {result['cloud_fraction']:.3f}, "
                f"{result['wall_seconds']:.0f}s"
            )
    results = {
        "config": cfg.as_dict(),
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "summary": aggregate(runs, cfg.methods),
        "runs": runs,
        "seconds_this_invocation": time.perf_counter() - start,
    }
    paths = write_report(results, out, plots=write_plots)
    log("report: " + ", ".join(str(p) for p in paths))
    return results
