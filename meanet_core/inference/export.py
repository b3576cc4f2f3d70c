"""``meanet export``: the edge model of a finished run, as a signed edge model file
(:mod:`meanet_core.inference.edge_model`).

Two kinds of run:

* a federation's report folder (``meanet federate``): ``state.pt`` holds the MEANet as the cloud last broadcast
  it (main block, aggregated edge blocks, hard classes) and the report, whose newest experience's evaluation
  records the routing policy and its calibrated thresholds; the federation's own signing key
  (its run config's ``signing-key``, else ``REPORT_DIR/broadcast-signing.key``) signs it, so the edges pin the
  key they already pin for broadcasts;
* a ``meanet train`` run folder: ``meanet.pt`` and ``train.json``, with the thresholds of ``RUN/eval.json`` when
  ``meanet evaluate`` wrote one; signed by ``RUN/broadcast-signing.key`` (made on the first export).

Both are read weights-only. The class names come from the run (``train.json``), else from the dataset's folder
without reading its images (:func:`meanet_core.data.sources.class_names_of`), else from a file given by the user.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meanet_core.data import data_dir_from_env
from meanet_core.data.sources import class_names_of
from meanet_core.inference.edge_model import policy_from_dict, write_edge_model
from meanet_core.inference.personal import load_personal, policy_from_meta
from meanet_core.models import MEANet, build_meanet
from meanet_core.training.checkpoint import (
    SERVER_STATE_FIELDS,
    CheckpointError,
    load_meanet,
    load_state,
    require,
    safe_load,
)
from meanet_core.trust.signing import ensure_signing_key, key_fingerprint, load_signing_key
from meanet_core.wire.personal_state import PersonalStateError, check_owner, decode_personal


@dataclass(frozen=True)
class ExportSource:
    """What a run holds for an edge: the model, its class names, its routing policy, and its signing key."""

    model: MEANet
    class_names: tuple[str, ...] | None  # None: not found; the caller must give them
    class_names_problem: str  # why they were not found ("" when found)
    policy: dict[str, Any] | None
    policy_origin: str  # where the policy came from, or why there is none
    folder: Path
    configured_key: str  # the run's own signing-key setting ("" = the folder's broadcast-signing.key)
    source: str  # recorded in the file
    # where the run's images come from (load_dataset's arguments: dataset, data_dir, val_fraction, seed, image_size,
    # limit_train): its validation split calibrates an int8 export
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Exported:
    path: Path
    fingerprint: str
    public_key: Path | None  # the public key to pin, when it lies beside the run
    source: ExportSource
    class_names: tuple[str, ...]


def from_report_dir(report_dir: str | os.PathLike[str]) -> ExportSource:
    """The edge model of a federation's report folder (``REPORT_DIR/state.pt``)."""
    folder = Path(report_dir)
    path = folder / "state.pt"
    if not path.is_file():
        hint = " (it holds meanet.pt: pass it with --run)" if (folder / "meanet.pt").is_file() else ""
        raise CheckpointError(
            f"{folder} holds no state.pt of a federation{hint}; pass the report-dir of meanet federate"
        )
    state = safe_load(path)
    if "stage" in state and "position" not in state:
        raise CheckpointError(f"{path} is the state of a 'meanet train' run, not of a federation: pass --run {folder}")
    require(state, SERVER_STATE_FIELDS, path)
    config, weights = state["config"], state["meanet"]
    if not isinstance(config, dict) or not isinstance(weights, dict) or "hard_index" not in weights:
        raise CheckpointError(f"{path}: its config or MEANet weights are not those of a federation; it is damaged")
    index, mean, std = weights["hard_index"], weights.get("normalize.mean"), weights.get("normalize.std")
    if mean is None or std is None:
        raise CheckpointError(f"{path}: the MEANet weights lack the normalisation buffers; it is damaged")
    try:
        model = build_meanet(
            str(config.get("model")),
            int(index.shape[0]),
            state["hard_classes"],
            mean=mean.flatten().tolist(),
            std=std.flatten().tolist(),
        )
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its config does not describe a MEANet this version can build ({e})") from e
    load_state(model, weights, path, "the MEANet")
    names, problem = _dataset_class_names(config.get("dataset"), config.get("data-dir"), model.num_classes)
    policy, origin = _federation_policy(state["report"], path)
    return ExportSource(
        model.eval(), names, problem, policy, origin, folder, str(config.get("signing-key") or ""),
        f"federation {folder.resolve()} at {state['position']}",
        {"dataset": config.get("dataset"), "data_dir": config.get("data-dir") or None,
         "val_fraction": config.get("val-fraction", 0.1), "seed": config.get("seed", 0),
         "limit_train": config.get("limit-train") or None, "image_size": model.input_size},
    )  # fmt: skip


