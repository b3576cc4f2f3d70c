"""Glue between MEANet and Avalanche's training loop: class-space modules, two small plugins, strategy factory.

Avalanche strategies (``Naive``, ``EWC``, ``LwF``, ``Replay``, ``Cumulative``) drive any ``nn.Module`` that maps a
batch to scores over the classes. Two such modules:

* ``EdgeClassSpace``: the trainable edge of a MEANet (adaptive + extension) on top of its *frozen* main block, as
  log-probabilities over all classes: ``log p(c) = log p_main(c)`` for an easy class and
  ``log p_main(hard) + log p_ext(c)`` for a hard one (the main block's mass on the hard classes, shared out by the
  extension). Cross-entropy on a hard-class sample is then the extension's own cross-entropy plus a constant, so
  Avalanche's loss, EWC's importances and LwF's distillation all act on the extension, in class space, even when
  the hard-class set changes between experiences.
* ``MainClassifier``: the main block alone (the backbone's classifier), for the naive and joint baselines.

``TensorAugmentPlugin`` applies the repository's batched random crop + flip to each training mini-batch (uint8
tensors, no per-sample Python); ``OneCyclePlugin`` gives every experience the one-cycle schedule
``meanet_core.training.fit`` uses, so Avalanche-trained methods train like the cloud's stages.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience
from avalanche.benchmarks.scenarios.generic_scenario import EagerCLStream
from avalanche.core import SupervisedPlugin
from avalanche.training import EWC, LwF, Naive, Replay
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised.cumulative import Cumulative
from torch import nn

from benchmarks.continual.scenarios import to_avalanche
from meanet_core.data import ImageTensors
from meanet_core.data.loader import random_crop_flip
from meanet_core.engine import to_unit_float
from meanet_core.models import MEANet

STRATEGIES = ("naive", "ewc", "lwf", "replay", "joint")


class EdgeClassSpace(nn.Module):
    """Adaptive + extension on top of the frozen main block, as log-probabilities over all classes."""

    def __init__(self, meanet: MEANet) -> None:
        super().__init__()
        self.meanet = meanet
        meanet.freeze_main(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_unit_float(x)
        with torch.no_grad():
            main = self.meanet.forward_main(x)
            log_p = main.logits.float().log_softmax(dim=1)  # (B, K)
        hard = self.meanet.hard_classes
        ext = self.meanet.forward_extension(x, main.features).log_softmax(dim=1)  # (B, H)
        mass = log_p[:, hard].logsumexp(dim=1, keepdim=True)  # (B, 1) log p_main(hard)
        out = log_p.clone()
        out[:, hard] = mass + ext  # differentiable w.r.t. the adaptive and extension blocks only
        return out


class MainClassifier(nn.Module):
    """The MEANet main block alone: logits over all classes from uint8 or [0, 1] images."""

    def __init__(self, meanet: MEANet) -> None:
        super().__init__()
        self.meanet = meanet
        meanet.freeze_main(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.meanet.forward_main(to_unit_float(x)).logits


class TensorAugmentPlugin(SupervisedPlugin):
    """Random crop (zero padding 4) and horizontal flip of each training mini-batch, batched and seeded."""

    def __init__(self, seed: int, pad: int = 4) -> None:
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)
        self.pad = pad

    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        batch = list(strategy.mbatch)
        batch[0] = random_crop_flip(batch[0], self.pad, self.generator)
        strategy.mbatch = batch


class OneCyclePlugin(SupervisedPlugin):
    """A fresh one-cycle schedule (peak ``max_lr``, 15% warm-up, cosine) over each experience's training steps."""

    def __init__(self, max_lr: float) -> None:
        super().__init__()
        self.max_lr = max_lr
        self.scheduler: torch.optim.lr_scheduler.OneCycleLR | None = None

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        try:
            steps = len(strategy.dataloader)
        except TypeError:
            steps = -(-len(strategy.adapted_dataset) // strategy.train_mb_size)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            strategy.optimizer,
            max_lr=self.max_lr,
            total_steps=max(1, strategy.train_epochs * steps),
            pct_start=0.15,
            anneal_strategy="cos",
        )

    def after_update(self, strategy: Any, **kwargs: Any) -> None:
        if self.scheduler is not None and self.scheduler.last_epoch < self.scheduler.total_steps:
            self.scheduler.step()


def experience_of(data: ImageTensors, index: int, stream: str) -> DatasetExperience:
    """An Avalanche experience numbered ``index`` over ``data`` (built when the data is known: the edges' hard-class
    samples depend on the hard classes the cloud chose for that experience)."""
    exp = DatasetExperience(dataset=to_avalanche(data), current_experience=index)
    exp.origin_stream = EagerCLStream(stream, [exp], set_stream_info=False)
    return exp


def quiet_evaluator() -> EvaluationPlugin:
    """An evaluator that records nothing and prints nothing (the benchmark evaluates by itself)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return EvaluationPlugin(loggers=[])


def make_strategy(
    kind: str,
    model: nn.Module,
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    seed: int,
    ewc_lambda: float = 100.0,
    lwf_alpha: float = 1.0,
    lwf_temperature: float = 2.0,
    mem_size: int = 200,
    evaluator: EvaluationPlugin | None = None,
) -> Any:
    """The Avalanche strategy ``kind`` (``naive``, ``ewc``, ``lwf``, ``replay``, or ``joint`` = ``Cumulative``)
    over ``model``: SGD with Nesterov momentum and weight decay 5e-4, a one-cycle schedule per experience, batched
    crop + flip augmentation, ``epochs`` epochs per experience."""
    if kind not in STRATEGIES:
        raise ValueError(f"unknown Avalanche strategy {kind!r}; valid: {', '.join(STRATEGIES)}")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    common: dict[str, Any] = dict(
        model=model,
        optimizer=optimizer,
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=batch_size,
        train_epochs=epochs,
        eval_mb_size=256,
        device="cpu",
        plugins=[TensorAugmentPlugin(seed), OneCyclePlugin(lr)],
        evaluator=evaluator or quiet_evaluator(),
    )
    if kind == "naive":
        return Naive(**common)
    if kind == "ewc":
        return EWC(ewc_lambda=ewc_lambda, mode="separate", **common)
    if kind == "lwf":
        return LwF(alpha=lwf_alpha, temperature=lwf_temperature, **common)
    if kind == "replay":
        return Replay(mem_size=mem_size, **common)
    return Cumulative(**common)
