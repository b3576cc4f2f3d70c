"""PNG plots of an evaluation report (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

EXITS = ("main", "extension", "cloud")
COLORS = ("#4C72B0", "#DD8452", "#55A868")


def plot_report(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Exit distribution, accuracy per exit, and accuracy against energy as the threshold sweeps."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(5, 3.5))
    fractions = [report["exits"][e]["fraction"] for e in EXITS]
    bars = ax.bar(EXITS, fractions, color=COLORS)
    ax.bar_label(bars, labels=[f"{f:.1%}" for f in fractions])
    ax.set_ylabel("fraction of test images")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Where inference ends ({report['policy']['name']} policy)")
    paths.append(_save(fig, out / "exit_distribution.png"))

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = [*EXITS, "overall"]
    accs = [report["exits"][e]["accuracy"] or 0.0 for e in EXITS] + [report["accuracy"]]
    bars = ax.bar(names, accs, color=[*COLORS, "#8172B2"])
    ax.bar_label(bars, labels=[f"{a:.1%}" for a in accs])
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title("Accuracy of the samples leaving at each exit")
    paths.append(_save(fig, out / "accuracy_per_exit.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    sweep = report["sweep"]
    ax.plot(
        [p["energy_per_image_joule"] * 1e3 for p in sweep],
        [p["accuracy"] for p in sweep],
        marker="o",
        label=f"{report['policy']['name']} policy, threshold sweep",
    )
    models = report.get("energy_models", {})
    if sweep and "measured_energy_per_image_joule" in sweep[0]:
        ax.lines[-1].set_label(f"MACs model: {models.get('energy_per_image_joule', 'MACs x J/MAC')}")
        ax.plot(
            [p["measured_energy_per_image_joule"] * 1e3 for p in sweep],
            [p["accuracy"] for p in sweep],
            marker="s",
            linestyle="--",
            label=f"measured: {models.get('measured_energy_per_image_joule', 'seconds x stated power')}",
        )
    ax.scatter(
        [report["energy_per_image_joule"] * 1e3],
        [report["accuracy"]],
        color="red",
        zorder=3,
        label="operating point (MACs model)",
    )
    ref = report["reference_accuracy"]
    ax.axhline(ref["cloud_only"], color="gray", linestyle="--", label=f"cloud only ({ref['cloud_only']:.1%})")
    ax.axhline(ref["main_only"], color="gray", linestyle=":", label=f"main block only ({ref['main_only']:.1%})")
    ax.set_xlabel("edge energy per image (mJ)")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy against energy")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "accuracy_vs_energy.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
