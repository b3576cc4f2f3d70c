"""Communication benchmark: bytes both ways per edge and experience against FedAvg-full, and accuracy, per encoding.

    MEANET_DATA_DIR=../shared/data python -m benchmarks.perf_communication --seeds 0,1 --json perf_communication.json

Runs the real app (cloud ServerApp, edge ClientApps, the signed ``MEANetStrategy``) on Flower's simulation engine
once per variant and seed, side by side in one invocation, on the main job's config (pyproject.toml; ``--set
KEY=VALUE`` changes it for every variant), and reads each run's ``report.json``:

- ``float32``: uploads and broadcasts exact (a broadcast leaves out only what the edge already holds unchanged);
- ``int8``: int8 uploads and 8-bit broadcasts; ``int4`` (the defaults): int4 uploads
  (:mod:`meanet_core.wire.compression`) and 6-bit broadcasts (:mod:`meanet_core.wire.broadcast_delta`: the change
  from the state the edge holds, with the error kept on the cloud);
- ``float32-full``: every edge gets the whole state every round.

Bytes are those of the arrays in the Flower messages (``ArrayRecord.count_bytes``), per edge. FedAvg-full is the whole
float32 MEANet state up and down every training round and down every evaluated round
(:func:`fl_server.report.communication`). The simulation's evaluation broadcast also carries the cloud model (a
deployment's edges call the offload service instead): it is reported apart and left out of the ratios. Accuracy is
MEANet + cloud on the test images of the seen classes after the last experience. Codec time is the cloud's
broadcast building (which runs the edges' decoding too) plus the edges' upload encoding and the cloud's decoding,
against the rounds' wall time.
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
from fl_server.report import communication

VARIANTS: dict[str, dict[str, object]] = {
    "float32": {"upload-encoding": "float32", "broadcast-encoding": "float32", "delta-broadcast": True},
    "int8": {"upload-encoding": "int8", "broadcast-encoding": "int8", "delta-broadcast": True},
    "int4": {"upload-encoding": "int4", "broadcast-encoding": "int6", "delta-broadcast": True},
    "float32-full": {"upload-encoding": "float32", "delta-broadcast": False},
}


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """Bytes per kind of round and per experience, codec time and accuracy of one run."""
    rounds = report["rounds"]
    kinds: dict[str, dict[str, float]] = {}
    for r in rounds:
        full = float(r["full_state_bytes"])
        row = kinds.setdefault(r["phase"], {"max_upload": 0.0, "max_later_download": 0.0, "first_download": 0.0})
        row["max_upload"] = max(row["max_upload"], r["bytes_received_per_client"] / full)
        down = [r["bytes_broadcast_per_client"], r.get("bytes_evaluate_per_client", 0.0) - r.get(
            "bytes_cloud_model_per_client", 0.0)]  # fmt: skip
        first = "main" if int(report["config"]["main-rounds"]) else "edge"
        if r["phase"] == first and r["round"] == 1:  # the experience's first round
            row["first_download"] = max(row["first_download"], down[0] / full)
            down = down[1:]
        row["max_later_download"] = max(row["max_later_download"], max(down) / full)
    codec = sum(
        r.get("broadcast_seconds", 0.0) + r.get("encode_seconds", 0.0) + r.get("decode_seconds", 0.0) * r["accepted"]
        for r in rounds
    )
    return {
        "kinds": kinds,
        "experiences": communication(rounds),
        "codec_share_of_round_time": codec / max(1e-9, sum(r["wall_seconds"] for r in rounds)),
        "accuracy": [x["evaluation"]["accuracy"] for x in report["experiences"]],
        "reference_accuracy": [x["evaluation"]["reference_accuracy"] for x in report["experiences"]],
        "exits": [{k: v["fraction"] for k, v in x["evaluation"]["exits"].items()} for x in report["experiences"]],
        "wall_seconds": report.get("wall_seconds", 0.0),
    }


def _value(text: str) -> object:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; every variant runs each")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="run-config change, repeatable")
    parser.add_argument("--variants", default="float32,int4", help="comma-separated names from: " + ", ".join(VARIANTS))
    parser.add_argument("--json", default="perf_communication.json")
    args = parser.parse_args()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"error: unknown variant(s) {unknown}; valid: {list(VARIANTS)}")
    base: dict[str, object] = {"evaluate-every": 0}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"error: --set {item!r}: expected KEY=VALUE, e.g. --set limit-train=5000")
        base[key] = _value(value)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    clients = int(base.get("num-clients", 3))  # type: ignore[call-overload]
    results: dict[str, Any] = {"config": base, "seeds": seeds, "variants": {n: {} for n in names}}
    done = Path(args.json)
    if done.exists():  # runs of an interrupted invocation with the same config are kept, not rerun
        old = json.loads(done.read_text())
        if old.get("config") == base:
            for name, runs in old.get("variants", {}).items():
                results["variants"].setdefault(name, {}).update({int(k): v for k, v in runs.items()})
    for seed in seeds:
        for name in names:
            if seed in results["variants"][name]:
                print(f"{name}, seed {seed}: kept from {done}", flush=True)
                continue
            with tempfile.TemporaryDirectory() as tmp:
                report_dir = Path(tmp) / "report"
                cfg = {**base, **VARIANTS[name], "seed": seed, "report-dir": str(report_dir)}
                print(f"running {name}, seed {seed} ...", flush=True)
                run = run_simulation(cfg, clients, timeout=5400, home=Path(tmp) / "flwr")
                if not run.ok:
                    sys.exit(f"error: {name}: {run.status}: {run.details}\n{run.logs[-3000:]}")
                results["variants"][name][seed] = summarize(json.loads((report_dir / "report.json").read_text()))
            with open(args.json, "w") as f:  # nothing lost on a crash
                json.dump(results, f, indent=2)
    print_tables(results)
    print(f"wrote {args.json}")


def print_tables(results: dict[str, Any]) -> None:
    """The bytes table (per kind of round, both ways, per experience against FedAvg-full) and accuracy, per variant."""
    print(
        "\n| variant | main: largest upload / full | edge: largest upload / full | largest later download / full "
        "| per experience (up + down) / FedAvg-full | cloud model down per experience (simulation only) "
        "| codec / round time | MEANet + cloud accuracy %, last experience | vs float32 (points) |"
    )
    print("|---|" + "---:|" * 8)
    ref = results["variants"].get("float32", {})
    for name, runs in results["variants"].items():
        if not any(s in runs for s in results["seeds"]):
            continue
        seeds = sorted(s for s in runs if s in results["seeds"])
        pick = [runs[s] for s in seeds]
        kinds = [k for k in ("main", "edge") if k in pick[0]["kinds"]]
        up = {k: max(p["kinds"][k]["max_upload"] for p in pick) for k in kinds}
        later = max(p["kinds"][k]["max_later_download"] for p in pick for k in kinds)
        ratio = [x["ratio_vs_fedavg_full"] for p in pick for x in p["experiences"]]
        cloud = np.mean([x["cloud_model_down"] for p in pick for x in p["experiences"]])
        acc = [100 * p["accuracy"][-1] for p in pick]
        diff = [100 * runs[s]["accuracy"][-1] - 100 * ref[s]["accuracy"][-1] for s in seeds if s in ref]
        print(
            f"| {name} | {up.get('main', float('nan')):.3f} | {up.get('edge', float('nan')):.3f} | {later:.3f} "
            f"| {min(ratio):.3f}-{max(ratio):.3f} | {cloud:,.0f} "
            f"| {max(p['codec_share_of_round_time'] for p in pick):.3%} "
            f"| {np.mean(acc):.2f} ± {np.std(acc):.2f} ({', '.join(f'{a:.2f}' for a in acc)}) "
            f"| {np.mean(diff):+.2f} ({', '.join(f'{d:+.2f}' for d in diff)}) |"
        )


if __name__ == "__main__":
    main()
