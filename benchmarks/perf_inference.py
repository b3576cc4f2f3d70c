"""Inference benchmark: the adaptive engine against every-branch, main-only and cloud-only, side by side.

    python benchmarks/perf_inference.py --run runs/cifar100-resnet32 --json perf_inference.json

Loads a run written by ``meanet train``, takes the test split of its dataset, and times each mode over the same
uint8 images, interleaving the modes for ``--repeats`` rounds (best time kept, since the machine is noisy). Prints a
table and writes JSON: accuracy, executed MACs per image, images per second, speed-up over every-branch, the speed-up
the MACs predict, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from meanet_core.checkpoint import load_cloud, load_meanet
from meanet_core.config import TrainConfig, from_dict
from meanet_core.engine import AdaptiveEngine, LocalCloud, Predictions, to_unit_float
from meanet_core.evaluation import branch_outputs, fit_calibrated
from meanet_core.pipeline import load_splits
from meanet_core.policies import PaperPolicy


def timed(fn: Callable[[torch.Tensor], Any], images: torch.Tensor, batch_size: int) -> tuple[list[Any], float]:
    outs, t0 = [], time.perf_counter()
    for start in range(0, len(images), batch_size):
        outs.append(fn(images[start : start + batch_size]))
    return outs, time.perf_counter() - t0


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
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = from_dict(TrainConfig, json.loads((args.run / "train.json").read_text())["config"])
    splits = load_splits(cfg)
    test = splits.test if args.limit is None else splits.test.subset(torch.arange(min(args.limit, len(splits.test))))
    model, cloud_model = load_meanet(args.run / "meanet.pt"), load_cloud(args.run / "cloud.pt")
    cloud = LocalCloud(cloud_model)
    paper = AdaptiveEngine(model, PaperPolicy(args.entropy_threshold), cloud)
    val_out = branch_outputs(model, cloud, splits.val)
    calibrated = AdaptiveEngine(
        model,
        fit_calibrated(
            model, val_out, paper.cost, paper.main_macs, paper.extension_macs, paper.image_bytes,
            target_cloud_fraction=args.target_cloud_fraction,
        ),
        cloud,
    )  # fmt: skip

    @torch.inference_mode()
    def main_only(images: torch.Tensor) -> torch.Tensor:
        return model.forward_main(to_unit_float(images)).logits.argmax(1)

    @torch.inference_mode()
    def cloud_only(images: torch.Tensor) -> torch.Tensor:
        return cloud.logits(images).argmax(1)

    all_macs = paper.main_macs + paper.extension_macs + cloud.macs_per_image
    modes: dict[str, tuple[Callable[[torch.Tensor], Any], Callable[[list[Any]], tuple[torch.Tensor, float]]]] = {}

    def from_predictions(outs: list[Any]) -> tuple[torch.Tensor, float]:
        p = Predictions.concat(outs)
        return p.labels, float((p.edge_macs + p.cloud_macs).double().mean())

    modes["all_branches"] = (lambda x: paper.predict_all_branches(x, cloud), from_predictions)
    modes["engine_paper"] = (paper.predict, from_predictions)
    modes["engine_calibrated"] = (calibrated.predict, from_predictions)
    modes["main_only"] = (main_only, lambda outs: (torch.cat(outs), float(paper.main_macs)))
    modes["cloud_only"] = (cloud_only, lambda outs: (torch.cat(outs), float(cloud.macs_per_image)))

    best = {name: float("inf") for name in modes}
    results: dict[str, dict[str, float]] = {}
    for _ in range(args.repeats):
        for name, (fn, read) in modes.items():
            outs, seconds = timed(fn, test.x, args.batch_size)
            best[name] = min(best[name], seconds)
            labels, macs = read(outs)
            results[name] = {"accuracy": float((labels == test.y).float().mean()), "macs_per_image": macs}
    base = best["all_branches"]
    for name, r in results.items():
        r["images_per_second"] = len(test) / best[name]
        r["speedup_vs_all_branches"] = base / best[name]
        r["speedup_predicted_by_macs"] = all_macs / r["macs_per_image"]
        r["ratio_measured_to_predicted"] = r["speedup_vs_all_branches"] / r["speedup_predicted_by_macs"]

    header = f"{'mode':<18} {'accuracy':>8} {'MACs/img':>10} {'img/s':>8} {'speed-up':>8} {'MAC-pred':>8} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(
            f"{name:<18} {r['accuracy']:>8.4f} {r['macs_per_image'] / 1e6:>9.1f}M {r['images_per_second']:>8.1f} "
            f"{r['speedup_vs_all_branches']:>7.2f}x {r['speedup_predicted_by_macs']:>7.2f}x "
            f"{r['ratio_measured_to_predicted']:>6.2f}"
        )
    report = {
        "run": str(args.run),
        "images": len(test),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "policies": {"paper": paper.policy.as_dict(), "calibrated": calibrated.policy.as_dict()},
        "modes": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
