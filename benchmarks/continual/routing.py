"""Routing judged against what a user would pick instead, on the same models and the same test images.

For a MEANet method after an experience, from the outputs of every branch computed once (``BranchOutputs``):

* **MEANet routing**: the method's calibrated policy (main exit, extension for hard top-1s, cloud when unsure);
* **confidence early exit** (BranchyNet, SPINN): the main block's max-probability alone decides, main or cloud, with
  no extension; the least confident inputs are offloaded, as many as MEANet offloaded;
* **random offload**: as many inputs offloaded, chosen at random: its accuracy is the exact expectation over every
  such choice, ``(1 - f) * main correct + f * cloud correct`` averaged over the inputs (no draw, no seed);
* the **hard classes**: on the test inputs whose true class is hard, the main block alone against main + extension
  (every hard top-1 to the extension, nothing offloaded) and against the edge as the policy runs it (the extension
  only where the validation gate keeps it);
* the **accuracy-energy curves**: the calibrated policy refitted on validation for a sweep of cloud fractions, and
  the early exit at the same fractions (its threshold a quantile of the main block's validation confidences).

``evaluate_meanet`` routes a MEANet method's test images after an experience and records all of it.

Every route is priced by ``meanet_core.inference.engine.priced`` (edge MACs and transmission energy of the cost
model), as the
method's own numbers are.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from benchmarks.continual.common import Context, per_experience
from benchmarks.continual.metrics import accuracy
from benchmarks.continual.shared import block_costs, calibrate, costs, meanet_outputs
from meanet_core.inference.cost import CostConfig
from meanet_core.inference.engine import EXIT_CLOUD, EXIT_MAIN, BlockCosts, predictions_from_outputs, priced
from meanet_core.inference.evaluation import (
    BranchOutputs,
    fit_calibrated,
    hard_class_accuracy,
    reference_accuracy,
    summarize,
)
from meanet_core.inference.policies import Policy
from meanet_core.models import MEANet

CURVE_FRACTIONS = (0.0, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5)
"""The cloud fractions the accuracy-energy curves are fitted for (on validation)."""


def early_exit(
    out: BranchOutputs, blocks: BlockCosts, n_offloaded: int, cost: CostConfig | None = None
) -> dict[str, float]:
    """Confidence early exit on ``out``: the ``n_offloaded`` inputs with the lowest main-block max-probability go
    to the cloud, the rest leave at the main exit (no extension). Accuracy, cloud fraction and energy per input."""
    n = len(out.labels)
    conf, labels = out.main.softmax(1).max(1)
    sent = torch.zeros(n, dtype=torch.bool)
    sent[conf.argsort()[:n_offloaded]] = True
    labels = torch.where(sent, out.cloud.argmax(1), labels)
    exits = torch.where(sent, EXIT_CLOUD, EXIT_MAIN).to(torch.int8)
    s = summarize(priced(labels, exits, torch.zeros(n, dtype=torch.bool), blocks, cost), out.labels)
    return {"accuracy": s["accuracy"], "cloud_fraction": n_offloaded / n, "energy_joule": s["energy_per_image_joule"]}


def random_offload(
    out: BranchOutputs, blocks: BlockCosts, n_offloaded: int, cost: CostConfig | None = None
) -> dict[str, float]:
    """Random offload of ``n_offloaded`` inputs (no extension): the expected accuracy over every choice, and its
    cost (every input runs the main block; ``n_offloaded`` are sent)."""
    n = len(out.labels)
    f = n_offloaded / n
    main_ok = (out.main.argmax(1) == out.labels).float()
    cloud_ok = (out.cloud.argmax(1) == out.labels).float()
    cost = cost or CostConfig()
    energy = blocks.main_macs * cost.joules_per_mac + f * float(cost.transmission_energy(float(blocks.image_bytes)))
    return {"accuracy": float(((1 - f) * main_ok + f * cloud_ok).mean()), "cloud_fraction": f, "energy_joule": energy}


def compare_routing(
    model: MEANet,
    policy: Policy,
    blocks: BlockCosts,
    test: BranchOutputs,
    val: BranchOutputs | None = None,
    cost: CostConfig | None = None,
) -> dict[str, Any]:
    """MEANet's routing beside confidence early exit and random offload at the same offload fraction on ``test``,
    the hard-class accuracies, and (with ``val``) the accuracy-energy curves of MEANet and of early exit."""
    pred = predictions_from_outputs(model, policy, blocks, test.main, test.extension, test.cloud, cost)
    s = summarize(pred, test.labels)
    n_sent = int((pred.exit == EXIT_CLOUD).sum())
    record: dict[str, Any] = {
        "meanet": {
            "accuracy": s["accuracy"],
            "cloud_fraction": s["exits"]["cloud"]["fraction"],
            "energy_joule": s["energy_per_image_joule"],
        },
        "early_exit": early_exit(test, blocks, n_sent, cost),
        "random": random_offload(test, blocks, n_sent, cost),
        "hard_classes": hard_class_accuracy(model, policy, test),
    }
    if val is not None:
        record["curves"] = curves(model, blocks, test, val, cost)
    return record


def curves(
    model: MEANet, blocks: BlockCosts, test: BranchOutputs, val: BranchOutputs, cost: CostConfig | None = None
) -> dict[str, list[dict[str, float]]]:
    """Accuracy against energy on ``test``: MEANet's calibrated policy fitted on ``val`` for each of
    ``CURVE_FRACTIONS``, and confidence early exit with its threshold at the same quantile of ``val``."""
    meanet, exit_curve = [], []
    val_conf = val.main.softmax(1).max(1).values
    test_conf = test.main.softmax(1).max(1).values
    for f in CURVE_FRACTIONS:
        policy = fit_calibrated(model, val, CostConfig(), 0, 0, 0, target_cloud_fraction=f)
        pred = predictions_from_outputs(model, policy, blocks, test.main, test.extension, test.cloud, cost)
        s = summarize(pred, test.labels)
        meanet.append(
            {
                "target": f,
                "accuracy": s["accuracy"],
                "cloud_fraction": s["exits"]["cloud"]["fraction"],
                "energy_joule": s["energy_per_image_joule"],
            }
        )
        threshold = float(np.quantile(val_conf.numpy(), f)) if f > 0 else -1.0
        n_sent = int((test_conf < threshold).sum())
        exit_curve.append({"target": f, **early_exit(test, blocks, n_sent, cost)})
    return {"meanet": meanet, "early_exit": exit_curve}


def evaluate_meanet(
    ctx: Context,
    model: MEANet,
    cloud_macs: int,
    t: int,
    test_main: torch.Tensor,
    test_cloud: torch.Tensor,
    policy: Policy | None = None,
    val_main: torch.Tensor | None = None,
    val_cloud: torch.Tensor | None = None,
) -> tuple[list[float], dict[str, Any], Policy, float]:
    """Route the test images of experiences 0..t (main and cloud logits given) through ``model``; without a
    ``policy``, calibrate one on the cloud's validation images of snapshot ``t`` (with the main-block and cloud
    logits ``val_main`` / ``val_cloud`` on them when ``model``'s main block or cloud model is not the snapshot's).
    The record also sets the routing beside confidence early exit and random offload (``routing.compare_routing``;
    after the last experience with the accuracy-energy curves)."""
    t0 = time.perf_counter()
    test_out = meanet_outputs(model, ctx.scenario.test_data(t), test_main, test_cloud, ctx.cfg.precision)
    val_out = None
    last = t == len(ctx.scenario) - 1
    if policy is None or last:  # calibrating, or the accuracy-energy curves after the last experience
        snap = ctx.trajectory.snapshot(t)
        val = snap.val_main if val_main is None else val_main
        cloud = snap.val_cloud if val_cloud is None else val_cloud
        val_out = meanet_outputs(model, ctx.scenario.val_data(t), val, cloud, ctx.cfg.precision)
    if policy is None:
        assert val_out is not None
        policy = calibrate(model, val_out, ctx.cfg.target_cloud_fraction)
    blocks = replace(block_costs(model), cloud_macs=cloud_macs)
    pred = predictions_from_outputs(model, policy, blocks, test_out.main, test_out.extension, test_out.cloud)
    record = costs(pred)
    record["policy"] = policy.as_dict()
    # what each part adds, on the same images (``meanet evaluate``'s figures): the main block alone, main +
    # extension with nothing offloaded, with the cloud, the cloud alone; the edge's and the cloud's accuracy on the
    # inputs sent to the cloud
    record["reference_accuracy"] = reference_accuracy(model, policy, test_out, accuracy(pred.labels, test_out.labels))
    record["routing"] = compare_routing(model, policy, blocks, test_out, val_out if last else None)
    return per_experience(pred.labels, ctx, t), record, policy, time.perf_counter() - t0
