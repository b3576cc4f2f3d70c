"""Per-message start cost of the edge ClientApp: what a fresh process spends before training starts.

    MEANET_DATA_DIR=../shared/data python -m benchmarks.perf_startup --baseline f784089 --json perf_startup.json

Flower 1.41's deployment engine starts a ClientApp process for every message (each train and evaluate instruction).
Each scenario here runs what such a process runs, in a fresh ``python`` subprocess, and times its stages:

- ``interpreter``: from the parent's spawn to the child's first line (Python's own start);
- ``import torch`` / ``import flwr`` / ``import app``: importing ``fl_client.app`` (what Flower loads first),
  split into torch, Flower's ``flwr.app``/``flwr.clientapp``, and the rest (ours);
- ``config``: parsing the run config (:class:`~meanet_core.config.FederationConfig`) and the partition id;
- ``data``: :func:`fl_client.data.edge_data`, the handler's call for its images (the shared stream's slice, or the
  SuperNode's own ``data-dir``);
- ``model``: :func:`meanet_core.trust.broadcast.model_from_broadcast` on a broadcast state (read from disk first, as
  Flower hands the handler its arrays; that read is not counted).

Scenarios: ``cifar100`` (the app's default run config, 3 edges, 2 experiences; needs ``MEANET_DATA_DIR``), ``digits``
(the deployment tests' tiny config), ``own-folder`` (an edge with its own ImageFolder of digits PNGs in its node
config). Each is run once first (``first``: the decoded-data caches are cold, in a fresh ``--cache-dir``) and then
``--repeats`` times (the median is kept: what every later message costs). ``--compare OLD.json`` prints the medians
of an earlier run of this script (e.g. before a change) beside these, with the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STAGES = ("interpreter", "import torch", "import flwr", "import app", "config", "data", "model")

CHILD = r"""
import json, sys, time
t0 = time.perf_counter(); w0 = time.time()
spec = json.loads(sys.argv[1])
import torch
t1 = time.perf_counter()
import flwr.app, flwr.clientapp
t2 = time.perf_counter()
import fl_client.app
t3 = time.perf_counter()
import dataclasses
from fl_client.data import client_index, edge_data
from meanet_core.trust.broadcast import model_from_broadcast
from meanet_core.config import FederationConfig
known = {f.name.replace("_", "-") for f in dataclasses.fields(FederationConfig)}  # a baseline may know fewer keys
cfg = FederationConfig.from_run_config({k: v for k, v in spec["run_config"].items() if k in known})
client = client_index(spec["node_config"], cfg)
t4 = time.perf_counter()
state = torch.load(spec["state"], weights_only=True)
t5 = time.perf_counter()
view = edge_data(spec["purpose"], spec["config"], spec["node_config"], cfg, client, spec["experience"], state)
t6 = time.perf_counter()
model = model_from_broadcast(cfg.model, view.num_classes, spec["hard"], state, view.mean, view.std)
t7 = time.perf_counter()
print(json.dumps({"started": w0, "source": fl_client.app.__file__,
                  "import torch": t1 - t0, "import flwr": t2 - t1, "import app": t3 - t2,
                  "config": t4 - t3, "data": t6 - t5, "model": t7 - t6, "images": len(view.data)}))
"""


def _base_config(dataset: str, tiny: bool) -> dict[str, Any]:
    """The app's default run config (pyproject.toml), or the deployment tests' tiny one."""
    import tomllib

    from fl_server.launch import app_dir

    config = dict(tomllib.loads((app_dir() / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])
    config["dataset"] = dataset
    if tiny:
        config.update({"num-clients": 2, "experiences": 1, "limit-train": 400, "cloud-model": "resnet20_cifar"})
    return config


def _own_folder(root: Path, per_class: int) -> Path:
    """An edge's ImageFolder: ``per_class`` digits training images of each class, as PNGs."""
    from PIL import Image

    from meanet_core.data import load_dataset

    train = load_dataset("digits").train
    x, y = train.x.numpy(), train.y.numpy()
    for c in range(10):
        (root / str(c)).mkdir(parents=True)
        for j in [int(i) for i in (y == c).nonzero()[0][:per_class]]:
            Image.fromarray(x[j].transpose(1, 2, 0)).save(root / str(c) / f"{j}.png")
    return root


