"""Personal blocks: a device makes the shared MEANet its own, on its own images, and keeps what it learns.

The main block stays shared (the fleet trains it, the cloud signs it). What a device makes its own
(:func:`personalise`), each step on its own data:

1. **a class prior** on the main exit: the log of its own label frequencies (smoothed), scaled by a strength chosen
   on its validation images among :data:`PRIOR_STRENGTHS` (0 = none: a device whose data looks like everyone's keeps
   the shared answers). A kitchen camera that never sees a street stops answering "bus";
2. **its hard classes**: among the classes it holds, those the shared main block (with its prior) confuses with each
   other on its validation images (``select_hard_classes``, ``cluster`` by default);
3. **its adaptive and extension blocks**, trained on its own images of those classes (the main block frozen), from
   its previous personal blocks when it has them (the extension's classifier restarts when its hard classes change:
   a residual extension then answers as the main block does), else from the blocks the cloud broadcast;
4. **its routing policy**, calibrated on its validation images (:meth:`CalibratedPolicy.fit`): the thresholds, and
   whether its extension is kept (a device whose extension does not help falls back to the main block). The cloud's
   answers on those images are not asked for (that would send them): the cloud counts as right with the accuracy
   the cloud measured on its own validation images.

:func:`personal_arrays` and :func:`load_personal` move the result in and out of a model; the bytes live in
:mod:`meanet_core.wire.personal_state`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from meanet_core.data import ImageTensors
from meanet_core.inference.policies import CalibratedPolicy
from meanet_core.keys import EDGE_PREFIXES
from meanet_core.models import MEANet
from meanet_core.training.stages import StageConfig, predict_logits, select_hard_classes, train_extension
from meanet_core.wire.personal_state import PersonalState, PersonalStateError

PRIOR_STRENGTHS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
"""The strengths of the class prior a device tries on its validation images (0: no prior)."""

PERSONAL_BUFFERS: tuple[str, ...] = ("hard_classes", "hard_index", "class_prior")
"""State entries besides the edge blocks that a personal model holds as its own."""

MEMORY_PREFIX = "memory."
"""Arrays of a personal state that are not model entries: the device's validation memory (``memory.x`` uint8
images, ``memory.y`` class ids, ``memory.experience``), so that its prior, hard classes and gate keep weighing the
classes of earlier experiences when their images are gone."""

MEMORY_PER_EXPERIENCE = 128
"""Validation images a device keeps of each past experience (about 0.4 MB at 32x32)."""


def is_personal_key(name: str) -> bool:
    """Whether a MEANet state entry is a device's own in a personal federation (edge blocks and its choices)."""
    return name.startswith(EDGE_PREFIXES) or name in PERSONAL_BUFFERS


def personal_arrays(model: MEANet) -> dict[str, npt.NDArray[Any]]:
    """The model's personal entries (:func:`is_personal_key`) as numpy arrays."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items() if is_personal_key(k)}


def load_personal(model: MEANet, state: PersonalState) -> None:
    """Put a device's personal entries into ``model`` (its hard classes first, so the classifier has their shape).

    Raises
    ------
    PersonalStateError
        The arrays do not fit the model (missing or unexpected entries, other shapes).
    """
    expected = {k for k in model.state_dict() if is_personal_key(k)}
    entries = {k for k in state.arrays if not k.startswith(MEMORY_PREFIX)}
    if entries != expected:
        missing, extra = sorted(expected - entries), sorted(entries - expected)
        raise PersonalStateError(f"the personal state does not fit the model: missing {missing[:4]}, extra {extra[:4]}")
    try:
        model.set_hard_classes(state.hard_classes)
        tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.arrays.items() if k in expected}
        model.load_state_dict({**model.state_dict(), **tensors})
    except (RuntimeError, ValueError) as e:
        raise PersonalStateError(f"the personal state does not fit the model: {e}") from e
    if [int(c) for c in model.hard_classes.tolist()] != sorted(state.hard_classes):
        raise PersonalStateError("the personal state's hard classes and its hard_classes array disagree")


def log_label_prior(labels: torch.Tensor | np.ndarray, num_classes: int, smoothing: float = 0.5) -> torch.Tensor:
    """(K,) ``log`` of the smoothed label frequencies, centred (mean 0 over the classes)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes].astype(np.float64)
    log_p = np.log((counts + smoothing) / (counts.sum() + smoothing * num_classes))
    return torch.tensor(log_p - log_p.mean(), dtype=torch.float32)


def choose_prior_strength(
    logits: torch.Tensor, labels: torch.Tensor, log_prior: torch.Tensor, strengths: tuple[float, ...] = PRIOR_STRENGTHS
) -> tuple[float, dict[float, float]]:
    """The strength whose prior gives the best accuracy of ``logits`` (N, K) on ``labels`` (ties: the weaker), and
    the accuracy of each."""
    if len(labels) == 0:
        return 0.0, {}
    accuracy = {s: float(((logits + s * log_prior).argmax(1) == labels).float().mean()) for s in strengths}
    best = max(accuracy.values())
    return min(s for s, a in accuracy.items() if a >= best - 1e-12), accuracy


