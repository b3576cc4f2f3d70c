"""Federated rounds, the server's warm start, and the FedAvg trajectory every FedAvg-type row shares.

``run_rounds`` is the loop of every federated method: per round ``r``, the sampled devices (``Context.sampled``)
download the shared entries, put them beside their own personal entries, train (the method's ``local_step``), and
upload the shared entries; ``strategies.aggregation.weighted_average`` (weights: the devices' training images) gives
the next shared entries. Downloads and uploads are counted as float32 arrays of the shared entries.

``warm_start``: before round 1 the server trains the initial backbone ``server_epochs`` epochs on its held share
(the whole backbone; FedBABU's body only, its head kept at the random init). Every federated method starts from it;
local-only starts from the random init (it never talks to the server).

``shared_fedavg(ctx)``: FedAvg of the whole backbone over the budget's rounds, computed once per (scenario, budget)
and cached in-process (and under ``ctx.cache_dir`` when set, keyed by the settings it depends on). ``fedavg``
scores its final global model on every device, ``fedavg-ft`` fine-tunes it per device first; the MEANet-FL rows take
its global model as their shared main block.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from benchmarks.personal.common import (
    Budget,
    Context,
    MethodResult,
    State,
    accuracies,
    backbone_state,
    load,
    main_block_macs,
    new_model,
    payload_bytes,
    score_personal,
    train_part,
    train_whole,
)
from benchmarks.personal.scenario import PersonalScenario
from meanet_core.models import MEANet
from meanet_core.training.checkpoint import FORMAT, atomic_save, safe_load
from strategies.aggregation import weighted_average

LocalStep = Callable[[MEANet, int, int], int]
"""``local_step(model, r, i)``: device ``i``'s training in round ``r`` on ``model`` (its state already loaded);
returns the images processed."""

TRAJECTORY_KIND = "personal-fedavg/1"


@dataclass
class RoundsOutcome:
    shared: State  # the shared entries after the last round
    personal: list[State]  # each device's own entries as it last trained them (its start entries if never sampled)
    round_states: list[State]  # the shared entries broadcast at the start of each round
    bytes_up: int
    bytes_down: int
    trained_images: int
    seconds: float


def run_rounds(
    ctx: Context,
    start: State,
    shared_keys: Sequence[str],
    local_step: LocalStep,
    desc: str,
    *,
    keep_round_states: bool = False,
) -> RoundsOutcome:
    """The budget's rounds from backbone state ``start``: ``shared_keys`` aggregated, the other entries personal."""
    t0 = time.perf_counter()
    shared = {k: start[k].clone() for k in shared_keys}
    personal = [{k: v.clone() for k, v in start.items() if k not in shared} for _ in ctx.scenario.devices]
    model = new_model(ctx)
    size = payload_bytes(shared)
    up = down = images = 0
    history: list[State] = []
    bar = tqdm(range(ctx.cfg.rounds), desc=f"seed {ctx.seed} {desc}", disable=not ctx.progress, leave=False)
    for r in bar:
        if keep_round_states:
            history.append({k: v.clone() for k, v in shared.items()})
        updates = []
        for i in ctx.sampled(r):
            device = ctx.scenario.devices[i]
            load(model, {**personal[i], **shared})
            down += size
            images += local_step(model, r, i)
            state = backbone_state(model)
            updates.append(({k: state[k].numpy() for k in shared_keys}, float(len(device.train))))
            personal[i] = {k: v for k, v in state.items() if k not in shared}
            up += size
        merged = weighted_average(updates)
        shared = {k: torch.from_numpy(merged[k]).clone() for k in shared_keys}
    return RoundsOutcome(shared, personal, history, up, down, images, time.perf_counter() - t0)


@dataclass
class WarmStart:
    state: State  # the backbone the federated methods start from
    trained_images: int
    seconds: float


@dataclass
class FedAvgResult:
    """The shared FedAvg trajectory of one (scenario, budget)."""

    global_state: State  # the final global backbone: main.* floating entries of a MEANet
    round_states: list[State]  # the global backbone broadcast at the start of each round (round_states[0]: warm start)
    bytes_up: int  # over the rounds (a final deployment to every device is each method's own)
    bytes_down: int
    trained_edge_images: int
    trained_server_images: int  # the warm start
    seconds: float  # warm start + rounds
    model_bytes: int  # one backbone, float32


_CACHE: dict[tuple[Any, ...], tuple[PersonalScenario, Any]] = {}


