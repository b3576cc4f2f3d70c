"""Does every part of MEANet earn its place? Issue 25's targets, read from a finished ``meanet bench continual`` run.

    python -m benchmarks.continual.targets runs/parts --method meanet-fl-main-lwf --json targets.json

The run must hold ``cloud-only`` and one MEANet method (routing records after the last experience, with the
accuracy-energy curves). Per seed, after the last experience, on the same test images:

* the cloud model alone minus the main block alone (points);
* MEANet with the cloud minus its main block alone, with the policy calibrated for ``--offload`` of the inputs (the
  curve's point fitted on validation for that fraction; the fraction it sent on test is printed beside it);
* in how many experiences the validation gate kept the extension;
* on the test inputs whose true class is hard: main + extension minus the main block alone;
* MEANet routing minus confidence early exit, at the run's own offload fraction (exactly as many inputs offloaded);
* MEANet's edge energy per inference at ``--offload`` over cloud-only's.

It prints a table (mean, sample std over seeds, each seed, the requirement, met or not) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

TARGETS: tuple[tuple[str, str, str, float], ...] = (
    # key, what, comparison, bound
    ("cloud_minus_main", "cloud model alone - main block alone (points)", ">=", 8.0),
    ("meanet_minus_main", "MEANet with cloud - main block alone, at the offload fraction (points)", ">=", 3.0),
    ("extension_kept", "experiences in which the gate kept the extension (of 10)", ">=", 7.0),
    ("hard_extension_minus_main", "hard classes: main + extension - main block alone (points)", ">=", 2.0),
    ("routing_minus_early_exit", "MEANet routing - confidence early exit, same offload (points)", ">=", 1.0),
    ("energy_over_cloud_only", "energy per inference / cloud-only's, at the offload fraction", "<=", 1 / 3),
)


def _curve_point(curve: list[dict[str, float]], fraction: float) -> dict[str, float]:
    points = [p for p in curve if abs(p["target"] - fraction) < 1e-9]
    if not points:
        have = ", ".join(f"{p['target']:g}" for p in curve)
        raise SystemExit(f"no curve point fitted for an offload fraction of {fraction:g}; the run has {have}")
    return points[0]


def seed_values(runs: dict[str, Any], method: str, offload: float) -> dict[str, float]:
    """The targets' quantities for one seed's runs (``results.json``'s ``runs[seed]``)."""
    for name in (method, "cloud-only"):
        if name not in runs:
            raise SystemExit(f"the run has no {name!r} result (it has {sorted(runs)}); run it with --methods")
    exps = runs[method]["experiences"]
    last = exps[-1]["costs"]
    ref, routing = last["reference_accuracy"], last["routing"]
    if "curves" not in routing:
        raise SystemExit(f"{method}'s last experience has no accuracy-energy curves; rerun it with this version")
    point = _curve_point(routing["curves"]["meanet"], offload)
    hard = routing["hard_classes"]
    return {
        "main_block": 100 * ref["main_only"],
        "cloud_model": 100 * ref["cloud_only"],
        "meanet_at_offload": 100 * point["accuracy"],
        "offloaded_on_test": point["cloud_fraction"],
        "cloud_minus_main": 100 * (ref["cloud_only"] - ref["main_only"]),
        "meanet_minus_main": 100 * (point["accuracy"] - ref["main_only"]),
        "extension_kept": float(sum(bool(e["costs"]["policy"].get("use_extension")) for e in exps)),
        "hard_extension_minus_main": 100 * (hard["main_plus_extension"] - hard["main_only"]),
        "routing_minus_early_exit": 100 * (routing["meanet"]["accuracy"] - routing["early_exit"]["accuracy"]),
        "run_offload": routing["meanet"]["cloud_fraction"],
        "energy_over_cloud_only": point["energy_joule"] / runs["cloud-only"]["energy_per_inference_joule"],
    }


def targets(results: dict[str, Any], method: str, offload: float) -> dict[str, Any]:
    per_seed = {seed: seed_values(runs, method, offload) for seed, runs in results["runs"].items()}
    rows = []
    for key, what, op, bound in TARGETS:
        values = np.array([v[key] for v in per_seed.values()])
        mean = float(values.mean())
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        met = mean >= bound if op == ">=" else mean <= bound
        rows.append({"key": key, "what": what, "required": f"{op} {bound:.3g}", "mean": mean, "std": std, "met": met})
    return {"method": method, "offload": offload, "seeds": per_seed, "targets": rows}


def table(report: dict[str, Any]) -> str:
    seeds = list(report["seeds"])
    head = f"| target | required | mean ± std | {' | '.join(f'seed {s}' for s in seeds)} | met |"
    lines = [head, "|---|---:|---:|" + "---:|" * len(seeds) + "---|"]
    for row in report["targets"]:
        each = " | ".join(f"{report['seeds'][s][row['key']]:.2f}" for s in seeds)
        met = "yes" if row["met"] else "**no**"
        lines.append(f"| {row['what']} | {row['required']} | {row['mean']:.2f} ± {row['std']:.2f} | {each} | {met} |")
    frac = ", ".join(f"{100 * report['seeds'][s]['offloaded_on_test']:.1f}%" for s in seeds)
    run = ", ".join(f"{100 * report['seeds'][s]['run_offload']:.1f}%" for s in seeds)
    point = f"{100 * report['offload']:g}%"
    lines += ["", f"Offloaded on test at the {point} point: {frac}; by the run's own policy: {run}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a `meanet bench continual --out` folder (its results.json)")
    p.add_argument("--method", default="meanet-fl-main-lwf", help="the MEANet method to judge")
    p.add_argument("--offload", type=float, default=0.15, help="offload fraction of the curve point to judge")
    p.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = p.parse_args(argv)
    path = args.run / "results.json"
    if not path.is_file():
        raise SystemExit(f"{path} not found: pass the --out folder of a finished `meanet bench continual` run")
    report = targets(json.loads(path.read_text()), args.method, args.offload)
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