def device_hard_classes(
    pred: np.ndarray, labels: np.ndarray, held: np.ndarray, num_classes: int, fraction: float, method: str = "cluster"
) -> list[int]:
    """This device's hard classes: among the classes it ``held`` (at least 3), the ``fraction`` (at least 2) that
    the main block's predictions ``pred`` on its validation images confuse most (``method``, see
    :func:`select_hard_classes`); none for a device with fewer than 3 classes or no validation image."""
    pool = np.unique(np.asarray(held, dtype=np.int64))
    if len(pool) < 3 or len(labels) == 0:
        return []
    count = min(max(2, round(fraction * len(pool))), len(pool) - 1)
    return select_hard_classes(pred, labels, num_classes, method=method, count=count, candidates=pool.tolist())


@dataclass
class PersonalOutcome:
    """What :func:`personalise` chose and measured (validation numbers are on the device's own validation images)."""

    hard_classes: list[int]
    prior_strength: float
    policy: CalibratedPolicy
    trained: int  # images the extension trained on
    val: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)

    def meta(self) -> dict[str, Any]:
        """The outcome as JSON-ready meta for a :class:`PersonalState`."""
        return {
            "hard_classes": self.hard_classes,
            "prior_strength": self.prior_strength,
            "policy": self.policy.as_dict(),
            "trained": self.trained,
            "val": self.val,
        }


