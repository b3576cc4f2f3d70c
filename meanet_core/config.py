"""Validated, frozen configuration read once at the boundary (CLI options, Flower run_config)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from meanet_core.data import DATASETS
from meanet_core.models import CLOUD_ARCHS, MEANET_ARCHS
from meanet_core.training import HARD_METHODS, StageConfig

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration key is unknown or its value has the wrong type or range."""


def _check_type(cls_name: str, name: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a simple annotation (int, float, str, bool, X | None); ints widen to floats."""
    hint = annotation
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for t in allowed:
        if t is type(None):
            continue
        if t is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if t is int and isinstance(value, bool):
            continue
        if isinstance(value, t):
            return value
    names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise ConfigError(f"{cls_name}.{name} must be {names}; got {value!r} ({type(value).__name__})")


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Build the frozen dataclass ``cls`` from ``values``, rejecting unknown keys and ill-typed values."""
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} key(s) {unknown}; valid keys: {sorted(known)}")
    checked = {k: _check_type(cls.__name__, k, v, hints[k]) for k, v in values.items()}
    return cls(**checked)


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``meanet train`` needs. Epoch counts of the cloud and extension stages default to ``epochs``."""

    dataset: str = "cifar100"
    model: str = "resnet32_cifar"
    cloud_model: str = "resnet110_cifar"
    epochs: int = 30
    cloud_epochs: int | None = None
    extension_epochs: int | None = None
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    hard_method: str = "precision"
    hard_fraction: float = 0.2
    hard_count: int | None = None
    val_fraction: float = 0.1
    limit_train: int | None = None
    seed: int = 0
    data_dir: str | None = None
    image_size: int = 224
    channels_last: bool = True

    def __post_init__(self) -> None:
        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(f"TrainConfig.{key}: {msg}")

        if self.dataset not in DATASETS:
            raise bad("dataset", f"unknown dataset {self.dataset!r}; valid: {', '.join(DATASETS)}")
        if self.model not in MEANET_ARCHS:
            raise bad("model", f"unknown model {self.model!r}; valid: {', '.join(sorted(MEANET_ARCHS))}")
        if self.cloud_model not in CLOUD_ARCHS:
            raise bad("cloud_model", f"unknown {self.cloud_model!r}; valid: {', '.join(sorted(CLOUD_ARCHS))}")
        if self.hard_method not in HARD_METHODS:
            raise bad("hard_method", f"unknown {self.hard_method!r}; valid: {', '.join(HARD_METHODS)}")
        if not 0.0 < self.hard_fraction < 1.0:
            raise bad("hard_fraction", f"must lie in (0, 1); got {self.hard_fraction}")
        if not 0.0 < self.val_fraction < 1.0:
            raise bad(
                "val_fraction",
                f"must lie in (0, 1) (the hard split needs validation data); got {self.val_fraction}",
            )
        for key in ("epochs", "cloud_epochs", "extension_epochs", "hard_count", "limit_train"):
            value = getattr(self, key)
            if value is not None and value < (1 if key in ("hard_count", "limit_train") else 0):
                raise bad(key, f"must be positive; got {value}")
        # The stage configs validate the remaining numbers.
        self.stage("main")

    def stage(self, name: str) -> StageConfig:
        epochs = {
            "main": self.epochs,
            "cloud": self.epochs if self.cloud_epochs is None else self.cloud_epochs,
            "extension": self.epochs if self.extension_epochs is None else self.extension_epochs,
        }[name]
        return StageConfig(
            epochs=epochs,
            lr=self.lr,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            label_smoothing=self.label_smoothing,
        )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
