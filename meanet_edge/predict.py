"""``meanet edge predict`` on a device: every input routed through an edge package, one CSV row each, a summary.

The loop here is the project's one: the full install's ``meanet edge predict`` on a ``.pt`` edge model
(:mod:`fl_client.predict`) hands its torch engine in as a ``predict_batch`` function and shares the rest (the
inputs, the CSV, the summary, the bad-file handling).

Whatever the cloud does, every input gets one row: an input the cloud was asked about but did not answer (down,
refused, no cloud configured) keeps the edge's own answer with ``fallback=true``. The CSV is written atomically:
a crash leaves no half file.
"""

from __future__ import annotations

import csv
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from meanet_edge.cost import CostConfig
from meanet_edge.images import BadImageError, check_bad_images, list_bad
from meanet_edge.inputs import Inputs
from meanet_edge.profile import DeviceProfile
from meanet_edge.report import CSV_COLUMNS, EXIT_CLOUD, PredictRun, csv_rows, summarize
from meanet_edge.runtime import EdgePredictions

log = logging.getLogger("meanet.edge.predict")


class _Progress:
    """A one-line progress count on a terminal's stderr (a device has no tqdm); silent when not a terminal."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done = total, 0
        self.enabled = enabled and sys.stderr.isatty()

    def update(self, n: int) -> None:
        self.done += n
        if self.enabled:
            sys.stderr.write(f"\rpredict {self.done}/{self.total} inputs")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def predict_to_csv(
    predict_batch: Callable[[np.ndarray], EdgePredictions],
    class_names: tuple[str, ...],
    inputs: Inputs,
    out: str | os.PathLike[str],
    *,
    policy: dict[str, object],
    batch_size: int = 64,
    bad_images: str = "skip",
    progress: bool = True,
    profile: DeviceProfile | None = None,
    cost: CostConfig | None = None,
) -> PredictRun:
    """Route every input with ``predict_batch`` (uint8 (n, 3, S, S) -> predictions), write one CSV row per input to
    ``out`` (atomically), and summarise. A measured device ``profile`` adds a second energy figure to the summary
    beside the MACs x joules-per-MAC model (with ``cost``'s uplink model)."""
    check_bad_images(bad_images)
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; expected a CSV file path such as {out / 'preds.csv'}")
    parts: list[EdgePredictions] = []
    truths: list[np.ndarray] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    bar = _Progress(len(inputs), progress and len(inputs) > batch_size)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            for batch in inputs.batches(batch_size):
                pred = predict_batch(batch.x)
                writer.writerows(
                    csv_rows(
                        batch.names,
                        batch.labels,
                        class_names,
                        labels=pred.labels,
                        exits=pred.exit,
                        edge_confidence=pred.edge_confidence,
                        edge_macs=pred.edge_macs,
                        cloud_macs=pred.cloud_macs,
                        bytes_sent=pred.bytes_sent,
                        energy_joule=pred.energy_joule,
                        latency_s=pred.latency_s,
                        fallback=pred.fallback,
                    )
                )
                parts.append(pred)
                if batch.labels is not None:
                    truths.append(batch.labels)
                bar.update(batch.read)
        if inputs.skipped and bad_images == "error":
            raise BadImageError(
                f"{len(inputs.skipped)} of {len(inputs)} files in {inputs.source} are not readable images: "
                f"{list_bad(inputs.skipped)}. Fix or remove them, or pass --bad-images skip to leave them out",
                tuple(inputs.skipped),
            )
        if not parts:
            raise FileNotFoundError(
                f"none of the {len(inputs)} files in {inputs.source} is a readable image: {list_bad(inputs.skipped)}"
            )
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    if inputs.skipped:
        log.warning("skipped %d of %d files that are not readable images: %s",
                    len(inputs.skipped), len(inputs), list_bad(inputs.skipped))  # fmt: skip
    pred = EdgePredictions.concat(parts)
    summary = summarize(
        labels=pred.labels, exits=pred.exit, fallback=pred.fallback, edge_macs=pred.edge_macs,
        cloud_macs=pred.cloud_macs, energy_joule=pred.energy_joule, bytes_sent=pred.bytes_sent,
        latency_s=pred.latency_s, truth=np.concatenate(truths) if inputs.labelled else None,
    )  # fmt: skip
    summary["offloaded"] = int(((pred.exit == EXIT_CLOUD) | pred.fallback).sum())
    if profile is not None:
        energy = profile.energy(pred, cost or CostConfig(), batch_size)
        summary["measured_energy_per_image_joule"] = float(energy.mean())
        summary["measured_energy_model"] = profile.describe()
    return PredictRun(len(pred), summary, list(inputs.skipped), inputs.label_source, dict(policy))


__all__ = ["predict_to_csv"]
