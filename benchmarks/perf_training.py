"""Training benchmark: our training loop against plain PyTorch loops on the same model and data, side by side.

    python benchmarks/perf_training.py --images 5120 --json perf_training.json

Modes, each training a fresh main block (same seed) for one pass over the same CIFAR-100 images:
- ``meanet_fit``: ``meanet_core.training.stages.train_main`` (in-memory uint8 batches, batched augmentation, one-cycle
LR,
  progress bar off, NaN check, per-epoch records), channels-last as the cloud trains;
- ``meanet_fit_contiguous``: the same without channels-last (the layout's before/after);
- ``plain_tensor_loop``: a bare loop over the same ``TensorBatches`` with SGD, no scheduler, no bookkeeping
  (channels-last): the reference for our loop's overhead (goal: under 10%);
- ``plain_dataloader``: the textbook loop, a ``DataLoader`` over a ``Dataset`` applying torchvision's RandomCrop and
  RandomHorizontalFlip per sample (the per-sample data path's before/after);
- ``avalanche_naive`` / ``avalanche_naive_contiguous`` (with ``--avalanche``): Avalanche's ``Naive`` as the continual
  benchmark builds it (``benchmarks.continual.edge.make_strategy``: batched crop + flip, one-cycle LR, counted
  images) on the main block, with mini-batches fed channels-last (the default) or not (the layout's before/after);
- ``plain_tensor_loop_compiled`` (with ``--compile``): the bare loop with ``torch.compile`` on the main block; its
  first pass (compilation included) is reported apart from the best pass.
- ``meanet_fit_bf16`` / ``avalanche_naive_bf16`` (with ``--bf16``, the latter with ``--avalanche`` too): the same under
  bfloat16 autocast (``meanet_core.training.precision``), as ``meanet bench continual --precision bf16`` trains.
Rounds are interleaved (``--repeats``), the best time kept. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T

from meanet_core.data import ImageTensors, TensorBatches, load_dataset
from meanet_core.models import MEANet, build_meanet
from meanet_core.training.stages import StageConfig, train_main


class PerSampleDataset(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, data: ImageTensors) -> None:
        self.data = data
        self.transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.data.x[i]).float().div(255), self.data.y[i]


def fresh_model(name: str, num_classes: int, channels_last: bool) -> MEANet:
    torch.manual_seed(0)
    model = build_meanet(name, num_classes)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def run_plain(model: Any, batches: Any, channels_last: bool, lr: float) -> None:
    opt = torch.optim.SGD(model.main.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    model.train()
    for x, y in batches:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model.forward_main(x).logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="cifar100")
    ap.add_argument("--model", default="resnet32_cifar")
    ap.add_argument("--images", type=int, default=5120)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time the bare loop with torch.compile")
    ap.add_argument("--avalanche", action="store_true", help="also time Avalanche's Naive, channels-last or not")
    ap.add_argument("--bf16", action="store_true", help="also time our loop (and Avalanche's) under bfloat16 autocast")
    ap.add_argument("--json", type=Path, default=Path("perf_training.json"))
    args = ap.parse_args()
    cl = True

    splits = load_dataset(args.dataset, limit_train=args.images)
    data, k = splits.train, splits.num_classes
    cfg = StageConfig(epochs=1, batch_size=args.batch_size, lr=0.05)

    def meanet_fit() -> None:
        train_main(fresh_model(args.model, k, cl), data, cfg, progress=False, channels_last=cl)

    def meanet_fit_contiguous() -> None:
        train_main(fresh_model(args.model, k, False), data, cfg, progress=False, channels_last=False)

    def meanet_fit_bf16() -> None:
        bf16 = replace(cfg, precision="bf16")
        train_main(fresh_model(args.model, k, cl), data, bf16, progress=False, channels_last=cl)

    compiled: dict[str, MEANet] = {}

    def plain_tensor_loop_compiled() -> None:
        if "model" not in compiled:  # compiled once; later passes reuse the compiled graph, as training epochs would
            model = fresh_model(args.model, k, cl)
            model.main = torch.compile(model.main)  # type: ignore[assignment]
            compiled["model"] = model
        batches = TensorBatches(data, args.batch_size, shuffle=True, augment=True, seed=0)
        run_plain(compiled["model"], batches, cl, cfg.lr)

    def plain_tensor_loop() -> None:
        batches = TensorBatches(data, args.batch_size, shuffle=True, augment=True, seed=0)
        run_plain(fresh_model(args.model, k, cl), batches, cl, cfg.lr)

    def plain_dataloader() -> None:
        loader = torch.utils.data.DataLoader(PerSampleDataset(data), batch_size=args.batch_size, shuffle=True)
        run_plain(fresh_model(args.model, k, cl), loader, cl, cfg.lr)

    modes = {
        "meanet_fit": meanet_fit,
        "meanet_fit_contiguous": meanet_fit_contiguous,
        "plain_tensor_loop": plain_tensor_loop,
        "plain_dataloader": plain_dataloader,
    }

    def avalanche_naive(channels_last: bool, precision: str = "fp32") -> None:
        from benchmarks.continual.common import quiet
        from benchmarks.continual.edge import MainClassifier, experience_of, make_strategy

        strategy = make_strategy(
            "naive",
            MainClassifier(fresh_model(args.model, k, False), precision),
            lr=cfg.lr,
            epochs=1,
            batch_size=args.batch_size,
            seed=0,
            channels_last=channels_last,
        )
        with quiet():
            strategy.train(experience_of(data, 0, "perf"))

    if args.avalanche:
        modes["avalanche_naive"] = lambda: avalanche_naive(True)
        modes["avalanche_naive_contiguous"] = lambda: avalanche_naive(False)
        if args.bf16:
            modes["avalanche_naive_bf16"] = lambda: avalanche_naive(True, "bf16")
    if args.bf16:
        modes["meanet_fit_bf16"] = meanet_fit_bf16
    if args.compile:
        modes["plain_tensor_loop_compiled"] = plain_tensor_loop_compiled
    best = {name: float("inf") for name in modes}
    first: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, fn in modes.items():
            t0 = time.perf_counter()
            fn()
            seconds = time.perf_counter() - t0
            first.setdefault(name, seconds)
            best[name] = min(best[name], seconds)
    base = best["plain_tensor_loop"]
    results = {
        name: {
            "seconds": s,
            "images_per_second": len(data) / s,
            "overhead_vs_plain_tensor_loop": s / base - 1.0,
            "first_pass_seconds": first[name],
        }
        for name, s in best.items()
    }
    header = f"{'mode':<27} {'img/s':>8} {'seconds':>8} {'vs plain loop':>13} {'first pass s':>12}"
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(
            f"{name:<27} {r['images_per_second']:>8.1f} {r['seconds']:>8.2f} "
            f"{r['overhead_vs_plain_tensor_loop']:>+13.1%} {r['first_pass_seconds']:>12.2f}"
        )
    report = {
        "dataset": args.dataset,
        "model": args.model,
        "images": len(data),
        "batch_size": args.batch_size,
        "channels_last": cl,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "modes": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
