"""How much memory a training step or an inference batch needs, measured before the first batch runs, and a clear
error when it will not fit (instead of the kernel's OOM killer ending the process with no message).

**Training.** The step is run once on 2 and on 4 real images at the real size, precision and memory format, with
``torch.autograd.graph.saved_tensors_hooks`` counting the bytes autograd keeps for the backward pass (each storage
once, the weights left out). The difference is what one more image adds, the rest is what does not grow with the
batch (bfloat16 copies of the weights, ...); both scale exactly, so a probe of 6 images prices a batch of any size.
The estimate of a step's peak is then

    ACTIVATION_FACTOR x saved activations (the backward's gradients of them, and what the allocator keeps)
    + BATCH_COPIES x the float batch (the uint8 rows, the padded and the augmented copies)
    + gradients + optimiser state (SGD momentum) of the trained parameters + STEP_OVERHEAD,

which ``benchmarks/perf_memory.py`` compares with the measured peak (docs/results.md#memory). The probe leaves the
model as it found it: BatchNorm statistics and the random generator are restored.

**Inference.** No tensor is saved; a batch needs about INFERENCE_FACTOR x the largest layer's input + output per
image (measured with forward hooks on one image) plus the batch itself.

The memory available is ``psutil``'s, or a cgroup's limit where that is lower (a container). A step fits when its
estimate is at most ``USABLE_FRACTION`` of it: the rest is headroom for the system and the other processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from torch import nn

from meanet_core.data import ImageTensors, TensorBatches
from meanet_core.models import CLOUD_ARCHS, MEANET_ARCHS
from meanet_core.training.precision import autocast

ACTIVATION_FACTOR = 1.8
"""Measured peak / saved activations of a step: 1.45-2.15 for ResNet-20/56 and MobileNetV2 at float32 and bfloat16;
with STEP_OVERHEAD, the estimates lie within 0.83-1.35x of the measured peaks (docs/results.md#memory)."""
STEP_OVERHEAD = 64 * 1024**2
"""What a first step allocates at any batch (the autograd engine, oneDNN's primitive caches): measured 60-80 MiB."""
BATCH_COPIES = 3
INFERENCE_FACTOR = 3.0
USABLE_FRACTION = 0.9
GB = 1024**3


class MemoryBudgetError(ValueError, MemoryError):
    """A training step or an inference batch needs more memory than this machine has available; the message says the
    estimate, the memory available and the fix. A ``ValueError`` (the commands print it as an error) and a
    ``MemoryError``."""

    def __init__(self, message: str, estimate: MemoryEstimate, available: int) -> None:
        super().__init__(message)
        self.estimate = estimate
        self.available = available


@dataclass(frozen=True)
class MemoryEstimate:
    """The peak memory of one step (or inference batch) of ``batch_size`` images of ``image_size`` pixels a side:
    ``fixed + batch_size * per_image`` bytes, beyond what the process holds already (weights, data)."""

    what: str
    batch_size: int
    image_size: int
    per_image: int
    fixed: int
    activations: int  # bytes autograd saves for the backward at this batch (0 for inference)

    @property
    def total(self) -> int:
        return self.fixed + self.batch_size * self.per_image

    def max_batch(self, available: int) -> int:
        """The largest batch whose estimate fits ``available`` bytes (0: not even one image)."""
        room = int(available * USABLE_FRACTION) - self.fixed
        return max(0, room // max(self.per_image, 1))

    def fits(self, available: int) -> bool:
        return self.total <= available * USABLE_FRACTION

    def as_dict(self) -> dict[str, object]:
        return {
            "what": self.what,
            "batch_size": self.batch_size,
            "image_size": self.image_size,
            "per_image": self.per_image,
            "fixed": self.fixed,
            "activations": self.activations,
            "total": self.total,
        }


def gib(n: float) -> str:
    return f"{n / GB:.2f} GiB" if n >= 0.1 * GB else f"{n / 1024**2:.0f} MiB"


def available_memory() -> int:
    """Bytes this process may still allocate: ``psutil.virtual_memory().available``, or less where a cgroup (v2 or
    v1) limits the process (its limit minus its use, reclaimable page cache not counted as used)."""
    available = int(psutil.virtual_memory().available)
    cgroups = (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.stat"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
            "/sys/fs/cgroup/memory/memory.stat",
        ),
    )
    for limit_file, used_file, stat_file in cgroups:
        try:
            limit = int(Path(limit_file).read_text().strip())
            used = int(Path(used_file).read_text().strip())
        except (OSError, ValueError):  # no such cgroup, or "max": no limit
            continue
        with contextlib.suppress(OSError, ValueError):
            stat = dict(line.split() for line in Path(stat_file).read_text().splitlines() if line.count(" ") == 1)
            used -= int(stat.get("inactive_file", stat.get("total_inactive_file", 0)))
        if limit < 1 << 60:
            available = min(available, max(limit - used, 0))
        break
    return available


@contextlib.contextmanager
def _untouched(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Restore the modules' buffers (BatchNorm statistics) and the random generator after a probe."""
    buffers = [(b, b.detach().clone()) for m in modules for b in m.buffers()]
    rng = torch.get_rng_state()
    try:
        yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        torch.set_rng_state(rng)


_PROBING = [False]


def probing() -> bool:
    """Whether a memory probe is running now: its forwards are not training (counters of trained images skip them)."""
    return _PROBING[0]


def saved_bytes(run: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes autograd saves for the backward while ``run()`` computes (with gradients on), each storage once; the
    storages of ``exclude`` (the weights, which exist anyway) are left out."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            seen[s.data_ptr()] = s.nbytes()
        return t

    _PROBING[0] = True
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run()
    finally:
        _PROBING[0] = False
    return sum(seen.values())


def estimate_training(
    step: Callable[[torch.Tensor, torch.Tensor], object],
    modules: Iterable[nn.Module],
    params: Iterable[nn.Parameter],
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    what: str = "a training step",
    momentum: bool = True,
) -> MemoryEstimate:
    """The peak memory of a training step ``step(x, y)`` (forward and loss, under the caller's autocast) at
    ``batch_size``, probed on ``x``/``y`` (a few float images at the training size and memory format, 4 by
    default: the probe runs on half of them and on all, as BatchNorm needs 2 images or more in training).
    ``modules`` are left as they were (buffers, random state); ``params`` are those the optimiser trains."""
    mods = list(modules)
    weights = [p for m in mods for p in m.parameters()] + [b for m in mods for b in m.buffers()]
    trained = [p for p in params if p.requires_grad]
    n = len(x)
    small, large = (n // 2, n) if n >= 2 else (0, n)
    with _untouched(mods):
        at_large = saved_bytes(lambda: step(x[:large], y[:large]), weights)
        at_small = saved_bytes(lambda: step(x[:small], y[:small]), weights) if small else 0
    grow = max(at_large - at_small, 0) // (large - small)  # what each image adds
    constant = max(at_large - large * grow, 0)  # weight copies and the like: the same at any batch
    image_bytes = x[0].numel() * 4
    state = sum(p.numel() * p.element_size() for p in trained) * (2 if momentum else 1)  # gradients + momentum
    return MemoryEstimate(
        what=what,
        batch_size=batch_size,
        image_size=int(x.shape[-1]),
        per_image=int(ACTIVATION_FACTOR * grow + BATCH_COPIES * image_bytes),
        fixed=int(ACTIVATION_FACTOR * constant + state + STEP_OVERHEAD),
        activations=constant + batch_size * grow,
    )


@torch.inference_mode()
def estimate_inference(
    forward: Callable[[torch.Tensor], object],
    modules: Iterable[nn.Module],
    x: torch.Tensor,
    batch_size: int,
    *,
    what: str,
) -> MemoryEstimate:
    """The peak memory of ``forward`` on a batch of ``batch_size`` images like ``x[:1]`` (float, the model's size):
    INFERENCE_FACTOR x the largest layer's input + output, measured on one image, plus the batch."""
    mods = list(modules)
    largest = 0

    def nbytes(value: object) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, (tuple, list)):
            return sum(nbytes(v) for v in value)
        return sum(nbytes(v) for v in getattr(value, "_asdict", lambda: {})().values())

    def hook(_m: nn.Module, inputs: object, output: object) -> None:
        nonlocal largest
        largest = max(largest, nbytes(inputs) + nbytes(output))

    leaves = [m for mod in mods for m in mod.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with _untouched(mods):
            forward(x[:1])
    finally:
        for h in handles:
            h.remove()
    image = x[0].numel() * 4
    return MemoryEstimate(what, batch_size, int(x.shape[-1]), int(INFERENCE_FACTOR * largest + 2 * image), 0, 0)


def check_fits(estimate: MemoryEstimate, fix: str, available: int | None = None) -> None:
    """Raise :class:`MemoryBudgetError` when ``estimate`` does not fit the memory available (``available_memory()``
    unless given); ``fix`` is the advice the message ends with, after the largest batch that fits."""
    free = available_memory() if available is None else available
    if estimate.fits(free):
        return
    most = estimate.max_batch(free)
    fits = f"at most {most} images fit at this size" if most else "not even 1 image fits at this size"
    raise MemoryBudgetError(
        f"{estimate.what} at batch {estimate.batch_size} on {estimate.image_size}x{estimate.image_size} images "
        f"needs about {gib(estimate.total)} of memory (estimated before the first batch), but {gib(free)} is "
        f"available (a step may take {USABLE_FRACTION:.0%} of it); {fits}. Fix: {fix}",
        estimate,
        free,
    )


def bound_batch(estimate: MemoryEstimate, available: int | None = None) -> int:
    """The inference batch to run: ``estimate.batch_size``, or less where memory bounds it (at least 1)."""
    free = available_memory() if available is None else available
    return max(1, min(estimate.batch_size, estimate.max_batch(free)))


def step_memory(
    loss_and_logits: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    module: nn.Module,
    params: Sequence[nn.Parameter],
    data: ImageTensors,
    batch_size: int,
    *,
    precision: str = "fp32",
    momentum: bool = True,
    desc: str,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
) -> MemoryEstimate:
    """The estimated peak memory of a step of ``batch_size`` images of ``data`` (``meanet_core.training.memory``:
    a probe of 6 images at the data's size, precision and memory format; the model is left as it was)."""
    x, y = next(iter(TensorBatches(data, 4, shuffle=False)))  # the first 4 images, as training feeds them
    x, y = x.to(device), y.to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def step(xs: torch.Tensor, ys: torch.Tensor) -> object:
        with autocast(precision, device):
            return loss_and_logits(xs, ys)

    return estimate_training(
        step, [module], params, x, y, batch_size, what=f"a training step of the {desc} stage", momentum=momentum
    )


def check_step_memory(
    loss_and_logits: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    module: nn.Module,
    params: Sequence[nn.Parameter],
    data: ImageTensors,
    batch_size: int,
    *,
    precision: str = "fp32",
    momentum: bool = True,
    desc: str,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
) -> None:
    """Stop before the first batch, with a :class:`~meanet_core.training.memory.MemoryBudgetError` that says the
    estimate, the memory available and the fix, when a step of ``batch_size`` images will not fit in memory
    (:func:`step_memory`)."""
    estimate = step_memory(
        loss_and_logits, module, params, data, batch_size, precision=precision, momentum=momentum, desc=desc,
        device=device, channels_last=channels_last,
    )  # fmt: skip
    check_fits(estimate, own_size_fix(module, estimate.image_size))


def own_size_fix(model: nn.Module, size: int) -> str:
    """The advice of a memory error: a smaller batch or image size, or the model's own size when ``size`` is not."""
    arch = str(getattr(model, "arch", ""))
    spec = MEANET_ARCHS.get(arch) or CLOUD_ARCHS.get(arch)
    own = ""
    if spec is not None and spec.input_size != size:
        own = f", or the model's own size ({arch} was designed for {spec.input_size}x{spec.input_size})"
    return f"a smaller batch size (meanet train --batch-size, run config batch-size), a smaller image size{own}"


def inference_batch(
    models: Sequence[nn.Module], input_size: int, requested: int, *, available: int | None = None
) -> int:
    """The batch an inference path runs: ``requested``, or less where memory bounds it (at least 1). Each of
    ``models`` (a MEANet: its main block, the route every input takes; any other module: its forward) is measured on
    one image of ``input_size`` pixels a side (:func:`estimate_inference`); the most demanding one decides."""
    free = available_memory() if available is None else available
    x = torch.rand(1, 3, input_size, input_size)
    batch = requested
    for model in models:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        forward_main = getattr(model, "forward_main", None)
        forward: Callable[[torch.Tensor], object] = forward_main if callable(forward_main) else model
        estimate = estimate_inference(forward, [model], x.to(device), requested, what="inference")
        batch = min(batch, bound_batch(estimate, free))
    return batch
