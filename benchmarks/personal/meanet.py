"""The MEANet-FL rows of the personalised-FL benchmark.

Every row's main block is the shared FedAvg trajectory's global model (``shared_fedavg``: the same rounds, local
epochs, edges per round and server-held data as FedAvg and FedAvg + fine-tuning). What differs is what a device adds
on top: ``--extension-epochs`` (15) of the extension on its images of its hard classes (``--hard-fraction`` 0.5 of
its classes), at ``--extension-lr`` (0.1): about the training MACs of FedAvg + fine-tuning's 5 whole-model epochs
(the extension's step runs the main block forward only):

* ``meanet-fl-personal``: :func:`meanet_core.inference.personal.personalise`, exactly what a device of a federation
  with ``personal = true`` runs: its class prior on the main exit, its hard classes (those the shared main block
  confuses on its validation images), its adaptive + extension blocks trained on its images of them, its routing
  gate (the extension kept only where it helps on its validation images). Nothing personal travels.
* ``meanet-fl-personal-prior`` (the prior alone) and ``meanet-fl-personal-ext`` (the hard classes and extension
  alone): which of the two pays.
* ``meanet-fl-global``: today's global MEANet: hard classes chosen on the server's images, the extension trained by
  every device from one start on its images of those classes and averaged (one round, weighted by images), one gate
  for the fleet, chosen on the server's images.

Every row answers on the edge (no offload: the baselines have no cloud, so the table compares edge against edge). MACs
per inference count the main block for every input and the adaptive + extension blocks for the inputs routed there.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from benchmarks.personal.common import Context, MethodResult, load, new_model
from benchmarks.personal.fedavg import FedAvgResult, shared_fedavg
from meanet_core.data import ImageTensors
from meanet_core.inference.engine import input_memory_format
from meanet_core.inference.fastpath import optimize_for_inference
from meanet_core.inference.personal import PRIOR_STRENGTHS, edge_route, personal_arrays, personalise
from meanet_core.models import MEANet, describe_meanet
from meanet_core.training.stages import StageConfig, predict_logits, select_hard_classes, train_extension
from strategies.aggregation import weighted_average

EVAL_BATCH = 64


def _outputs(model: MEANet, data: ImageTensors, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(main logits with the model's prior, extension logits) on ``data``, from an inference copy."""
    fast = optimize_for_inference(model)
    k = model.num_classes

    def both(x: torch.Tensor) -> torch.Tensor:
        main = fast.forward_main(x)
        if fast.num_hard == 0:
            return main.logits
        return torch.cat([main.logits, fast.forward_extension(x, main.features)], dim=1)

    out = predict_logits(both, data, EVAL_BATCH, memory_format=input_memory_format(fast), precision=precision)
    return out[:, :k], out[:, k:]


def _extension_stage(ctx: Context) -> StageConfig:
    """The MEANet-FL rows' local training of the extension: ``extension_epochs`` at ``extension_lr``."""
    return replace(ctx.budget.stage(ctx.cfg.extension_epochs), lr=ctx.cfg.extension_lr)


def _block_macs(model: MEANet) -> tuple[int, int]:
    blocks = {b.name: b.macs for b in describe_meanet(model)}
    return blocks["main"], blocks["adaptive"] + blocks["extension"]


def _result(
    ctx: Context, name: str, fa: FedAvgResult, accs: list[float], routed: float, trained: int, extra: dict[str, Any]
) -> MethodResult:
    main_macs, ext_macs = _block_macs(new_model(ctx))
    macs = main_macs + routed * ext_macs
    extra = {**extra, "extension_fraction": routed, "macs_vs_all_blocks": macs / (main_macs + ext_macs)}
    return MethodResult(
        method=name,
        seed=ctx.seed,
        accuracies=accs,
        bytes_up=fa.bytes_up + int(extra.pop("extra_bytes_up", 0)),
        bytes_down=fa.bytes_down + len(accs) * fa.model_bytes + int(extra.pop("extra_bytes_down", 0)),
        trained_edge_images=fa.trained_edge_images + trained,
        trained_server_images=fa.trained_server_images,
        wall_seconds=fa.seconds + float(extra.get("own_seconds", 0.0)),
        macs_per_inference=int(macs),
        seconds={"shared_fedavg": fa.seconds, "own": float(extra.get("own_seconds", 0.0))},
        extra=extra,
    )


