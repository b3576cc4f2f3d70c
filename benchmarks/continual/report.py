"""The benchmark's report: ``results.json`` (every number), ``results.md`` (the table) and two PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from benchmarks.continual.budget import summarize as summarize_budget
from benchmarks.plot_style import family_of, legend_outside, styles
from benchmarks.tables import cell, mean_std, write_json

COLUMNS = (
    ("final_average_accuracy", "final avg acc", 100.0, "{:.1f}", "%"),
    ("final_forgetting", "avg forgetting", 100.0, "{:.1f}", "%"),
    ("final_bwt", "BWT", 100.0, "{:+.1f}", "%"),
    ("cloud_fraction", "cloud fraction", 100.0, "{:.1f}", "%"),
    ("macs_per_inference", "MACs/inference", 1e-6, "{:.1f}", "M"),
    ("energy_per_inference_joule", "energy/inference", 1e3, "{:.2f}", "mJ"),
    ("bytes_sent_per_inference", "sent/inference", 1.0, "{:.0f}", "B"),
    ("bytes_sent_per_experience", "sent/experience", 1e-6, "{:.2f}", "MB"),
    ("wall_seconds", "wall time", 1.0, "{:.0f}", "s"),
)
BUDGET_COLUMNS = (
    ("trained_edge_images", "edge training", 1.0, "{:,.0f}", "images"),
    ("trained_edge_macs", "edge training", 1e-12, "{:.2f}", "TMAC"),
    ("trained_cloud_images", "cloud training", 1.0, "{:,.0f}", "images"),
    ("trained_cloud_macs", "cloud training", 1e-12, "{:.2f}", "TMAC"),
    ("bytes_up_per_experience", "up/experience", 1e-6, "{:.2f}", "MB"),
    ("bytes_down_per_experience", "down/experience", 1e-6, "{:.2f}", "MB"),
)
PARTS = (
    ("meanet_with_cloud", "MEANet with cloud"),
    ("main_only", "main block alone"),
    ("edge_main_plus_extension", "main + extension, no cloud"),
    ("cloud_only", "cloud model alone"),
    ("offloaded_edge", "offloaded: edge"),
    ("offloaded_cloud", "offloaded: cloud"),
)
"""The reference accuracies of a MEANet method after the last experience (``meanet_core.inference.evaluation.
reference_accuracy``, on the same test images): what the extension and the cloud each add to the main block."""
UPPER_BOUND = "joint"
"""Trains centrally on everything seen so far: the upper bound, not a competitor."""


def _label(name: str) -> str:
    return f"{name} (upper bound)" if name == UPPER_BOUND else name


def budget_summary(results: dict[str, Any]) -> dict[str, Any]:
    """Each method's budget (``budget.summarize`` of its per-experience budgets), mean ± std over the seeds; the
    description of the data seen from the first seed. Methods that report no budget are left out."""
    out: dict[str, Any] = {}
    for name in results["summary"]:
        per_seed = []
        for run in results["runs"].values():
            experiences = run.get(name, {}).get("experiences", [])
            budgets = [e["extra"]["budget"] for e in experiences if "budget" in e.get("extra", {})]
            if budgets and len(budgets) == len(experiences):
                per_seed.append(summarize_budget(budgets))
        if per_seed:
            out[name] = {"data_seen": per_seed[0]["data_seen"]} | {
                key: mean_std([s[key] for s in per_seed]) for key in per_seed[0] if key != "data_seen"
            }
    return out


def parts_summary(results: dict[str, Any]) -> dict[str, Any]:
    """For each method that routes through MEANet: its reference accuracies after the last experience (``PARTS``)
    and cloud fraction, mean ± std over the seeds that have it (a result stored before a key existed lacks it).
    Other methods are left out."""
    out: dict[str, Any] = {}
    for name in results["summary"]:
        finals = [
            run[name]["experiences"][-1]["costs"]
            for run in results["runs"].values()
            if run.get(name, {}).get("experiences")
        ]
        finals = [c for c in finals if "reference_accuracy" in c]
        if not finals:
            continue
        row: dict[str, Any] = {}
        for key, _ in PARTS:
            row[key] = mean_std([c["reference_accuracy"].get(key) for c in finals])
        row["cloud_fraction"] = mean_std([c["cloud_fraction"] for c in finals])
        out[name] = row
    return out


ROUTES = (("meanet", "MEANet routing"), ("early_exit", "confidence early exit"), ("random", "random offload"))
"""The routings compared at the same offload fraction (``benchmarks.continual.routing``)."""


def _finals(results: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The last experience's cost record of ``name`` in every seed that ran it."""
    return [
        run[name]["experiences"][-1]["costs"]
        for run in results["runs"].values()
        if run.get(name, {}).get("experiences")
    ]


