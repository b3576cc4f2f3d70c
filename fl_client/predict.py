"""Adaptive inference on an edge device outside federation rounds: what ``meanet edge predict`` runs.

A verified edge model (:func:`meanet_core.inference.edge_model.load_edge_model`) routes new inputs through
``AdaptiveEngine``: the main block on every input, the extension on those the policy sends there, the complex ones
to the cloud service (:class:`fl_client.offload.RemoteCloud`), or to nowhere (:class:`EdgeOnly`) when the device has
no cloud. Whatever the cloud does, every input gets one row in the CSV: an input the cloud was asked about but did
not answer (down, refused, no cloud configured) keeps the edge's own answer with ``fallback=true``.

The inputs (:func:`meanet_edge.inputs.open_inputs`) are a ``.npz``, an image or a folder of images, read one batch at
a time; unreadable files are skipped and counted (or refuse the run, ``bad_images="error"``, before any CSV is
written).
"""

from __future__ import annotations

import csv
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch
from tqdm.auto import tqdm

from fl_client.offload import RemoteCloud
from meanet_core.data.images import BadImageError, SkippedImage, check_bad_images, list_bad
from meanet_core.inference.cost import CostConfig
from meanet_core.inference.edge_model import EdgeModel, describe_policy
from meanet_core.inference.engine import (
    EXIT_CLOUD,
    EXIT_NAMES,
    AdaptiveEngine,
    CloudBackend,
    CloudReply,
    Predictions,
)
from meanet_core.inference.evaluation import summarize
from meanet_core.inference.policies import Policy
from meanet_core.models import MEANet
from meanet_core.training.memory import inference_batch
from meanet_edge.inputs import Batch, Inputs

log = logging.getLogger("meanet.edge.predict")
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


# ------------------------------------------------------------------------------------------------ cloud backends
class EdgeOnly:
    """The cloud of a device that has none: every input the policy would offload stays on the edge, flagged as a
    fallback, and nothing is sent."""

    macs_per_image = 0

    def classify(self, images: torch.Tensor) -> CloudReply:
        n = int(images.shape[0])
        no = torch.zeros(n, dtype=torch.bool)
        return CloudReply(torch.zeros(n, dtype=torch.int64), no, sent=no)


class TimedCloud:
    """A cloud backend that measures the wall-clock seconds of its last call (the request's real round trip)."""

    def __init__(self, inner: CloudBackend) -> None:
        self.inner = inner
        self.macs_per_image = inner.macs_per_image
        self.seconds = 0.0

    def classify(self, images: torch.Tensor) -> CloudReply:
        t0 = time.perf_counter()
        try:
            return self.inner.classify(images)
        finally:
            self.seconds = time.perf_counter() - t0
            self.macs_per_image = self.inner.macs_per_image


def check_cloud_contract(info: dict[str, Any], edge: EdgeModel | MEANet, url: str) -> None:
    """Refuse a cloud service whose model takes other images or classes than the edge model (another run)."""
    model = edge.model if isinstance(edge, EdgeModel) else edge
    side, k = model.input_size, model.num_classes
    shape, classes = info.get("input_shape"), info.get("num_classes")
    if shape is not None and list(shape) != [3, side, side]:
        raise ValueError(f"the cloud at {url} takes images of shape {shape}; this edge model takes [3, {side}, {side}]")
    if classes is not None and int(classes) != k:
        raise ValueError(
            f"the cloud at {url} classifies {classes} classes, this edge model {k}: they belong to different runs; "
            "serve the cloud of the run the model was exported from"
        )


def connect_cloud(url: str, edge: EdgeModel | MEANet, **options: Any) -> RemoteCloud:
    """A :class:`RemoteCloud` for ``edge`` (an exported edge model, or the MEANet of a federation's broadcast),
    checked once at the start.

    A service that is down now is not an error (the offloaded inputs fall back until it answers); one that answers
    with an error (wrong or missing token, no client certificate), whose certificate does not verify, or that serves
    another run's cloud model is: it would turn every offload of the run into a fallback.
    """
    cloud = RemoteCloud(url, macs_per_image=0, **options)  # /info is read below, where its errors are told apart
    try:
        info = cloud.refresh_info()
    except httpx.HTTPError as e:
        if "CERTIFICATE_VERIFY_FAILED" not in str(e):
            log.warning("cloud %s does not answer now (%s); its inputs are answered on the edge until it does", url, e)
            return cloud
        cloud.close()
        raise ValueError(
            f"the TLS certificate of {url} does not verify ({e}); pass the CA that signed it (--ca)"
        ) from e
    except (ValueError, KeyError, TypeError) as e:  # it answered, with an error or not with a cloud's info
        cloud.close()
        raise ValueError(
            f"the cloud service refused or did not understand GET /info ({e}): check the token (--token or "
            "$MEANET_CLOUD_TOKEN), the client certificate, and that --cloud-url is a meanet cloud serve"
        ) from e
    try:
        check_cloud_contract(info, edge, url)
    except ValueError:
        cloud.close()
        raise
    return cloud


