"""Fleet benchmark: the same rounds with 100 and with 1,000 virtual edges, 10 sampled per round.

    MEANET_DATA_DIR=../shared/data python -m benchmarks.perf_fleet --sizes 100,1000 --json perf_fleet.json

Runs the real app on Flower's simulation engine (a SuperLink on loopback, one CPU per ClientApp), once per fleet
size, side by side in one invocation. Every edge holds the same number of images whatever the size
(``--images-per-edge``; ``limit-train`` = that x the size, iid), so a sampled edge does the same work in both runs and
what differs is the fleet the server and the engine keep track of. Per size:

- **round wall**: from building the signed instructions to the end of aggregation, mean over the warm edge rounds:
  all but the first (which also starts the engine's workers) and the last (which also evaluates); the first is shown
  apart, and so is the local training inside a warm round;
- **peak memory**: the largest sum of the resident memory of every process of the run (SuperLink, SuperExec, the
  simulation with the ServerApp, Ray and its workers), sampled every 0.5 s;
- **run**: seconds of the whole run (the engine registering the virtual edges, the data, the cloud's training on its
  share, which grows with the fleet's data, and every round).

Prints a table and writes JSON; the ratio column is each size against the first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from fl_server.launch import run_simulation


def run_memory(home: Path) -> int:
    """Resident bytes of every process that runs with this Flower home (the run's whole process tree, Ray included)."""
    total = 0
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get("FLWR_HOME") == str(home):
                total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return total


def one_size(size: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    report_dir, home = (out / f"fleet-{size}").resolve(), (out / f"flwr-{size}").resolve()
    config: dict[str, object] = {
        "dataset": args.dataset, "model": "resnet20_cifar", "cloud-model": "resnet20_cifar",
        "num-clients": size, "edges-per-round": args.edges_per_round, "min-edges": args.edges_per_round,
        "experiences": 1, "main-rounds": 0, "rounds-per-experience": args.rounds, "cloud-epochs": 1,
        "cloud-model-epochs": 1, "local-epochs": 1, "extension-epochs": 1, "partition": "iid",
        "limit-train": args.images_per_edge * size, "report-dir": str(report_dir),
    }  # fmt: skip
    peak, stop = [0], threading.Event()

    def watch() -> None:
        while not stop.wait(0.5):
            peak[0] = max(peak[0], run_memory(home))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    try:
        run = run_simulation(config, size, timeout=args.timeout, home=home)
    finally:
        stop.set()
        watcher.join()
    if not run.ok:
        sys.exit(f"{size} edges: the federation failed ({run.status}: {run.details}); log tail:\n{run.logs[-3000:]}")
    report = json.loads((report_dir / "report.json").read_text())
    all_walls = [r["train_phase_seconds"] + r["aggregation_seconds"] for r in report["rounds"]]
    rounds = report["rounds"][1:-1] or report["rounds"]  # warm: the first starts the workers, the last evaluates
    walls = [r["train_phase_seconds"] + r["aggregation_seconds"] for r in rounds]
    return {
        "edges": size,
        "sampled_per_round": [len(r["sampled_nodes"]) for r in report["rounds"]],
        "round_wall_seconds": statistics.mean(walls),
        "round_walls": all_walls,
        "first_round_wall_seconds": all_walls[0],
        "local_training_seconds": statistics.mean(r["local_training_seconds"] for r in rounds),
        "peak_memory_bytes": peak[0],
        "run_seconds": time.perf_counter() - t0,
        "cloud_training_seconds": report["experiences"][0]["cloud_training_seconds"],
        "training_images": args.images_per_edge * size,
        "config": config,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,1000", help="comma-separated fleet sizes (virtual edges), one run each")
    ap.add_argument("--edges-per-round", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=6, help="edge rounds (the first warms up, the last also evaluates)")
    ap.add_argument("--images-per-edge", type=int, default=20)
    ap.add_argument("--dataset", default="cifar100")
    ap.add_argument("--out", type=Path, default=None, help="where the runs' reports go (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=Path("perf_fleet.json"))
    ap.add_argument("--timeout", type=float, default=3600)
    args = ap.parse_args()
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        sys.exit(f"--sizes takes comma-separated integers, e.g. 100,1000; got {args.sizes!r}")
    if min(sizes) < args.edges_per_round:
        sys.exit(f"every size must be >= --edges-per-round ({args.edges_per_round}); got {sizes}")
    out = args.out or Path(tempfile.mkdtemp(prefix="perf-fleet-"))
    rows = []
    for size in sizes:
        print(f"{size} virtual edges, {args.edges_per_round} per round ...", flush=True)
        rows.append(one_size(size, args, out))
    base = rows[0]
    print("\n| virtual edges | sampled per round | warm round wall (s) | local training (s) | first round (s) "
          "| peak memory (MiB) | run (s) | round wall / first row | memory / first row |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        r["round_wall_ratio"] = r["round_wall_seconds"] / base["round_wall_seconds"]
        r["memory_ratio"] = r["peak_memory_bytes"] / max(1, base["peak_memory_bytes"])
        print(
            f"| {r['edges']:,} | {r['sampled_per_round'][0]} | {r['round_wall_seconds']:.2f} "
            f"| {r['local_training_seconds']:.2f} | {r['first_round_wall_seconds']:.2f} "
            f"| {r['peak_memory_bytes'] / 2**20:,.0f} | {r['run_seconds']:.0f} "
            f"| {r['round_wall_ratio']:.2f} | {r['memory_ratio']:.2f} |"
        )
    args.json.write_text(json.dumps({"rows": rows, "out": str(out)}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
