"""An edge's personal round and its evaluation in a federation with ``personal = true``.

**Train** (scope ``"personal"``): the edge loads the shared main block from the broadcast, its own blocks from its
personal store (:mod:`fl_client.personal`; the broadcast's edge blocks when it has none yet), makes them its own on
its images (:func:`meanet_core.inference.personal.personalise`: class prior, hard classes, adaptive + extension,
routing policy, on a validation split carved from its own images), keeps the result, and replies with metrics only:
no array leaves the device.

**Evaluate**: on its own test images (a label-skewed fleet: in its own class proportions), the device as it runs
(its personal model and policy, the cloud behind it) and, for the per-device table, the global MEANet as broadcast
(the cloud's policy) and the shared main block alone (:data:`~meanet_core.keys.PERSONAL_METRICS`).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from fl_client.personal import PersonalStore, federation_of
from meanet_core import keys
from meanet_core.config import FederationConfig
from meanet_core.data import ImageTensors
from meanet_core.data.datasets import train_val_split
from meanet_core.data.streams import EdgeView
from meanet_core.inference.engine import AdaptiveEngine, CloudBackend, Predictions
from meanet_core.inference.evaluation import summarize
from meanet_core.inference.personal import (
    MEMORY_PREFIX,
    load_personal,
    memory_arrays,
    personal_arrays,
    personalise,
    policy_from_meta,
    split_memory,
)
from meanet_core.inference.policies import CalibratedPolicy, Policy
from meanet_core.models import MEANet
from meanet_core.training.stages import predict_logits
from meanet_core.trust.broadcast import digest

VAL_FRACTION = 0.15
"""The share of an edge's images of an experience it keeps aside to choose and calibrate its personal blocks."""


def store_for(context: Context, cfg: FederationConfig, view: EdgeView, client: int, verify_key: Any) -> PersonalStore:
    return PersonalStore(
        context, arch=cfg.model, num_classes=view.num_classes, federation=federation_of(verify_key), device=client
    )


def personal_train(
    msg: Message, cfg: FederationConfig, store: PersonalStore, model: MEANet, view: EdgeView, client: int, cycle: Any
) -> Message:
    """A personal round (see the module docstring); ``model`` is built from the broadcast."""
    config = msg.content[keys.CONFIG]
    e = int(config[keys.EXPERIENCE])  # type: ignore[arg-type]
    loaded_digest = digest(model.state_dict())
    previous = store.load()
    train, val = train_val_split(view.data, VAL_FRACTION, cfg.seed + client)
    # what it held before: its validation memory and label counts of earlier experiences (the prior, the hard
    # classes and the gate weigh them too; a class-incremental stream would otherwise forget them here)
    old = previous.arrays if previous is not None else {}
    memory = split_memory(old, e)
    if len(memory) and memory.x.shape[1:] == val.x.shape[1:]:
        val_all = ImageTensors(torch.cat([memory.x, val.x]), torch.cat([memory.y, val.y]))
    else:
        val_all = val
    counts = held_counts(previous.meta if previous is not None else {}, e, view.data.y, view.num_classes)
    total = torch.tensor(np.sum(list(counts.values()), axis=0), dtype=torch.int64)
    started, t0 = time.time(), time.perf_counter()
    outcome = personalise(
        model,
        train,
        val_all,
        cfg.stage(cfg.extension_stage_epochs, cycle),
        previous=previous,
        hard_fraction=cfg.hard_fraction,
        hard_method=cfg.hard_method,
        target_cloud_fraction=cfg.target_cloud_fraction,
        cloud_accuracy=float(config.get(keys.CLOUD_ACCURACY, 0.0)),  # type: ignore[arg-type]
        seed=cfg.seed + client,
        held=torch.repeat_interleave(torch.arange(view.num_classes), total),
    )
    seconds = time.perf_counter() - t0
    if digest(model.state_dict()) != loaded_digest:  # an internal invariant: training never touches the main block
        raise RuntimeError("the main block changed during personal training")
    own = personal_arrays(model)
    kept = {"experience": e, "label_counts": counts, **outcome.meta()}
    store.save({**own, **memory_arrays(old, val, e, cfg.seed + client)}, kept)
    val_stats = outcome.val
    metrics = MetricRecord(
        {
            keys.NUM_EXAMPLES: outcome.trained,
            keys.TRAIN_SECONDS: seconds,
            "train-loss": outcome.history[-1]["loss"] if outcome.history else 0.0,
            "num-hard": len(outcome.hard_classes),
            "use-extension": int(outcome.policy.use_extension),
            "prior-strength": outcome.prior_strength,
            "val-main-shared": val_stats.get("main_shared", 0.0),
            "val-main-personal": val_stats.get("main_personal", 0.0),
            "val-hard-main": val_stats.get("hard_main", 0.0),
            "val-hard-edge": val_stats.get("hard_edge", 0.0),
            "state-refused": int(bool(store.refused)),
        }
    )
    info = ConfigRecord(
        {
            keys.MAIN_DIGEST: loaded_digest,
            keys.CLIENT: client,
            keys.TRAIN_STARTED: started,
            keys.TRAIN_ENDED: started + seconds,
            keys.HARD_CLASSES: outcome.hard_classes,
            keys.PERSONAL_DIGEST: digest(own, prefix=""),
            keys.PERSONAL_BASE: digest(_blocks(previous.arrays), prefix="") if previous is not None else "",
        }
    )
    return Message(content=RecordDict({keys.METRICS: metrics, keys.EDGE_INFO: info}), reply_to=msg)


