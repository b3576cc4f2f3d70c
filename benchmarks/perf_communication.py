"""Communication benchmark: bytes up and down per edge and round, and accuracy at equal rounds, per upload encoding.

    MEANET_DATA_DIR=../shared/data python -m benchmarks.perf_communication --json perf_communication.json

Runs the real app (cloud ServerApp, edge ClientApps, the signed ``MEANetStrategy``) on Flower's simulation engine
once per variant, side by side in one invocation, with the same config and seed, and reads each run's
``report.json``:

- ``float32 + full broadcasts``: what MEANet-FL sent before (the edge blocks up as float32, the whole state down);
- ``float32`` / ``fp16`` / ``int8``: the upload encoding (:mod:`meanet_core.wire.compression`), with delta broadcasts
  (the main block is left out of the broadcast to an edge that holds it: every round after an experience's first).

Bytes are those of the arrays in the Flower messages (``ArrayRecord.count_bytes``), per edge and round, against
full-model FedAvg (the whole float32 MEANet state up and down every round). Accuracy is MEANet + cloud on the test
images of the seen classes after each experience: the cloud's training is the same in every run (same seed), so a
difference comes from the edge blocks. Encode time is what the edges report; decode time is the server's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fl_server.launch import run_simulation

VARIANTS: dict[str, dict[str, object]] = {
    "float32 + full broadcasts (before)": {"upload-encoding": "float32", "delta-broadcast": False},
    "float32": {"upload-encoding": "float32", "delta-broadcast": True},
    "fp16": {"upload-encoding": "fp16", "delta-broadcast": True},
    "int8": {"upload-encoding": "int8", "delta-broadcast": True},
}


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """Bytes, ratios, times and accuracies of one run."""
    rounds = report["rounds"]
    first = [r for r in rounds if r["round"] == 1]
    later = [r for r in rounds if r["round"] > 1]
    full = float(np.mean([r["full_state_bytes"] for r in rounds]))
    up = float(np.mean([r["bytes_received_per_client"] for r in rounds]))
    down_first = float(np.mean([r["bytes_broadcast_per_client"] for r in first]))
    down_later = float(np.mean([r["bytes_broadcast_per_client"] for r in later])) if later else float("nan")
    return {
        "full_state_bytes": full,
        "upload_bytes": up,
        "upload_ratio": up / full,
        "download_first_round_bytes": down_first,
        "download_later_rounds_bytes": down_later,
        "download_later_ratio": down_later / full,
        # per evaluation instruction (the rounds where the edges evaluated): the state (or delta) + the cloud model
        "evaluation_broadcast_bytes": float(np.mean([e for r in rounds if (e := r.get("bytes_evaluate_per_client"))]))
        if any(r.get("bytes_evaluate_per_client") for r in rounds)
        else 0.0,
        "encode_ms": 1000 * float(np.mean([r.get("encode_seconds", 0.0) for r in rounds])),
        "decode_ms": 1000 * float(np.mean([r.get("decode_seconds", 0.0) for r in rounds])),
        "accepted": [r["accepted"] for r in rounds],
        "accuracy": [x["evaluation"]["accuracy"] for x in report["experiences"]],
        "edge_accuracy": [
            x["evaluation"]["reference_accuracy"]["edge_main_plus_extension"] for x in report["experiences"]
        ],
        "wall_seconds": report.get("wall_seconds", 0.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="cifar100")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--experiences", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per experience")
    parser.add_argument("--limit-train", type=int, default=6000)
    parser.add_argument("--cloud-epochs", type=int, default=2)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated names from: " + ", ".join(VARIANTS)
    )
    parser.add_argument("--json", default="perf_communication.json")
    args = parser.parse_args()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"error: unknown variant(s) {unknown}; valid: {list(VARIANTS)}")
    base: dict[str, object] = {
        "dataset": args.dataset, "num-clients": args.clients, "experiences": args.experiences,
        "rounds-per-experience": args.rounds, "limit-train": args.limit_train, "cloud-epochs": args.cloud_epochs,
        "local-epochs": args.local_epochs, "evaluate-every": 0,
    }  # fmt: skip
    results: dict[str, Any] = {"config": base, "variants": {}}
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            report_dir = Path(tmp) / "report"
            cfg = {**base, **VARIANTS[name], "report-dir": str(report_dir)}
            print(f"running {name} ...", flush=True)
            run = run_simulation(cfg, args.clients, timeout=3000, home=Path(tmp) / "flwr")
            if not run.ok:
                sys.exit(f"error: {name}: {run.status}: {run.details}\n{run.logs[-3000:]}")
            results["variants"][name] = summarize(json.loads((report_dir / "report.json").read_text()))
        with open(args.json, "w") as f:  # nothing lost on a crash
            json.dump(results, f, indent=2)

    ref = results["variants"].get("float32 + full broadcasts (before)") or next(iter(results["variants"].values()))
    print(
        f"\n{args.dataset}, {args.clients} edges, {args.experiences} experiences x {args.rounds} rounds, "
        f"{args.local_epochs} local epochs; full float32 state {ref['full_state_bytes']:,.0f} B (what full-model "
        "FedAvg sends each way, each round)"
    )
    print(
        "| variant | upload B/edge/round | upload / full model | download B, round 1 | download B, later rounds "
        "| later download / full state | evaluation broadcast B | encode ms | decode ms | accuracy per experience "
        "| vs float32 (points) |"
    )
    print("|---|" + "---:|" * 10)
    float32 = results["variants"].get("float32", ref)
    for name, v in results["variants"].items():
        delta = " / ".join(f"{100 * (a - b):+.2f}" for a, b in zip(v["accuracy"], float32["accuracy"], strict=True))
        print(
            f"| {name} | {v['upload_bytes']:,.0f} | {v['upload_ratio']:.3f} | {v['download_first_round_bytes']:,.0f} "
            f"| {v['download_later_rounds_bytes']:,.0f} | {v['download_later_ratio']:.3f} "
            f"| {v['evaluation_broadcast_bytes']:,.0f} | {v['encode_ms']:.1f} | {v['decode_ms']:.1f} "
            f"| {' / '.join(f'{a:.4f}' for a in v['accuracy'])} | {delta} |"
        )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
