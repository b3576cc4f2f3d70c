"""Edge runtime benchmark (issue 37): int8 edge packages against today's float32 engine, side by side, one run.

    python benchmarks/perf_edge_runtime.py --run RUN --json perf_edge_runtime.json

``RUN`` is a ``meanet train`` folder (its ``eval.json`` policy is used when ``meanet evaluate --policy calibrated``
wrote one). The script exports the run three ways (today's signed ``.pt``; an edge package in float32; one in int8,
calibrated on ``--calibration`` validation images of the run), then, on this machine with ``--threads`` threads:

* **speed** of the main block, images/s at batch 64 and batch 1: today's default float32 engine (torch, BatchNorm
  fused, channels-last: :func:`meanet_core.inference.fastpath.optimize_for_inference`), ONNX Runtime float32, ONNX
  Runtime int8. The variants are interleaved over ``--rounds`` rounds and the best time of each is kept (the
  machine is noisy); ratios are against the torch engine of the same run;
* **accuracy** of the whole adaptive engine on the test split (10,000 CIFAR-100 images): edge only (the inputs the
  policy offloads keep the edge's answer) and with the cloud (the run's cloud model answers the offloaded ones, the
  same labels for every variant), and the share of inputs whose exit (main, extension, cloud) matches float32;
* **size**: package bytes against the ``.pt``; **cold start** in a fresh process (import, verify, load: the
  interpreter's own start excluded, and reported beside); **install size** of the runtime's distributions
  (meanet-edge's dependency closure) against the full install's (meanet-fl's), summed from the installed files;
* **energy** per input in both models: MACs x joules-per-MAC, and the device profile (measured seconds per block x
  ``--power-watts``), each with the LTE uplink model for offloaded inputs.

Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.tables import write_json
from meanet_core.config import TrainConfig, from_dict
from meanet_core.inference.edge_model import policy_from_dict
from meanet_core.inference.engine import EXIT_CLOUD, AdaptiveEngine, CloudReply, LocalCloud
from meanet_core.inference.export import export, from_train_run
from meanet_core.inference.fastpath import optimize_for_inference
from meanet_core.inference.onnx_export import export_package, validation_images
from meanet_core.pipeline import load_splits
from meanet_core.training.checkpoint import load_cloud
from meanet_core.trust.signing import ensure_signing_key
from meanet_edge.cloud import CloudAnswer
from meanet_edge.cost import CostConfig
from meanet_edge.package import read_package
from meanet_edge.policy import choose_policy
from meanet_edge.profile import device_name, measure
from meanet_edge.report import describe_policy
from meanet_edge.runtime import EdgeRuntime


class _AlwaysAnswers:
    """A cloud stub that answers every offloaded input (label -1): the exits show the routes, the real cloud labels
    are filled in afterwards by index (the same for every variant)."""

    macs_per_image = 0

    def classify_array(self, images: np.ndarray) -> CloudAnswer:
        n = images.shape[0]
        return CloudAnswer(np.full(n, -1, dtype=np.int64), np.ones(n, dtype=bool))


def _best_rate(fn: Callable[[], object], n: int, seconds: float = 1.0) -> float:
    """Images per second of ``fn`` (one call = ``n`` images): the best of the calls made within ``seconds``."""
    fn()
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


TORCH = "torch float32 (fused, channels-last)"


def speed(model: Any, packages: dict[str, Any], side: int, threads: int, rounds: int) -> dict[str, Any]:
    """Main block images/s for each variant at batch 64 and 1, interleaved over ``rounds``: each round times every
    variant in turn (best call within a second), so a round's ratios compare the same moment of a noisy machine.
    Reports each variant's median rate over the rounds, and its ratio to torch: the median of the rounds' ratios,
    with their lowest and highest."""
    torch.set_num_threads(threads)
    fused = optimize_for_inference(model)
    runtimes = {name: EdgeRuntime(p, choose_policy(None), threads=threads) for name, p in packages.items()}
    rates: dict[str, dict[str, list[float]]] = {}
    for batch in (64, 1):
        x8 = np.random.default_rng(0).integers(0, 256, (batch, 3, side, side), dtype=np.uint8)
        xt = torch.from_numpy(x8).float().div(255).contiguous(memory_format=torch.channels_last)
        xf = x8.astype(np.float32) / 255

        def torch_main(xt: torch.Tensor = xt) -> object:
            with torch.inference_mode():
                return fused.forward_main(xt)

        variants: dict[str, Callable[[], object]] = {TORCH: torch_main}
        for name, rt in runtimes.items():
            variants[f"onnxruntime {name}"] = partial(rt.main, xf)
        for _ in range(rounds):
            for name, fn in variants.items():
                rates.setdefault(name, {}).setdefault(f"batch {batch}", []).append(_best_rate(fn, batch))
    out: dict[str, Any] = {"images_per_s": {}, "ratio_vs_torch": {}, "rounds": rounds}
    for name, by_batch in rates.items():
        out["images_per_s"][name] = {b: float(np.median(r)) for b, r in by_batch.items()}
        ratios = {b: np.array(r) / np.array(rates[TORCH][b]) for b, r in by_batch.items()}
        out["ratio_vs_torch"][name] = {
            b: {"median": float(np.median(q)), "min": float(q.min()), "max": float(q.max())} for b, q in ratios.items()
        }
    return out


class _TorchAlwaysAnswers:
    """The torch engine's twin of :class:`_AlwaysAnswers`."""

    macs_per_image = 0

    def classify(self, images: torch.Tensor) -> CloudReply:
        n = int(images.shape[0])
        return CloudReply(torch.full((n,), -1, dtype=torch.int64), torch.ones(n, dtype=torch.bool))