def _state(path: Path, arch: str, num_classes: int, hard: list[int]) -> Path:
    """A broadcast MEANet state, as the cloud would send it (an untrained model of the right shape)."""
    import torch

    from meanet_core.models import build_meanet

    torch.save(build_meanet(arch, num_classes, hard).state_dict(), path)
    return path


def scenarios(tmp: Path, per_class: int) -> dict[str, dict[str, Any]]:
    """name -> the child's spec (run config, node config, instruction config, purpose, experience, state)."""
    out: dict[str, dict[str, Any]] = {}
    digits = _base_config("digits", tiny=True)
    hard10 = [0, 1]
    state10 = _state(tmp / "digits-state.pt", digits["model"], 10, hard10)
    if os.environ.get("MEANET_DATA_DIR"):
        cifar = _base_config("cifar100", tiny=False)
        hard100 = list(range(0, 100, 5))
        state100 = _state(tmp / "cifar100-state.pt", cifar["model"], 100, hard100)
        for purpose in ("train", "evaluate"):
            out[f"cifar100 {purpose}"] = {
                "run_config": cifar, "node_config": {"partition-id": 0, "num-partitions": 3}, "config": {},
                "purpose": purpose, "experience": 1, "state": str(state100), "hard": hard100,
            }  # fmt: skip
    else:
        print("MEANET_DATA_DIR is unset: the cifar100 scenarios are left out", file=sys.stderr)
    for purpose in ("train", "evaluate"):
        out[f"digits {purpose}"] = {
            "run_config": digits, "node_config": {"partition-id": 0, "num-partitions": 2}, "config": {},
            "purpose": purpose, "experience": 0, "state": str(state10), "hard": hard10,
        }  # fmt: skip
    folder = _own_folder(tmp / "edge-0", per_class)
    names = [str(c) for c in range(10)]
    out["own-folder train"] = {
        "run_config": digits, "node_config": {"partition-id": 0, "num-partitions": 2, "data-dir": str(folder)},
        "config": {"class-names": names}, "purpose": "train", "experience": 0, "state": str(state10), "hard": hard10,
    }  # fmt: skip
    return out


