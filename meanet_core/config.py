"""Validated, frozen configuration read once at the boundary (CLI options, Flower run_config)."""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from meanet_core.data import BAD_IMAGE_POLICIES, DATASETS
from meanet_core.faults import FAULT_KINDS, parse_faults
from meanet_core.models import CLOUD_ARCHS, MEANET_ARCHS, build_cloud, build_meanet, can_grow
from meanet_core.training.precision import PRECISIONS, resolve_precision
from meanet_core.training.stages import HARD_METHODS, StageConfig
from meanet_core.wire.broadcast_delta import ENCODINGS as BROADCAST_ENCODINGS
from meanet_core.wire.compression import ENCODINGS

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
    """Everything ``meanet train`` needs. Epoch counts of the cloud and extension stages default to ``epochs``.

    ``image_size`` and ``bad_images`` apply to ``imagefolder`` (the other datasets are 32x32 arrays): the side its
    images are resized and cropped to (the models are built, checkpointed, evaluated and served at the data's size;
    None: the model's own size, :attr:`input_size`), and what happens to a file that is not a readable image
    (``skip`` with a warning, or ``error``).
    """

    dataset: str = "cifar100"
    model: str = "resnet32_cifar"
    cloud_model: str = "resnet110_cifar"
    epochs: int = 30
    cloud_epochs: int | None = None
    extension_epochs: int | None = None
    batch_size: int = 128  # images per training step (every stage)
    lr: float = 0.1
    weight_decay: float = 5e-4  # SGD weight decay (every stage)
    label_smoothing: float = 0.0  # cross-entropy label smoothing (0 = off)
    hard_method: str = "precision"
    hard_fraction: float = 0.2
    hard_count: int | None = None
    val_fraction: float = 0.1
    limit_train: int | None = None
    seed: int = 0  # seeds the split, the initial weights and the data order
    data_dir: str | None = None
    image_size: int | None = None  # imagefolder: None = the model's own size (32 for *_cifar, 224 for ImageNet ones)
    channels_last: bool = True
    bad_images: str = "skip"
    precision: str = "auto"

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
        if self.precision not in ("auto", *PRECISIONS):
            raise bad("precision", _precision_help(self.precision))
        if self.bad_images not in BAD_IMAGE_POLICIES:
            raise bad(
                "bad_images",
                f"unknown {self.bad_images!r}; valid: {', '.join(BAD_IMAGE_POLICIES)} (skip: leave unreadable images "
                "out with a warning; error: refuse the dataset, naming them)",
            )
        if self.image_size is not None and self.image_size < 1:
            raise bad(
                "image_size",
                f"must be a positive number of pixels (e.g. 32 or 96), or None for the model's own size ("
                f"{MEANET_ARCHS[self.model].input_size} for {self.model}); got {self.image_size}",
            )
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

    @property
    def input_size(self) -> int:
        """The side an image folder's images are read at: ``image_size``, or the model's own size (the registry's:
        32 for the ``*_cifar`` models, which were designed for 32x32 inputs)."""
        return self.image_size if self.image_size is not None else MEANET_ARCHS[self.model].input_size

    def size_warning(self) -> str | None:
        """A warning when an image folder's size is far (2x or more either way) from the model's design."""
        own = MEANET_ARCHS[self.model].input_size
        size = self.input_size
        if self.dataset != "imagefolder" or own / 2 < size < own * 2:
            return None
        return (
            f"--image-size {size}: {self.model} was designed for {own}x{own} images; at {size}x{size} each image "
            f"costs {size * size / (own * own):.3g}x its memory and compute (leave --image-size out for {own})"
        )

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
            precision=resolve_precision(self.precision),
        )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _precision_help(value: str) -> str:
    return (
        f"unknown {value!r}; valid: auto (bfloat16 autocast where the CPU or GPU computes it natively, else float32), "
        f"{', '.join(PRECISIONS)}"
    )


def _https_url_problem(url: str) -> str | None:
    """What makes ``url`` unusable as the offload service's address (None: nothing)."""
    from urllib.parse import urlsplit

    if any(c.isspace() for c in url):
        return "white space"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError when the port is not a number in range)
    except ValueError as e:
        return str(e)
    if parts.scheme != "https":
        return f"scheme {parts.scheme or None!r}: the edges send images and a token, so only https is accepted"
    if not parts.hostname:
        return "no host"
    if parts.username or parts.password:
        return "credentials in the URL: put the token in the edge's node config instead"
    if parts.query or parts.fragment:
        return "a query or fragment"
    return None


