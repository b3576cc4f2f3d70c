"""The personalised-FL benchmark's report: ``results.json`` (every number), ``results.md`` (the table) and two PNGs:
the per-device accuracy distribution of each method, and mean accuracy against bytes moved."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from benchmarks.plot_style import FAMILY_TITLES, family_of, legend_outside, styles
from benchmarks.tables import cell, mean_std, write_json

COLUMNS = (
    ("mean_accuracy", "mean acc", 100.0, "{:.1f}", "%"),
    ("worst10_accuracy", "worst 10%", 100.0, "{:.1f}", "%"),
    ("macs_per_inference", "MACs/inference", 1e-6, "{:.1f}", "M"),
    ("offload_fraction", "offloaded", 100.0, "{:.1f}", "%"),
    ("bytes_up", "up", 1e-6, "{:.1f}", "MB"),
    ("bytes_down", "down", 1e-6, "{:.1f}", "MB"),
    ("trained_images", "trained", 1e-3, "{:.0f}", "k images"),
    ("wall_seconds", "wall", 1.0, "{:.0f}", "s"),
)
"""(key, title, scale, format, unit) of each column of the table; every key is a ``MethodResult.as_dict`` number."""


def aggregate(runs: dict[str, dict[str, dict[str, Any]]], methods: Sequence[str]) -> dict[str, Any]:
    """Per method: mean ± std over the seeds of each column, and every device's accuracy (all seeds pooled)."""
    out: dict[str, Any] = {}
    for name in methods:
        per_seed = [runs[s][name] for s in runs if name in runs[s]]
        if per_seed:
            out[name] = {key: mean_std([r[key] for r in per_seed]) for key, *_ in COLUMNS}
            out[name]["device_accuracies"] = [a for r in per_seed for a in r["accuracies"]]
            out[name]["seeds"] = [r["seed"] for r in per_seed]
    return out


def _span(values: Sequence[int]) -> str:
    return f"{min(values)}" if min(values) == max(values) else f"{min(values)}-{max(values)}"


def header(results: dict[str, Any]) -> list[str]:
    """The table's title and the paragraph that states the data, the schedule and the seeds."""
    cfg, sizes = results["config"], next(iter(results["scenario"].values()))
    skew = (
        f"Dirichlet β={cfg['beta']:g}" if cfg["partition"] == "dirichlet" else f"{cfg['classes_per_edge']} classes each"
    )
    limit = f"{cfg['limit_train']:,} training images" if cfg.get("limit_train") else "all training images"
    tests = _span([d["test"] for d in sizes["devices"]])
    train = _span([d["train"] for d in sizes["devices"]])
    return [
        f"# Personalised FL: {cfg['dataset']}, {cfg['edges']} edges, {skew}",
        "",
        f"Data: {cfg['dataset']}, {limit}; the server holds {sizes['server_images']:,} "
        f"({cfg['cloud_share']:g}, IID); the rest split over {cfg['edges']} edges ({skew}; {train} "
        f"training images per edge after {cfg['val_fraction']:g} validation); each edge tested on "
        f"{tests} test images in its own class proportions (at most {cfg['test_per_edge']}). "
        f"Schedule, the same for every method: backbone {cfg['model']} (the MEANet's main block), "
        f"{cfg['rounds']} rounds, {cfg['local_epochs']} local epoch(s), {cfg['edges_per_round']} edges per round "
        f"(one seeded sample per round, shared by every method), batch {cfg['batch_size']}, lr {cfg['lr']} "
        f"(one-cycle over the rounds), {cfg['precision']}; server-held data: a warm start of "
        f"{cfg['server_epochs']} epoch(s) before round 1 for every federated method (FedBABU's trains the body "
        f"only; local-only none); fine-tuning {cfg['ft_epochs']} epoch(s) (fedavg-ft; fedbabu: {cfg['babu_ft']}); "
        f"FedRep head epochs {cfg['head_epochs']}; Ditto λ {cfg['ditto_lambda']:g}. "
        f"Seeds: {', '.join(str(s) for s in cfg['seeds'])}"
        + (" (mean ± std over the seeds)." if len(cfg["seeds"]) > 1 else "."),
    ]


