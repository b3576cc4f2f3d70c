"""The settings of one continual benchmark, read once at the boundary (CLI) into a frozen, validated dataclass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from benchmarks.continual.scenarios import parse_scenario
from benchmarks.settings import RunSettings
from meanet_core.config import HARD_CANDIDATES
from meanet_core.data import PARTITION_SCHEMES
from meanet_core.models import CLOUD_ARCHS, MEANET_ARCHS, build_cloud, build_meanet, can_grow
from meanet_core.training.precision import resolve_precision
from meanet_core.training.stages import HARD_METHODS
from meanet_core.wire.broadcast_delta import ENCODINGS as BROADCAST_ENCODINGS
from meanet_core.wire.compression import ENCODINGS as UPLOAD_ENCODINGS

MEANET_FL_METHODS = ("meanet-fl-naive", "meanet-fl-ewc", "meanet-fl-lwf", "meanet-fl-replay")
MEANET_FL_MAIN_METHODS = ("meanet-fl-main-naive", "meanet-fl-main-lwf", "meanet-fl-main-replay")
"""MEANet-FL with ``main_rounds`` main rounds per experience: the edges also train the main block (as ``meanet
federate`` with ``main-rounds``), so their images reach it."""
FEDAVG_METHODS = ("fedavg-naive", "fedavg-lwf", "fedavg-replay")
"""FedAvg of the whole edge model over the same edges and cloud share, with an Avalanche strategy on each edge."""
FEDAVG_CLOUD_LAST_METHODS = ("fedavg-cloud-last-naive", "fedavg-cloud-last-lwf", "fedavg-cloud-last-replay")
"""The same FedAvg, in ``meanet-fl-main-*``'s order: the edges' round first, then the cloud's epochs over every class
it holds (the cloud-first ``fedavg-*`` ends each experience on edges that saw only the new classes)."""
METHODS = (
    "cloud-only",
    "edge-only",
    "meanet-static",
    *MEANET_FL_METHODS,
    *MEANET_FL_MAIN_METHODS,
    *FEDAVG_METHODS,
    *FEDAVG_CLOUD_LAST_METHODS,
    "naive",
    "joint",
)
"""Every method, in the order the report lists them (``joint``, which trains on everything seen, is the upper
bound)."""


CLOUD_INITS = ("scratch", "main", "main-every")
"""How a MEANet-FL method's own cloud model starts: from random weights; grown from the main block at the first
experience, then from its own weights; or grown from the main block at every experience."""


class BenchConfigError(ValueError):
    """A benchmark setting is missing, unknown or out of range; the message names it and the fix."""


@dataclass(frozen=True)
class BenchConfig(RunSettings):
    """Everything that decides a benchmark's numbers (``methods`` and ``seeds`` only decide what runs).

    Every method uses the same backbone (``model``, the MEANet edge model; its main block is the classifier of
    ``edge-only``, ``naive`` and ``joint``), the same cloud model (``cloud_model``), and ``epochs`` passes over its
    training data per experience. ``main_rounds``: the main rounds per experience of the ``meanet-fl-main-*``
    methods (the other methods ignore it). ``cloud_epochs``: the cloud model's epochs per experience (default
    ``epochs``), its advantage in compute over the edge besides its size (``cloud_model``). ``precision``: ``fp32``,
    ``bf16`` (every training and evaluation pass under bfloat16 autocast, ``meanet_core.training.precision``) or
    ``auto``
    (``bf16`` where the CPU computes it natively), resolved when the config is built, so a stored result names the
    precision it ran at.

    The cloud model's schedule of its own: ``cloud_epochs`` (default ``epochs``; every cloud model, the shared
    trajectory's too) and, for the MEANet-FL methods' own cloud model, ``cloud_lr`` (default ``lr``). That own cloud
    model, as ``meanet federate``'s ``cloud-init`` and ``cloud-distill``: ``cloud_init = "main"`` grows it from the
    method's main block at the first experience (``"main-every"``: at every experience)
    (``meanet_core.models.grow``), ``cloud_distill > 0`` has it distil that main block's logits; with either, the
    method trains its own cloud model instead of taking the trajectory's (which cloud-only keeps).
    ``extension_epochs``: the extension's epochs, in the cloud's training of it and in the edges' round (default
    ``epochs``); ``extension_distill``: the cloud's extension training distils the cloud model's hard-class logits
    with that weight. ``offload_labels``: the labelling budget K of the MEANet-FL methods: per experience the edges'
    images of the experience pass the method's main block, the K least confident (the inputs the edges would
    offload) are labelled at the cloud and kept with its data for its own cloud model (and extension); counted in
    the budget and as bytes up.
    """

    error: ClassVar[type[ValueError]] = BenchConfigError

    scenario: str = "split-cifar100"
    experiences: int = 10
    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0,)
    clients: int = 3
    partition: str = "iid"
    alpha: float = 0.5
    epochs: int = 1
    cloud_share: float = 0.3
    target_cloud_fraction: float = 0.2
    model: str = "resnet20_cifar"
    cloud_model: str = "resnet32_cifar"
    batch_size: int = 64
    lr: float = 0.05
    edge_lr: float = 0.01
    hard_fraction: float = 0.2
    hard_method: str = "precision"
    hard_candidates: str = "seen"
    val_fraction: float = 0.1
    limit_train: int | None = None
    limit_test: int | None = None
    ewc_lambda: float = 100.0
    lwf_alpha: float = 1.0
    lwf_temperature: float = 2.0
    replay_mem_size: int = 200
    main_rounds: int = 1
    cloud_epochs: int | None = None
    cloud_lr: float | None = None
    cloud_init: str = "scratch"
    cloud_distill: float = 0.0
    extension_epochs: int | None = None
    extension_distill: float = 0.0
    offload_labels: int = 0
    upload_encoding: str = "int8"
    broadcast_encoding: str = "full"
    precision: str = "auto"
    data_dir: str | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "precision", resolve_precision(self.precision))
        except ValueError as e:
            raise BenchConfigError(str(e)) from e
        try:
            parse_scenario(self.scenario)
        except ValueError as e:
            raise BenchConfigError(str(e)) from e
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise BenchConfigError(f"unknown or no methods {unknown or '[]'}; valid: {', '.join(METHODS)} (or 'all')")
        if len(set(self.methods)) != len(self.methods) or len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            raise BenchConfigError("methods and seeds must be non-empty lists without repeats")
        if self.partition not in PARTITION_SCHEMES:
            raise BenchConfigError(f"unknown partition {self.partition!r}; valid: {', '.join(PARTITION_SCHEMES)}")
        if self.model not in MEANET_ARCHS or self.cloud_model not in CLOUD_ARCHS:
            raise BenchConfigError(
                f"model must be one of {', '.join(MEANET_ARCHS)} and cloud model one of {', '.join(CLOUD_ARCHS)}; "
                f"got {self.model!r} and {self.cloud_model!r}"
            )
        if self.cloud_init not in CLOUD_INITS:
            raise BenchConfigError(f"unknown cloud init {self.cloud_init!r}; valid: {', '.join(CLOUD_INITS)}")
        if self.cloud_init != "scratch":
            problem = can_grow(build_meanet(self.model, 2).main, build_cloud(self.cloud_model, 2))
            if problem:
                raise BenchConfigError(
                    f"cloud init {self.cloud_init!r} cannot grow {self.cloud_model} from {self.model}: {problem}"
                )
        downs = ("full", *BROADCAST_ENCODINGS)
        if self.upload_encoding not in UPLOAD_ENCODINGS or self.broadcast_encoding not in downs:
            raise BenchConfigError(
                f"upload encoding {self.upload_encoding!r} / broadcast encoding {self.broadcast_encoding!r}: expected "
                f"one of {', '.join(UPLOAD_ENCODINGS)} / full, {', '.join(BROADCAST_ENCODINGS)}"
            )
        if self.hard_candidates not in HARD_CANDIDATES:
            raise BenchConfigError(f"unknown hard candidates {self.hard_candidates!r}; valid: seen, new")
        if self.hard_method not in HARD_METHODS:
            raise BenchConfigError(f"unknown hard method {self.hard_method!r}; valid: {', '.join(HARD_METHODS)}")
        checks = {
            "experiences": self.experiences >= 1,
            "clients": self.clients >= 1,
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "alpha": self.alpha > 0,
            "lr": self.lr > 0,
            "edge_lr": self.edge_lr > 0,
            "cloud_share": 0 < self.cloud_share < 1,
            "target_cloud_fraction": 0 <= self.target_cloud_fraction <= 1,
            "hard_fraction": 0 < self.hard_fraction < 1,
            "val_fraction": 0 < self.val_fraction < 1,
            "limit_train": self.limit_train is None or self.limit_train >= 1,
            "limit_test": self.limit_test is None or self.limit_test >= 1,
            "ewc_lambda": self.ewc_lambda >= 0,
            "lwf_alpha": self.lwf_alpha >= 0,
            "lwf_temperature": self.lwf_temperature > 0,
            "replay_mem_size": self.replay_mem_size >= 1,
            "main_rounds": self.main_rounds >= 0,
            "cloud_epochs": self.cloud_epochs is None or self.cloud_epochs >= 1,
            "cloud_lr": self.cloud_lr is None or self.cloud_lr > 0,
            "cloud_distill": self.cloud_distill >= 0,
            "extension_epochs": self.extension_epochs is None or self.extension_epochs >= 1,
            "extension_distill": self.extension_distill >= 0,
            "offload_labels": self.offload_labels >= 0,
        }
        bad = [f"{k}={getattr(self, k)!r}" for k, ok in checks.items() if not ok]
        if bad:
            raise BenchConfigError(
                f"out of range: {', '.join(bad)} (experiences, clients, epochs, cloud epochs, batch size >= 1; "
                "alpha, lr, cloud lr > 0; cloud share, hard and val fractions in (0, 1); target cloud fraction in "
                "[0, 1]; main rounds, distillation weights, offload labels >= 0; extension epochs >= 1)"
            )

    def fingerprint(self, method: str | None = None) -> dict[str, Any]:
        """The settings a stored result of ``method`` depends on: everything but which methods and seeds run, where
        the data folder is, and the settings only other methods read (``METHOD_SETTINGS``). Without ``method``:
        the settings of the shared cloud trajectory (none of the method-only ones). So changing, say,
        ``main_rounds`` reruns only the ``meanet-fl-main-*`` methods of an output folder. Settings added later
        (``LATER_SETTINGS``) are left out at the value every run had before they existed, so those results keep
        their key."""
        skip = {"methods", "seeds", "data_dir"}
        skip |= {k for k, used_by in METHOD_SETTINGS.items() if method is None or not used_by(method)}
        skip |= {k for k, before in LATER_SETTINGS.items() if getattr(self, k) == before}
        return {k: v for k, v in self.as_dict().items() if k not in skip}

    def matches(self, stored: dict[str, Any], method: str | None = None) -> bool:
        """Whether a result (or, without ``method``, a cloud trajectory) stored with fingerprint ``stored`` holds for
        these settings. A stored fingerprint may name settings that later became method-only
        (``METHOD_SETTINGS``): those its ``method`` does not read are left out of the comparison."""
        unread = {k for k, used_by in METHOD_SETTINGS.items() if method is None or not used_by(method)}
        return {k: v for k, v in stored.items() if k not in unread} == self.fingerprint(method)


METHOD_SETTINGS: dict[str, Callable[[str], bool]] = {
    "main_rounds": lambda m: m in MEANET_FL_MAIN_METHODS,
    "edge_lr": lambda m: m in MEANET_FL_METHODS or m in MEANET_FL_MAIN_METHODS,
    "ewc_lambda": lambda m: m.endswith("-ewc"),
    "lwf_alpha": lambda m: m.endswith("-lwf"),
    "lwf_temperature": lambda m: m.endswith("-lwf"),
    "replay_mem_size": lambda m: m.endswith("-replay"),
    "target_cloud_fraction": lambda m: m.startswith("meanet-"),  # MEANet routing; the others never offload
    # the hard classes: only MEANet methods have them (the trajectory chooses them when loaded, not when trained)
    "hard_method": lambda m: m.startswith("meanet-"),
    "hard_fraction": lambda m: m.startswith("meanet-"),
    "hard_candidates": lambda m: m.startswith("meanet-"),
    "cloud_lr": lambda m: m in MEANET_FL_METHODS or m in MEANET_FL_MAIN_METHODS,
    "cloud_init": lambda m: m in MEANET_FL_METHODS or m in MEANET_FL_MAIN_METHODS,
    "cloud_distill": lambda m: m in MEANET_FL_METHODS or m in MEANET_FL_MAIN_METHODS,
    "extension_epochs": lambda m: m in MEANET_FL_METHODS or m in MEANET_FL_MAIN_METHODS,
    "extension_distill": lambda m: m.startswith("meanet-"),
    "offload_labels": lambda m: m in MEANET_FL_METHODS or m in MEANET_FL_MAIN_METHODS,
    "upload_encoding": lambda m: m in MEANET_FL_METHODS or m in MEANET_FL_MAIN_METHODS,
    "broadcast_encoding": lambda m: m in MEANET_FL_METHODS or m in MEANET_FL_MAIN_METHODS,
}
"""Settings that only some methods read, and which (the others' results do not depend on them)."""

LATER_SETTINGS: dict[str, Any] = {
    "precision": "fp32",
    "cloud_epochs": None,
    "cloud_lr": None,
    "cloud_init": "scratch",
    "cloud_distill": 0.0,
    "extension_epochs": None,
    "extension_distill": 0.0,
    "offload_labels": 0,
    "hard_candidates": "seen",
    "upload_encoding": "int8",
    "broadcast_encoding": "full",
}
"""Settings added after results were stored, with the value those runs had (float32; the cloud model trained
``epochs`` epochs)."""


QUICK: dict[str, Any] = {"limit_train": 3000, "limit_test": 60}
"""``--quick``: the same stream, methods and schedule on 6% of the images (a seeded, stratified 3,000 training
images, 60 test images per experience), so training and evaluation keep the full run's proportions (0.22 test image
per training image). Every method (18) ran in 7 min 0 s on 2 idle cores (docs/results.md): a check that everything
runs and a first look, not the published numbers (at 1 epoch on 3,000 images the accuracies sit near chance)."""
