"""The settings of one personalised-FL benchmark, read once at the boundary (CLI) into a frozen, validated dataclass."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from benchmarks.settings import RunSettings
from meanet_core.models import MEANET_ARCHS
from meanet_core.training.precision import resolve_precision

PARTITIONS = ("dirichlet", "classes")
"""``dirichlet``: each class split over the devices in Dir(beta) proportions; ``classes``: ``classes_per_edge``
classes per device, each class's images dealt evenly over the devices that hold it."""
DATASETS = ("cifar100", "cifar100-mini")
FT_PARTS = ("head", "whole")


class PersonalConfigError(ValueError):
    """A benchmark setting is missing, unknown or out of range; the message names it and the fix."""


@dataclass(frozen=True)
class PersonalConfig(RunSettings):
    """Everything that decides the benchmark's numbers (``methods``, ``seeds`` and ``data_dir`` only decide what runs
    and where the data lies).

    The fleet: ``edges`` devices; ``limit_train`` training images (a seeded, stratified subset; None: all 50,000);
    ``cloud_share`` of them (IID, stratified) held by the server; the rest split over the devices by ``partition``
    (``dirichlet`` with ``beta``, or ``classes`` with ``classes_per_edge``); each device carves ``val_fraction`` of its
    images into a validation split (stratified where its classes allow) and is tested on ``test_per_edge`` test
    images drawn in its own class proportions.

    The budget every method shares: ``server_epochs`` of warm start on the server-held share (once, before round 1),
    ``rounds`` rounds of ``edges_per_round`` sampled devices (the same seeded sample for every method), each trained
    ``local_epochs`` per round at ``lr`` (SGD, one one-cycle schedule over the rounds) with ``batch_size``;
    ``ft_epochs`` of local fine-tuning for the ``-ft`` methods and FedBABU (``babu_ft``: ``whole`` or ``head``);
    ``head_epochs`` of head training per round for FedRep; ``ditto_lambda``: Ditto's pull towards the global model;
    ``hard_fraction``: the MEANet-FL rows' share of a device's classes (of the server's, for the global row) that are
    hard (at least 2); they train their extension ``extension_epochs`` at ``extension_lr`` on those classes' images
    (15 epochs on half the classes cost about the training MACs of FedAvg + fine-tuning's 5 whole-model epochs).
    ``precision``: ``fp32``, ``bf16`` or ``auto`` (resolved when the config is built, so results name it).
    """

    error: ClassVar[type[ValueError]] = PersonalConfigError

    dataset: str = "cifar100"
    edges: int = 20
    partition: str = "dirichlet"
    beta: float = 0.5
    classes_per_edge: int = 5
    limit_train: int | None = 10_000
    cloud_share: float = 0.1
    val_fraction: float = 0.15
    test_per_edge: int = 200
    model: str = "resnet20_cifar"
    rounds: int = 30
    local_epochs: int = 1
    edges_per_round: int = 10
    batch_size: int = 32
    lr: float = 0.05
    server_epochs: int = 5
    ft_epochs: int = 5
    head_epochs: int = 1
    babu_ft: str = "whole"
    ditto_lambda: float = 0.1
    hard_fraction: float = 0.5
    extension_epochs: int = 15
    extension_lr: float = 0.1
    precision: str = "auto"
    methods: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)
    data_dir: str | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "precision", resolve_precision(self.precision))
        except ValueError as e:
            raise PersonalConfigError(str(e)) from e
        choices = {
            "dataset": (self.dataset, DATASETS),
            "partition": (self.partition, PARTITIONS),
            "model": (self.model, tuple(MEANET_ARCHS)),
            "babu_ft": (self.babu_ft, FT_PARTS),
        }
        for key, (value, valid) in choices.items():
            if value not in valid:
                raise PersonalConfigError(f"unknown {key} {value!r}; valid: {', '.join(valid)}")
        if len(set(self.methods)) != len(self.methods) or len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            raise PersonalConfigError("methods and seeds must be lists without repeats, and seeds non-empty")
        checks = {
            "edges": self.edges >= 1,
            "beta": self.beta > 0,
            "classes_per_edge": self.classes_per_edge >= 1,
            "limit_train": self.limit_train is None or self.limit_train >= 2 * self.edges,
            "cloud_share": 0 <= self.cloud_share < 1,
            "val_fraction": 0 <= self.val_fraction < 1,
            "test_per_edge": self.test_per_edge >= 1,
            "rounds": self.rounds >= 1,
            "local_epochs": self.local_epochs >= 1,
            "edges_per_round": 1 <= self.edges_per_round <= self.edges,
            "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "server_epochs": self.server_epochs >= 0,
            "ft_epochs": self.ft_epochs >= 0,
            "head_epochs": self.head_epochs >= 1,
            "ditto_lambda": self.ditto_lambda >= 0,
            "hard_fraction": 0 < self.hard_fraction < 1,
            "extension_epochs": self.extension_epochs >= 0,
            "extension_lr": self.extension_lr > 0,
        }
        bad = [f"{k}={getattr(self, k)!r}" for k, ok in checks.items() if not ok]
        if not checks["edges_per_round"] or not checks["limit_train"]:
            bad.append(f"with edges={self.edges}")
        if bad:
            raise PersonalConfigError(
                f"out of range: {', '.join(bad)} (edges, classes per edge, test per edge, rounds, local epochs, head "
                "epochs, batch size >= 1; edges per round in 1..edges; beta, lr > 0; cloud share and val fraction in "
                "[0, 1); hard fraction in (0, 1); server, ft and extension epochs and ditto lambda >= 0; extension "
                "lr > 0; limit train >= 2 images per edge)"
            )

    def fingerprint(self, method: str | None = None) -> dict[str, Any]:
        """The settings a stored result of ``method`` depends on: all but which methods and seeds run, where the data
        lies, and the settings only other methods read (``METHOD_SETTINGS``; without ``method``: none of those, the
        settings of what methods share, such as the FedAvg trajectory)."""
        skip = {"methods", "seeds", "data_dir"}
        skip |= {k for k, readers in METHOD_SETTINGS.items() if method is None or method not in readers}
        return {k: v for k, v in self.as_dict().items() if k not in skip}

    def matches(self, stored: dict[str, Any], method: str | None = None) -> bool:
        """Whether a result stored with fingerprint ``stored`` holds for these settings; a setting added after it was
        stored (absent from ``stored``) matches while it keeps its default."""
        defaults = {f.name: f.default for f in fields(self)}
        current = self.fingerprint(method)
        later = {k for k in current if k not in stored and current[k] == defaults.get(k)}
        return stored == {k: v for k, v in current.items() if k not in later}

    def fleet(self) -> str:
        """The fleet in words, for table headers: ``20 edges, dirichlet beta=0.5``."""
        skew = f"beta={self.beta:g}" if self.partition == "dirichlet" else f"k={self.classes_per_edge} classes each"
        return f"{self.edges} edges, {self.partition} {skew}"


MEANET_ROWS = {"meanet-fl-personal", "meanet-fl-personal-prior", "meanet-fl-personal-ext", "meanet-fl-global"}

METHOD_SETTINGS: dict[str, set[str]] = {
    "ft_epochs": {"fedavg-ft", "fedbabu"},
    "hard_fraction": set(MEANET_ROWS),
    "extension_epochs": set(MEANET_ROWS),
    "extension_lr": set(MEANET_ROWS),
    "babu_ft": {"fedbabu"},
    "head_epochs": {"fedrep"},
    "ditto_lambda": {"ditto"},
}
"""Settings only some methods read, and which: changing one reruns only those (a MEANet-FL setting goes here with the
names of the MEANet-FL rows)."""

QUICK: dict[str, Any] = {
    "dataset": "cifar100-mini",
    "edges": 6,
    "limit_train": 1200,
    "test_per_edge": 40,
    "rounds": 2,
    "edges_per_round": 3,
    "server_epochs": 1,
    "ft_epochs": 1,
}
"""``--quick``: every method on CIFAR-100 mini (20 training images per class), 6 edges, 2 rounds of 3: a check that
everything runs in well under a minute per method on 2 cores, not numbers to read (accuracies sit near chance)."""