def edge_route(
    model: MEANet, main: torch.Tensor, ext: torch.Tensor, use_extension: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The edge's answers without the cloud, from the main logits (N, K) and extension logits (N, H), and whether
    each input ran the extension: a hard top-1 goes there (when ``use_extension``)."""
    top1 = main.argmax(1)
    if not use_extension or model.num_hard == 0:
        return top1, torch.zeros_like(top1, dtype=torch.bool)
    to_ext = model.hard_index[top1] >= 0
    return torch.where(to_ext, model.hard_classes[ext.argmax(1)], top1), to_ext


def personalise(
    model: MEANet,
    train: ImageTensors,
    val: ImageTensors,
    stage: StageConfig,
    *,
    previous: PersonalState | None = None,
    hard_fraction: float = 0.2,
    hard_method: str = "cluster",
    target_cloud_fraction: float = 0.2,
    cloud_accuracy: float = 0.0,
    seed: int = 0,
    channels_last: bool = True,
    prior_strengths: tuple[float, ...] = PRIOR_STRENGTHS,
    extension: bool = True,
    held: torch.Tensor | None = None,
) -> PersonalOutcome:
    """Make ``model`` (the shared main block, with the broadcast's edge blocks) this device's own, in place (see the
    module docstring); ``previous`` is the device's personal state from an earlier round, if any.
    ``prior_strengths=(0.0,)`` leaves the prior out, ``extension=False`` the hard classes and the extension (the
    benchmark's ablations). ``held``: the labels of every image the device has held (its earlier experiences' too),
    for its prior and the classes its hard ones are chosen among; default ``train`` and ``val``'s."""
    if previous is not None:
        load_personal(model, previous)  # its blocks; its hard classes and prior are chosen again below
    model.eval()
    model.class_prior.zero_()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    shared = predict_logits(lambda x: model.forward_main(x).logits, val, memory_format=fmt)  # (N, K), no prior
    held = torch.cat([train.y, val.y]) if held is None else held
    log_prior = log_label_prior(held, model.num_classes)
    strength, by_strength = choose_prior_strength(shared, val.y, log_prior, prior_strengths)
    model.class_prior.copy_(strength * log_prior)
    with_prior = shared + model.class_prior
    hard = (
        device_hard_classes(
            with_prior.argmax(1).numpy(), val.y.numpy(), held.numpy(), model.num_classes, hard_fraction, hard_method
        )
        if extension
        else []
    )
    model.set_hard_classes(hard)
    history: list[dict[str, float]] = []
    trained = int(model.is_hard(train.y).sum()) if hard else 0
    if trained:
        history = train_extension(model, train, stage, seed=seed, progress=False, channels_last=channels_last)
    model.eval()
    n = len(val)
    val_stats: dict[str, float] = {"images": float(n), "main_shared": 0.0, "main_personal": 0.0}
    if n == 0 or not hard:
        policy = CalibratedPolicy(0.0, 0.0, use_extension=False)
        if n:
            val_stats["main_shared"] = float((shared.argmax(1) == val.y).float().mean())
            val_stats["main_personal"] = float((with_prior.argmax(1) == val.y).float().mean())
        return PersonalOutcome(hard, strength, policy, trained, val_stats, history)

    def both(x: torch.Tensor) -> torch.Tensor:
        main = model.forward_main(x)
        return torch.cat([main.logits, model.forward_extension(x, main.features)], dim=1)

    out = predict_logits(both, val, memory_format=fmt)
    main, ext = out[:, : model.num_classes], out[:, model.num_classes :]
    probs, ext_probs = main.softmax(1), ext.softmax(1)
    top1 = probs.argmax(1)
    top1_hard = (model.hard_index[top1] >= 0).numpy()
    policy = CalibratedPolicy.fit(
        probs.max(1).values.numpy(),
        (top1 == val.y).numpy(),
        top1_hard,
        ext_probs.max(1).values.numpy(),
        (model.hard_classes[ext_probs.argmax(1)] == val.y).numpy(),
        np.full(n, float(cloud_accuracy)),
        target_cloud_fraction=target_cloud_fraction,
    )
    on_hard = model.is_hard(val.y)
    edge_right = edge_route(model, main, ext, True)[0] == val.y
    val_stats.update(
        {
            "main_shared": float((shared.argmax(1) == val.y).float().mean()),
            "main_personal": float((top1 == val.y).float().mean()),
            "edge_personal": float(edge_right.float().mean()),
            "hard_images": float(on_hard.sum()),
            "hard_main": float((top1 == val.y)[on_hard].float().mean()) if on_hard.any() else 0.0,
            "hard_edge": float(edge_right[on_hard].float().mean()) if on_hard.any() else 0.0,
            **{f"prior_{s:g}": a for s, a in by_strength.items()},
        }
    )
    return PersonalOutcome(hard, strength, policy, trained, val_stats, history)


def policy_from_meta(meta: Mapping[str, Any]) -> CalibratedPolicy:
    """The routing policy a personal state's meta holds.

    Raises
    ------
    PersonalStateError
        The meta's policy is not a calibrated policy's ``as_dict()``.
    """
    p = meta.get("policy")
    try:
        if not isinstance(p, Mapping):
            raise TypeError("not a mapping")
        return CalibratedPolicy(
            float(p["main_threshold"]), float(p["extension_threshold"]), use_extension=bool(p["use_extension"])
        )
    except (KeyError, TypeError, ValueError) as e:
        raise PersonalStateError(f"the personal state's policy is not a calibrated policy: {p!r}") from e


def split_memory(arrays: Mapping[str, npt.NDArray[Any]], before: int) -> ImageTensors:
    """The validation memory of a personal state's ``arrays``: its images of experiences before ``before``."""
    x, y, e = (arrays.get(MEMORY_PREFIX + k) for k in ("x", "y", "experience"))
    if x is None or y is None or e is None or len(x) == 0:
        return ImageTensors(torch.zeros(0, 3, 1, 1, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64))
    keep = np.flatnonzero(np.asarray(e) < before)
    return ImageTensors(torch.from_numpy(np.array(x[keep])), torch.from_numpy(np.array(y[keep], dtype=np.int64)))


def memory_arrays(
    old: Mapping[str, npt.NDArray[Any]] | None, val: ImageTensors, experience: int, seed: int
) -> dict[str, npt.NDArray[Any]]:
    """The validation memory to keep: the earlier experiences' (from ``old``) and up to
    :data:`MEMORY_PER_EXPERIENCE` of ``val``, this experience's (a seeded pick)."""
    before = split_memory(old or {}, experience)
    pick = np.random.default_rng([seed, experience]).permutation(len(val))[:MEMORY_PER_EXPERIENCE]
    now = val.subset(np.sort(pick))
    if before.x.shape[1:] != now.x.shape[1:]:  # none yet, or images of another size (another model's): dropped
        before = ImageTensors(now.x[:0], now.y[:0])
    old_e = np.asarray((old or {}).get(MEMORY_PREFIX + "experience", np.zeros(0)), dtype=np.int64)
    old_e = old_e[old_e < experience]
    return {
        MEMORY_PREFIX + "x": torch.cat([before.x, now.x]).numpy(),
        MEMORY_PREFIX + "y": torch.cat([before.y, now.y]).numpy(),
        MEMORY_PREFIX + "experience": np.concatenate([old_e[: len(before)], np.full(len(now), experience)]),
    }


__all__ = [
    "MEMORY_PER_EXPERIENCE",
    "MEMORY_PREFIX",
    "PERSONAL_BUFFERS",
    "PRIOR_STRENGTHS",
    "PersonalOutcome",
    "choose_prior_strength",
    "device_hard_classes",
    "edge_route",
    "is_personal_key",
    "load_personal",
    "log_label_prior",
    "memory_arrays",
    "personal_arrays",
    "personalise",
    "policy_from_meta",
    "split_memory",
]