def from_train_run(run: str | os.PathLike[str]) -> ExportSource:
    """The edge model of a ``meanet train`` run folder (``meanet.pt``, ``train.json``, optionally ``eval.json``)."""
    folder = Path(run)
    train_json = folder / "train.json"
    if not train_json.is_file():
        if (folder / "state.pt").is_file() and not (folder / "meanet.pt").is_file():
            raise CheckpointError(
                f"{folder} holds a state.pt but no train.json: an unfinished 'meanet train' (let it finish) or a "
                f"federation's report folder (pass --report-dir {folder})"
            )
        raise CheckpointError(f"{train_json} not found: --run must be a folder written by 'meanet train'")
    try:
        summary = json.loads(train_json.read_text())
        dataset, config = summary["dataset"], summary["config"]
        trained_size = dataset.get("image_size")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{train_json} is not a train.json written by 'meanet train' ({e}); retrain") from e
    model = load_meanet(folder / "meanet.pt", default_input_size=trained_size)
    recorded = dataset.get("class_names")
    if isinstance(recorded, list):
        names: tuple[str, ...] | None = tuple(str(n) for n in recorded)
        problem = ""
    else:  # runs written before train.json recorded them
        names, problem = _dataset_class_names(config.get("dataset"), config.get("data_dir"), model.num_classes)
    policy, origin = _eval_policy(folder / "eval.json")
    data = {k: config.get(k) for k in ("dataset", "data_dir", "val_fraction", "seed", "limit_train", "bad_images")}
    data["image_size"] = model.input_size
    return ExportSource(model, names, problem, policy, origin, folder, "", f"meanet train run {folder.resolve()}", data)


def with_personal(source: ExportSource, state_file: str | os.PathLike[str]) -> ExportSource:
    """``source`` as one device runs it: its personal state (the file under its SuperNode's ``state-dir``: its own
    adaptive + extension blocks, hard classes, class prior and routing policy) on the run's shared main block.

    Raises
    ------
    CheckpointError
        The file is not a personal state, is corrupt, or belongs to another model, class count or federation.
    """
    path = Path(state_file)
    try:
        state = decode_personal(path.read_bytes())
        model = copy.deepcopy(source.model)
        key = source.folder / "broadcast-signing.pub"  # the federation's: a state of another one is refused
        federation = _fingerprint(key) if key.is_file() else str(state.meta["federation"])
        check_owner(state, arch=model.arch, num_classes=model.num_classes, federation=federation)
        load_personal(model, state)
        policy = policy_from_meta(state.meta).as_dict()
    except OSError as e:
        raise CheckpointError(f"cannot read the personal state {path}: {e}") from e
    except PersonalStateError as e:
        raise CheckpointError(f"{path}: {e}") from e
    device = state.meta.get("device", "?")
    return replace(
        source,
        model=model.eval(),
        policy=policy,
        policy_origin=f"device {device}'s personal state {path}",
        source=f"{source.source}, personal blocks of device {device} (experience {state.meta.get('experience')})",
    )


def _fingerprint(public_key: Path) -> str:
    """A federation's name in a personal state: as :func:`fl_client.personal.federation_of` computes it."""
    return hashlib.sha256(public_key.read_bytes()).hexdigest()[:16]


