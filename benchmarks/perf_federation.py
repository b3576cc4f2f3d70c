"""Federation benchmark: the wall time of a simulated round against the local training it contains, and the bytes.

    MEANET_DATA_DIR=../shared/data python benchmarks/perf_federation.py --clients 4 --json perf_federation.json

Runs the real app (cloud ServerApp, edge ClientApps, ``MEANetStrategy``) on Flower's simulation engine with a
SuperLink on loopback, one CPU per ClientApp, then reads the run's ``report.json``. For every round:

- **round wall**: from the server building the signed instructions to the end of aggregation (the training part of a
  round; the edges' evaluation, where the round has one, is shown apart);
- **local training**: the time during which at least one edge was fine-tuning (the union of the edges' training
  intervals, reported with wall-clock times: simulation shares one clock);
- **overhead** = round wall - local training: messaging, deserialising, checking signatures, building models,
  loading data, waiting for a free CPU, aggregation. The goal is under 25% with 4 clients;
- **bytes** per client: downloaded (the signed broadcast), uploaded (adaptive + extension only) and what a
  full-model FedAvg would upload (the whole MEANet).

``--evaluate-every 1,0`` runs the federation once per value, side by side in one invocation (1: the edges evaluate
after every round, as FedAvg does; 0: only after the experience's last round, the default). Prints a table and
writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fl_server.launch import run_simulation


def round_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-round figures from a federation ``report.json``."""
    rows = []
    for r in report["rounds"]:
        wall = r["train_phase_seconds"] + r["aggregation_seconds"]
        local = r["local_training_seconds"]
        rows.append(
            {
                "experience": r["experience"],
                "round": r["round"],
                "round_wall_seconds": wall,
                "local_training_seconds": local,
                "overhead_seconds": wall - local,
                "overhead_fraction": (wall - local) / wall if wall > 0 else 0.0,
                "slowest_edge_training_seconds": r.get("slowest_edge_training_seconds", 0.0),
                "sum_edge_training_seconds": sum(r.get("client_train_seconds", [])),
                "aggregation_seconds": r["aggregation_seconds"],
                "client_evaluation_seconds": r.get("client_evaluation_seconds", 0.0),
                "wall_with_evaluation_seconds": r["wall_seconds"],
                "accepted": r["accepted"],
                "bytes_download_per_client": r["bytes_broadcast_per_client"],
                "bytes_upload_per_client": r["bytes_received_per_client"],
                "bytes_upload_full_model_per_client": r.get("full_state_bytes", r["bytes_broadcast_per_client"]),
                "upload_ratio_vs_full_model": r["upload_ratio_vs_full_model"],
            }
        )
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Totals over the rounds after the first (``warm``: the first round also loads the data into every worker)."""
    warm = rows[1:] or rows
    wall = sum(r["round_wall_seconds"] for r in warm)
    local = sum(r["local_training_seconds"] for r in warm)
    every = sum(r["round_wall_seconds"] for r in rows)
    every_local = sum(r["local_training_seconds"] for r in rows)
    return {
        "warm_rounds": len(warm),
        "warm_overhead_fraction": (wall - local) / wall if wall else 0.0,
        "all_rounds_overhead_fraction": (every - every_local) / every if every else 0.0,
        "client_evaluation_seconds_total": sum(r["client_evaluation_seconds"] for r in rows),
        "rounds_wall_with_evaluation_seconds_total": sum(r["wall_with_evaluation_seconds"] for r in rows),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of edge fine-tuning (one experience)")
    ap.add_argument("--dataset", default="cifar100")
    ap.add_argument("--model", default="resnet20_cifar")
    ap.add_argument("--cloud-model", default="resnet20_cifar")
    ap.add_argument("--limit-train", type=int, default=0, help="a seeded subset of the training images (0 = all)")
    ap.add_argument("--local-epochs", type=int, default=1)
    ap.add_argument("--evaluate-every", default="0", help="comma-separated values, one federation run each")
    ap.add_argument("--out", type=Path, default=None, help="where the runs' reports go (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=Path("perf_federation.json"))
    ap.add_argument("--timeout", type=float, default=3600)
    args = ap.parse_args()
    try:
        variants = [int(v) for v in args.evaluate_every.split(",")]
    except ValueError:
        sys.exit(f"--evaluate-every takes comma-separated integers >= 0, e.g. 1,0; got {args.evaluate_every!r}")

    out = args.out or Path(tempfile.mkdtemp(prefix="perf-federation-"))
    results: dict[str, Any] = {}
    for every in variants:
        name = f"evaluate-every={every}"
        report_dir = (out / f"evaluate-every-{every}").resolve()
        config: dict[str, object] = {
            "dataset": args.dataset, "model": args.model, "cloud-model": args.cloud_model,
            "num-clients": args.clients, "experiences": 1, "rounds-per-experience": args.rounds,
            "evaluate-every": every, "cloud-epochs": 1, "local-epochs": args.local_epochs,
            "limit-train": args.limit_train, "report-dir": str(report_dir),
        }  # fmt: skip
        print(f"{name}: running the federation ({args.clients} clients, {args.rounds} rounds) ...", flush=True)
        t0 = time.perf_counter()
        run = run_simulation(config, args.clients, timeout=args.timeout, home=report_dir.parent / f"flwr-{every}")
        if not run.ok:
            sys.exit(f"{name}: the federation failed ({run.status}: {run.details}); log tail:\n{run.logs[-3000:]}")
        report = json.loads((report_dir / "report.json").read_text())
        rows = round_rows(report)
        results[name] = {
            "config": config,
            "run_seconds": time.perf_counter() - t0,
            "cloud_training_seconds": report["experiences"][0]["cloud_training_seconds"],
            "rounds": rows,
            "summary": summary(rows),
        }

    header = (
        f"{'variant':<17} {'rnd':>3} {'wall s':>7} {'local s':>7} {'overhead':>8} {'sum edge s':>10} "
        f"{'eval s':>6} {'down B':>10} {'up B':>9} {'up/full':>7}"
    )
    print(header)
    print("-" * len(header))
    for name, res in results.items():
        for r in res["rounds"]:
            print(
                f"{name:<17} {r['round']:>3} {r['round_wall_seconds']:>7.1f} {r['local_training_seconds']:>7.1f} "
                f"{r['overhead_fraction']:>8.1%} {r['sum_edge_training_seconds']:>10.1f} "
                f"{r['client_evaluation_seconds']:>6.1f} {r['bytes_download_per_client']:>10,} "
                f"{r['bytes_upload_per_client']:>9,.0f} {r['upload_ratio_vs_full_model']:>7.3f}"
            )
        s = res["summary"]
        print(
            f"{name}: overhead {s['warm_overhead_fraction']:.1%} over the {s['warm_rounds']} warm round(s), "
            f"{s['all_rounds_overhead_fraction']:.1%} over all; "
            f"client evaluation {s['client_evaluation_seconds_total']:.1f} s; "
            f"rounds incl. evaluation {s['rounds_wall_with_evaluation_seconds_total']:.1f} s"
        )
    payload = {"clients": args.clients, "rounds": args.rounds, "dataset": args.dataset, "variants": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
