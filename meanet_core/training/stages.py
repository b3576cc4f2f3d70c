"""Complexity-aware training stages: main block, cloud model, hard-class split, adaptive + extension blocks."""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from meanet_core.data import ImageTensors, TensorBatches
from meanet_core.models import Backbone, CloudModel, MEANet
from meanet_core.training.memory import check_step_memory
from meanet_core.training.precision import autocast, check_precision

HARD_METHODS = ("precision", "confusion", "cluster")


@dataclass(frozen=True)
class StageConfig:
    """Optimiser and schedule of one training stage (SGD with Nesterov momentum and a one-cycle schedule)."""

    epochs: int = 10
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    label_smoothing: float = 0.0
    augment: bool = True
    cycle: tuple[float, float] = (0.0, 1.0)
    """The part of one one-cycle schedule this stage runs: ``(0, 1)`` the whole cycle; federated rounds pass
    ``(r / R, (r + 1) / R)`` so that R rounds of local training follow one schedule, warm-up once and annealing once,
    instead of R short cycles (each of which anneals to nearly zero)."""
    precision: str = "fp32"
    """``fp32``, or ``bf16``: forward passes and losses under bfloat16 autocast (``meanet_core.training.precision``; the
    weights and the optimiser stay float32)."""

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ValueError(f"epochs must be an integer >= 0; got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1; got {self.batch_size!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0; got {self.lr!r}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1 or not 0 <= self.label_smoothing < 1:
            raise ValueError("weight_decay must be >= 0, momentum and label_smoothing in [0, 1)")
        a, b = self.cycle
        if not 0 <= a < b <= 1:
            raise ValueError(f"cycle must be (start, end) with 0 <= start < end <= 1; got {self.cycle!r}")


EpochHook = Callable[[int, dict[str, Any]], None]


def fit(
    loss_and_logits: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    module: nn.Module,
    params: Sequence[nn.Parameter],
    data: ImageTensors,
    cfg: StageConfig,
    *,
    desc: str,
    seed: int = 0,
    resume: dict[str, Any] | None = None,
    on_epoch_end: EpochHook | None = None,
    progress: bool = True,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
) -> list[dict[str, float]]:
    """Train ``params`` for ``cfg.epochs`` epochs; returns one record per epoch (loss, accuracy, seconds).

    ``loss_and_logits(x, y)`` returns the loss and the logits the accuracy is read from. ``resume`` is a dict saved
    by ``on_epoch_end`` (keys ``epoch``, ``optimizer``, ``scheduler``, ``history``): training restarts after that
    epoch with the same optimiser state. ``on_epoch_end(epoch, state)`` is called after every epoch with that dict.
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError(f"{desc}: nothing to train (no parameter requires a gradient)")
    if len(data) == 0:
        raise ValueError(f"{desc}: the training data is empty")

    def epoch_batches(
        epoch: int,
    ) -> TensorBatches:  # seeded per epoch, so a resumed run shuffles the same way
        return TensorBatches(data, cfg.batch_size, shuffle=True, augment=cfg.augment, seed=seed * 100_003 + epoch)

    batches = epoch_batches(0)
    check_step_memory(
        loss_and_logits, module, params, data, cfg.batch_size, precision=cfg.precision, momentum=cfg.momentum > 0,
        desc=desc, device=device, channels_last=channels_last,
    )  # fmt: skip
    optimizer = torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0
    )
    steps = max(cfg.epochs * len(batches), 1)
    a, b = cfg.cycle  # this stage runs the part [a, b) of a cycle of ``total_steps``
    total_steps = max(math.ceil(steps / (b - a)), steps)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=total_steps, pct_start=0.15, anneal_strategy="cos"
    )
    with warnings.catch_warnings():  # stepping the schedule before the optimiser: the part before ``a``
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(min(round(a * total_steps), total_steps - steps)):
            scheduler.step()
    history: list[dict[str, float]] = []
    start = 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        history = list(resume["history"])
        start = int(resume["epoch"]) + 1
    for epoch in range(start, cfg.epochs):
        module.train()
        t0 = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(epoch_batches(epoch), desc=f"{desc} {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(cfg.precision, device):
                loss, logits = loss_and_logits(x, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: the loss became {loss.item()} at epoch {epoch + 1}; lower lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        record = {
            "epoch": epoch + 1,
            "loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "seconds": time.perf_counter() - t0,
            "images_per_second": seen / (time.perf_counter() - t0),
        }
        history.append(record)
        if on_epoch_end is not None:
            on_epoch_end(
                epoch,
                {
                    "epoch": epoch,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "history": history,
                },
            )
    return history


def distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Hinton et al.'s distillation loss: ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, batch mean.
    Both (B, K) over the same K classes, column for column."""
    soft = F.log_softmax(student / temperature, dim=1)
    target = F.log_softmax(teacher.float() / temperature, dim=1)
    return temperature**2 * F.kl_div(soft, target, log_target=True, reduction="batchmean")


def train_main(
    model: MEANet,
    data: ImageTensors,
    cfg: StageConfig,
    *,
    distill_classes: Sequence[int] = (),
    distill_weight: float = 0.0,
    temperature: float = 2.0,
    label_classes: Sequence[int] = (),
    **kw: Any,
) -> list[dict[str, float]]:
    """Stage 1: the main block as a classifier over all classes.

    With ``distill_classes`` and ``distill_weight > 0`` (Learning without Forgetting, in class space): the block as it
    was before this call is the teacher, and ``distill_weight * T^2 * KL(teacher || student)`` over the logits of
    those class ids (softened by ``temperature`` T) is added to the loss, so data of new classes does not erase the
    old ones (an edge in a main round holds only the current experience's images).

    With ``label_classes`` (the class ids ``data`` holds), the cross-entropy is over those logits only (a separated
    softmax): training on new classes alone then does not push the other classes' logits down. Plain cross-entropy
    does, until no input is answered with an old class: 0.00 on the old classes after two main rounds of the main
    job's second experience, distillation notwithstanding, which keeps only the old classes' order among themselves."""
    model.freeze_main(False)
    old = torch.as_tensor(sorted({int(c) for c in distill_classes}), dtype=torch.long)
    if len(old) and (old.min() < 0 or old.max() >= model.num_classes):
        raise ValueError(f"distill_classes must lie in 0..{model.num_classes - 1}; got {old.tolist()}")
    if distill_weight < 0:
        raise ValueError(f"distill_weight must be >= 0; got {distill_weight}")
    teacher: Backbone | None = None
    if len(old) and distill_weight > 0:
        teacher = copy.deepcopy(model.main).eval().requires_grad_(False)
        if kw.get("channels_last"):
            teacher = teacher.to(memory_format=torch.channels_last)

    labelled = torch.as_tensor(sorted({int(c) for c in label_classes}), dtype=torch.long)
    if len(labelled) and (labelled.min() < 0 or labelled.max() >= model.num_classes):
        raise ValueError(f"label_classes must lie in 0..{model.num_classes - 1}; got {labelled.tolist()}")
    position = torch.full((model.num_classes,), -1, dtype=torch.long)
    position[labelled] = torch.arange(len(labelled))

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model.forward_main(x).logits
        if len(labelled):
            pos = position.to(y.device)[y]
            if bool((pos < 0).any()):
                raise ValueError(f"a label outside label_classes {labelled.tolist()}: {sorted(set(y.tolist()))}")
            loss = F.cross_entropy(logits[:, labelled.to(y.device)], pos, label_smoothing=cfg.label_smoothing)
        else:
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        if teacher is not None:
            with torch.no_grad():
                target = teacher.forward_head(teacher.forward_features(model.normalize(x)))[:, old]  # (B, |old|)
            loss = loss + distill_weight * distillation(logits[:, old], target, temperature)
        return loss, logits

    return fit(step, model, list(model.main.parameters()), data, cfg, desc="main", **kw)


def train_cloud(
    model: CloudModel,
    data: ImageTensors,
    cfg: StageConfig,
    *,
    teacher: MEANet | None = None,
    distill_weight: float = 0.0,
    temperature: float = 2.0,
    **kw: Any,
) -> list[dict[str, float]]:
    """The cloud classifier over all classes.

    With a ``teacher`` MEANet and ``distill_weight > 0``, its main block's logits are distillation targets beside the
    labels (``distill_weight * distillation(...)`` over every class, :func:`distillation`): the main block is what the
    edges trained on their own images (main rounds), so the cloud model learns what they learned without seeing
    them (ensemble distillation, FedDF, Lin et al. 2020, with the aggregated block as the teacher)."""
    if distill_weight < 0:
        raise ValueError(f"distill_weight must be >= 0; got {distill_weight}")
    frozen: MEANet | None = None
    if teacher is not None and distill_weight > 0:
        frozen = copy.deepcopy(teacher).eval().requires_grad_(False)
        if kw.get("channels_last"):
            frozen = frozen.to(memory_format=torch.channels_last)

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        if frozen is not None:
            with torch.no_grad():
                target = frozen.forward_main(x).logits
            loss = loss + distill_weight * distillation(logits, target, temperature)
        return loss, logits

    return fit(step, model, list(model.parameters()), data, cfg, desc="cloud", **kw)


def hard_subset(model: MEANet, data: ImageTensors) -> ImageTensors:
    """The samples of ``data`` whose label is a hard class (labels kept as original class ids)."""
    if model.num_hard == 0:
        raise ValueError("the model has no hard classes: run select_hard_classes and set_hard_classes first")
    mask = model.is_hard(data.y.to(model.hard_index.device)).cpu()
    return data.subset(mask.nonzero().flatten())


def train_extension(
    model: MEANet,
    data: ImageTensors,
    cfg: StageConfig,
    *,
    teacher: CloudModel | None = None,
    distill_weight: float = 0.0,
    temperature: float = 2.0,
    **kw: Any,
) -> list[dict[str, float]]:
    """Stage 3: adaptive + extension on hard-class samples; the main block frozen (weights and BN statistics).

    With a ``teacher`` (the cloud model) and ``distill_weight > 0``, the teacher's logits of the hard classes are
    distillation targets beside the labels (:func:`distillation`, by class id: column ``j`` is ``hard_classes[j]``
    for both), so the extension learns the bigger model's view of the classes the main block gets wrong."""
    model.freeze_main(True)
    hard = hard_subset(model, data)
    if distill_weight < 0:
        raise ValueError(f"distill_weight must be >= 0; got {distill_weight}")
    frozen: CloudModel | None = None
    if teacher is not None and distill_weight > 0:
        frozen = copy.deepcopy(teacher).eval().requires_grad_(False)
        if kw.get("channels_last"):
            frozen = frozen.to(memory_format=torch.channels_last)

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            features = model.forward_main(x).features
        target = model.hard_index[y]  # original ids -> 0..H-1
        logits = model.forward_extension(x, features)
        loss = F.cross_entropy(logits, target, label_smoothing=cfg.label_smoothing)
        if frozen is not None:
            with torch.no_grad():
                soft = frozen(x)[:, model.hard_classes]  # (B, H): the teacher's logits of the hard classes, by id
            loss = loss + distill_weight * distillation(logits, soft, temperature)
        return loss, logits_in_class_space(model, logits, y)

    return fit(step, model, model.edge_parameters(), hard, cfg, desc="extension", **kw)


def logits_in_class_space(model: MEANet, ext_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Extension logits scattered into the full class space (easy classes at -inf), for accuracy bookkeeping."""
    full = torch.full((len(y), model.num_classes), float("-inf"), device=ext_logits.device)
    full[:, model.hard_classes] = ext_logits.detach().float()
    return full


# ------------------------------------------------------------------------------------------- hard classes
def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts[c_true, c_pred]."""
    return np.bincount(target * num_classes + pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def select_hard_classes(
    pred: np.ndarray,
    target: np.ndarray,
    num_classes: int,
    *,
    method: str = "precision",
    fraction: float | None = 0.2,
    count: int | None = None,
    candidates: Sequence[int] | None = None,
) -> list[int]:
    """Choose the hard classes from the main block's predictions on a *validation* split.

    ``precision`` (the paper): the classes with the lowest per-class precision. A class the main block never
    predicts comes last: routing goes by the main block's top-1, so a hard class it never predicts would send
    nothing to the extension (weak main blocks leave many such classes; ranking them first left the extension idle).
    ``confusion``: the classes with the most confusion mass, (false negatives + false positives) / support.
    ``cluster``: the classes the main block confuses *with each other*: the most confused pair first, then, one at a
    time, the class with the most validation errors to and from the chosen ones. The extension answers among the
    hard classes the inputs whose top-1 is hard, so it can correct only the errors that stay inside the set: this
    choice maximises them (on the main job's first experience 58% of the inputs routed to the extension truly were
    of a hard class, against 43% with ``precision``). Give ``count`` or ``fraction`` of the candidate classes
    (``candidates``, default all ``num_classes``; in a class-incremental stream, the classes seen so far). Ties go
    to the lower class id.
    """
    if method not in HARD_METHODS:
        raise ValueError(f"unknown hard-class method {method!r}; valid: {', '.join(HARD_METHODS)}")
    pred, target = np.asarray(pred, dtype=np.int64), np.asarray(target, dtype=np.int64)
    if pred.shape != target.shape or pred.ndim != 1 or len(pred) == 0:
        raise ValueError(f"pred and target must be equal-length non-empty 1-D arrays; got {pred.shape}, {target.shape}")
    pool = np.arange(num_classes) if candidates is None else np.unique(np.asarray(candidates, dtype=np.int64))
    if pool.size < 2 or pool.min() < 0 or pool.max() >= num_classes:
        raise ValueError(f"candidates must hold at least 2 class ids in 0..{num_classes - 1}; got {pool.tolist()}")
    if count is None:
        if fraction is None or not 0.0 < fraction < 1.0:
            raise ValueError(f"hard fraction must lie in (0, 1); got {fraction!r}")
        count = max(1, round(fraction * len(pool)))
    if not 1 <= count < len(pool):
        raise ValueError(f"the number of hard classes must lie in 1..{len(pool) - 1}; got {count}")
    cm = confusion_matrix(pred, target, num_classes).astype(np.float64)
    tp = np.diag(cm)
    if method == "precision":
        predicted = cm.sum(axis=0)
        score = np.divide(tp, predicted, out=np.full_like(tp, np.inf), where=predicted > 0)
        order = pool[np.argsort(score[pool], kind="stable")]  # lowest precision first
    elif method == "cluster":
        return _confusion_cluster(cm, pool, count)
    else:
        support = cm.sum(axis=1)
        errors = (cm.sum(axis=1) - tp) + (cm.sum(axis=0) - tp)
        score = np.divide(errors, support, out=np.full_like(tp, np.inf), where=support > 0)
        order = pool[np.argsort(-score[pool], kind="stable")]  # most confused first
    return sorted(int(c) for c in order[:count])


def _confusion_cluster(cm: np.ndarray, pool: np.ndarray, count: int) -> list[int]:
    """``count`` classes of ``pool`` grown greedily from the most confused pair, each step adding the class with the
    most errors to and from those already chosen (confusion matrix ``cm[true, pred]``; ties to the class with more
    errors overall, then to the lower id)."""
    sub = cm[np.ix_(pool, pool)].copy()
    np.fill_diagonal(sub, 0.0)
    mutual = sub + sub.T  # errors either way between two classes
    first = int(np.argmax(mutual))  # row-major: ties go to the lower ids
    chosen = [first // len(pool), first % len(pool)] if mutual.max() > 0 else [0, 1]
    overall = mutual.sum(axis=1) / (2.0 * mutual.sum(axis=1).max() + 1.0)  # < 0.5: only breaks ties
    while len(chosen) < count:
        score = mutual[:, chosen].sum(axis=1) + overall
        score[chosen] = -1.0
        chosen.append(int(np.argmax(score)))
    return sorted(int(pool[i]) for i in chosen[:count])


@torch.inference_mode()
def predict_logits(
    fn: Callable[[torch.Tensor], torch.Tensor],
    data: ImageTensors,
    batch_size: int = 256,
    device: str = "cpu",
    *,
    memory_format: torch.memory_format = torch.contiguous_format,
    precision: str = "fp32",
) -> torch.Tensor:
    """``fn(x)`` over ``data`` in order (no augmentation, inference mode), as one float32 (N, K) tensor; ``fn`` runs
    at ``precision`` (``meanet_core.training.precision``: ``bf16`` is bfloat16 autocast, about 2x faster on a CPU that
    has it).

    ``x`` is float in [0, 1], in ``memory_format``: pass ``torch.channels_last`` when ``fn`` runs a model whose
    weights are channels-last (a copy from ``meanet_core.inference.fastpath.optimize_for_inference``, BatchNorm folded
    in):
    on CPU that is about twice as fast as the training model in eval mode, with the same logits up to float rounding.
    """
    n = len(data)
    out: torch.Tensor | None = None
    for start in range(0, n, batch_size):
        x = data.x[start : start + batch_size].to(device)
        if memory_format != torch.contiguous_format:
            x = x.contiguous(memory_format=memory_format)  # the 1-byte copy, before the conversion to float
        with autocast(precision, device):
            logits = fn(x.float().div_(255.0) if x.dtype == torch.uint8 else x).float().cpu()
        if out is None:
            out = torch.empty(n, *logits.shape[1:])
        out[start : start + len(logits)] = logits
    return out if out is not None else torch.empty(0)


def stage_config_dict(cfg: StageConfig) -> dict[str, Any]:
    return asdict(cfg)
