"""What adaptive inference reports, in numpy: the summary of a set of predictions (accuracy and share per exit,
MACs, energy, bytes, latency), its printed table, and the CSV rows of ``meanet edge predict``.

One implementation for the whole project: :func:`meanet_core.inference.evaluation.summarize` (the torch engine's
evaluations and benchmarks) converts its tensors and calls :func:`summarize` here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

EXIT_MAIN, EXIT_EXTENSION, EXIT_CLOUD = 0, 1, 2
EXIT_NAMES = ("main", "extension", "cloud")
CSV_COLUMNS = (
    "input",
    "label",
    "class_name",
    "exit",
    "edge_confidence",
    "edge_macs",
    "cloud_macs",
    "bytes_sent",
    "energy_joule",
    "latency_ms",
    "fallback",
    "true_label",
    "true_class_name",
)


def summarize(
    *,
    labels: np.ndarray,
    exits: np.ndarray,
    fallback: np.ndarray,
    edge_macs: np.ndarray,
    cloud_macs: np.ndarray,
    energy_joule: np.ndarray,
    bytes_sent: np.ndarray,
    latency_s: np.ndarray,
    truth: np.ndarray | None,
) -> dict[str, Any]:
    """Accuracy, exits, MACs, bytes and energy of a set of predictions (accuracies None when ``truth`` is).

    Every argument is a numpy array over the same inputs: predicted class, exit code (index of
    :data:`EXIT_NAMES`), fallback flag, MACs on the device and in the cloud, edge energy, bytes sent and latency.
    """
    n = int(labels.shape[0])
    if n == 0:
        raise ValueError("no predictions to summarize: the evaluation data is empty (check the test split or --limit)")
    if truth is not None and len(truth) != n:
        raise ValueError(f"{n} predictions but {len(truth)} labels: they must come from the same images")
    correct = labels == truth if truth is not None else None
    exit_summary = {}
    for code, name in enumerate(EXIT_NAMES):
        mask = exits == code
        count = int(mask.sum())
        exit_summary[name] = {
            "fraction": count / n,
            "accuracy": float(correct[mask].mean()) if count and correct is not None else None,
            "count": count,
        }
    edge, cloud = edge_macs.astype(np.float64), cloud_macs.astype(np.float64)
    return {
        "accuracy": float(correct.mean()) if correct is not None else None,
        "exits": exit_summary,
        "fallbacks": int(fallback.sum()),
        "macs_per_image": float((edge + cloud).mean()),
        "edge_macs_per_image": float(edge.mean()),
        "cloud_macs_per_image": float(cloud.mean()),
        "energy_per_image_joule": float(np.asarray(energy_joule, dtype=np.float64).mean()),
        "bytes_offloaded_per_image": float(np.asarray(bytes_sent, dtype=np.float64).mean()),
        "latency_per_image_s": float(np.asarray(latency_s, dtype=np.float64).mean()),
    }


def describe_policy(policy: Mapping[str, Any]) -> str:
    """A policy's ``as_dict()`` in words: ``calibrated (main_threshold 0.412, extension_threshold 0.55)``."""
    shown = {k: v for k, v in policy.items() if k != "name" and not (k == "use_extension" and v is True)}
    if shown.get("use_extension") is False:
        shown["use_extension"] = "no (the main block answers every top-1)"
    values = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
    return f"{policy.get('name')} ({values})" if values else str(policy.get("name"))


@dataclass
class PredictRun:
    """What one ``meanet edge predict`` did: rows written, their summary, files skipped, where labels came from."""

    rows: int
    summary: dict[str, Any]
    skipped: list[Any]
    label_source: str
    policy: dict[str, object]


def csv_rows(
    names: Sequence[str],
    truths: np.ndarray | None,
    class_names: Sequence[str],
    *,
    labels: np.ndarray,
    exits: np.ndarray,
    edge_confidence: np.ndarray,
    edge_macs: np.ndarray,
    cloud_macs: np.ndarray,
    bytes_sent: np.ndarray,
    energy_joule: np.ndarray,
    latency_s: np.ndarray,
    fallback: np.ndarray,
) -> list[list[object]]:
    """One CSV row (:data:`CSV_COLUMNS`) per input of a batch."""
    rows: list[list[object]] = []
    k = len(class_names)
    for i, name in enumerate(names):
        label = int(labels[i])
        true = int(truths[i]) if truths is not None else None
        rows.append(
            [
                name,
                label,
                class_names[label] if 0 <= label < k else "",
                EXIT_NAMES[int(exits[i])],
                f"{float(edge_confidence[i]):.6f}",
                int(edge_macs[i]),
                int(cloud_macs[i]),
                int(bytes_sent[i]),
                f"{float(energy_joule[i]):.6g}",
                f"{float(latency_s[i]) * 1e3:.3f}",
                "true" if fallback[i] else "false",
                "" if true is None else true,
                "" if true is None else class_names[true],
            ]
        )
    return rows


def format_summary(run: PredictRun, cloud: str) -> str:
    """The summary table ``meanet edge predict`` prints."""
    s = run.summary
    policy = describe_policy(run.policy)
    skipped = f"; {len(run.skipped)} unreadable files skipped" if run.skipped else ""
    lines = [f"{run.rows} inputs{skipped}; policy {policy}; cloud {cloud}", "exit        share   count  accuracy"]
    for name, e in s["exits"].items():
        acc = f"{e['accuracy']:.4f}" if e["accuracy"] is not None else "-"
        lines.append(f"{name:<10} {e['fraction']:>6.3f} {e['count']:>7d}  {acc:>8}")
    if s["accuracy"] is not None:
        lines.append(f"accuracy   {s['accuracy']:.4f} (true labels from {run.label_source})")
    lines.append(
        f"per input: MACs {s['macs_per_image'] / 1e6:.2f}M (edge {s['edge_macs_per_image'] / 1e6:.2f}M, cloud "
        f"{s['cloud_macs_per_image'] / 1e6:.2f}M), energy {s['energy_per_image_joule'] * 1e3:.4f} mJ, bytes sent "
        f"{s['bytes_offloaded_per_image']:.0f}, latency {s['latency_per_image_s'] * 1e3:.2f} ms"
    )
    if "measured_energy_per_image_joule" in s:
        lines.append(
            f"energy from the device profile: {s['measured_energy_per_image_joule'] * 1e3:.4f} mJ per input "
            f"({s['measured_energy_model']})"
        )
    lines.append(
        f"fallbacks  {s['fallbacks']} of {s['offloaded']} inputs routed to the cloud were answered by the edge"
    )
    return "\n".join(lines)


__all__ = [
    "CSV_COLUMNS",
    "EXIT_CLOUD",
    "EXIT_EXTENSION",
    "EXIT_MAIN",
    "EXIT_NAMES",
    "PredictRun",
    "csv_rows",
    "describe_policy",
    "format_summary",
    "summarize",
]