def _personal(ctx: Context, name: str, *, prior: bool, extension: bool) -> MethodResult:
    fa = shared_fedavg(ctx)
    t0 = time.perf_counter()
    stage = _extension_stage(ctx)
    accs, devices_info, routed, tested, trained = [], [], 0.0, 0, 0
    for i, device in enumerate(ctx.scenario.devices):
        model = load(new_model(ctx), fa.global_state)  # the shared main block; fresh edge blocks
        outcome = personalise(
            model,
            device.train,
            device.val,
            stage,
            hard_fraction=ctx.cfg.hard_fraction,
            target_cloud_fraction=0.0,  # no offload: edge against edge
            seed=ctx.seed_of(ctx.cfg.rounds, i, 7),
            prior_strengths=PRIOR_STRENGTHS if prior else (0.0,),
            extension=extension,
        )
        trained += outcome.trained * stage.epochs
        main, ext = _outputs(model, device.test, ctx.cfg.precision)
        pred, to_ext = edge_route(model, main, ext, outcome.policy.use_extension)
        y = device.test.y
        accs.append(float((pred == y).float().mean()))
        routed += float(to_ext.float().sum())
        tested += len(y)
        on_hard = model.is_hard(y) if model.num_hard else torch.zeros_like(y, dtype=torch.bool)
        with_ext, _ = edge_route(model, main, ext, True)
        devices_info.append(
            {
                "device": i,
                "classes": len(device.classes),
                "hard_classes": outcome.hard_classes,
                "prior_strength": outcome.prior_strength,
                "extension_kept": bool(outcome.policy.use_extension and model.num_hard),
                "hard_test_images": int(on_hard.sum()),
                "hard_main": float((main.argmax(1) == y)[on_hard].float().mean()) if on_hard.any() else None,
                "hard_extension": float((with_ext == y)[on_hard].float().mean()) if on_hard.any() else None,
                "main_shared": None,  # filled below
                "personal_bytes": int(sum(a.nbytes for a in personal_arrays(model).values())),
            }
        )
    shared = load(new_model(ctx), fa.global_state)
    for info, device in zip(devices_info, ctx.scenario.devices, strict=True):
        main, _ = _outputs(shared, device.test, ctx.cfg.precision)
        right = main.argmax(1) == device.test.y
        info["main_shared"] = float(right.float().mean())
        on_hard = torch.isin(device.test.y, torch.tensor(info["hard_classes"], dtype=torch.int64))
        info["hard_main_shared"] = float(right[on_hard].float().mean()) if on_hard.any() else None
    extra = {"per_device": devices_info, "own_seconds": time.perf_counter() - t0}
    return _result(ctx, name, fa, accs, routed / max(tested, 1), trained, extra)


def personal(ctx: Context) -> MethodResult:
    """Shared main block + per-device prior, hard classes, extension and gate (``personal = true``)."""
    return _personal(ctx, "meanet-fl-personal", prior=True, extension=True)


def personal_prior(ctx: Context) -> MethodResult:
    """The ablation: the per-device class prior alone (no extension)."""
    return _personal(ctx, "meanet-fl-personal-prior", prior=True, extension=False)


def personal_extension(ctx: Context) -> MethodResult:
    """The ablation: per-device hard classes and extension alone (no prior)."""
    return _personal(ctx, "meanet-fl-personal-ext", prior=False, extension=True)


def global_meanet(ctx: Context) -> MethodResult:
    """Today's global MEANet: server-chosen hard classes, one averaged extension, one gate for the fleet."""
    fa = shared_fedavg(ctx)
    t0 = time.perf_counter()
    server = ctx.scenario.server
    model = load(new_model(ctx), fa.global_state)
    main_server, _ = _outputs(model, server, ctx.cfg.precision)
    hard = select_hard_classes(
        main_server.argmax(1).numpy(), server.y.numpy(), model.num_classes, method="cluster",
        fraction=ctx.cfg.hard_fraction, candidates=np.unique(server.y.numpy()).tolist(),
    )  # fmt: skip
    model.set_hard_classes(hard)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    stage, updates, trained = _extension_stage(ctx), [], 0
    for i, device in enumerate(ctx.scenario.devices):
        n = int(model.is_hard(device.train.y).sum())
        if not n:
            continue
        model.load_state_dict(start)
        train_extension(model, device.train, stage, seed=ctx.seed_of(ctx.cfg.rounds, i, 8), progress=False,
                        channels_last=True)  # fmt: skip
        trained += n * stage.epochs
        own = {k: v for k, v in personal_arrays(model).items() if k.startswith(("adaptive.", "extension."))}
        updates.append((own, float(n)))
    model.load_state_dict(start)
    edge_bytes = 0
    if updates:
        avg = weighted_average(updates)
        edge_bytes = int(sum(np.asarray(v).nbytes for v in avg.values()))
        model.load_state_dict({**model.state_dict(), **{k: torch.from_numpy(np.array(v)) for k, v in avg.items()}})
    main_s, ext_s = _outputs(model, server, ctx.cfg.precision)  # the fleet's gate, on the server's images
    use_ext = float((edge_route(model, main_s, ext_s, True)[0] == server.y).float().mean()) > float(
        (main_s.argmax(1) == server.y).float().mean()
    )
    accs, routed, tested = [], 0.0, 0
    for device in ctx.scenario.devices:
        main, ext = _outputs(model, device.test, ctx.cfg.precision)
        pred, to_ext = edge_route(model, main, ext, use_ext)
        accs.append(float((pred == device.test.y).float().mean()))
        routed, tested = routed + float(to_ext.float().sum()), tested + len(pred)
    extra = {
        "hard_classes": hard,
        "extension_kept": use_ext,
        "extra_bytes_up": edge_bytes * len(updates),
        "extra_bytes_down": edge_bytes * 2 * len(ctx.scenario.devices),  # the start, and the average
        "own_seconds": time.perf_counter() - t0,
    }
    return _result(ctx, "meanet-fl-global", fa, accs, routed / max(tested, 1), trained, extra)
