"""The handoff of the newest cloud model from the ServerApp to the offload service.

**Writer** (the ServerApp, :class:`fl_server.cloud.CloudServer`): after each experience's cloud training, and on
resume, :func:`write_serving_model` writes ``REPORT_DIR/cloud-serving.pt`` with
:func:`meanet_core.training.checkpoint.atomic_save` (a temporary file in the same folder, fsync, rename): weights
only, with
the architecture, number of classes, normalisation, input size, class names and ``version`` (the experience index,
increasing). A reader therefore sees the old file or the new one, never half of one.

**Reader** (the service, ``meanet cloud serve --watch FILE``): a :class:`ModelSlot` holds one reference to an
immutable :class:`ServedModel` (the optimised inference copy on its device, its version, MACs, classes). A daemon
:class:`ServingFileWatcher` polls the file's (inode, mtime, size) every ``poll_s`` seconds, or wakes at once on
:meth:`ServingFileWatcher.reload` (SIGHUP). On a change it reads the file once (weights only), builds the model and
its optimised copy completely, checks it against the served one (same number of classes, class names and input
size), and only then swaps the reference under a lock. The model thread takes the reference once per model call, so
every batch, hence every request, is answered wholly by the old model or wholly by the new one. A file that does not
load or does not fit is refused with a logged reason; the old model keeps serving, and that state of the file is not
retried (the next write is). Each :class:`ServedModel` carries the SHA-256 of its weights (``digest``), which
``/metrics`` and ``/metrics.json`` report with its version.

**A finished run** (``meanet cloud serve --run DIR``): :func:`load_cloud_from_run` reads its cloud model.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from meanet_core.inference.engine import LocalCloud
from meanet_core.models import CloudModel, build_cloud
from meanet_core.training.checkpoint import (
    CheckpointError,
    atomic_save,
    cloud_payload,
    load_cloud,
    load_state,
    require,
    safe_load,
)
from meanet_core.trust.broadcast import digest as state_digest

log = logging.getLogger("meanet.cloud")
SERVING_FILE = "cloud-serving.pt"
"""The serving file's name in a federation's report folder."""
CHANNELS = 3


# ------------------------------------------------------------------------------------------------ the file
def write_serving_model(
    model: CloudModel,
    path: str | os.PathLike[str],
    *,
    version: int,
    num_classes: int,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write ``model`` atomically to ``path`` as the service's newest model (weights only); returns the path."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"version must be an int >= 0 (the experience index); got {version!r}")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes; pass one name per class id")
    payload = cloud_payload(model, num_classes)
    payload["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload["version"] = version
    payload["class_names"] = [str(c) for c in class_names] if class_names is not None else None
    path = Path(path)
    atomic_save(payload, path)
    return path


def serving_version(path: str | os.PathLike[str]) -> int | None:
    """The version a serving file holds; None when it is missing or unreadable (no model is built)."""
    try:
        version = safe_load(path).get("version")
    except CheckpointError:
        return None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def read_serving_file(path: str | os.PathLike[str]) -> tuple[CloudModel, int, tuple[str, ...] | None]:
    """The cloud model of a serving file (read once, weights only), its version and class names.

    Raises :class:`CheckpointError` saying what is wrong with the file.
    """
    path = Path(path)
    obj = safe_load(path)
    if obj.get("kind") != "cloud":
        raise CheckpointError(f"{path} holds a {obj.get('kind')!r} model, not a cloud model")
    require(obj, ("arch", "num_classes", "mean", "std", "state_dict", "version"), path)
    version = obj["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise CheckpointError(f"{path}: its version {version!r} is not an int >= 0; it is damaged")
    names = obj.get("class_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise CheckpointError(f"{path}: its class_names are not a list of strings; it is damaged")
    try:
        num_classes = int(obj["num_classes"])
        side = obj.get("input_size")
        model = build_cloud(obj["arch"], num_classes, mean=obj["mean"], std=obj["std"], input_size=side)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its header does not describe a cloud model this version can build ({e})") from e
    if names is not None and len(names) != num_classes:
        raise CheckpointError(f"{path}: {len(names)} class names for {num_classes} classes; it is damaged")
    load_state(model, obj["state_dict"], path, "the cloud model")
    return model.eval(), version, tuple(names) if names is not None else None


# ------------------------------------------------------------------------------------------------ the served model
@dataclass(frozen=True)
class ServedModel:
    """One cloud model, ready to answer: never changed once built (a new model is a new ServedModel)."""

    cloud: LocalCloud  # the optimised inference copy (fused BatchNorm, channels-last) on the service's device
    arch: str
    num_classes: int
    input_size: int
    version: int | None  # the serving file's version; None for a model from --run
    class_names: tuple[str, ...] | None
    source: str
    loaded_at: float  # time.time()
    digest: str = ""  # SHA-256 of the weights (names, dtypes, shapes, bytes): which model answers, checkable anywhere

    @property
    def macs_per_image(self) -> int:
        return int(self.cloud.macs_per_image)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (n, C, H, W) on the model's device -> int64 labels (n,) on the CPU."""
        return self.cloud.classify(images).labels.cpu()

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "input_size": self.input_size,
            "source": self.source,
            "loaded_at": self.loaded_at,
            "digest": self.digest,
        }


