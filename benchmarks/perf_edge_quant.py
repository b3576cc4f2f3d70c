"""int8 settings side by side (issue 37's "what failed on the way"), and a MobileNetV2 MEANet through the same path.

    python -m benchmarks.perf_edge_quant --run RUN --json perf_edge_quant.json
    python -m benchmarks.perf_edge_quant --mobilenet 96,160 --json perf_edge_mobilenet.json

``--run``: one ``meanet train`` run quantised several ways (per-channel or per-tensor weights; min/max, percentile or
entropy activation ranges; uint8 or int8 activations; 100 or 1,000 calibration images), each scored on the test split
against the float32 package (edge only, the run's policy: main-exit accuracy, edge accuracy, same exit) and timed
(main block, batch 64 and 1, interleaved rounds, median ratio to ONNX Runtime float32 and to the torch engine).

``--mobilenet``: a MobileNetV2 MEANet (torchvision's backbone, random weights: no trained one exists here) at each
size exports, quantises (calibrated on random images) and runs; bytes, export seconds and speed against the torch
engine, and the share of top-1s int8 keeps from float32 on random images (a plumbing check, not an accuracy).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks.perf_edge_runtime import accuracy, speed
from benchmarks.tables import write_json
from meanet_core.config import TrainConfig, from_dict
from meanet_core.inference.export import ExportSource, export, from_train_run
from meanet_core.inference.onnx_export import Calibration, QuantSettings, export_package, validation_images
from meanet_core.models import build_meanet
from meanet_core.pipeline import load_splits
from meanet_edge.package import read_package
from meanet_edge.policy import choose_policy

VARIANTS: dict[str, tuple[QuantSettings, int]] = {
    "per-channel, min/max, uint8 acts, 1000 images (--int8)": (QuantSettings(), 1000),
    "per-channel, min/max, uint8 acts, 100 images": (QuantSettings(), 100),
    "per-tensor, min/max, uint8 acts, 1000 images": (QuantSettings(per_channel=False), 1000),
    "per-channel, percentile, uint8 acts, 1000 images": (QuantSettings(method="percentile"), 1000),
    "per-channel, min/max, int8 acts (S8S8), 1000 images": (QuantSettings(activations="int8"), 1000),
}


def settings_table(run: Path, rounds: int, threads: int, limit: int | None) -> dict[str, Any]:
    source = from_train_run(run)
    names = source.class_names or tuple(str(i) for i in range(source.model.num_classes))
    key = Ed25519PrivateKey.generate()
    work = Path(tempfile.mkdtemp(prefix="perf-quant-"))
    f32, _ = export_package(source, work / "float32.zip", key, names)
    packages = {"float32": read_package(f32, key.public_key())}
    cal = validation_images(source, 3000)
    for i, (name, (settings, n)) in enumerate(VARIANTS.items()):
        print(f"quantising: {name}", flush=True)
        path, _ = export_package(
            source, work / f"v{i}.zip", key, names, calibration=cal, calibration_images=n, settings=settings
        )
        packages[name] = read_package(path, key.public_key())
    cfg = from_dict(TrainConfig, json.loads((run / "train.json").read_text())["config"])
    test = load_splits(cfg).test
    n_test = len(test) if limit is None else min(limit, len(test))
    x, y = test.x[:n_test].numpy(), test.y[:n_test].numpy()
    policy = choose_policy(packages["float32"].manifest.get("policy"))
    acc = accuracy(source.model, packages, policy, x, y, np.zeros(len(x), dtype=np.int64))
    print("timing...", flush=True)
    rates = speed(source.model, packages, source.model.input_size, threads, rounds)
    return {"run": str(run), "test_images": n_test, "policy": policy.as_dict(), "accuracy": acc, "speed": rates}


def mobilenet_table(sizes: list[int], rounds: int, threads: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    names = tuple(f"class{i}" for i in range(100))
    for side in sizes:
        torch.manual_seed(0)
        model = build_meanet("mobilenetv2", 100, list(range(0, 100, 5)), input_size=side).eval()
        work = Path(tempfile.mkdtemp(prefix="perf-mnv2-"))
        source = ExportSource(model, names, "", None, "none", work, "", f"mobilenetv2 MEANet {side}px, random weights")
        key = Ed25519PrivateKey.generate()
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (160, 3, side, side), dtype=np.uint8)
        cal = Calibration(x, rng.integers(0, 100, len(x)), "160 random images")
        pt = export(source, work / "m.pt", signing_key=None, class_names=names).path
        t0 = time.perf_counter()
        f32, _ = export_package(source, work / "float32.zip", key, names)
        t_f32 = time.perf_counter() - t0
        t0 = time.perf_counter()
        i8, check = export_package(source, work / "int8.zip", key, names, calibration=cal, calibration_images=128)
        t_i8 = time.perf_counter() - t0
        packages = {"float32": read_package(f32, key.public_key()), "int8": read_package(i8, key.public_key())}
        print(f"mobilenetv2 {side}px: exported (float32 {t_f32:.0f} s, int8 {t_i8:.0f} s); timing...", flush=True)
        assert check is not None
        out[str(side)] = {
            "bytes": {"pt": pt.stat().st_size, "float32": f32.stat().st_size, "int8": i8.stat().st_size},
            "export_seconds": {"float32": t_f32, "int8": t_i8},
            "int8_keeps_float32_top1_on_random_images": check["same_label"],
            "speed": speed(model, packages, side, threads, rounds),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a meanet train run: the int8 settings table")
    ap.add_argument("--mobilenet", default="", help="comma list of image sizes for a MobileNetV2 MEANet, e.g. 96,160")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="test images (default: all)")
    ap.add_argument("--json", type=Path, default=Path("perf_edge_quant.json"))
    args = ap.parse_args()
    if args.run is None and not args.mobilenet:
        ap.error("give --run RUN, --mobilenet SIZES, or both")
    report: dict[str, Any] = {"threads": args.threads}
    if args.run is not None:
        report["settings"] = settings_table(args.run, args.rounds, args.threads, args.limit)
        t = report["settings"]
        print(f"\nint8 settings on {t['test_images']} test images (edge only, policy {t['policy']['name']}):")
        print(f"{'variant':<56}{'edge acc':>9}{'same exit':>10}{'x torch b64':>12}{'x torch b1':>11}")
        for name, a in t["accuracy"].items():
            key = "torch float32 (fused, channels-last)" if name == "torch float32" else f"onnxruntime {name}"
            q = t["speed"]["ratio_vs_torch"][key]
            print(
                f"{name:<56}{a['edge_only_accuracy']:>9.4f}{a['same_exit_as_torch_float32']:>10.4f}"
                f"{q['batch 64']['median']:>12.2f}{q['batch 1']['median']:>11.2f}"
            )
    if args.mobilenet:
        report["mobilenet"] = mobilenet_table([int(s) for s in args.mobilenet.split(",")], args.rounds, args.threads)
        for side, m in report["mobilenet"].items():
            b = m["bytes"]
            q = m["speed"]["ratio_vs_torch"]["onnxruntime int8"]
            print(
                f"mobilenetv2 MEANet {side}px: .pt {b['pt']:,} B, int8 package {b['int8']:,} B "
                f"({b['int8'] / b['pt']:.2f}x); int8 main block {q['batch 64']['median']:.2f}x torch at batch 64, "
                f"{q['batch 1']['median']:.2f}x at batch 1; keeps {m['int8_keeps_float32_top1_on_random_images']:.2f} "
                "of float32's top-1s on random images"
            )
    write_json(report, args.json)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
