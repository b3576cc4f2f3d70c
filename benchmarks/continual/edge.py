"""Glue between MEANet and Avalanche's training loop: class-space modules, continual-learning plugins that work in
class space, the strategy factory.

Avalanche strategies (``Naive``, ``EWC``, ``LwF``, ``Replay``, ``Cumulative``) drive any ``nn.Module`` that maps a
batch to scores over the classes. Two such modules:

* ``EdgeClassSpace``: the trainable edge of a MEANet (adaptive + extension) on top of its *frozen* main block, as
  log-probabilities over all classes: ``log p(c) = log p_main(c)`` for an easy class and
  ``log p_main(hard) + log p_ext(c)`` for a hard one (the main block's mass on the hard classes, shared out by the
  extension). Its classifier is a **class-space head**: one row per class id (``head.weight[c]``), of which the rows
  of the current hard classes are the MEANet's ``extension.fc`` (row ``hard_index[c]`` there). The MEANet's
  classifier is positional and is rebuilt whenever the hard set changes; the head is not, so every parameter
  Avalanche sees keeps its meaning across experiences. ``load_extension_rows`` / ``store_extension_rows`` copy rows
  between the two by class id (after a broadcast, before an upload).
* ``MainClassifier``: the main block alone (the backbone's classifier), for the naive, joint and FedAvg baselines.

Continual learning in class space, on ``EdgeClassSpace``:

* EWC: Avalanche's ``EWCPlugin`` as it is: its importances and anchors are per parameter, and the parameters are
  the adaptive/extension blocks and the class-space head, so the importance of class ``c``'s row stays on class
  ``c`` when the hard set changes (positionally, row ``j`` of ``extension.fc`` would change class; and its shape
  changes, which Avalanche's ``ParamData.expand`` refuses when the hard set shrinks).
* LwF (``ClassSpaceLwF``): the teacher is the previous model (its own main block and hard set); the distillation runs
  over the classes hard both then and now, where the extension's conditional distribution is what both models
  answer with (the main block's mass cancels in the softmax over those classes), so targets are matched by class id.
* Replay (``HardClassReplayPlugin``): a class-balanced memory keyed by class id (Avalanche's
  ``ClassBalancedBuffer``), replaying only the classes that are hard *now*. A stored sample whose class has become
  easy is **dropped** from replay (kept in memory, in case it becomes hard again): on the edge its loss is
  ``-log p_main(y)`` of the frozen main block, a constant with no gradient for anything the edge trains, so it would
  only dilute the batch; the easy path is the main block's, which the cloud retrains on the data it stores.

``TensorAugmentPlugin`` applies the repository's batched random crop + flip to each training mini-batch (uint8
tensors, no per-sample Python); ``OneCyclePlugin`` gives every experience the one-cycle schedule
``meanet_core.training.stages.fit`` uses, so Avalanche-trained methods train like the cloud's stages;
``TrainedImagesPlugin``
counts the images every strategy's training iterations process (replayed ones included), for the budget columns.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience
from avalanche.benchmarks.scenarios.generic_scenario import EagerCLStream
from avalanche.benchmarks.utils.utils import concat_datasets
from avalanche.core import SupervisedPlugin
from avalanche.training import EWC, LwF, Naive, Replay
from avalanche.training.plugins import EvaluationPlugin, LwFPlugin, ReplayPlugin
from avalanche.training.regularization import LearningWithoutForgetting
from avalanche.training.storage_policy import ClassBalancedBuffer
from avalanche.training.supervised.cumulative import Cumulative
from torch import nn

from benchmarks.continual.scenarios import to_avalanche
from meanet_core.data import ImageTensors
from meanet_core.data.loader import random_crop_flip
from meanet_core.inference.engine import to_unit_float
from meanet_core.models import MEANet
from meanet_core.training.memory import check_step_memory
from meanet_core.training.precision import autocast, check_precision

STRATEGIES = ("naive", "ewc", "lwf", "replay", "joint")


class EdgeClassSpace(nn.Module):
    """Adaptive + extension on top of the frozen main block, as log-probabilities over all classes, with a
    classifier over class ids (see the module docstring).

    Only the trainable parts are registered as submodules (``adaptive``, ``merge``, ``blocks``, ``head``): they are
    what Avalanche optimises, regularises and copies. The MEANet itself (main block, hard-class set, positional
    ``extension.fc``) is held as a plain attribute. ``precision``: the forward pass runs under
    ``meanet_core.training.precision.autocast`` (so do the copies Avalanche makes, LwF's teacher among them); the
    log-probabilities come back float32.
    """

    meanet: MEANet

    def __init__(self, meanet: MEANet, precision: str = "fp32") -> None:
        super().__init__()
        check_precision(precision)
        self.precision = precision
        object.__setattr__(self, "meanet", meanet)  # not a submodule: its main block is frozen, its fc positional
        meanet.freeze_main(True)
        self.adaptive = meanet.adaptive
        self.merge = meanet.extension.merge
        self.blocks = meanet.extension.blocks
        self.head = nn.Linear(meanet.extension.width, meanet.num_classes)  # row c: class id c
        self.load_extension_rows()

    @property
    def hard_classes(self) -> torch.Tensor:
        return self.meanet.hard_classes

    @torch.no_grad()
    def load_extension_rows(self) -> None:
        """Take the MEANet's extension classifier (after a broadcast) into the head: its row ``j`` is class
        ``hard_classes[j]``. The rows of the other classes keep what this edge learned for them."""
        fc, hard = self.meanet.extension.fc, self.meanet.hard_classes
        if len(hard):
            self.head.weight[hard] = fc.weight.detach().to(self.head.weight.dtype)
            self.head.bias[hard] = fc.bias.detach().to(self.head.bias.dtype)

    @torch.no_grad()
    def store_extension_rows(self) -> None:
        """Write the head's rows of the current hard classes into the MEANet's extension classifier (before an
        upload, or inference with the MEANet)."""
        fc, hard = self.meanet.extension.fc, self.meanet.hard_classes
        if len(hard):
            fc.weight.copy_(self.head.weight[hard])
            fc.bias.copy_(self.head.bias[hard])

    def extension_logits(self, x: torch.Tensor, main_features: torch.Tensor) -> torch.Tensor:
        """(B, H) logits over the current hard classes, in ``hard_classes`` order; the MEANet's
        ``forward_extension`` with the head's rows as classifier (``ExtensionBlock.forward``, step by step)."""
        adaptive = self.adaptive(self.meanet.normalize(x))  # (B, Ca, h, w)
        z = torch.cat([main_features.detach(), adaptive], dim=1)  # (B, Cm + Ca, h, w)
        z = self.blocks(self.merge(z))  # (B, width, h, w)
        pooled = torch.flatten(F.adaptive_avg_pool2d(z, 1), 1)  # (B, width)
        hard = self.meanet.hard_classes
        out = F.linear(pooled, self.head.weight[hard], self.head.bias[hard])  # (B, H)
        if self.meanet.residual_extension:  # a correction of the main block's hard-class logits
            out = out + self.meanet.main.forward_head(main_features.detach())[:, hard].detach()
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_unit_float(x)
        with autocast(self.precision, x.device):
            with torch.no_grad():
                main = self.meanet.forward_main(x)
            ext_logits = self.extension_logits(x, main.features)
        log_p = main.logits.float().log_softmax(dim=1)  # (B, K)
        hard = self.meanet.hard_classes
        ext = ext_logits.float().log_softmax(dim=1)  # (B, H)
        mass = log_p[:, hard].logsumexp(dim=1, keepdim=True)  # (B, 1) log p_main(hard)
        out = log_p.clone()
        out[:, hard] = mass + ext  # differentiable w.r.t. the adaptive and extension blocks only
        return out


class MainClassifier(nn.Module):
    """The MEANet main block alone: float32 logits over all classes from uint8 or [0, 1] images, computed at
    ``precision`` (``meanet_core.training.precision``)."""

    def __init__(self, meanet: MEANet, precision: str = "fp32") -> None:
        super().__init__()
        check_precision(precision)
        self.precision = precision
        self.meanet = meanet
        meanet.freeze_main(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_unit_float(x)
        with autocast(self.precision, x.device):
            return self.meanet.forward_main(x).logits.float()


# ------------------------------------------------------------------------------------- class-space CL methods
class ClassSpaceLwF(LearningWithoutForgetting):
    """Learning without Forgetting over class ids, for ``EdgeClassSpace``.

    The teacher (a copy of the model after the previous experience, with its own main block and hard set) and the
    student are compared on the classes hard in both: over those, the softmax of the class-space output is the
    extension's own distribution (the main block's mass is shared by all of them and cancels), which both models
    answer with. Avalanche's LwF would distil over the classes present in the previous data, some of them easy now
    (a main-block score the edge cannot move) and scored by an older main block in the teacher.
    """

    def _lwf_penalty(self, out: torch.Tensor, x: torch.Tensor, curr_model: Any) -> Any:
        if self.prev_model is None:
            return 0
        shared = sorted(set(self.prev_model.hard_classes.tolist()) & set(curr_model.hard_classes.tolist()))
        if len(shared) < 2:  # a distribution over one class carries nothing to distil
            return 0
        with torch.no_grad():
            prev = self.prev_model(x)
        return self._distillation_loss(out, prev, shared)

    def post_adapt(self, agent: Any, exp: Any) -> None:
        self.expcount += 1
        self.prev_model = copy.deepcopy(agent.model)
        self.prev_model.eval()


class ClassSpaceLwFPlugin(LwFPlugin):
    """Avalanche's LwF plugin wiring ``ClassSpaceLwF``."""

    def __init__(self, alpha: float = 1.0, temperature: float = 2.0) -> None:
        super().__init__(alpha, temperature)
        self.lwf = ClassSpaceLwF(alpha, temperature)


class HardClassBuffer(ClassBalancedBuffer):
    """Avalanche's class-balanced reservoir memory (keyed by class id) that exposes, as ``buffer``, only the classes
    in ``active`` (all when ``None``)."""

    def __init__(self, max_size: int) -> None:
        super().__init__(max_size, adaptive_size=True)
        self.active: set[int] | None = None

    @property
    def buffer(self) -> Any:
        groups = [g.buffer for c, g in self.buffer_groups.items() if self.active is None or c in self.active]
        return concat_datasets(groups)

    def stored(self) -> int:
        """Samples held in memory, replayable now or not."""
        return sum(len(g.buffer) for g in self.buffer_groups.values())


class HardClassReplayPlugin(ReplayPlugin):
    """Experience replay for ``EdgeClassSpace``: a class-balanced memory; each experience replays only the stored
    samples whose class is hard now (the others would carry no gradient to the edge blocks: see the module
    docstring)."""

    def __init__(self, mem_size: int = 200) -> None:
        super().__init__(mem_size=mem_size, storage_policy=HardClassBuffer(mem_size))
        self.storage_policy: HardClassBuffer

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self.storage_policy.active = set(strategy.model.hard_classes.tolist())
        super().before_training_exp(strategy, **kwargs)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self.storage_policy.active = None
        super().after_training_exp(strategy, **kwargs)


class TensorAugmentPlugin(SupervisedPlugin):
    """Random crop (zero padding 4) and horizontal flip of each training mini-batch, batched and seeded; the batch
    then goes to the model channels-last (``channels_last``), as ``meanet_core.training.stages.train_main`` feeds it: on
    CPU the convolutions train about 1.3x faster (``benchmarks/perf_training.py --avalanche``)."""

    def __init__(self, seed: int, pad: int = 4, channels_last: bool = True) -> None:
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)
        self.pad = pad
        self.channels_last = channels_last

    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        batch = list(strategy.mbatch)
        x = random_crop_flip(batch[0], self.pad, self.generator)
        batch[0] = x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x
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


class TrainedImagesPlugin(SupervisedPlugin):
    """Counts the images the training iterations process (current and replayed samples, every epoch)."""

    def __init__(self) -> None:
        super().__init__()
        self.images = 0

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        self.images += int(strategy.mb_x.shape[0])


def trained_images(strategy: Any) -> int:
    """Images processed so far by the training iterations of a strategy built by ``make_strategy``."""
    return sum(p.images for p in strategy.plugins if isinstance(p, TrainedImagesPlugin))


def replay_memory(strategy: Any) -> int:
    """Samples a strategy holds in its replay memory (0 without one)."""
    total = 0
    for p in strategy.plugins:
        if isinstance(p, ReplayPlugin):
            policy = p.storage_policy
            total += policy.stored() if isinstance(policy, HardClassBuffer) else len(policy.buffer)
    return total


def check_avalanche_memory(
    model: nn.Module, params: list[nn.Parameter], batch_size: int, input_size: int, *, channels_last: bool
) -> None:
    """A ``MemoryBudgetError`` when an Avalanche step (float32, plain cross-entropy) will not fit in memory."""
    probe = ImageTensors(torch.zeros(4, 3, input_size, input_size, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return nn.functional.cross_entropy(logits, y), logits

    check_step_memory(step, model, params, probe, batch_size, desc="Avalanche", channels_last=channels_last)


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
    channels_last: bool = True,
    input_size: int = 32,
) -> Any:
    """The Avalanche strategy ``kind`` (``naive``, ``ewc``, ``lwf``, ``replay``, or ``joint`` = ``Cumulative``)
    over ``model``: SGD with Nesterov momentum and weight decay 5e-4, a one-cycle schedule per experience, batched
    crop + flip augmentation, ``epochs`` epochs per experience, a count of the images trained on; mini-batches go
    to the model channels-last unless ``channels_last`` is false (the same numbers up to float rounding).

    On an ``EdgeClassSpace``, LwF and Replay are their class-space forms (``ClassSpaceLwFPlugin``,
    ``HardClassReplayPlugin``) and EWC is Avalanche's over the class-space parameters; on any other model (a
    classifier over all classes, already in class space) they are Avalanche's own.

    A step of ``batch_size`` images of ``input_size`` pixels that will not fit in memory stops here, before the
    first batch (``meanet_core.training.memory``).
    """
    if kind not in STRATEGIES:
        raise ValueError(f"unknown Avalanche strategy {kind!r}; valid: {', '.join(STRATEGIES)}")
    params = [p for p in model.parameters() if p.requires_grad]
    check_avalanche_memory(model, params, batch_size, input_size, channels_last=channels_last)
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    plugins: list[Any] = [
        TensorAugmentPlugin(seed, channels_last=channels_last),
        OneCyclePlugin(lr),
        TrainedImagesPlugin(),
    ]
    common: dict[str, Any] = dict(
        model=model,
        optimizer=optimizer,
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=batch_size,
        train_epochs=epochs,
        eval_mb_size=256,
        device="cpu",
        plugins=plugins,
        evaluator=evaluator or quiet_evaluator(),
    )
    class_space = isinstance(model, EdgeClassSpace)
    if kind == "naive":
        return Naive(**common)
    if kind == "ewc":
        return EWC(ewc_lambda=ewc_lambda, mode="separate", **common)
    if kind == "lwf":
        if class_space:
            plugins.append(ClassSpaceLwFPlugin(lwf_alpha, lwf_temperature))
            return Naive(**common)
        return LwF(alpha=lwf_alpha, temperature=lwf_temperature, **common)
    if kind == "replay":
        if class_space:
            plugins.append(HardClassReplayPlugin(mem_size))
            return Naive(**common)
        return Replay(mem_size=mem_size, **common)
    return Cumulative(**common)
