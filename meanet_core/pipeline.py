"""The full MEANet training pipeline behind ``meanet train``, checkpointed after every epoch and resumable.

Stages, in order: ``main`` (main block), ``hard`` (hard classes chosen on the validation split), ``extension``
(adaptive + extension blocks on hard-class samples, main frozen), ``cloud`` (the cloud model). The run folder holds
``state.pt`` (the resumable state, written atomically after every epoch), and at the end ``meanet.pt``,
``cloud.pt`` and ``train.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from meanet_core.config import TrainConfig
from meanet_core.data import DatasetSplits, load_dataset
from meanet_core.models import (
    MEANET_ARCHS,
    CloudModel,
    MEANet,
    build_cloud,
    build_meanet,
    describe_cloud,
    describe_meanet,
)
from meanet_core.training.checkpoint import FORMAT, atomic_save, cloud_payload, meanet_payload, safe_load
from meanet_core.training.memory import check_step_memory
from meanet_core.training.stages import (
    predict_logits,
    select_hard_classes,
    train_cloud,
    train_extension,
    train_main,
)

STAGES = ("main", "hard", "extension", "cloud", "done")


def load_splits(cfg: TrainConfig) -> DatasetSplits:
    return load_dataset(
        cfg.dataset,
        data_dir=cfg.data_dir,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        image_size=cfg.input_size,
        limit_train=cfg.limit_train,
        bad_images=cfg.bad_images,
    )


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A run's settings as they act: the image size an image folder is read at (None is the model's own size), and
    none for the other datasets (32x32 arrays), so a resume compares what matters."""
    out = dict(config)
    size = out.pop("image_size", None)
    if out.get("dataset") == "imagefolder":
        out["image_size"] = size if size is not None else MEANET_ARCHS[str(out["model"])].input_size
    return out


def check_memory(model: MEANet, cloud: CloudModel, data: DatasetSplits, cfg: TrainConfig) -> None:
    """Stop before anything trains when a step of the main block or of the cloud model (the stages that train a
    whole network; the extension stage trains less) will not fit in memory: a ``MemoryBudgetError`` with the
    estimate, the memory available and the fix."""
    stages = (
        ("main", "main", model, list(model.main.parameters()), lambda x: model.forward_main(x).logits),
        ("cloud", "cloud", cloud, list(cloud.parameters()), cloud),
    )
    for desc, stage, net, params, forward in stages:

        def step(x: torch.Tensor, y: torch.Tensor, forward: Any = forward) -> tuple[torch.Tensor, torch.Tensor]:
            logits = forward(x)
            return F.cross_entropy(logits, y), logits

        sc = cfg.stage(stage)
        check_step_memory(
            step, net, params, data.train, sc.batch_size, precision=sc.precision, momentum=sc.momentum > 0,
            desc=desc, channels_last=cfg.channels_last,
        )  # fmt: skip


