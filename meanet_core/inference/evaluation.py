"""Evaluation of a trained run: the adaptive engine on the test set, reference accuracies, costs and a sweep.

Everything routed here goes through ``AdaptiveEngine``; the sweep and the reference accuracies reuse the outputs of
every branch computed once (``BranchOutputs``) and the same routing code (``route_outputs``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from meanet_core.data import ImageTensors, TensorBatches
from meanet_core.inference.cost import CostConfig
from meanet_core.inference.engine import (
    EXIT_CLOUD,
    AdaptiveEngine,
    LocalCloud,
    Predictions,
    input_memory_format,
    measure_route_latency,
    predictions_from_outputs,
    route_outputs,
)
from meanet_core.inference.fastpath import optimize_for_inference
from meanet_core.inference.policies import CalibratedPolicy, PaperPolicy, Policy
from meanet_core.models import CloudModel, MEANet
from meanet_edge.report import summarize as summarize_arrays

POLICIES = ("paper", "calibrated")


@dataclass(frozen=True)
class BranchOutputs:
    """Logits of every branch on every sample of a split (computed once, reused for sweeps and references)."""

    main: torch.Tensor  # (N, K)
    extension: torch.Tensor  # (N, H)
    cloud: torch.Tensor  # (N, K)
    labels: torch.Tensor  # (N,) ground truth


@torch.inference_mode()
def branch_outputs(model: MEANet, cloud: LocalCloud, data: ImageTensors, batch_size: int = 256) -> BranchOutputs:
    model.eval()
    memory_format = input_memory_format(model)
    mains, exts, clouds = [], [], []
    for x, _ in TensorBatches(data, batch_size, shuffle=False):
        main, ext = model(x.contiguous(memory_format=memory_format))
        mains.append(main)
        exts.append(ext)
        clouds.append(cloud.logits(x))
    return BranchOutputs(torch.cat(mains), torch.cat(exts), torch.cat(clouds), data.y.clone())


def calibrate_for_cloud_fraction(
    model: MEANet, cloud_model: CloudModel, val: ImageTensors, target_cloud_fraction: float, batch_size: int = 256
) -> CalibratedPolicy:
    """The calibrated policy's thresholds fitted on ``val`` so that at most ``target_cloud_fraction`` is offloaded."""
    out = branch_outputs(model, LocalCloud(cloud_model), val, batch_size)
    return fit_calibrated(model, out, CostConfig(), 0, 0, 0, target_cloud_fraction=target_cloud_fraction)


def fit_calibrated(
    model: MEANet,
    val: BranchOutputs,
    cost: CostConfig,
    main_macs: int,
    extension_macs: int,
    image_bytes: int,
    *,
    target_cloud_fraction: float | None = 0.1,
    energy_budget_joule: float | None = None,
) -> CalibratedPolicy:
    """Fit the calibrated policy's thresholds on validation outputs."""
    probs, ext_probs = val.main.softmax(1), val.extension.softmax(1)
    top1 = probs.argmax(1)
    top1_hard = (model.hard_index[top1] >= 0).numpy()
    ext_pred = model.hard_classes[ext_probs.argmax(1)]
    if energy_budget_joule is not None:
        target_cloud_fraction = None
    return CalibratedPolicy.fit(
        probs.max(1).values.numpy(),
        (top1 == val.labels).numpy(),
        top1_hard,
        ext_probs.max(1).values.numpy(),
        (ext_pred == val.labels).numpy(),
        (val.cloud.argmax(1) == val.labels).numpy(),
        target_cloud_fraction=target_cloud_fraction,
        energy_budget_joule=energy_budget_joule,
        edge_energy=(main_macs * cost.joules_per_mac, (main_macs + extension_macs) * cost.joules_per_mac),
        offload_energy=float(cost.transmission_energy(float(image_bytes))),
    )


def summarize(pred: Predictions, labels: torch.Tensor | None) -> dict[str, Any]:
    """Accuracy, exits, MACs, bytes and energy of a set of predictions (accuracies None when ``labels`` is).

    The one summary of costs in the repository (:func:`meanet_edge.report.summarize`, which the edge runtime uses
    too): the CLI's evaluation, the federation's edge and cloud evaluations and the continual benchmark read their
    numbers here, from ``Predictions`` priced by ``engine.priced``.
    """
    return summarize_arrays(
        labels=pred.labels.numpy(), exits=pred.exit.numpy(), fallback=pred.fallback.numpy(),
        edge_macs=pred.edge_macs.numpy(), cloud_macs=pred.cloud_macs.numpy(), energy_joule=pred.energy_joule.numpy(),
        bytes_sent=pred.bytes_sent.numpy(), latency_s=pred.latency_s.numpy(),
        truth=labels.cpu().numpy() if labels is not None else None,
    )  # fmt: skip


