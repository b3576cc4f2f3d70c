"""Inference benchmark: the adaptive engine against every-branch, main-only and cloud-only, side by side, each on the
plain model and on inference-optimised copies of it (fused BatchNorm, channels-last, torch.compile).

    python benchmarks/perf_inference.py --run runs/cifar100-resnet32 --json perf_inference.json
    python benchmarks/perf_inference.py --run runs/cifar100-resnet32 --variants base,fused+cl,compile

Loads a run written by ``meanet train``, takes the test split of its dataset, and times each mode over the same
uint8 images, interleaving the modes and variants for ``--repeats`` rounds (best time kept, since the machine is noisy;
each mode and variant gets an untimed warm-up first). Prints a table and writes JSON: accuracy, executed MACs per
image, images per second, speed-up over every-branch, the speed-up the MACs predict and their ratio, and for each
optimised variant its speed-up over the same mode on the plain model and how many labels agree with it. Rows of the
plain model keep the mode's name (``engine_calibrated``); the others add the variant (``engine_calibrated+fused+cl``).

Variants (see :func:`meanet_core.inference.fastpath.optimize_for_inference`): ``base`` the model as loaded; ``cl``
channels-last
weights and inputs; ``fused`` BatchNorm folded into the convolutions; ``fused+cl`` both; ``compile`` both plus
``torch.compile`` (its compilation time, ``setup_seconds`` + ``warmup_seconds``, is reported apart from the timing).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from meanet_core.config import TrainConfig, from_dict
from meanet_core.inference.engine import AdaptiveEngine, LocalCloud, Predictions, input_memory_format, to_model_input
from meanet_core.inference.evaluation import branch_outputs, fit_calibrated
from meanet_core.inference.fastpath import optimize_for_inference
from meanet_core.inference.policies import PaperPolicy, Policy
from meanet_core.models import CloudModel, MEANet
from meanet_core.pipeline import load_splits
from meanet_core.training.checkpoint import load_cloud, load_meanet

MODES = ("all_branches", "engine_paper", "engine_calibrated", "main_only", "cloud_only")
VARIANTS: dict[str, dict[str, bool] | None] = {
    "base": None,
    "cl": {"fuse_bn": False, "channels_last": True},
    "fused": {"fuse_bn": True, "channels_last": False},
    "fused+cl": {"fuse_bn": True, "channels_last": True},
    "compile": {"fuse_bn": True, "channels_last": True, "compile": True},
}
DEFAULT_VARIANTS = "base,cl,fused,fused+cl"

Run = Callable[[torch.Tensor], Any]
Read = Callable[[list[Any]], tuple[torch.Tensor, float]]


def compiled(variant: str) -> bool:
    return bool((VARIANTS[variant] or {}).get("compile"))


def timed(fn: Callable[[torch.Tensor], Any], images: torch.Tensor, batch_size: int) -> tuple[list[Any], float]:
    outs, t0 = [], time.perf_counter()
    for start in range(0, len(images), batch_size):
        outs.append(fn(images[start : start + batch_size]))
    return outs, time.perf_counter() - t0


@dataclass
class Variant:
    """One model variant's engines and the callables the benchmark times."""

    name: str
    paper: AdaptiveEngine
    calibrated: AdaptiveEngine
    cloud: LocalCloud
    setup_seconds: float

    def modes(self) -> dict[str, tuple[Run, Read]]:
        model, cloud, paper = self.paper.model, self.cloud, self.paper
        fmt = input_memory_format(model)

        @torch.inference_mode()
        def main_only(images: torch.Tensor) -> torch.Tensor:
            return model.forward_main(to_model_input(images, fmt)).logits.argmax(1)

        @torch.inference_mode()
        def cloud_only(images: torch.Tensor) -> torch.Tensor:
            return cloud.logits(images).argmax(1)

        def from_predictions(outs: list[Any]) -> tuple[torch.Tensor, float]:
            p = Predictions.concat(outs)
            return p.labels, float((p.edge_macs + p.cloud_macs).double().mean())

        return {
            "all_branches": (lambda x: paper.predict_all_branches(x, cloud), from_predictions),
            "engine_paper": (paper.predict, from_predictions),
            "engine_calibrated": (self.calibrated.predict, from_predictions),
            "main_only": (main_only, lambda outs: (torch.cat(outs), float(paper.main_macs))),
            "cloud_only": (cloud_only, lambda outs: (torch.cat(outs), float(cloud.macs_per_image))),
        }