def prepare(
    model: CloudModel,
    device: str | torch.device = "cpu",
    *,
    version: int | None = None,
    class_names: Sequence[str] | None = None,
    source: str = "memory",
) -> ServedModel:
    """Build everything a model needs to answer (device copy, optimised copy, MACs, a probe call) before serving."""
    device = torch.device(device)
    weights = state_digest(model.state_dict(), prefix="")  # of the weights as trained, before the optimised copy
    cloud = LocalCloud(model.to(device).eval(), optimize=True)  # fused BatchNorm, channels-last; counts MACs
    probe = torch.zeros(1, CHANNELS, model.input_size, model.input_size, device=device)
    num_classes = int(cloud.logits(probe).shape[1])  # (1, K)
    if class_names is not None and len(class_names) != num_classes:
        raise CheckpointError(f"{source}: {len(class_names)} class names for a model of {num_classes} classes")
    names = tuple(class_names) if class_names is not None else None
    return ServedModel(cloud, model.arch, num_classes, model.input_size, version, names, source, time.time(), weights)


def load_served(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> ServedModel:
    """A serving file, read and built completely (see :func:`read_serving_file`, :func:`prepare`)."""
    model, version, names = read_serving_file(path)
    return prepare(model, device, version=version, class_names=names, source=os.fspath(path))


def load_cloud_from_run(run: str | os.PathLike[str]) -> CloudModel:
    """The cloud model of a run folder: ``cloud.pt`` (``meanet train``) or ``state.pt`` (``meanet federate``).

    Both are loaded weights-only (``torch.load(weights_only=True)``): a checkpoint cannot run code.
    """
    run = Path(run)
    if (run / "cloud.pt").is_file():
        return load_cloud(run / "cloud.pt")
    state_path = run / "state.pt"
    if not state_path.is_file():
        raise CheckpointError(
            f"{run} holds neither cloud.pt (written by meanet train) nor state.pt (meanet federate); "
            "pass the folder given to --out / report-dir"
        )
    state = safe_load(state_path)
    arch = state.get("config", {}).get("cloud-model") if isinstance(state.get("config"), dict) else None
    if arch is None or "cloud" not in state:
        raise CheckpointError(
            f"{state_path} is the resumable state of an unfinished 'meanet train' (no cloud.pt yet); "
            "let training finish, or serve a finished run"
        )
    weights: dict[str, torch.Tensor] = state["cloud"]
    matrices = [t for t in weights.values() if t.dim() == 2]  # the classifier is the last (K, features) matrix
    if not matrices:
        raise CheckpointError(f"{state_path}: the cloud weights hold no classifier matrix")
    model = build_cloud(arch, int(matrices[-1].shape[0]))
    try:
        model.load_state_dict(weights, strict=True)  # normalisation buffers included
    except RuntimeError as e:
        raise CheckpointError(f"{state_path}: the cloud weights do not fit {arch} ({e})") from e
    return model.eval()


def incompatibility(old: ServedModel, new: ServedModel) -> str | None:
    """Why ``new`` cannot replace ``old`` for the edges ``old`` serves (None: it can)."""
    if new.num_classes != old.num_classes:
        return f"it has {new.num_classes} classes, the served model {old.num_classes}: it belongs to another run"
    if new.input_size != old.input_size:
        return f"it takes {new.input_size}px images, the served model {old.input_size}px: it belongs to another run"
    if old.class_names is not None and new.class_names is not None and new.class_names != old.class_names:
        differ = [i for i, (a, b) in enumerate(zip(old.class_names, new.class_names, strict=True)) if a != b]
        return f"its class names differ from the served model's at class ids {differ[:5]}: it belongs to another run"
    return None


class ModelSlot:
    """The one reference to the served model, swapped under a lock; readers take it once per model call."""

    def __init__(self, served: ServedModel) -> None:
        self._lock = threading.Lock()
        self._served = served
        self.swaps = 0
        self.refused = 0
        self.last_refusal: str | None = None

    @property
    def current(self) -> ServedModel:
        with self._lock:
            return self._served

    def swap(self, new: ServedModel) -> ServedModel:
        """Serve ``new`` from the next model call on, if it fits; returns the model it replaced.

        Raises :class:`CheckpointError` (and keeps the served model) when ``new`` does not fit.
        """
        with self._lock:
            old = self._served
            reason = incompatibility(old, new)
            if reason is not None:
                self.refused += 1
                self.last_refusal = f"{new.source}: {reason}"
                raise CheckpointError(self.last_refusal)
            self._served = new
            self.swaps += 1
            return old

    def refuse(self, reason: str) -> None:
        with self._lock:
            self.refused += 1
            self.last_refusal = reason

    def describe(self) -> dict[str, Any]:
        with self._lock:
            served = self._served
            swaps, refused, last = self.swaps, self.refused, self.last_refusal
        return {**served.describe(), "swaps": swaps, "refused": refused, "last_refusal": last}


# ------------------------------------------------------------------------------------------------ the watcher
def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class ServingFileWatcher:
    """Loads the serving file into ``slot`` when it changes (polled every ``poll_s`` s) or on :meth:`reload`."""

    def __init__(
        self, path: str | os.PathLike[str], slot: ModelSlot, device: str | torch.device = "cpu", poll_s: float = 0.5
    ) -> None:
        if poll_s <= 0:
            raise ValueError(f"poll_s must be > 0; got {poll_s}")
        self.path, self.slot, self.device, self.poll_s = Path(path), slot, torch.device(device), poll_s
        current = slot.current
        # the file the slot was started from counts as seen; any other state of the file is new
        self._seen = _stat_key(self.path) if current.source == os.fspath(self.path) else None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._force = False
        self._missing_logged = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="meanet-serving-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def reload(self) -> None:
        """Load the file on the next turn even if it looks unchanged (SIGHUP; safe from a signal handler)."""
        self._force = True
        self._wake.set()

    def check(self, force: bool = False) -> bool:
        """Load the file if it changed (or ``force``); True when a new model is now served."""
        key = _stat_key(self.path)  # before reading: a write after it is seen as a change on the next turn
        if key is None:
            if not self._missing_logged:
                log.warning("serving file %s does not exist (yet); still serving the current model", self.path)
                self._missing_logged = True
            return False
        self._missing_logged = False
        if key == self._seen and not force:
            return False
        self._seen = key
        try:
            new = load_served(self.path, self.device)
        except Exception as e:  # corrupt, truncated, another kind of file, weights that do not fit: keep serving
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            self.slot.refuse(f"{self.path}: {first}")
            log.error("refused the new serving file: %s; still serving version %s", first, self.slot.current.version)
            return False
        try:
            old = self.slot.swap(new)
        except CheckpointError as e:
            log.error("refused the new serving file: %s; still serving version %s", e, self.slot.current.version)
            return False
        if old.version is not None and new.version is not None and new.version < old.version:
            log.warning("the serving file went back from version %s to %s (a restarted run?)", old.version, new.version)
        log.info("now serving %s version %s from %s (was version %s)", new.arch, new.version, self.path, old.version)
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            force, self._force = self._force, False
            try:
                self.check(force)
            except Exception:  # never let the watcher die: the next turn tries again
                log.exception("checking the serving file %s failed", self.path)