def run_engine(
    engine: AdaptiveEngine, data: ImageTensors, batch_size: int, all_branches: LocalCloud | None = None
) -> tuple[Predictions, float]:
    """Predictions over ``data`` from uint8 batches, and the wall-clock seconds they took."""
    parts = []
    t0 = time.perf_counter()
    for start in range(0, len(data), batch_size):
        images = data.x[start : start + batch_size]
        parts.append(engine.predict_all_branches(images, all_branches) if all_branches else engine.predict(images))
    return Predictions.concat(parts), time.perf_counter() - t0


def measured_energy(pred: Predictions, engine: AdaptiveEngine, power_w: float) -> float:
    """Mean edge joules per image from measurement: the engine's measured seconds per block (its ``latency``) x a
    stated power while computing, plus the uplink model for the images sent (the MACs model's twin)."""
    if engine.latency is None:
        raise ValueError("measured energy needs the engine's measured route latency (measure_route_latency)")
    ran_extension = (pred.edge_macs > engine.main_macs).double()
    seconds = engine.latency.main_s + ran_extension * engine.latency.extension_s
    uplink = engine.cost.transmission_energy(pred.bytes_sent.double())
    return float((power_w * seconds + uplink).mean())


def sweep(
    model: MEANet,
    outputs: BranchOutputs,
    engine: AdaptiveEngine,
    policies: list[Policy],
    power_w: float | None = None,
) -> list[dict[str, Any]]:
    """Accuracy, cloud fraction and energy per image for each policy, from precomputed outputs (each policy's
    routes priced by ``predictions_from_outputs`` and summarised by ``summarize``, as the engine's own); with
    ``power_w``, the measured energy too (:func:`measured_energy`)."""
    points = []
    for policy in policies:
        pred = predictions_from_outputs(
            model, policy, engine.blocks, outputs.main, outputs.extension, outputs.cloud, engine.cost
        )
        summary = summarize(pred, outputs.labels)
        point = {
            **{k: v for k, v in policy.as_dict().items() if k != "name"},
            "accuracy": summary["accuracy"],
            "cloud_fraction": summary["exits"]["cloud"]["fraction"],
            "extension_fraction": summary["exits"]["extension"]["fraction"],
            "energy_per_image_joule": summary["energy_per_image_joule"],
        }
        if power_w is not None:
            point["measured_energy_per_image_joule"] = measured_energy(pred, engine, power_w)
        points.append(point)
    return points