def _cached(scenario: PersonalScenario, key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
    """``compute()`` once per ``scenario`` object and ``key`` in this process (the entry keeps the scenario alive, so
    its id is never reused)."""
    full = (id(scenario), *key)
    hit = _CACHE.get(full)
    if hit is None or hit[0] is not scenario:
        _CACHE[full] = hit = (scenario, compute())
    return hit[1]


def clear_cache() -> None:
    """Forget every shared trajectory and warm start of this process."""
    _CACHE.clear()


def warm_start(ctx: Context, *, head_frozen: bool = False) -> WarmStart:
    """The server's ``server_epochs`` on its held share from the seeded random init (``head_frozen``: the body only,
    as FedBABU), cached per (scenario, budget)."""

    def compute() -> WarmStart:
        t0 = time.perf_counter()
        model = new_model(ctx)
        stage = ctx.budget.stage(ctx.cfg.server_epochs)
        seed = ctx.seed * 1_000_003 + 999_983
        server = ctx.scenario.server
        if head_frozen:
            images = train_part(model, server, stage, "body", seed, progress=ctx.progress)
        else:
            images = train_whole(model, server, stage, seed, progress=ctx.progress)
        return WarmStart(backbone_state(model), images, time.perf_counter() - t0)

    return _cached(ctx.scenario, ("warm", ctx.budget, head_frozen), compute)


def trajectory_fingerprint(ctx: Context) -> dict[str, Any]:
    """What the FedAvg trajectory depends on: the fleet's settings, the budget and the seed."""
    return {**ctx.cfg.fingerprint(), **asdict(ctx.budget), "seed": ctx.seed}


def shared_fedavg(ctx: Context) -> FedAvgResult:
    """FedAvg of the whole backbone for ``ctx``'s (scenario, budget): computed once and shared by ``fedavg``,
    ``fedavg-ft`` and the MEANet-FL rows (whose shared main block is its global model)."""
    return _cached(ctx.scenario, ("fedavg", ctx.budget), lambda: _load_or_compute(ctx))


def _load_or_compute(ctx: Context) -> FedAvgResult:
    path = None if ctx.cache_dir is None else ctx.cache_dir / "fedavg.pt"
    fingerprint = trajectory_fingerprint(ctx)
    if path is not None and path.is_file():
        saved = safe_load(path)
        if saved.get("kind") == TRAJECTORY_KIND and saved.get("fingerprint") == fingerprint:
            return FedAvgResult(**saved["result"])
    result = _compute_fedavg(ctx)
    if path is not None:
        payload = {"format": FORMAT, "kind": TRAJECTORY_KIND, "fingerprint": fingerprint, "result": asdict(result)}
        atomic_save(payload, path)
    return result


def _compute_fedavg(ctx: Context) -> FedAvgResult:
    warm = warm_start(ctx)
    budget: Budget = ctx.budget
    devices = ctx.scenario.devices

    def local_step(model: MEANet, r: int, i: int) -> int:
        stage = budget.stage(budget.local_epochs, budget.round_cycle(r))
        return train_whole(model, devices[i].train, stage, ctx.seed_of(r, i))

    keys = list(warm.state)
    out = run_rounds(ctx, warm.state, keys, local_step, "fedavg (shared)", keep_round_states=True)
    return FedAvgResult(
        global_state=out.shared,
        round_states=out.round_states,
        bytes_up=out.bytes_up,
        bytes_down=out.bytes_down,
        trained_edge_images=out.trained_images,
        trained_server_images=warm.trained_images,
        seconds=warm.seconds + out.seconds,
        model_bytes=payload_bytes(warm.state),
    )


# ---------------------------------------------------------------------------------------------------- methods
def fedavg(ctx: Context) -> MethodResult:
    """FedAvg: the global backbone, downloaded by every device at the end and scored on each device's test split."""
    fa = shared_fedavg(ctx)
    t0 = time.perf_counter()
    model = load(new_model(ctx), fa.global_state)
    accs = accuracies(model, [d.test for d in ctx.scenario.devices], ctx.cfg.precision)
    eval_s = time.perf_counter() - t0
    return MethodResult(
        method="fedavg",
        seed=ctx.seed,
        accuracies=accs,
        bytes_up=fa.bytes_up,
        bytes_down=fa.bytes_down + len(accs) * fa.model_bytes,
        trained_edge_images=fa.trained_edge_images,
        trained_server_images=fa.trained_server_images,
        wall_seconds=fa.seconds + eval_s,
        macs_per_inference=main_block_macs(model),
        seconds={"shared_fedavg": fa.seconds, "evaluation": eval_s},
    )


def fedavg_ft(ctx: Context) -> MethodResult:
    """FedAvg, then every device fine-tunes the whole global backbone ``ft_epochs`` on its training images."""
    fa = shared_fedavg(ctx)
    t0 = time.perf_counter()
    devices, stage = ctx.scenario.devices, ctx.budget.stage(ctx.cfg.ft_epochs)

    def tune(model: MEANet, i: int) -> int:
        return train_whole(model, devices[i].train, stage, ctx.seed_of(ctx.cfg.rounds, i, 5))

    accs, tuned = score_personal(ctx, [fa.global_state] * len(devices), tune)
    own = time.perf_counter() - t0
    return MethodResult(
        method="fedavg-ft",
        seed=ctx.seed,
        accuracies=accs,
        bytes_up=fa.bytes_up,
        bytes_down=fa.bytes_down + len(accs) * fa.model_bytes,
        trained_edge_images=fa.trained_edge_images + tuned,
        trained_server_images=fa.trained_server_images,
        wall_seconds=fa.seconds + own,
        macs_per_inference=main_block_macs(new_model(ctx)),
        seconds={"shared_fedavg": fa.seconds, "fine_tuning_and_evaluation": own},
    )