AGGREGATIONS = ("mean", "median", "trimmed-mean", "multi-krum", "fltrust")
CLOUD_INITS = ("scratch", "main", "main-every")
HARD_CANDIDATES = ("seen", "new")


@dataclass(frozen=True)
class FederationConfig:
    """Every knob of the federated loop; Flower's ``run_config`` keys are the kebab-case forms of these names."""

    dataset: str = "cifar100"
    model: str = "resnet20_cifar"
    cloud_model: str = "resnet32_cifar"
    num_clients: int = 3  # slices of the shared stream (in simulation: the edges); own-data edges need none
    min_edges: int = 2  # the quorum: connected edges a round needs to start
    edges_per_round: int = 0  # edges sampled per round, seeded by seed (0 = every connected edge)
    round_timeout: float = 600.0  # seconds a round waits for replies; later ones are dropped, their edges missed
    quorum_wait: float = 300.0  # seconds a round waits for min-edges connected edges; then the run stops, resumable
    experiences: int = 2
    stream: str = "class-incremental"
    rounds_per_experience: int = 2
    main_rounds: int = 0  # per experience, before the cloud's training: rounds where the edges train the main block
    main_distill: float = 1.0  # main rounds: LwF weight on the classes seen before (0 = plain fine-tuning)
    main_aggregation: str = "median"  # main rounds' rule; "" = aggregation's (docs/results.md: main rounds)
    evaluate_every: int = 0  # edges evaluate every N rounds and after each experience's last round; 0 = last only
    local_epochs: int = 1
    cloud_epochs: int = 1
    precision: str = "auto"  # training passes: fp32 | bf16 (autocast) | auto (bf16 where native; each machine decides)
    cloud_model_epochs: int = 0  # the cloud model's epochs per experience; 0 = cloud_epochs
    cloud_model_lr: float = 0.0  # the cloud model's learning rate; 0 = lr
    cloud_init: str = "scratch"  # scratch: the cloud model starts from random weights | main: grown from the main
    # block at the first experience (meanet_core.models.grow), then it goes on from its own weights | main-every:
    # grown from the main block at every experience
    cloud_distill: float = 0.0  # the cloud model also distils the main block's logits with this weight (0 = off)
    extension_epochs: int = 0  # the edges' epochs per edge round (adaptive + extension); 0 = local_epochs
    extension_distill: float = 0.0  # the cloud's extension training distils the cloud model's hard-class logits
    lr: float = 0.05  # learning rate of every local and cloud stage
    batch_size: int = 64  # images per training step on the edges and the cloud
    partition: str = "iid"
    alpha: float = 0.5
    personal: bool = False  # each edge keeps its own adaptive + extension blocks, hard classes, class prior and policy,
    # trained on its own images and never sent (fl_client.personal_round); the main block stays shared
    cloud_share: float = 0.3
    val_fraction: float = 0.1
    hard_fraction: float = 0.2
    hard_method: str = "precision"
    hard_candidates: str = "seen"  # the classes the hard ones are chosen among: seen (so far) | new (this experience's:
    # the edges hold images of those, so their extension rounds can teach it)
    policy: str = "calibrated"
    entropy_threshold: float = 0.5  # paper policy
    target_cloud_fraction: float = 0.2  # calibrated policy: thresholds fitted on the cloud's validation data
    aggregation: str = "fltrust"  # mean | median | trimmed-mean | multi-krum | fltrust (docs/results.md: robustness)
    trim_fraction: float = 0.2
    max_norm_ratio: float = 1.0  # the ceiling: honest edges measured 0.02-0.3 (docs/results.md); 0 = no ceiling
    norm_bound_factor: float = 3.0  # the round's bound: this x the median ratio of its updates (<= ceiling); 0 = off
    claim_factor: float = 2.0  # an example count weighs at most this x the other clients' median; 0 = off
    max_claim: float = 0.0  # an example count weighs at most this; 0 = no cap
    krum_malicious: int = 1  # multi-krum: clients assumed malicious (f); n - f updates are kept
    trust_samples: int = 512  # fltrust: the cloud's validation images (hard classes) behind its reference update
    upload_encoding: str = "int4"  # float32 | fp16 | int8 | int4: how edges upload (meanet_core.wire.compression)
    delta_broadcast: bool = True  # an edge holding the last broadcast gets the change from it (strategies.broadcasts)
    broadcast_encoding: str = (
        "int6"  # int6 | int8 | float32: changed weights in a broadcast (the cloud keeps the error)
    )
    limit_train: int = 0  # 0 = every training image
    faults: str = ""  # fault injection for tests and demos, e.g. "0:nan,1:scale=100" (meanet_core.faults); "" = none
    seed: int = 0  # seeds the partition, the initial weights and the data order
    report_dir: str = "meanet-federation"  # relative: under $MEANET_RUNS_DIR (default ~/.meanet/runs)
    data_dir: str = ""  # "": $MEANET_DATA_DIR
    signing_key: str = ""  # the cloud's Ed25519 private key (PEM); "": REPORT_DIR/broadcast-signing.key, made once
    verify_key: str = ""  # the edges' pinned public key; "": REPORT_DIR/broadcast-signing.pub (simulation; a
    # SuperNode's --node-config verify-key wins over both, see fl_client.app.pinned_verify_key)
    cloud_url: str = ""  # the offload service the edges call (https://HOST:PORT); "" = the cloud model travels with
    # the evaluation broadcast (simulation). Its secrets (token, CA) live in each edge's node config, never here.

    def report_path(self) -> Path:
        path = Path(self.report_dir).expanduser()
        if path.is_absolute():
            return path
        return Path(os.environ.get("MEANET_RUNS_DIR", "~/.meanet/runs")).expanduser().resolve() / path

    def __post_init__(self) -> None:
        from meanet_core.data import PARTITION_SCHEMES
        from meanet_core.data.streams import STREAMS

        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(f"run config {key.replace('_', '-')}: {msg}")

        choices = {
            "dataset": DATASETS,
            "model": tuple(MEANET_ARCHS),
            "cloud_model": tuple(CLOUD_ARCHS),
            "stream": STREAMS,
            "partition": PARTITION_SCHEMES,
            "hard_method": HARD_METHODS,
            "hard_candidates": HARD_CANDIDATES,
            "policy": ("paper", "calibrated"),
            "aggregation": AGGREGATIONS,
            "main_aggregation": ("", *AGGREGATIONS),
            "upload_encoding": ENCODINGS,
            "broadcast_encoding": BROADCAST_ENCODINGS,
        }
        for key, valid in choices.items():
            if getattr(self, key) not in valid:
                raise bad(key, f"{getattr(self, key)!r} is not one of {', '.join(valid)}")
        if self.precision not in ("auto", *PRECISIONS):
            raise bad("precision", _precision_help(self.precision))
        for key in (
            "num_clients",
            "min_edges",
            "experiences",
            "rounds_per_experience",
            "local_epochs",
            "cloud_epochs",
            "batch_size",
        ):
            if getattr(self, key) < 1:
                raise bad(key, f"must be >= 1; got {getattr(self, key)}")
        if self.edges_per_round < 0:
            raise bad("edges_per_round", f"must be >= 0 (0 = every connected edge); got {self.edges_per_round}")
        if not self.round_timeout > 0:
            raise bad("round_timeout", f"must be > 0 (seconds); got {self.round_timeout}")
        if self.quorum_wait < 0:
            raise bad("quorum_wait", f"must be >= 0 (seconds); got {self.quorum_wait}")
        if self.cloud_model_epochs < 0:
            raise bad("cloud_model_epochs", f"must be >= 0 (0 = cloud-epochs); got {self.cloud_model_epochs}")
        if self.extension_epochs < 0:
            raise bad("extension_epochs", f"must be >= 0 (0 = local-epochs); got {self.extension_epochs}")
        for key in ("cloud_model_lr", "cloud_distill", "extension_distill"):
            if getattr(self, key) < 0:
                raise bad(key, f"must be >= 0 (0 = off, or the default); got {getattr(self, key)}")
        if self.cloud_init not in CLOUD_INITS:
            raise bad("cloud_init", f"{self.cloud_init!r} is not one of {', '.join(CLOUD_INITS)}")
        if self.cloud_init != "scratch":
            problem = can_grow(build_meanet(self.model, 2).main, build_cloud(self.cloud_model, 2))
            if problem:
                raise bad(
                    "cloud_init", f"{self.cloud_init!r} cannot grow {self.cloud_model} from {self.model}: {problem}"
                )
        for key in ("cloud_share", "val_fraction", "hard_fraction"):
            if not 0.0 < getattr(self, key) < 1.0:
                raise bad(key, f"must lie in (0, 1); got {getattr(self, key)}")
        if not 0.0 <= self.trim_fraction < 0.5:
            raise bad("trim_fraction", f"must lie in [0, 0.5); got {self.trim_fraction}")
        if not 0.0 <= self.target_cloud_fraction <= 1.0:
            raise bad("target_cloud_fraction", f"must lie in [0, 1]; got {self.target_cloud_fraction}")
        for key in ("lr", "alpha"):
            if not getattr(self, key) > 0:
                raise bad(key, f"must be > 0; got {getattr(self, key)}")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise bad(f.name, f"must be a finite number; got {value}")
        for key in ("max_norm_ratio", "norm_bound_factor", "claim_factor", "max_claim"):
            if getattr(self, key) < 0:
                raise bad(key, f"must be >= 0 (0 turns it off); got {getattr(self, key)}")
        if self.main_rounds < 0:
            raise bad("main_rounds", f"must be >= 0 (0 = only the cloud trains the main block); got {self.main_rounds}")
        if self.main_distill < 0:
            raise bad("main_distill", f"must be >= 0 (0 = no distillation); got {self.main_distill}")
        if self.krum_malicious < 0:
            raise bad("krum_malicious", f"must be >= 0; got {self.krum_malicious}")
        if self.trust_samples < 1:
            raise bad("trust_samples", f"must be >= 1 (the cloud's clean images for FLTrust); got {self.trust_samples}")
        if self.evaluate_every < 0:
            raise bad(
                "evaluate_every",
                f"must be >= 0 (0 = only after each experience's last round); got {self.evaluate_every}",
            )
        if self.limit_train < 0:
            raise bad("limit_train", f"must be >= 0 (0 = every training image); got {self.limit_train}")
        if not 0.0 <= self.entropy_threshold <= 1.0:
            raise bad("entropy_threshold", f"must lie in [0, 1]; got {self.entropy_threshold}")
        if self.cloud_url:
            problem = _https_url_problem(self.cloud_url)
            if problem:
                raise bad(
                    "cloud_url",
                    f"{self.cloud_url!r} is not an https:// URL ({problem}); expected e.g. 'https://cloud.example:8443'"
                    ", or '' to send the cloud model with the evaluation broadcast",
                )
        try:
            parse_faults(self.faults, self.num_clients)
        except ValueError as e:
            raise bad("faults", f"{e}; valid faults: {', '.join(FAULT_KINDS)} (see meanet_core/faults.py)") from None

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> FederationConfig:
        """Parse Flower's ``context.run_config`` (kebab-case keys); unknown or ill-typed keys are errors."""
        return from_dict(cls, {str(k).replace("-", "_"): v for k, v in run_config.items()})

    def as_run_config(self) -> dict[str, Any]:
        return {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items()}

    def stage(self, epochs: int, cycle: tuple[float, float] = (0.0, 1.0)) -> StageConfig:
        return StageConfig(
            epochs=epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            cycle=cycle,
            precision=resolve_precision(self.precision),
        )

    def round_cycle(self, scope: str, broadcast_round: int) -> tuple[float, float]:
        """The part of one learning-rate cycle that the local training of signed round ``broadcast_round`` runs.

        An experience's rounds of ``scope`` follow one schedule (warm-up in the first, annealing in the last), so
        R rounds of 1 local epoch train like R epochs rather than R separate cycles each annealed to nearly zero:
        on the main job's first experience this lifts the main block from 0.213 to 0.224 on validation (3 rounds,
        same compute). The signed round counts the main rounds first, then the edge rounds (``keys``).
        """
        first, count = (1, self.main_rounds) if scope == "main" else (self.main_rounds + 1, self.rounds_per_experience)
        r = broadcast_round - first
        if count <= 0 or not 0 <= r < count:  # not one of this run's rounds (an old client, a test): a whole cycle
            return (0.0, 1.0)
        return (r / count, (r + 1) / count)

    @property
    def cloud_model_stage_epochs(self) -> int:
        """The cloud model's epochs per experience: its own setting, or the cloud's other stages'."""
        return self.cloud_model_epochs or self.cloud_epochs

    def cloud_model_stage(self) -> StageConfig:
        """The cloud model's schedule: its own epochs and learning rate (or the cloud's other stages')."""
        return replace(self.stage(self.cloud_model_stage_epochs), lr=self.cloud_model_lr or self.lr)

    @property
    def extension_stage_epochs(self) -> int:
        """The edges' epochs per edge round: its own setting, or ``local_epochs``."""
        return self.extension_epochs or self.local_epochs

    def rule(self, scope: str) -> str:
        """The aggregation rule of a round of ``scope`` (``"edge"`` or ``"main"``)."""
        return (self.main_aggregation or self.aggregation) if scope == "main" else self.aggregation