def run_training(
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
    splits: DatasetSplits | None = None,
) -> dict[str, Any]:
    """Train a MEANet and its cloud model into ``out_dir``; returns the summary also written to ``train.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "state.pt"
    torch.manual_seed(cfg.seed)
    data = splits or load_splits(cfg)
    skipped = f", {len(data.skipped_images)} unreadable files skipped" if data.skipped_images else ""
    log(
        f"data: {data.name}, {len(data.train)} train / {len(data.val)} val / {len(data.test)} test images, "
        f"{data.num_classes} classes, {data.image_size}x{data.image_size}{skipped}"
    )
    warning = cfg.size_warning()
    if warning:
        log(f"warning: {warning}")
    # The models take the data's size: checkpoints record it, so the run is evaluated and served at that size.
    size = data.image_size
    model = build_meanet(cfg.model, data.num_classes, mean=data.mean, std=data.std, input_size=size)
    cloud = build_cloud(cfg.cloud_model, data.num_classes, mean=data.mean, std=data.std, input_size=size)
    if cfg.channels_last:  # faster convolutions on CPU; fit() converts the inputs to match
        for m in (model, cloud):
            m.to(memory_format=torch.channels_last)

    state: dict[str, Any] = {"format": FORMAT, "config": cfg.as_dict(), "stage": "main", "history": {}}
    if resume and state_path.exists():
        saved = safe_load(state_path)
        # Keys added since the state was written hold their defaults there (e.g. bad_images).
        saved["config"] = {**TrainConfig().as_dict(), **saved["config"]}
        was, now = comparable(saved["config"]), comparable(cfg.as_dict())
        if was != now:
            diff = sorted(k for k in {*was, *now} if was.get(k) != now.get(k))
            raise ValueError(
                f"{state_path} was written with other settings ({', '.join(diff)}); use the same options, "
                "another --out folder, or --no-resume to start over"
            )
        state = saved
        model.set_hard_classes(state.get("hard_classes", []))
        model.load_state_dict(state["meanet"])
        cloud.load_state_dict(state["cloud"])
        log(f"resuming from {state_path}: stage {state['stage']}, after epoch {state.get('epoch', -1) + 1}")

    def save(stage: str, **extra: Any) -> None:
        state.update(stage=stage, meanet=model.state_dict(), cloud=cloud.state_dict(), **extra)
        state["hard_classes"] = [int(c) for c in model.hard_classes.tolist()]
        atomic_save(state, state_path)

    def run_stage(stage: str, trainer: Callable[..., list[dict[str, float]]], net: Any, train_data: Any) -> None:
        resume_from = state.get("progress") if state["stage"] == stage and "progress" in state else None

        def on_epoch_end(epoch: int, progress_state: dict[str, Any]) -> None:
            state["history"][stage] = progress_state["history"]
            save(stage, progress=progress_state, epoch=epoch)

        t0 = time.perf_counter()
        hist = trainer(
            net,
            train_data,
            cfg.stage(stage),
            seed=cfg.seed,
            resume=resume_from,
            on_epoch_end=on_epoch_end,
            progress=progress,
            channels_last=cfg.channels_last,
        )
        state["history"][stage] = hist
        if hist:
            log(
                f"{stage}: {len(hist)} epochs, train accuracy {hist[-1]['train_accuracy']:.3f}, "
                f"{time.perf_counter() - t0:.0f} s this session"
            )
        state.pop("progress", None)
        state.pop("epoch", None)

    if state["stage"] != "done":
        check_memory(model, cloud, data, cfg)
    stage_order = STAGES.index(state["stage"])
    if stage_order <= STAGES.index("main"):
        run_stage("main", train_main, model, data.train)
        save("hard")
    if state["stage"] == "hard":
        model.eval()
        val_logits = predict_logits(lambda x: model.forward_main(x).logits, data.val)
        hard = select_hard_classes(
            val_logits.argmax(1).numpy(),
            data.val.y.numpy(),
            data.num_classes,
            method=cfg.hard_method,
            fraction=cfg.hard_fraction,
            count=cfg.hard_count,
        )
        model.set_hard_classes(hard)
        log(f"hard classes ({cfg.hard_method}, on the validation split): {hard}")
        save("extension")
    if state["stage"] == "extension":
        run_stage("extension", train_extension, model, data.train)
        save("cloud")
    if state["stage"] == "cloud":
        run_stage("cloud", train_cloud, cloud, data.train)
        save("done")

    model.freeze_main(False)
    atomic_save(meanet_payload(model.to(memory_format=torch.contiguous_format)), out / "meanet.pt")
    atomic_save(cloud_payload(cloud.to(memory_format=torch.contiguous_format), data.num_classes), out / "cloud.pt")
    summary = {
        "config": cfg.as_dict(),
        "dataset": {
            "name": data.name,
            "num_classes": data.num_classes,
            "train": len(data.train),
            "val": len(data.val),
            "test": len(data.test),
            "image_size": data.image_size,
            "class_names": list(data.class_names),  # index = class id (meanet export carries them to the edge)
            "skipped_images": [{"path": str(b.path), "reason": b.reason} for b in data.skipped_images],
        },
        "hard_classes": state["hard_classes"],
        "hard_class_names": [data.class_names[c] for c in state["hard_classes"]],
        "blocks": [b.as_dict() for b in describe_meanet(model)] + [describe_cloud(cloud).as_dict()],
        "history": state["history"],
        "checkpoints": {"meanet": "meanet.pt", "cloud": "cloud.pt"},
    }
    (out / "train.json").write_text(json.dumps(summary, indent=2))
    log(f"wrote {out / 'meanet.pt'}, {out / 'cloud.pt'} and {out / 'train.json'}")
    return summary