def accuracy(
    model: Any, packages: dict[str, Any], policy: Any, x: np.ndarray, y: np.ndarray, cloud_labels: np.ndarray
) -> dict[str, Any]:
    """Per variant: the exits (a cloud that always answers shows the routes), the edge's own labels (no cloud: the
    offloaded inputs keep the edge's answer), the accuracy with the run's cloud answering the offloaded inputs, and
    the share of inputs whose exit matches the torch float32 engine's."""
    torch_policy = policy_from_dict(policy.as_dict())
    routed_t = AdaptiveEngine(model, torch_policy, _TorchAlwaysAnswers(), optimize=True)
    alone_t = AdaptiveEngine(model, torch_policy, None, optimize=True)
    runs: dict[str, tuple[Callable[[np.ndarray], Any], Callable[[np.ndarray], Any]]] = {
        "torch float32": (
            lambda b: routed_t.predict(torch.from_numpy(b)),
            lambda b: alone_t.predict(torch.from_numpy(b)),
        )
    }
    for name, package in packages.items():
        runs[name] = (EdgeRuntime(package, policy, _AlwaysAnswers()).predict, EdgeRuntime(package, policy).predict)
    results: dict[str, Any] = {}
    exits: dict[str, np.ndarray] = {}
    for name, (routed, alone) in runs.items():
        ex = np.concatenate([np.asarray(routed(x[i : i + 500]).exit) for i in range(0, len(x), 500)])
        own = np.concatenate([np.asarray(alone(x[i : i + 500]).labels) for i in range(0, len(x), 500)])
        with_cloud = np.where(ex == EXIT_CLOUD, cloud_labels, own)
        exits[name] = ex
        results[name] = {
            "edge_only_accuracy": float((own == y).mean()),
            "accuracy_with_cloud": float((with_cloud == y).mean()),
            "exits": {k: float((ex == i).mean()) for i, k in enumerate(("main", "extension", "cloud"))},
        }
    for name in results:
        results[name]["same_exit_as_torch_float32"] = float((exits[name] == exits["torch float32"]).mean())
    return results


def cold_start(package: Path, key: Path) -> dict[str, float]:
    """Seconds, in a fresh interpreter, to import the runtime, verify the package and build its sessions."""
    code = (
        "import time; t0 = time.perf_counter()\n"
        "from meanet_edge.package import read_package\nfrom meanet_edge.policy import choose_policy\n"
        "from meanet_edge.runtime import EdgeRuntime\n"
        f"p = read_package({str(package)!r}, {str(key)!r}); EdgeRuntime(p, choose_policy(p.manifest.get('policy')))\n"
        "print(time.perf_counter() - t0)\n"
    )
    samples, walls = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        walls.append(time.perf_counter() - t0)
        samples.append(float(out.stdout.strip().splitlines()[-1]))
    return {"import_verify_load_s": min(samples), "with_interpreter_start_s": min(walls)}


def _closure(dist: str) -> set[str]:
    """``dist`` and every distribution it requires (extras left out), as installed here."""
    seen: set[str] = set()
    todo = [dist]
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        seen.add(name)
        for r in requires:
            if "extra ==" in r:
                continue
            todo.append(re.split(r"[\s;<>=!~\[(]", r, maxsplit=1)[0])
    return seen


def _bytes(dists: set[str]) -> int:
    total = 0
    for name in dists:
        for f in md.distribution(name).files or []:
            p = Path(str(f.locate()))
            if p.is_file():
                total += p.stat().st_size
    return total


