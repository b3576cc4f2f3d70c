"""Lying clients against every aggregation rule, through the real :class:`~strategies.MEANetStrategy`.

Five edges send updates of a real MEANet's edge blocks (``resnet20_cifar``, 100 classes, 20 hard). An honest update
is the broadcast plus a common learning step ``g`` (norm ratio 0.10, inside the 0.02-0.3 honest edges measure) plus
its own noise (0.06); honest edges train on 400-600 examples. One edge (two for ``collude``) lies:

============ ========================================================================================================
``clean``    nobody lies: client 0 is one more honest edge (the distance is then what an honest edge moves the rule)
``count``    a reversed step of honest size, backed by 1000x its example count (the inflated claim alone)
``direction`` a reversed step as long as the round's norm bound allows (95% of it), with an honest count
``both``     the long reversed step and the 1000x claim together
``collude``  clients 0 and 1 send the same ``both`` update
``drift``    10 rounds; each round the liar adds a step in one fixed direction, 95% of the bound, honest count
============ ========================================================================================================

The attacker knows the defence: its step is sized to the bound that rule's settings put in force. Each cell is the
distance of the aggregate from the mean of the honest updates (weighted by their true counts), in units of the norm of
the edge blocks as sent; for ``drift``, the distance after 10 rounds between the attacked run and the honest-only one.

    python -m benchmarks.robustness [--seeds 3] [--json robustness.json] [--federation]

Prints a table and writes JSON. No Flower engine runs for the distances: the strategy's ``configure_train`` and
``aggregate_train`` are called as Flower calls them, with real ``Message`` replies (as in tests/unit/test_strategy.py).
``--federation`` adds the accuracy after real runs on Flower's simulation engine (scikit-learn's digits, 5 edges,
2 rounds), where the lying edges are made by the ``faults`` run-config key (``flip=K``, ``claim=K``); about a minute
a run, one run per (rule, lie).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from meanet_core.config import FederationConfig
from meanet_core.keys import ARRAYS, EDGE_INFO, EXPERIENCE, MAIN_DIGEST, METRICS, NUM_EXAMPLES, is_edge_key
from meanet_core.trust.broadcast import digest
from strategies import MEANetStrategy

Arrays = dict[str, npt.NDArray[Any]]
LIES = ("clean", "count", "direction", "both", "collude", "drift")
NUM_CLIENTS = 5
HONEST_STEP, HONEST_NOISE, SERVER_NOISE = 0.10, 0.06, 0.08  # norm ratios of g, an edge's noise, the server's noise
CLAIM = 1000.0
DRIFT_ROUNDS = 10


def rule_settings() -> dict[str, dict[str, Any]]:
    """The rows: each rule with the run config's default bounds, the mean as it was before the bounds, and
    ``MEANetStrategy()`` as the library builds it with no argument (for a ServerApp of one's own)."""
    d = FederationConfig()
    bare = MEANetStrategy()
    bounds = {
        "max_norm_ratio": d.max_norm_ratio or None,
        "norm_bound_factor": d.norm_bound_factor or None,
        "claim_factor": d.claim_factor or None,
        "max_claim": d.max_claim or None,
    }
    rows: dict[str, dict[str, Any]] = {
        "mean + ceiling only (before)": {
            "aggregation": "mean",
            "max_norm_ratio": 1.0,
            "norm_bound_factor": None,
            "claim_factor": None,
        },
        "MEANetStrategy() bare": {
            "aggregation": bare.aggregation,
            "max_norm_ratio": bare.max_norm_ratio,
            "norm_bound_factor": bare.norm_bound_factor,
            "claim_factor": bare.claim_factor,
            "max_claim": bare.max_claim,
            "krum_malicious": bare.krum_malicious,
            "trim_fraction": bare.trim_fraction,
        },
    }
    for rule in ("fltrust", "multi-krum", "trimmed-mean", "median", "mean"):
        name = f"{rule} (default)" if rule == d.aggregation else rule
        rows[name] = {"aggregation": rule, **bounds, "krum_malicious": d.krum_malicious, "trim_fraction": 0.2}
    return dict(sorted(rows.items(), key=lambda kv: "(default)" not in kv[0]))


# ----------------------------------------------------------------------------------------- the world
def meanet_state(seed: int = 0) -> Arrays:
    """A real MEANet's state dict as numpy (``resnet20_cifar``, 100 classes, hard classes not at their positions)."""
    import torch

    from meanet_core.models import build_meanet

    torch.manual_seed(seed)
    model = build_meanet(
        "resnet20_cifar", 100, [3, 17, 42, 58, 61, 77, 80, 85, 91, 99, 5, 9, 23, 31, 44, 50, 66, 70, 72, 96]
    )
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _floats(state: Mapping[str, npt.NDArray[Any]]) -> list[str]:
    return [k for k, v in state.items() if is_edge_key(k) and np.issubdtype(v.dtype, np.floating)]


def _norm(state: Mapping[str, npt.NDArray[Any]], keys: list[str]) -> float:
    return float(np.sqrt(sum(float(np.sum(np.square(state[k].astype(np.float64)))) for k in keys)))


@dataclass
class World:
    """The broadcast state and the round's common learning step; builds every kind of update."""

    sent: Arrays
    seed: int = 0
    keys: list[str] = field(init=False)
    step: Arrays = field(init=False)
    scale: float = field(init=False)

    def __post_init__(self) -> None:
        self.keys = _floats(self.sent)
        self.scale = _norm(self.sent, self.keys)
        self.step = self.direction(np.random.default_rng(self.seed), HONEST_STEP)

    def direction(self, rng: np.random.Generator, ratio: float) -> Arrays:
        """A random change of norm ``ratio x ||sent||`` over the floating edge arrays."""
        raw = {k: rng.standard_normal(self.sent[k].shape) for k in self.keys}
        n = _norm(raw, self.keys)
        return {k: v * (ratio * self.scale / n) for k, v in raw.items()}

    def edge(self, base: Arrays, change: Mapping[str, npt.NDArray[Any]]) -> Arrays:
        """``base``'s edge entries plus ``change`` (floats), integer counters advanced as one epoch would."""
        out: Arrays = {}
        for k, v in base.items():
            if not is_edge_key(k):
                continue
            out[k] = (
                (v + change[k]).astype(v.dtype) if k in change else np.asarray(v + 10 if v.dtype.kind == "i" else v)
            )
        return out

    def honest(self, base: Arrays, rng: np.random.Generator) -> Arrays:
        noise = self.direction(rng, HONEST_NOISE)
        return self.edge(base, {k: self.step[k] + noise[k] for k in self.keys})

    def reversed(self, base: Arrays, ratio: float) -> Arrays:
        """The common step reversed, with norm ratio ``ratio``."""
        return self.edge(base, {k: -self.step[k] * (ratio / HONEST_STEP) for k in self.keys})


def weighted_mean(updates: list[tuple[Arrays, float]]) -> Arrays:
    total = sum(w for _, w in updates)
    return {k: np.sum([u[k].astype(np.float64) * w for u, w in updates], axis=0) / total for k in updates[0][0]}


def distance(a: Mapping[str, npt.NDArray[Any]], b: Mapping[str, npt.NDArray[Any]], keys: list[str]) -> float:
    return float(
        np.sqrt(sum(float(np.sum(np.square(a[k].astype(np.float64) - b[k].astype(np.float64)))) for k in keys))
    )


# ----------------------------------------------------------------------------------------- one round, as Flower runs it
@contextmanager
def task_identity() -> Iterator[None]:
    """Flower stamps each instruction with the running task's identity; a ServerApp sets it, this script fakes it."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = 1, 0, 1
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


class _Grid:
    """What ``FedAvg.configure_train`` asks of a Grid: the connected node ids."""

    def get_node_ids(self) -> list[int]:
        return [100 + i for i in range(NUM_CLIENTS)]


def strategy_round(
    strategy: MEANetStrategy, sent: Arrays, updates: list[tuple[Arrays, float]], server_round: int = 1
) -> Arrays:
    """Send ``sent``, answer with ``updates`` (client i from node 100 + i, each reporting the right main digest) and
    return the full state the strategy aggregated (``sent`` unchanged when it kept nothing)."""
    record = ArrayRecord({k: Array(np.asarray(v)) for k, v in sent.items()})
    instructions = strategy.configure_train(server_round, record, ConfigRecord({EXPERIENCE: 0}), _Grid())  # type: ignore[arg-type]
    by_node = {m.metadata.dst_node_id: m for m in instructions}
    main = digest(sent)
    replies = []
    for i, (arrays, count) in enumerate(updates):
        content = RecordDict(
            {
                ARRAYS: ArrayRecord({k: Array(np.array(v, order="C")) for k, v in arrays.items()}),  # 0-d stays 0-d
                METRICS: MetricRecord({NUM_EXAMPLES: float(count)}),
                EDGE_INFO: ConfigRecord({MAIN_DIGEST: main, "client": i}),
            }
        )
        replies.append(Message(content, reply_to=by_node[100 + i]))
    record_out, _ = strategy.aggregate_train(server_round, replies)
    return dict(sent) if record_out is None else {k: v.numpy() for k, v in record_out.items()}


def make_strategy(settings: Mapping[str, Any], world: World, rng: np.random.Generator) -> MEANetStrategy:
    """The strategy of one row; FLTrust's server update is the common step plus the server's own noise."""

    def reference(sent: Arrays) -> Arrays:
        noise = world.direction(rng, SERVER_NOISE)
        return world.edge(sent, {k: world.step[k] + noise[k] for k in world.keys})

    fn: Callable[[Arrays], Arrays] | None = reference if settings["aggregation"] == "fltrust" else None
    return MEANetStrategy(min_available_nodes=NUM_CLIENTS, min_train_nodes=NUM_CLIENTS, reference_fn=fn, **settings)


def attack_ratio(settings: Mapping[str, Any]) -> float:
    """95% of the norm bound the row's settings put in force against honest updates (the attacker knows it)."""
    honest = float(np.hypot(HONEST_STEP, HONEST_NOISE))
    bound = settings.get("max_norm_ratio") or np.inf
    if settings.get("norm_bound_factor"):
        bound = min(bound, settings["norm_bound_factor"] * honest)
    return 0.95 * float(bound)


def scenario(lie: str, settings: Mapping[str, Any], world: World, seed: int) -> float:
    """One cell of the table (see the module docstring)."""
    rng = np.random.default_rng(1000 + seed)
    counts = rng.uniform(400, 600, NUM_CLIENTS).round()
    strategy = make_strategy(settings, world, np.random.default_rng(2000 + seed))
    ratio = attack_ratio(settings)
    if lie == "drift":
        return drift(settings, world, counts, ratio, seed)
    honest = [world.honest(world.sent, rng) for _ in range(NUM_CLIENTS)]
    liars = {"clean": 0, "count": 1, "direction": 1, "both": 1, "collude": 2}[lie]
    lie_update = world.reversed(world.sent, HONEST_STEP if lie == "count" else ratio)
    lie_count = 1.0 if lie == "direction" else CLAIM
    updates = [(lie_update, counts[i] * lie_count) if i < liars else (honest[i], counts[i]) for i in range(NUM_CLIENTS)]
    target = weighted_mean([(honest[i], counts[i]) for i in range(max(liars, 1), NUM_CLIENTS)])
    aggregated = strategy_round(strategy, world.sent, updates)
    return distance(aggregated, target, world.keys) / world.scale


def drift(settings: Mapping[str, Any], world: World, counts: np.ndarray, ratio: float, seed: int) -> float:
    """10 rounds with a liar pushing one fixed direction, against the honest-only mean of the same edges."""
    strategy = make_strategy(settings, world, np.random.default_rng(2000 + seed))
    push = world.direction(np.random.default_rng(3000 + seed), 1.0)  # unit ratio; scaled per round below
    attacked, ideal = dict(world.sent), dict(world.sent)
    for r in range(1, DRIFT_ROUNDS + 1):
        noise_seed = 4000 + 100 * seed + r
        honest = [world.honest(attacked, np.random.default_rng(noise_seed + i)) for i in range(NUM_CLIENTS)]
        scale = ratio * _norm(attacked, world.keys) / world.scale
        liar = world.edge(attacked, {k: push[k] * scale for k in world.keys})
        updates = [(liar, counts[0])] + [(honest[i], counts[i]) for i in range(1, NUM_CLIENTS)]
        attacked = {**attacked, **strategy_round(strategy, attacked, updates, r)}
        ideal_updates = [
            (world.honest(ideal, np.random.default_rng(noise_seed + i)), counts[i]) for i in range(1, NUM_CLIENTS)
        ]
        ideal = {**ideal, **weighted_mean(ideal_updates)}
    return distance(attacked, ideal, world.keys) / world.scale


def honest_move(world: World, seed: int) -> float:
    """How far one honest edge moves the example-weighted mean: ``||mean(5 honest) - mean(4 honest)||``."""
    rng = np.random.default_rng(1000 + seed)
    counts = rng.uniform(400, 600, NUM_CLIENTS).round()
    honest = [(world.honest(world.sent, rng), counts[i]) for i in range(NUM_CLIENTS)]
    return distance(weighted_mean(honest), weighted_mean(honest[1:]), world.keys) / world.scale


def run(seeds: int = 3) -> dict[str, Any]:
    import logging

    logging.getLogger("flwr").setLevel(logging.ERROR)  # the strategy logs every drop; the table says it all
    world = World(meanet_state())
    table: dict[str, dict[str, float]] = {}
    t0 = time.perf_counter()
    with task_identity():
        for row, settings in rule_settings().items():
            table[row] = {
                lie: float(np.mean([scenario(lie, settings, world, s) for s in range(seeds)])) for lie in LIES
            }
    return {
        "table": table,
        "honest_move": float(np.mean([honest_move(world, s) for s in range(seeds)])),
        "settings": {row: {k: v for k, v in s.items()} for row, s in rule_settings().items()},
        "seeds": seeds,
        "clients": NUM_CLIENTS,
        "edge_params": int(sum(world.sent[k].size for k in world.keys)),
        "seconds": time.perf_counter() - t0,
    }


FEDERATION_LIES = {
    "clean": "",
    "count": "0:flip=1+claim=1000",
    "direction": "0:flip=2",
    "both": "0:flip=2+claim=1000",
    "collude": "0:flip=2+claim=1000,1:flip=2+claim=1000",
}
"""The lies of the table as ``faults`` specs (``flip=2``: a reversed step twice as long, inside the round's bound)."""


def federation_accuracy(rules: dict[str, dict[str, Any]], out: str) -> dict[str, dict[str, float]]:
    """Final accuracy of real digits federations, one per (rule, lie), on Flower's simulation engine."""
    import tempfile
    from pathlib import Path

    from fl_server.launch import run_simulation

    base: dict[str, object] = {
        "dataset": "digits", "model": "resnet20_cifar", "cloud-model": "resnet20_cifar", "num-clients": NUM_CLIENTS,
        "experiences": 1, "rounds-per-experience": 2, "cloud-epochs": 3, "local-epochs": 1, "batch-size": 32,
        "limit-train": 600, "cloud-share": 0.5,
    }  # fmt: skip
    table: dict[str, dict[str, float]] = {}
    for row, settings in rules.items():
        keys_ = {"aggregation": settings["aggregation"], "max-norm-ratio": settings.get("max_norm_ratio") or 0.0}
        keys_["norm-bound-factor"] = settings.get("norm_bound_factor") or 0.0
        keys_["claim-factor"] = settings.get("claim_factor") or 0.0
        table[row] = {}
        for lie, faults in FEDERATION_LIES.items():
            with tempfile.TemporaryDirectory() as tmp:
                report = Path(tmp) / "report"
                cfg = {**base, **keys_, "faults": faults, "report-dir": str(report)}
                run = run_simulation(cfg, NUM_CLIENTS, timeout=900, home=Path(tmp) / "flwr")
                if not run.ok:
                    raise RuntimeError(f"{row} / {lie}: {run.status}: {run.details}\n{run.logs[-3000:]}")
                result = json.loads((report / "report.json").read_text())
            table[row][lie] = float(result["experiences"][-1]["evaluation"]["accuracy"])
            print(f"  {row:<28} {lie:<10} accuracy {table[row][lie]:.4f}", flush=True)
            with open(out, "w") as f:  # nothing lost on a crash
                json.dump(table, f, indent=2)
    return table


def print_table(table: Mapping[str, Mapping[str, float]], columns: tuple[str, ...]) -> None:
    """A markdown table: one row per rule, one column per lie."""
    print("| rule | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for row, cells in table.items():
        print(f"| {row} | " + " | ".join(f"{cells[c]:.4f}" if c in cells else "-" for c in columns) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="scenarios averaged per cell")
    parser.add_argument("--json", default="robustness.json", help="where to write the results")
    parser.add_argument("--federation", action="store_true", help="also the accuracy of real digits federations")
    parser.add_argument(
        "--rules", default="", help="rows for --federation, separated by ';', e.g. 'fltrust;multi-krum' (default: all)"
    )
    args = parser.parse_args()
    result = run(args.seeds)
    print(
        f"distance of the aggregate from the honest mean, in units of ||edge blocks|| ({result['clients']} edges, "
        f"{result['edge_params']:,} edge parameters, mean of {args.seeds} seeds); one honest edge moves the "
        f"example-weighted mean by {result['honest_move']:.4f}"
    )
    print_table(result["table"], LIES)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.json} ({result['seconds']:.0f} s)")
    if args.federation:
        wanted = [r.strip() for r in args.rules.split(";") if r.strip()]
        rules = {k: v for k, v in rule_settings().items() if not wanted or k.split(" (")[0] in wanted or k in wanted}
        print("accuracy after a real federation (digits, 5 edges, 2 rounds; chance 0.10):")
        result["federation_accuracy"] = federation_accuracy(rules, args.json + ".federation.json")
        print_table(result["federation_accuracy"], tuple(FEDERATION_LIES))
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