def routing_summary(results: dict[str, Any]) -> dict[str, Any]:
    """For each MEANet method whose results hold the routing comparison, after the last experience (mean ± std over
    the seeds): accuracy, cloud fraction and energy of MEANet routing, confidence early exit and random offload at
    the same offload fraction; accuracy on the hard-class inputs (main alone, main + extension, the edge as run);
    in how many experiences the validation gate kept the extension; the accuracy-energy curves (seed means)."""
    out: dict[str, Any] = {}
    for name in results["summary"]:
        finals = [c for c in _finals(results, name) if "routing" in c]
        if not finals:
            continue
        row: dict[str, Any] = {}
        for key, _ in ROUTES:
            for field in ("accuracy", "cloud_fraction", "energy_joule"):
                row[f"{key}_{field}"] = mean_std([c["routing"][key][field] for c in finals])
        for field in ("main_only", "main_plus_extension", "edge_as_run"):
            row[f"hard_{field}"] = mean_std([c["routing"]["hard_classes"][field] for c in finals])
        kept = []
        for run in results["runs"].values():
            experiences = run.get(name, {}).get("experiences", [])
            flags = [e["costs"].get("policy", {}).get("use_extension", True) for e in experiences]
            if experiences:
                kept.append(sum(bool(f) for f in flags))
        row["extension_kept"] = mean_std(kept)
        row["experiences"] = len(next(iter(results["runs"].values())).get(name, {}).get("experiences", []))
        with_curves = [c["routing"]["curves"] for c in finals if "curves" in c["routing"]]
        if with_curves:
            row["curves"] = {
                kind: [
                    {
                        key: float(np.mean([curve[kind][i][key] for curve in with_curves]))
                        for key in ("target", "accuracy", "cloud_fraction", "energy_joule")
                    }
                    for i in range(len(with_curves[0][kind]))
                ]
                for kind in ("meanet", "early_exit")
            }
        out[name] = row
    return out