def _blocks(arrays: Any) -> dict[str, Any]:
    """A personal state's model entries (its validation memory left out): what the digests cover."""
    return {k: v for k, v in arrays.items() if not k.startswith(MEMORY_PREFIX)}


def held_counts(meta: Any, experience: int, labels: torch.Tensor, num_classes: int) -> dict[str, list[int]]:
    """Label counts per experience (``str(experience) -> K counts``): the earlier experiences' from a personal
    state's meta, this one's from ``labels`` (the images the device holds now)."""
    earlier = meta.get("label_counts")
    out = {
        str(e): [int(c) for c in row]
        for e, row in (earlier.items() if isinstance(earlier, dict) else [])
        if str(e).isdigit() and int(e) < experience and isinstance(row, list) and len(row) == num_classes
    }
    out[str(experience)] = np.bincount(labels.numpy(), minlength=num_classes)[:num_classes].tolist()
    return out


def _predict(engine: AdaptiveEngine, test: ImageTensors) -> Predictions:
    return Predictions.concat([engine.predict(test.x[i : i + 256]) for i in range(0, len(test), 256)])


def personal_metrics(
    store: PersonalStore, model: MEANet, policy: Policy, cloud: CloudBackend, test: ImageTensors
) -> tuple[Predictions, dict[str, float]]:
    """The device as it runs (its personal model, or the global one before it has any) and the per-device table's
    references, on ``test``: returns the device's predictions and :data:`~meanet_core.keys.PERSONAL_METRICS`."""
    y = test.y
    main_shared = predict_logits(lambda x: model.eval().forward_main(x).logits, test).argmax(1)
    global_pred = _predict(AdaptiveEngine(model, policy, cloud, optimize=True), test)
    state = store.load()
    own = copy.deepcopy(model)
    own_policy: Policy = policy
    if state is not None:
        load_personal(own, state)
        own_policy = policy_from_meta(state.meta)
    pred = _predict(AdaptiveEngine(own, own_policy, cloud, optimize=True), test)
    no_cloud = CalibratedPolicy(0.0, 0.0, use_extension=getattr(own_policy, "use_extension", True))
    edge = _predict(AdaptiveEngine(own, no_cloud, cloud, optimize=True), test)
    on_hard = own.is_hard(y) if own.num_hard else torch.zeros_like(y, dtype=torch.bool)
    own_main = predict_logits(lambda x: own.eval().forward_main(x).logits, test).argmax(1)

    def accuracy(labels: torch.Tensor, mask: torch.Tensor | None = None) -> float:
        right = labels == y
        right = right if mask is None else right[mask]
        return float(right.float().mean()) if len(right) else 0.0

    return pred, {
        "accuracy-main": accuracy(main_shared),
        "accuracy-global": float(summarize(global_pred, y)["accuracy"] or 0.0),
        "accuracy-personal-edge": accuracy(edge.labels),
        "hard-main": accuracy(own_main, on_hard),
        "hard-extension": accuracy(edge.labels, on_hard),
        "hard-images": float(on_hard.sum()),
        "num-hard": float(own.num_hard if state is not None else 0),
        "use-extension": float(bool(getattr(own_policy, "use_extension", True))) if state is not None else 0.0,
        "prior-strength": float(state.meta.get("prior_strength", 0.0)) if state is not None else 0.0,
    }