# ------------------------------------------------------------------------------------------------ predicting
@dataclass
class PredictRun:
    rows: int
    summary: dict[str, Any]
    skipped: list[SkippedImage]
    label_source: str
    policy: dict[str, object]


def predict_to_csv(
    edge: EdgeModel,
    inputs: Inputs,
    out: str | os.PathLike[str],
    *,
    policy: Policy,
    cloud: CloudBackend | None = None,
    cost: CostConfig | None = None,
    batch_size: int = 64,
    bad_images: str = "skip",
    progress: bool = True,
) -> PredictRun:
    """Route every input, write one CSV row per input to ``out`` (atomically), and summarise.

    ``latency_ms`` is measured, not modelled: the wall time of the input's batch on the edge, shared among its
    inputs in proportion to the MACs each ran (an input that also ran the extension costs more), plus, for inputs
    sent to the cloud, the wall time of the request that carried them (retries and a fallback's wait included).
    """
    check_bad_images(bad_images)
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; expected a CSV file path such as {out / 'preds.csv'}")
    bounded = inference_batch([edge.model], edge.model.input_size, batch_size)  # a large folder never exhausts it
    if bounded < batch_size:
        log.warning("batch of %d inputs lowered to %d: a larger one would not fit in memory", batch_size, bounded)
        batch_size = bounded
    timed = TimedCloud(cloud if cloud is not None else EdgeOnly())
    engine = AdaptiveEngine(edge.model, policy, timed, cost, optimize=True)
    names = edge.class_names
    parts: list[Predictions] = []
    truths: list[torch.Tensor] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with (
            os.fdopen(fd, "w", newline="") as f,
            tqdm(
                total=len(inputs),
                unit="img",
                desc="predict",
                leave=False,
                disable=not progress or len(inputs) <= batch_size,
            ) as bar,
        ):
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            for batch in inputs.batches(batch_size):
                timed.seconds, t0 = 0.0, time.perf_counter()
                pred = engine.predict(torch.from_numpy(batch.x))
                edge_s = max(0.0, time.perf_counter() - t0 - timed.seconds)
                asked = (pred.exit == EXIT_CLOUD) | pred.fallback
                macs = pred.edge_macs.double()
                pred.latency_s = edge_s * macs / macs.sum() + asked.double() * timed.seconds
                _write_rows(writer, batch, pred, names)
                parts.append(pred)
                if batch.labels is not None:
                    truths.append(torch.from_numpy(batch.labels))
                bar.update(batch.read)
            bar.update(len(inputs) - bar.n)  # skipped files count as done
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
    if inputs.skipped:
        log.warning("skipped %d of %d files that are not readable images: %s",
                    len(inputs.skipped), len(inputs), list_bad(inputs.skipped))  # fmt: skip
    pred = Predictions.concat(parts)
    summary = summarize(pred, torch.cat(truths) if inputs.labelled else None)
    summary["offloaded"] = int(((pred.exit == EXIT_CLOUD) | pred.fallback).sum())
    return PredictRun(len(pred), summary, list(inputs.skipped), inputs.label_source, policy.as_dict())


def _write_rows(writer: Any, batch: Batch, pred: Predictions, names: Sequence[str]) -> None:
    labels, truths = pred.labels.tolist(), batch.labels.tolist() if batch.labels is not None else None
    for i, name in enumerate(batch.names):
        label, true = labels[i], truths[i] if truths is not None else None
        writer.writerow(
            [
                name,
                label,
                names[label] if 0 <= label < len(names) else "",
                EXIT_NAMES[int(pred.exit[i])],
                f"{float(pred.edge_confidence[i]):.6f}",
                int(pred.edge_macs[i]),
                int(pred.cloud_macs[i]),
                int(pred.bytes_sent[i]),
                f"{float(pred.energy_joule[i]):.6g}",
                f"{float(pred.latency_s[i]) * 1e3:.3f}",
                "true" if pred.fallback[i] else "false",
                "" if true is None else true,
                "" if true is None else names[true],
            ]
        )


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
    lines.append(
        f"fallbacks  {s['fallbacks']} of {s['offloaded']} inputs routed to the cloud were answered by the edge"
    )
    return "\n".join(lines)


__all__ = [
    "CSV_COLUMNS",
    "EdgeOnly",
    "PredictRun",
    "TimedCloud",
    "check_cloud_contract",
    "connect_cloud",
    "format_summary",
    "predict_to_csv",
]