def markdown(results: dict[str, Any]) -> str:
    """The comparison table (mean ± sample std over seeds when there are several) and each method's curve."""
    cfg, summary = results["config"], results["summary"]
    seeds = len(cfg["seeds"])
    lines = [
        f"# Continual benchmark: {cfg['scenario']}, {cfg['experiences']} experiences",
        "",
        f"Schedule: {cfg['epochs']} epoch(s) per experience for every method, batch {cfg['batch_size']}, "
        f"lr {cfg['lr']} (edge fine-tuning {cfg['edge_lr']}), {cfg.get('precision', 'fp32')}; "
        f"edge model {cfg['model']}, cloud model "
        f"{cfg['cloud_model']}"
        + (f" ({cfg['cloud_epochs']} epochs per experience)" if cfg.get("cloud_epochs") else "")
        + f"; {cfg['clients']} clients, {cfg['partition']} partition"
        + (f" (alpha {cfg['alpha']})" if cfg["partition"] == "dirichlet" else "")
        + f", cloud share {cfg['cloud_share']}; MEANet routing: calibrated policy, target cloud fraction "
        f"{cfg['target_cloud_fraction']}; seeds {', '.join(str(s) for s in cfg['seeds'])}"
        + (f"; limit-train {cfg['limit_train']}" if cfg.get("limit_train") else "")
        + (f"; limit-test {cfg['limit_test']} per experience" if cfg.get("limit_test") else "")
        + ".",
        "",
        "| method | " + " | ".join(f"{title} ({unit})" for _, title, _, _, unit in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for name, stats in summary.items():
        cells = [cell(stats[key], scale, fmt, seeds) for key, _, scale, fmt, _ in COLUMNS]
        lines.append(f"| {_label(name)} | " + " | ".join(cells) + " |")
    budgets = results.get("budget") or budget_summary(results)
    if budgets:
        lines += [
            "",
            "Budget: the labelled data each method sees (share of each experience's training images, and what is "
            "kept), the images its training processed over the stream (epochs x images, every stage, replayed "
            "images included; edges summed over clients), and the bytes it moved per experience (up: images and "
            "model updates sent to the cloud; down: models sent to the edges):",
            "",
            "| method | final avg acc (%) | labelled data seen | "
            + " | ".join(f"{title} ({unit})" for _, title, _, _, unit in BUDGET_COLUMNS)
            + " |",
            "|---|---:|---|" + "---:|" * len(BUDGET_COLUMNS),
        ]
        for name, b in budgets.items():
            acc = cell(summary[name]["final_average_accuracy"], 100.0, "{:.1f}", seeds)
            cells = [cell(b[key], scale, fmt, seeds) for key, _, scale, fmt, _ in BUDGET_COLUMNS]
            lines.append(f"| {_label(name)} | {acc} | {b['data_seen']} | " + " | ".join(cells) + " |")
    parts = results.get("parts") or parts_summary(results)
    if parts:
        lines += [
            "",
            "What each part adds, for the methods that route through MEANet: accuracy (%) on the same test images "
            "after the last experience, of the whole system, of its main block alone, of main + extension with "
            "nothing offloaded, and of the cloud model alone; and on the inputs the policy sends to the cloud, the "
            "edge's own answer against the cloud's (the cloud adds their difference times the cloud fraction):",
            "",
            "| method | " + " | ".join(title for _, title in PARTS) + " | cloud fraction |",
            "|---|" + "---:|" * (len(PARTS) + 1),
        ]
        for name, row in parts.items():
            cells = [cell(row[key], 100.0, "{:.1f}", seeds) for key, _ in PARTS]
            cells.append(cell(row["cloud_fraction"], 100.0, "{:.1f}", seeds))
            lines.append(f"| {_label(name)} | " + " | ".join(cells) + " |")
    routing = results.get("routing") or routing_summary(results)
    if routing:
        cloud_only = summary.get("cloud-only", {}).get("energy_per_inference_joule", {}).get("mean")
        lines += [
            "",
            "Routing against what a user would pick instead, on the same main block and cloud model, at the same "
            "offload fraction (the inputs MEANet sent): confidence early exit offloads the least confident inputs "
            "by the main block's max-probability, with no extension; random offload is the exact expectation over "
            "random choices. Accuracy (%) and edge energy per inference (mJ) after the last experience"
            + (f"; cloud-only spends {cloud_only * 1e3:.2f} mJ" if cloud_only else "")
            + ":",
            "",
            "| method | cloud fraction (%) | "
            + " | ".join(f"{title} (%)" for _, title in ROUTES)
            + " | MEANet - early exit (points) | energy (mJ) | energy / cloud-only's |",
            "|---|---:|" + "---:|" * (len(ROUTES) + 3),
        ]
        for name, row in routing.items():
            cells = [cell(row[f"{key}_accuracy"], 100.0, "{:.1f}", seeds) for key, _ in ROUTES]
            gain = 100 * (row["meanet_accuracy"]["mean"] - row["early_exit_accuracy"]["mean"])
            energy = row["meanet_energy_joule"]["mean"]
            ratio = f"{energy / cloud_only:.2f}" if cloud_only else "n/a"
            lines.append(
                f"| {name} | {cell(row['meanet_cloud_fraction'], 100.0, '{:.1f}', seeds)} | "
                + " | ".join(cells)
                + f" | {gain:+.1f} | {cell(row['meanet_energy_joule'], 1e3, '{:.2f}', seeds)} | {ratio} |"
            )
        lines += [
            "",
            "The hard classes: accuracy (%) on the test inputs whose true class is hard, after the last experience, "
            "of the main block alone, of main + extension (every hard top-1 answered by the extension) and of the "
            "edge as the policy runs it (the extension only where the validation gate keeps it); in how many "
            "experiences the gate kept the extension:",
            "",
            "| method | main block alone | main + extension | edge as run | extension kept (experiences) |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, row in routing.items():
            cells = [
                cell(row[f"hard_{f}"], 100.0, "{:.1f}", seeds)
                for f in ("main_only", "main_plus_extension", "edge_as_run")
            ]
            kept = cell(row["extension_kept"], 1.0, "{:.1f}", seeds)
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {kept} of {row['experiences']} |")
    lines += [
        "",
        "Average accuracy (%) over the experiences seen so far, after each experience:",
        "",
        "| method | " + " | ".join(str(t) for t in range(cfg["experiences"])) + " |",
        "|---|" + "---:|" * cfg["experiences"],
    ]
    for name, stats in summary.items():
        curve = stats["average_accuracy_curve"]["mean"]
        lines.append(f"| {_label(name)} | " + " | ".join(f"{100 * v:.1f}" for v in curve) + " |")
    lines += [
        "",
        "Forgetting and BWT as Avalanche defines them (StreamForgetting / StreamBWT after the last experience); "
        "wall time: the stages each method runs or relies on (shared cloud training counted for every method "
        "that uses it; edge clients counted as running in parallel); sent/experience: training data uploaded to "
        "the cloud plus models broadcast and uploaded; sent/inference: offloaded images. MEANet-FL, FedAvg and the "
        "cloud-trained methods share the cloud's data and stores; naive and joint are centralised (every image "
        "uploaded); joint retrains on everything seen so far and is the upper bound, not a competitor.",
        "",
    ]
    return "\n".join(lines)


def plot_accuracy_per_experience(results: dict[str, Any], path: Path) -> Path:
    """Each method's average accuracy after each experience: one colour family per kind of method
    (:mod:`benchmarks.plot_style`), the legend beside the axes."""
    fig, ax = plt.subplots(figsize=(10, 5))
    style = styles({name: family_of(name) for name in results["summary"]})
    for name, stats in results["summary"].items():
        curve = stats["average_accuracy_curve"]
        xs = list(range(1, len(curve["mean"]) + 1))
        mean = [100 * v for v in curve["mean"]]
        (line,) = ax.plot(xs, mean, markersize=3, linewidth=1.2, label=name, **style[name].kwargs())
        if len(stats["seeds"]) > 1:
            lo = [100 * (m - s) for m, s in zip(curve["mean"], curve["std"], strict=True)]
            hi = [100 * (m + s) for m, s in zip(curve["mean"], curve["std"], strict=True)]
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("experiences trained")
    ax.set_ylabel("average accuracy on seen experiences (%)")
    ax.set_title(f"{results['config']['scenario']}: average accuracy after each experience")
    legend_outside(ax)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_accuracy_vs_energy(results: dict[str, Any], path: Path) -> Path:
    """Each method a point (final average accuracy against edge energy per inference); each MEANet method also a
    curve (its calibrated policy refitted for a sweep of cloud fractions, after the last experience, on the test
    images of every experience) beside confidence early exit on the same models."""
    fig, ax = plt.subplots(figsize=(10, 5))
    routing = results.get("routing") or routing_summary(results)
    style = styles({name: family_of(name) for name in results["summary"]})
    for name, row in routing.items():
        if "curves" not in row or name not in style:
            continue
        for kind, linestyle, label in (("meanet", "-", name), ("early_exit", ":", f"{name}: early exit")):
            curve = row["curves"][kind]
            ax.plot(
                [p["energy_joule"] * 1e3 for p in curve],
                [p["accuracy"] * 100 for p in curve],
                linestyle,
                color=style[name].color,
                linewidth=1,
                label=f"{label} (cloud fraction swept)",
            )
    for name, stats in results["summary"].items():
        energy, acc = stats["energy_per_inference_joule"], stats["final_average_accuracy"]
        if energy["mean"] is None or acc["mean"] is None:
            continue
        ax.errorbar(
            energy["mean"] * 1e3,
            acc["mean"] * 100,
            xerr=energy["std"] * 1e3,
            yerr=acc["std"] * 100,
            fmt=style[name].marker,
            color=style[name].color,
            capsize=3,
            label=name,
        )
    ax.set_xscale("log")
    ax.set_xlabel("edge energy per inference (mJ, log scale)")
    ax.set_ylabel("final average accuracy (%)")
    ax.set_title("Accuracy against energy")
    ax.grid(alpha=0.3)
    legend_outside(ax, fontsize=6)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # the legend beside the axes stays in the picture
    plt.close(fig)
    return path


def write_report(results: dict[str, Any], out: Path, *, plots: bool = True) -> list[Path]:
    """Write ``results.json``, ``results.md`` and (``plots``) the two PNGs into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    results["budget"] = budget_summary(results)
    results["parts"] = parts_summary(results)
    results["routing"] = routing_summary(results)
    write_json(results, out / "results.json")
    (out / "results.md").write_text(markdown(results))
    paths = [out / "results.json", out / "results.md"]
    if plots:
        paths.append(plot_accuracy_per_experience(results, out / "accuracy_per_experience.png"))
        paths.append(plot_accuracy_vs_energy(results, out / "accuracy_vs_energy.png"))
    return paths