def export(
    source: ExportSource,
    out: str | os.PathLike[str],
    *,
    signing_key: str | os.PathLike[str] | None = None,
    class_names: tuple[str, ...] | None = None,
) -> Exported:
    """Sign ``source``'s model and write it to ``out`` (a ``.pt`` edge model): with ``signing_key`` (a PEM private
    key), else the run's."""

    def write(key: Ed25519PrivateKey, names: tuple[str, ...]) -> Path:
        return write_edge_model(source.model, names, key, out, policy=source.policy, source=source.source)

    return export_signed(source, write, signing_key=signing_key, class_names=class_names)


def export_signed(
    source: ExportSource,
    write: Callable[[Ed25519PrivateKey, tuple[str, ...]], Path],
    *,
    signing_key: str | os.PathLike[str] | None = None,
    class_names: tuple[str, ...] | None = None,
) -> Exported:
    """Resolve the class names and the signing key of an export, then ``write(key, names)`` the file: the one path
    of both formats (``.pt`` here, the edge package in :mod:`meanet_core.inference.onnx_export`)."""
    names = class_names or source.class_names
    if names is None:
        raise FileNotFoundError(
            f"{source.class_names_problem}; give the class names in class-id order with --class-names FILE "
            "(a JSON list, or one name per line)"
        )
    public: Path | None = None
    if signing_key is not None:
        key = load_signing_key(signing_key)
    else:
        key, public = ensure_signing_key(source.configured_key, source.folder)
    path = write(key, tuple(names))
    return Exported(path, key_fingerprint(key.public_key()), public, source, tuple(names))


def read_class_names(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """Class names in class-id order from a JSON list (or ``{"class_names": [...]}``), or one name per line."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        value = json.loads(text)
    except ValueError:
        value = [line.strip() for line in text.splitlines() if line.strip()]
    if isinstance(value, dict):
        value = value.get("class_names", value.get("fine_label_names"))
    if not isinstance(value, list) or not value:
        found = type(value).__name__ if value else "nothing"
        raise ValueError(f"{path} must be a JSON list of class names, or one name per line; found {found}")
    return tuple(str(v) for v in value)


def _dataset_class_names(dataset: Any, data_dir: Any, num_classes: int) -> tuple[tuple[str, ...] | None, str]:
    folder = Path(str(data_dir)).expanduser() if data_dir else data_dir_from_env()
    try:
        names = class_names_of(str(dataset), folder, num_classes)
    except (FileNotFoundError, ValueError) as e:
        return None, str(e)
    if len(names) != num_classes:
        return None, f"the dataset {dataset!r} in {folder} now has {len(names)} classes; the model has {num_classes}"
    return names, ""


def _federation_policy(report: Any, path: Path) -> tuple[dict[str, Any] | None, str]:
    experiences = report.get("experiences") if isinstance(report, dict) else None
    if not experiences:
        return None, f"{path}: no experience has been evaluated yet, so no thresholds are known"
    last = experiences[-1]
    evaluation = last.get("evaluation") if isinstance(last, dict) else None
    policy = evaluation.get("policy") if isinstance(evaluation, dict) else None
    if not isinstance(policy, dict):
        number = last.get("experience", len(experiences) - 1) if isinstance(last, dict) else len(experiences) - 1
        return None, f"{path}: experience {number} (the newest) has not been evaluated yet, so no thresholds are known"
    try:
        return policy_from_dict(policy).as_dict(), f"{path}: the evaluation of experience {last.get('experience')}"
    except ValueError as e:
        raise CheckpointError(f"{path}: the report's policy is damaged ({e})") from e


def _eval_policy(path: Path) -> tuple[dict[str, Any] | None, str]:
    if not path.is_file():
        return None, f"{path} does not exist (meanet evaluate --policy calibrated writes the thresholds there)"
    try:
        policy = json.loads(path.read_text()).get("policy")
        return policy_from_dict(policy).as_dict(), str(path)
    except (ValueError, AttributeError, TypeError) as e:
        raise CheckpointError(f"{path} is not an eval.json of meanet evaluate with a policy ({e}); delete it") from e


__all__ = [
    "ExportSource",
    "Exported",
    "export",
    "export_signed",
    "from_report_dir",
    "from_train_run",
    "read_class_names",
]