def build_variant(
    name: str, model: MEANet, cloud_model: CloudModel, paper_policy: Policy, calibrated_policy: Policy
) -> Variant:
    """Engines over ``model`` as loaded (``base``) or over optimised copies of it (the model itself is untouched).

    For ``compile`` the engines' MAC counts already run (and compile) the model, so ``setup_seconds`` holds the first
    compilation."""
    options = VARIANTS[name]
    t0 = time.perf_counter()
    m, c = (model, cloud_model) if options is None else (
        optimize_for_inference(model, **options), optimize_for_inference(cloud_model, **options)
    )  # fmt: skip
    cloud = LocalCloud(c)
    paper = AdaptiveEngine(m, paper_policy, cloud)
    calibrated = AdaptiveEngine(m, calibrated_policy, cloud)
    return Variant(name, paper, calibrated, cloud, time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="run folder written by meanet train")
    ap.add_argument("--json", type=Path, default=Path("perf_inference.json"))
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N test images")
    ap.add_argument("--entropy-threshold", type=float, default=0.5)
    ap.add_argument("--target-cloud-fraction", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--variants",
        default=DEFAULT_VARIANTS,
        help=f"comma-separated model variants, from {', '.join(VARIANTS)} (default {DEFAULT_VARIANTS})",
    )
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated modes, from {', '.join(MODES)}")
    args = ap.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for given, valid, what in ((variants, VARIANTS, "variant"), (modes, MODES, "mode")):
        unknown = [g for g in given if g not in valid]
        if unknown or not given:
            ap.error(f"unknown or no {what}(s) {unknown}; valid: {', '.join(valid)}")
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = from_dict(TrainConfig, json.loads((args.run / "train.json").read_text())["config"])
    splits = load_splits(cfg)
    test = splits.test if args.limit is None else splits.test.subset(torch.arange(min(args.limit, len(splits.test))))
    model, cloud_model = load_meanet(args.run / "meanet.pt"), load_cloud(args.run / "cloud.pt")
    cloud = LocalCloud(cloud_model)
    paper = AdaptiveEngine(model, PaperPolicy(args.entropy_threshold), cloud)
    val_out = branch_outputs(model, cloud, splits.val)
    calibrated_policy = fit_calibrated(
        model, val_out, paper.cost, paper.main_macs, paper.extension_macs, paper.image_bytes,
        target_cloud_fraction=args.target_cloud_fraction,
    )  # fmt: skip
    built = {v: build_variant(v, model, cloud_model, paper.policy, calibrated_policy) for v in variants}
    all_macs = paper.main_macs + paper.extension_macs + cloud.macs_per_image

    def key(mode: str, variant: str) -> str:
        return mode if variant == "base" else f"{mode}+{variant}"

    runs = {(m, v): built[v].modes()[m] for m in modes for v in variants}
    warmup: dict[tuple[str, str], float] = {}
    for (m, v), (fn, _) in runs.items():  # untimed: oneDNN primitives, allocator, torch.compile's first graphs
        if compiled(v):
            _, warmup[m, v] = timed(fn, test.x, args.batch_size)  # every batch shape the timed runs will see
        else:
            _, warmup[m, v] = timed(fn, test.x[: args.batch_size], args.batch_size)

    best = dict.fromkeys(runs, float("inf"))
    labels: dict[tuple[str, str], torch.Tensor] = {}
    results: dict[str, dict[str, Any]] = {}
    for _ in range(args.repeats):
        for m, v in runs:  # the variants of one mode run back to back, so their ratios share the machine's state
            fn, read = runs[m, v]
            outs, seconds = timed(fn, test.x, args.batch_size)
            best[m, v] = min(best[m, v], seconds)
            labels[m, v], macs = read(outs)
            results[key(m, v)] = {
                "mode": m,
                "variant": v,
                "accuracy": float((labels[m, v] == test.y).float().mean()),
                "macs_per_image": macs,
            }
    base_all = best.get(("all_branches", "base"))
    for (m, v), seconds in best.items():
        r = results[key(m, v)]
        r["images_per_second"] = len(test) / seconds
        r["speedup_vs_all_branches"] = base_all / seconds if base_all else None
        r["speedup_predicted_by_macs"] = all_macs / r["macs_per_image"]
        r["ratio_measured_to_predicted"] = (
            r["speedup_vs_all_branches"] / r["speedup_predicted_by_macs"] if base_all else None
        )
        if (m, "base") in best:
            r["speedup_vs_base"] = best[m, "base"] / seconds
            r["labels_agree_with_base"] = float((labels[m, v] == labels[m, "base"]).float().mean())
        r["warmup_seconds"] = warmup[m, v]

    def fmt(x: float | None, spec: str, suffix: str = "") -> str:
        return "-" if x is None else f"{x:{spec}}{suffix}"

    header = (
        f"{'mode':<28} {'accuracy':>8} {'MACs/img':>10} {'img/s':>8} {'vs all':>7} {'MAC-pred':>8} {'ratio':>6} "
        f"{'vs base':>7} {'agree':>6}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(
            f"{name:<28} {r['accuracy']:>8.4f} {r['macs_per_image'] / 1e6:>9.1f}M {r['images_per_second']:>8.1f} "
            f"{fmt(r['speedup_vs_all_branches'], '6.2f', 'x'):>7} {r['speedup_predicted_by_macs']:>7.2f}x "
            f"{fmt(r['ratio_measured_to_predicted'], '6.2f'):>6} {fmt(r.get('speedup_vs_base'), '6.2f', 'x'):>7} "
            f"{fmt(r.get('labels_agree_with_base'), '6.4f'):>6}"
        )
    for v, b in built.items():
        if compiled(v):
            compile_s = b.setup_seconds + sum(s for (_, vv), s in warmup.items() if vv == v)
            print(f"{v}: first compilation {b.setup_seconds:.1f}s; compilation + warm-up in all {compile_s:.1f}s")
    report = {
        "run": str(args.run),
        "images": len(test),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "policies": {"paper": paper.policy.as_dict(), "calibrated": calibrated_policy.as_dict()},
        "variants": {v: {"options": VARIANTS[v], "setup_seconds": b.setup_seconds} for v, b in built.items()},
        "modes": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