def markdown(results: dict[str, Any]) -> str:
    summary, seeds = results["summary"], len(results["config"]["seeds"])
    lines = [
        *header(results),
        "",
        "| method | " + " | ".join(f"{title} ({unit})" for _, title, _, _, unit in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for name, stats in summary.items():
        cells = [cell(stats[key], scale, fmt, seeds) for key, _, scale, fmt, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "mean acc: the mean over the devices of each device's accuracy on its own test split; worst 10%: the mean of "
        "the lowest ⌈10%⌉ of those accuracies (at least one device); MACs/inference: the backbone's forward MACs per "
        "image (the main block, `torch.utils.flop_counter`); offloaded: the share of inferences sent to the cloud (0 "
        "for every baseline); up/down: bytes over the run, float32 arrays of what each method sends (the whole "
        "backbone for FedAvg, the body for FedPer/FedRep/FedBABU; downloads include the final model sent to every "
        "device for scoring; local-only 0); trained: images processed by training (epochs x images, the server's "
        "warm start and the fine-tuning included); wall: seconds on this machine, devices simulated one after "
        "another, shared stages (warm start, the FedAvg trajectory) counted for every method that uses them.",
        "",
    ]
    return "\n".join(lines)


def _families(results: dict[str, Any]) -> dict[str, str]:
    known = results.get("families", {})
    return {name: known.get(name) or family_of(name) for name in results["summary"]}


def plot_device_accuracy(results: dict[str, Any], path: Path) -> Path:
    """(a) Each method's per-device accuracies: a box and the devices as dots (every seed pooled)."""
    summary = results["summary"]
    names = list(summary)
    style = styles(_families(results))
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.5))
    data = [[100 * a for a in summary[n]["device_accuracies"]] for n in names]
    ys = np.arange(len(names))[::-1]
    box = ax.boxplot(
        data,
        positions=ys,
        orientation="horizontal",
        widths=0.6,
        patch_artist=True,
        showfliers=False,
        medianprops={"color": "black"},
    )
    rng = np.random.default_rng(0)
    for y, name, values, patch in zip(ys, names, data, box["boxes"], strict=True):
        s = style[name]
        patch.set_facecolor((*s.color[:3], 0.35))
        patch.set_edgecolor(s.color)
        ax.scatter(values, y + rng.uniform(-0.18, 0.18, len(values)), s=9, color=s.color, marker=s.marker, zorder=3)
        ax.scatter([float(np.mean(values))], [y], s=40, color="black", marker="|", zorder=4)
    ax.set_yticks(ys, names)
    ax.set_xlabel("per-device test accuracy (%)  (| = mean)")
    ax.set_title("Accuracy of each device on its own test split")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_accuracy_vs_bytes(results: dict[str, Any], path: Path) -> Path:
    """(b) Mean per-device accuracy against the bytes each method moved (up + down), one marker per method."""
    summary = results["summary"]
    families = _families(results)
    style = styles(families)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, stats in summary.items():
        mb = 1e-6 * (stats["bytes_up"]["mean"] + stats["bytes_down"]["mean"])
        acc, err = 100 * stats["mean_accuracy"]["mean"], 100 * stats["mean_accuracy"]["std"]
        s = style[name]
        ax.errorbar(
            mb, acc, yerr=err, color=s.color, marker=s.marker, markersize=7, capsize=3, linestyle="none",
            label=f"{name} ({FAMILY_TITLES.get(families[name], families[name])})",
        )  # fmt: skip
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(left=-0.5)
    ax.set_xlabel("bytes moved over the run, up + down (MB, symlog: 0 = no communication)")
    ax.set_ylabel("mean per-device accuracy (%)")
    ax.set_title("Accuracy against communication")
    ax.grid(alpha=0.3)
    legend_outside(ax)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def write_report(results: dict[str, Any], out: Path, *, plots: bool = True) -> list[Path]:
    """Write ``results.json``, ``results.md`` and (``plots``) the two PNGs into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(results, out / "results.json")
    (out / "results.md").write_text(markdown(results))
    paths = [out / "results.json", out / "results.md"]
    if plots and results["summary"]:
        paths.append(plot_device_accuracy(results, out / "accuracy_per_device.png"))
        paths.append(plot_accuracy_vs_bytes(results, out / "accuracy_vs_bytes.png"))
    return paths