def run_child(spec: dict[str, Any], env: dict[str, str]) -> dict[str, float]:
    """One fresh process running a message's start; its stage times in seconds (and ``total``)."""
    spawned = time.time()
    cwd = env["PYTHONPATH"]  # `python -c` puts the working folder first on sys.path: the tree under test
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(spec)], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )
    if out.returncode != 0:
        sys.exit(f"error: the child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    times = json.loads(out.stdout.strip().splitlines()[-1])
    times["interpreter"] = times.pop("started") - spawned
    if not str(times.pop("source")).startswith(cwd):
        sys.exit(f"error: the child imported fl_client.app from outside {cwd}")
    times["total"] = sum(times[s] for s in STAGES)
    return times


def measure(
    specs: dict[str, dict[str, Any]], repeats: int, cache_dir: Path, baseline: Path | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each scenario's first and median stage times on this checkout (and on ``baseline``, a source tree, with a
    cache of its own), the two interleaved run by run."""
    here = Path(__file__).resolve().parents[1]
    trees = {"new": (here, cache_dir)}
    if baseline is not None:
        trees["old"] = (baseline, cache_dir.with_name(f"{cache_dir.name}-baseline"))
    envs = {k: dict(os.environ, MEANET_CACHE_DIR=str(c), PYTHONPATH=str(t)) for k, (t, c) in trees.items()}
    results: dict[str, dict[str, Any]] = {k: {} for k in trees}
    for name, spec in specs.items():
        print(f"{name} ...", flush=True)
        firsts = {k: run_child(spec, env) for k, env in envs.items()}
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in envs}
        for _ in range(repeats):
            for k, env in envs.items():
                runs[k].append(run_child(spec, env))
        for k in envs:
            median = {s: statistics.median(r[s] for r in runs[k]) for s in (*STAGES, "total", "images")}
            results[k][name] = {"first": firsts[k], "median": median, "runs": runs[k]}
    return results["new"], results.get("old", {})


def _row(name: str, t: dict[str, float]) -> str:
    return f"| {name} | " + " | ".join(f"{1000 * t[s]:.0f}" for s in (*STAGES, "total")) + f" | {int(t['images'])} |"


def print_table(results: dict[str, Any]) -> None:
    print("\nper message, ms (median of the repeats; first message: the caches cold)")
    print("| scenario | " + " | ".join(STAGES) + " | total | images |")
    print("|---|" + "---:|" * (len(STAGES) + 2))
    for name, r in results.items():
        print(_row(name, r["median"]))
        print(_row(f"{name} (first)", r["first"]))


def print_compare(old: dict[str, Any], new: dict[str, Any]) -> None:
    print("\nbefore -> after, ms per message (medians); ratio = before / after")
    print("| scenario | imports before | imports after | data before | data after | model before | model after "
          "| total before | total after | ratio |")  # fmt: skip
    print("|---|" + "---:|" * 9)
    for name, r in new.items():
        if name not in old:
            continue
        a, b = old[name]["median"], r["median"]
        imports = [sum(t[s] for s in ("import torch", "import flwr", "import app")) for t in (a, b)]
        cells = [*imports, a["data"], b["data"], a["model"], b["model"], a["total"], b["total"]]
        print(f"| {name} | " + " | ".join(f"{1000 * c:.0f}" for c in cells) + f" | {a['total'] / b['total']:.2f}x |")


def _source_tree(ref: str, into: Path) -> Path:
    """``meanet_core`` and ``fl_client`` as git revision ``ref`` has them, extracted into ``into``."""
    into.mkdir(parents=True)
    repo = Path(__file__).resolve().parents[1]
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", ref, "meanet_core", "fl_client"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        sys.exit(f"error: git archive {ref} failed: {archive.stderr.decode()[-2000:]}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per scenario after the first")
    parser.add_argument("--per-class", type=int, default=30, help="own-folder scenario: PNGs per class")
    parser.add_argument("--only", default="", help="comma-separated scenario name prefixes (default: all)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="MEANET_CACHE_DIR (default: a fresh temp dir)")
    parser.add_argument("--baseline", default=None, help="a git revision to measure beside this checkout")
    parser.add_argument("--json", default="perf_startup.json")
    parser.add_argument("--compare", type=Path, default=None, help="an earlier run's JSON, shown beside this one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        specs = scenarios(Path(tmp), args.per_class)
        wanted = [p.strip() for p in args.only.split(",") if p.strip()]
        specs = {k: v for k, v in specs.items() if not wanted or any(k.startswith(p) for p in wanted)}
        baseline = _source_tree(args.baseline, Path(tmp) / "baseline") if args.baseline else None
        cache = args.cache_dir or Path(tmp) / "cache"
        results, old = measure(specs, args.repeats, cache, baseline)
    out: dict[str, Any] = {"python": sys.version.split()[0], "repeats": args.repeats, "scenarios": results}
    if args.baseline:
        out |= {"baseline_ref": args.baseline, "baseline": old}
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
    print_table(results)
    if args.baseline:
        print(f"\nbaseline: {args.baseline}")
        print_compare(old, results)
    if args.compare is not None:
        print(f"\nearlier run: {args.compare}")
        print_compare(json.loads(args.compare.read_text())["scenarios"], results)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