def install_sizes(edge_pyproject: Path) -> dict[str, Any]:
    """Bytes on disk of the runtime's dependency closure and of the full install's (from the installed files)."""
    import tomllib

    runtime_deps = tomllib.loads(edge_pyproject.read_text())["project"]["dependencies"]
    runtime: set[str] = set()
    for req in runtime_deps:
        runtime |= _closure(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0])
    full = _closure("meanet-fl")
    full |= {n for n in _closure("flwr")} | _closure("ray")  # flwr[simulation] brings Ray
    r, f = _bytes(runtime), _bytes(full)
    return {"runtime_bytes": r, "full_bytes": f, "ratio": r / f, "runtime_dists": sorted(runtime)}


def offload_policy(model: Any, x: np.ndarray, share: float) -> Any:
    """The paper policy whose entropy threshold offloads ``share`` of the validation images ``x`` (float32 torch)."""
    from meanet_core.inference.policies import normalized_entropy

    with torch.inference_mode():
        probs = model.eval().forward_main(torch.from_numpy(x).float() / 255).logits.softmax(dim=1)
    threshold = float(np.quantile(normalized_entropy(probs).numpy(), 1.0 - share))
    return choose_policy(None, "paper", threshold)


def energy_per_input(packages: dict[str, Any], policy: Any, x: np.ndarray, acc: dict[str, Any], args: Any) -> Any:
    """Edge energy per input under ``policy`` in both models, for each package: MACs x joules-per-MAC, and the
    device profile (measured seconds per block x ``--power-watts``), each plus the LTE uplink for the offloaded
    share; beside cloud-only (every input sent, nothing computed on the device)."""
    cost = CostConfig()
    out: dict[str, Any] = {}
    for name, package in packages.items():
        rt = EdgeRuntime(package, policy, threads=args.threads)
        prof = measure(rt, power_w=args.power_watts, threads=args.threads)
        pred = rt.predict(x)
        image_bytes = cost.input_bytes(3, rt.input_size, rt.input_size)
        cloud_only = float(cost.transmission_energy(float(image_bytes)))
        offloaded = acc[name]["exits"]["cloud"]
        uplink = offloaded * cloud_only
        main_s, ext_s = prof.seconds(1)
        ran_ext = float(pred.ran_extension.mean())
        macs_j = float(pred.edge_macs.mean()) * cost.joules_per_mac + uplink
        measured_j = args.power_watts * (main_s + ran_ext * ext_s) + uplink
        out[name] = {
            "offloaded": offloaded,
            "cloud_only_joule": cloud_only,
            "macs_model_joule": macs_j,
            "measured_joule": measured_j,
            "macs_model_over_cloud_only": macs_j / cloud_only,
            "measured_over_cloud_only": measured_j / cloud_only,
            "profile": prof.describe(),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a meanet train run folder")
    ap.add_argument("--json", type=Path, default=Path("perf_edge_runtime.json"))
    ap.add_argument("--calibration", type=int, default=1000, help="validation images that calibrate int8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (the median is reported)")
    ap.add_argument("--limit", type=int, default=None, help="test images (default: the whole test split)")
    ap.add_argument(
        "--offload", type=float, default=0.15, help="the paper policy beside the run's, its entropy threshold fitted "
        "on validation images to offload this share"
    )  # fmt: skip
    ap.add_argument("--power-watts", type=float, default=5.0, help="stated device power for the measured energy")
    args = ap.parse_args()

    source = from_train_run(args.run)
    cfg = from_dict(TrainConfig, json.loads((args.run / "train.json").read_text())["config"])
    key, pub = ensure_signing_key("", args.run)
    pub = pub or args.run / "broadcast-signing.pub"
    names = source.class_names or tuple(str(i) for i in range(source.model.num_classes))
    work = Path(tempfile.mkdtemp(prefix="perf-edge-"))
    pt = export(source, work / "model.pt", class_names=names).path
    t0 = time.perf_counter()
    f32, _ = export_package(source, work / "float32.zip", key, names)
    export_s = time.perf_counter() - t0
    cal = validation_images(source, args.calibration + 2000)
    t0 = time.perf_counter()
    i8, check = export_package(
        source, work / "int8.zip", key, names, calibration=cal, calibration_images=args.calibration
    )
    int8_s = time.perf_counter() - t0
    packages = {"float32": read_package(f32, pub), "int8": read_package(i8, pub)}
    policy = choose_policy(packages["int8"].manifest.get("policy"))
    paper = offload_policy(source.model, cal.x[args.calibration :], args.offload)

    print("speed (main block)...", flush=True)
    rates = speed(source.model, packages, source.model.input_size, args.threads, args.rounds)
    print("accuracy (test split)...", flush=True)
    splits = load_splits(cfg)
    test = splits.test if args.limit is None else splits.test.subset(np.arange(min(args.limit, len(splits.test))))
    x, y = test.x.numpy(), test.y.numpy()
    cloud = LocalCloud(load_cloud(args.run / "cloud.pt"), optimize=True)
    cloud_labels = np.concatenate([cloud.classify(test.x[i : i + 500]).labels.numpy() for i in range(0, len(x), 500)])
    acc = {
        describe_policy(p.as_dict()): accuracy(source.model, packages, p, x, y, cloud_labels) for p in (policy, paper)
    }
    energy = energy_per_input(packages, paper, x[:2000], acc[describe_policy(paper.as_dict())], args)
    sizes = {"pt_bytes": pt.stat().st_size, "float32_bytes": f32.stat().st_size, "int8_bytes": i8.stat().st_size}
    report = {
        "run": str(args.run),
        "threads": args.threads,
        "device": device_name(),
        "speed": rates,
        "accuracy": acc,
        "export_check": check,
        "calibration": packages["int8"].manifest["calibration"]["source"],
        "sizes": sizes | {"int8_over_pt": sizes["int8_bytes"] / sizes["pt_bytes"]},
        "cold_start": {name: cold_start(p, pub) for name, p in (("float32", f32), ("int8", i8))},
        "install": install_sizes(Path(__file__).resolve().parents[1] / "edge" / "pyproject.toml"),
        "energy_per_input": energy,
        "export_seconds": {"float32": export_s, "int8": int8_s},
    }
    write_json(report, args.json)
    _print(report)
    print(f"wrote {args.json}")


def _print(r: dict[str, Any]) -> None:
    sp = r["speed"]
    print(
        f"\nmain block, images/s ({r['threads']} threads; {r['device']}; median of {sp['rounds']} interleaved rounds):"
    )
    print(f"{'variant':<40}{'batch 64':>10}{'x torch (range)':>20}{'batch 1':>10}{'x torch (range)':>20}")
    for name, rates in sp["images_per_s"].items():
        q = sp["ratio_vs_torch"][name]
        cells = [
            f"{rates[b]:>10.0f}{q[b]['median']:>8.2f} ({q[b]['min']:.2f}-{q[b]['max']:.2f})"
            for b in ("batch 64", "batch 1")
        ]
        print(f"{name:<40}{cells[0]}{cells[1]}")
    for policy, rows in r["accuracy"].items():
        print(f"\nwhole adaptive engine on the test split, policy {policy}:")
        print(f"{'variant':<16}{'edge only':>10}{'with cloud':>11}{'main':>7}{'ext':>7}{'cloud':>7}{'same exit':>10}")
        for name, a in rows.items():
            e = a["exits"]
            print(
                f"{name:<16}{a['edge_only_accuracy']:>10.4f}{a['accuracy_with_cloud']:>11.4f}{e['main']:>7.3f}"
                f"{e['extension']:>7.3f}{e['cloud']:>7.3f}{a['same_exit_as_torch_float32']:>10.4f}"
            )
    s = r["sizes"]
    print(
        f"\nbytes: .pt {s['pt_bytes']:,}, float32 package {s['float32_bytes']:,}, int8 package {s['int8_bytes']:,} "
        f"({s['int8_over_pt']:.2f}x the .pt)"
    )
    for name, c in r["cold_start"].items():
        print(
            f"cold start {name}: {c['import_verify_load_s']:.3f} s import+verify+load "
            f"({c['with_interpreter_start_s']:.3f} s with the interpreter)"
        )
    i = r["install"]
    print(
        f"install: runtime {i['runtime_bytes'] / 1e6:.0f} MB, full {i['full_bytes'] / 1e6:.0f} MB ({i['ratio']:.3f}x)"
    )
    for name, e in r["energy_per_input"].items():
        print(
            f"energy per input {name} at {e['offloaded']:.1%} offloaded: MACs model {e['macs_model_joule'] * 1e3:.3f} "
            f"mJ ({e['macs_model_over_cloud_only']:.2f}x cloud-only's {e['cloud_only_joule'] * 1e3:.2f} mJ), measured "
            f"{e['measured_joule'] * 1e3:.3f} mJ ({e['measured_over_cloud_only']:.2f}x) [{e['profile']}]"
        )


if __name__ == "__main__":
    main()
