"""The personalised baselines and the local bound, on the same backbone, rounds, sampled devices and warm start.

* ``local-only``: each device trains the backbone alone on its training images, from the random init, for as many
  epochs as the federated methods train it (rounds it is sampled in x local epochs, at least one round's worth);
  it never talks to the server (0 bytes, no warm start).
* ``fedper`` (Arivazhagan et al., 2019): the whole backbone trained locally each round; the body is aggregated, the
  head stays on the device.
* ``fedrep`` (Collins et al., 2021): per round, ``head_epochs`` on the head with the body frozen, then
  ``local_epochs`` on the body with the head frozen; the body is aggregated, the head stays on the device.
* ``fedbabu`` (Oh et al., 2022): the body trained federatedly with the head frozen at its random init (its warm start
  trains the body alone too); then each device fine-tunes ``babu_ft`` (the whole backbone, or the head)
  ``ft_epochs`` on its training images.
* ``ditto`` (Li et al., 2021): the global model is the shared FedAvg trajectory; each sampled device also trains its
  own model ``local_epochs`` per round with ``ditto_lambda / 2 * ||v - w||^2`` pulling it towards the global model
  ``w`` it received that round; the device is scored with its own model.

The personal methods' devices download the final body at the end (counted); a device never sampled scores with the
final body and its initial head.
"""

from __future__ import annotations

import time

from benchmarks.personal.common import (
    Context,
    MethodResult,
    backbone_state,
    body_keys,
    load,
    main_block_macs,
    new_model,
    payload_bytes,
    score_personal,
    train_part,
    train_whole,
)
from benchmarks.personal.fedavg import LocalStep, RoundsOutcome, WarmStart, run_rounds, shared_fedavg, warm_start
from meanet_core.models import MEANet


def local_only(ctx: Context) -> MethodResult:
    t0 = time.perf_counter()
    budget, devices = ctx.budget, ctx.scenario.devices
    rounds = ctx.participation()
    init = backbone_state(new_model(ctx))

    def tune(model: MEANet, i: int) -> int:
        stage = budget.stage(max(1, rounds[i]) * budget.local_epochs)
        return train_whole(model, devices[i].train, stage, ctx.seed_of(0, i, 3))

    accs, images = score_personal(ctx, [init] * len(devices), tune)
    return MethodResult(
        method="local-only",
        seed=ctx.seed,
        accuracies=accs,
        bytes_up=0,
        bytes_down=0,
        trained_edge_images=images,
        trained_server_images=0,
        wall_seconds=time.perf_counter() - t0,
        macs_per_inference=main_block_macs(new_model(ctx)),
        extra={"epochs_per_device": [max(1, n) * budget.local_epochs for n in rounds]},
    )


def _body_rounds(ctx: Context, name: str, local_step: LocalStep, head_frozen: bool = False) -> MethodResult:
    """Run the rounds with the body shared and the head personal, score each device's body + head (after
    ``babu``-style fine-tuning for FedBABU)."""
    warm: WarmStart = warm_start(ctx, head_frozen=head_frozen)
    shared = body_keys(new_model(ctx))
    out: RoundsOutcome = run_rounds(ctx, warm.state, shared, local_step, name)
    t0 = time.perf_counter()
    states = [{**out.shared, **own} for own in out.personal]
    tuned = 0
    if name == "fedbabu":
        devices, stage = ctx.scenario.devices, ctx.budget.stage(ctx.cfg.ft_epochs)

        def tune(model: MEANet, i: int) -> int:
            return train_part(model, devices[i].train, stage, ctx.cfg.babu_ft, ctx.seed_of(ctx.cfg.rounds, i, 5))

        accs, tuned = score_personal(ctx, states, tune)
    else:
        accs, _ = score_personal(ctx, states)
    own = time.perf_counter() - t0
    return MethodResult(
        method=name,
        seed=ctx.seed,
        accuracies=accs,
        bytes_up=out.bytes_up,
        bytes_down=out.bytes_down + len(accs) * payload_bytes(out.shared),
        trained_edge_images=out.trained_images + tuned,
        trained_server_images=warm.trained_images,
        wall_seconds=warm.seconds + out.seconds + own,
        macs_per_inference=main_block_macs(new_model(ctx)),
        seconds={"warm_start": warm.seconds, "rounds": out.seconds, "personalisation_and_evaluation": own},
    )


def fedper(ctx: Context) -> MethodResult:
    budget, devices = ctx.budget, ctx.scenario.devices

    def local_step(model: MEANet, r: int, i: int) -> int:
        stage = budget.stage(budget.local_epochs, budget.round_cycle(r))
        return train_whole(model, devices[i].train, stage, ctx.seed_of(r, i))

    return _body_rounds(ctx, "fedper", local_step)


def fedrep(ctx: Context) -> MethodResult:
    budget, devices = ctx.budget, ctx.scenario.devices

    def local_step(model: MEANet, r: int, i: int) -> int:
        cycle = budget.round_cycle(r)
        data = devices[i].train
        head = train_part(model, data, budget.stage(ctx.cfg.head_epochs, cycle), "head", ctx.seed_of(r, i, 1))
        body = train_part(model, data, budget.stage(budget.local_epochs, cycle), "body", ctx.seed_of(r, i))
        return head + body

    return _body_rounds(ctx, "fedrep", local_step)


def fedbabu(ctx: Context) -> MethodResult:
    budget, devices = ctx.budget, ctx.scenario.devices

    def local_step(model: MEANet, r: int, i: int) -> int:
        stage = budget.stage(budget.local_epochs, budget.round_cycle(r))
        return train_part(model, devices[i].train, stage, "body", ctx.seed_of(r, i))

    return _body_rounds(ctx, "fedbabu", local_step, head_frozen=True)


def ditto(ctx: Context) -> MethodResult:
    fa = shared_fedavg(ctx)
    t0 = time.perf_counter()
    budget, devices = ctx.budget, ctx.scenario.devices
    personal = [dict(fa.round_states[0]) for _ in devices]
    model = new_model(ctx)
    images = 0
    for r in range(budget.rounds):
        anchor = fa.round_states[r]
        stage = budget.stage(budget.local_epochs, budget.round_cycle(r))
        for i in ctx.sampled(r):
            load(model, personal[i])
            images += train_part(
                model, devices[i].train, stage, "whole", ctx.seed_of(r, i, 2), anchor=anchor, prox=ctx.cfg.ditto_lambda
            )
            personal[i] = backbone_state(model)
    accs, _ = score_personal(ctx, personal)
    own = time.perf_counter() - t0
    return MethodResult(
        method="ditto",
        seed=ctx.seed,
        accuracies=accs,
        bytes_up=fa.bytes_up,
        bytes_down=fa.bytes_down,
        trained_edge_images=fa.trained_edge_images + images,
        trained_server_images=fa.trained_server_images,
        wall_seconds=fa.seconds + own,
        macs_per_inference=main_block_macs(model),
        seconds={"shared_fedavg": fa.seconds, "personal_and_evaluation": own},
    )