def evaluate(
    model: MEANet,
    cloud_model: CloudModel,
    val: ImageTensors,
    test: ImageTensors,
    *,
    policy: str = "paper",
    entropy_threshold: float = 0.5,
    target_cloud_fraction: float | None = 0.1,
    energy_budget_joule: float | None = None,
    cost: CostConfig | None = None,
    batch_size: int = 256,
    speed_repeats: int = 1,
    optimize: bool = True,
    power_watts: float = 5.0,
) -> dict[str, Any]:
    """The full evaluation report (a JSON-ready dict).

    Energy comes in two models, each named in the report: MACs x ``cost.joules_per_mac`` (``energy_per_image_joule``)
    and the measured one: this machine's seconds per block x ``power_watts``, a stated power draw
    (``measured_energy_per_image_joule``); both add the uplink model for offloaded images.

    ``optimize`` (default): run inference copies of both models with BatchNorm folded into the convolutions and
    channels-last layout (:mod:`meanet_core.inference.fastpath`; the same answers up to float rounding, 1.2-1.3x
    faster on CPU).
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; valid: {', '.join(POLICIES)}")
    cost = cost or CostConfig()
    model.eval()
    fast = optimize_for_inference(model) if optimize else model
    cloud = LocalCloud(cloud_model, optimize=optimize)
    latency = measure_route_latency(fast, cloud, batch_size=min(batch_size, 64))
    engine = AdaptiveEngine(fast, PaperPolicy(entropy_threshold), cloud, cost, latency)
    test_out = branch_outputs(fast, cloud, test, batch_size)
    if policy == "calibrated":
        val_out = branch_outputs(fast, cloud, val, batch_size)
        engine.policy = fit_calibrated(
            model,
            val_out,
            cost,
            engine.main_macs,
            engine.extension_macs,
            engine.image_bytes,
            target_cloud_fraction=target_cloud_fraction,
            energy_budget_joule=energy_budget_joule,
        )
        sweep_policies: list[Policy] = [
            fit_calibrated(
                model,
                val_out,
                cost,
                engine.main_macs,
                engine.extension_macs,
                engine.image_bytes,
                target_cloud_fraction=float(f),
            )
            for f in np.linspace(0.0, 0.6, 13)
        ]
    else:
        sweep_policies = [PaperPolicy(float(t)) for t in np.linspace(0.0, 1.0, 21)]

    # Speed: engine and all-branches side by side, alternated, best of `speed_repeats`.
    t_engine, t_all = float("inf"), float("inf")
    pred = all_pred = None
    for _ in range(max(1, speed_repeats)):
        pred, t = run_engine(engine, test, batch_size)
        t_engine = min(t_engine, t)
        all_pred, t = run_engine(engine, test, batch_size, all_branches=cloud)
        t_all = min(t_all, t)
    assert pred is not None and all_pred is not None
    labels = test.y
    report = summarize(pred, labels)
    all_branches = engine.main_macs + engine.extension_macs + cloud.macs_per_image
    predicted_speedup = all_branches / report["macs_per_image"]
    measured_speedup = t_all / t_engine
    report.update(
        {
            "policy": engine.policy.as_dict(),
            "optimized_for_inference": optimize,
            "num_images": len(labels),
            "macs_all_branches_per_image": float(all_branches),
            "macs_cloud_only_per_image": float(cloud.macs_per_image),
            "macs_main_per_image": float(engine.main_macs),
            "macs_extension_per_image": float(engine.extension_macs),
            "images_per_second": len(labels) / t_engine,
            "images_per_second_all_branches": len(labels) / t_all,
            "speedup_measured": measured_speedup,
            "speedup_predicted_by_macs": predicted_speedup,
            "speedup_ratio_measured_to_predicted": measured_speedup / predicted_speedup,
            "all_branches_agree": bool(torch.equal(all_pred.labels, pred.labels)),
            "reference_accuracy": reference_accuracy(model, engine.policy, test_out, report["accuracy"]),
            "hard_classes": [int(c) for c in model.hard_classes.tolist()],
            "route_latency_s": latency.as_dict(),
            "cost_model": cost.as_dict(),
            "sweep": sweep(model, test_out, engine, sweep_policies, power_watts),
            "measured_energy_per_image_joule": measured_energy(pred, engine, power_watts),
            "energy_models": {
                "energy_per_image_joule": f"MACs x {cost.joules_per_mac:g} J/MAC + LTE uplink",
                "measured_energy_per_image_joule": f"measured seconds per block on this machine (torch, batch "
                f"{latency.batch_size}) x {power_watts:g} W stated + LTE uplink",
            },
        }
    )
    return report


def reference_accuracy(
    model: MEANet, policy: Policy, out: BranchOutputs, meanet_accuracy: float
) -> dict[str, float | None]:
    """Main block alone, the edge (main + extension, nothing offloaded), MEANet with cloud, and the cloud alone;
    and, on the inputs the policy offloads, the accuracy of the edge's own answer against the cloud's (what calling
    the cloud gains there; None when nothing is offloaded)."""
    edge_only = route_outputs(model, policy, out.main, out.extension, None)
    cloud_labels = out.cloud.argmax(1)
    sent = route_outputs(model, policy, out.main, out.extension, cloud_labels).exit == EXIT_CLOUD
    labels = out.labels[sent]
    return {
        "main_only": float((out.main.argmax(1) == out.labels).float().mean()),
        "edge_main_plus_extension": float((edge_only.labels == out.labels).float().mean()),
        "meanet_with_cloud": meanet_accuracy,
        "cloud_only": float((cloud_labels == out.labels).float().mean()),
        "offloaded_edge": float((edge_only.labels[sent] == labels).float().mean()) if len(labels) else None,
        "offloaded_cloud": float((cloud_labels[sent] == labels).float().mean()) if len(labels) else None,
    }


def hard_class_accuracy(model: MEANet, policy: Policy, out: BranchOutputs) -> dict[str, Any]:
    """On the inputs whose true class is hard: the main block alone, main + extension (every hard top-1 answered by
    the extension, nothing offloaded) and the edge as ``policy`` runs it (the extension only where the policy keeps
    it; nothing offloaded); and how many inputs that is (accuracies None when there is none)."""
    hard = model.hard_index.to(out.labels.device)[out.labels] >= 0
    truth = out.labels[hard]
    if not len(truth):
        return {"inputs": 0, "main_only": None, "main_plus_extension": None, "edge_as_run": None}
    with_ext = route_outputs(model, CalibratedPolicy(), out.main[hard], out.extension[hard], None).labels
    as_run = route_outputs(model, policy, out.main[hard], out.extension[hard], None).labels
    return {
        "inputs": len(truth),
        "main_only": float((out.main[hard].argmax(1) == truth).float().mean()),
        "main_plus_extension": float((with_ext == truth).float().mean()),
        "edge_as_run": float((as_run == truth).float().mean()),
    }


def evaluate_routing(
    model: MEANet,
    cloud_model: CloudModel,
    test: ImageTensors,
    policy: Policy,
    cost: CostConfig | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Accuracy, exits and costs of the engine on ``test`` with the reference accuracies (no timing, no sweep)."""
    model.eval()
    cloud = LocalCloud(cloud_model, optimize=True)  # fused BatchNorm, channels-last: same answers, faster
    engine = AdaptiveEngine(model, policy, cloud, cost, optimize=True)
    # The reference accuracies need every branch on every sample; the engine's routes and costs follow from those
    # outputs exactly (test_engine checks it), so the test set is not run a second time.
    out = branch_outputs(engine.model, cloud, test, batch_size)
    pred = engine.predictions_from_outputs(out.main, out.extension, out.cloud)
    report = summarize(pred, test.y)
    report["reference_accuracy"] = reference_accuracy(model, policy, out, report["accuracy"])
    report["hard_classes"] = hard_class_accuracy(model, policy, out)
    report["num_images"] = len(test)
    return report
