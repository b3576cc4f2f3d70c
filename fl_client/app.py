"""The edge device as a Flower ClientApp.

``train``: load the broadcast MEANet with its main block frozen, fine-tune only the adaptive and extension blocks on
this client's images of the current experience (hard-class samples), reply with just those arrays, the number of
examples, and a digest of the main block as it was loaded (so the server can check nobody changed it). In a *main
round* (instruction config ``scope = "main"``) it trains the main block instead, on all its images of the experience,
distilling the logits of the classes seen before from the block it received (LwF), and replies with ``main.*`` only.
The images are the SuperNode's own ``data-dir`` when its node config names one (:mod:`fl_client.local_data`), else
its partition of the shared stream (:func:`fl_client.data.edge_data`).

``evaluate``: run the adaptive inference engine on this client's test images (held out from its own ``data-dir``, or
its shard of the shared test set); complex samples go to the cloud: the real offload service over HTTPS when the run
config names a ``cloud-url`` (credentials from the SuperNode's node config, :mod:`fl_client.cloud_link`), else the
same service the cloud server runs on loopback for a run without one (the instruction's ``offload-url``), else the cloud
model shipped in a hand-built instruction (``LocalCloud``, tests), else nowhere (the edge's own answers, flagged as
fallbacks). The reply counts the inputs offloaded, the fallbacks and the bytes sent.

Both check the cloud's signature on the broadcast against the pinned public key **before** loading anything, and
refuse (an error reply, with the reason logged) an unsigned, tampered or replayed broadcast: see
:mod:`meanet_core.trust.signing` and :func:`verify`.
"""

from __future__ import annotations

import time
from logging import ERROR
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import log

from fl_client.cloud_link import backend_name, loopback_cloud, remote_cloud
from fl_client.data import client_index, edge_data
from fl_client.faults import claimed, inject
from fl_client.offload import RemoteCloud
from fl_client.personal_round import personal_metrics, personal_train, store_for
from fl_client.predict import EdgeOnly
from fl_client.transport import broadcast_state, encode_reply
from meanet_core import keys
from meanet_core.config import FederationConfig
from meanet_core.inference.engine import AdaptiveEngine, CloudBackend, LocalCloud, Predictions
from meanet_core.inference.evaluation import summarize
from meanet_core.inference.policies import CalibratedPolicy, PaperPolicy, Policy
from meanet_core.models import build_cloud
from meanet_core.training.stages import train_extension, train_main
from meanet_core.trust.broadcast import digest, model_from_broadcast, scoped_state
from meanet_core.trust.signing import (
    VERIFY_KEY_FILE,
    BroadcastPosition,
    BroadcastRejected,
    load_verify_key,
    verify_broadcast,
)

app = ClientApp()


def _setup(msg: Message, context: Context) -> tuple[FederationConfig, int, int, list[int]]:
    cfg = FederationConfig.from_run_config(dict(context.run_config))
    config = msg.content[keys.CONFIG]
    experience = int(config[keys.EXPERIENCE])  # type: ignore[arg-type]
    hard = [int(c) for c in config[keys.HARD_CLASSES]]  # type: ignore[union-attr]
    return cfg, client_index(dict(context.node_config), cfg), experience, hard


def _policy(msg: Message, cfg: FederationConfig) -> Policy:
    """The routing policy the server sent (calibrated thresholds), else the paper's entropy rule from the config."""
    config = msg.content[keys.CONFIG]
    if config.get(keys.POLICY) == "calibrated":
        try:
            use_extension = config.get(keys.USE_EXTENSION, True)
            if not isinstance(use_extension, bool):
                raise TypeError(f"{keys.USE_EXTENSION} must be a bool, not {use_extension!r}")
            return CalibratedPolicy(
                main_threshold=float(config[keys.MAIN_THRESHOLD]),  # type: ignore[arg-type]
                extension_threshold=float(config[keys.EXTENSION_THRESHOLD]),  # type: ignore[arg-type]
                use_extension=use_extension,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"the server asked for the calibrated policy without valid thresholds: {e}") from e
    return PaperPolicy(cfg.entropy_threshold)


def pinned_verify_key(context: Context, cfg: FederationConfig) -> Path:
    """The public key this edge trusts: the SuperNode's ``--node-config verify-key`` (set by whoever runs the edge
    device), else the run config's ``verify-key``, else ``REPORT_DIR/broadcast-signing.pub`` (simulation and loopback
    runs, where the server writes it before its first broadcast)."""
    pinned = context.node_config.get("verify-key")
    if isinstance(pinned, str) and pinned:
        return Path(pinned).expanduser()
    if cfg.verify_key:
        return Path(cfg.verify_key).expanduser()
    return cfg.report_path() / VERIFY_KEY_FILE


def verify(msg: Message, context: Context, cfg: FederationConfig, client: int, purpose: str) -> BroadcastPosition:
    """Check the broadcast's signature and position; remember the position in ``context.state``.

    Raises
    ------
    BroadcastRejected
        Unsigned, tampered (arrays, config or cloud arrays), signed by another key, or older than a broadcast this
        edge already accepted in this run. The reason is logged, and Flower turns the exception into an error reply.
    """
    try:
        key_path = pinned_verify_key(context, cfg)
        try:
            key = load_verify_key(key_path)
        except (FileNotFoundError, ValueError) as e:
            raise BroadcastRejected(f"cannot check the broadcast: {e}") from e
        content = msg.content
        if keys.ARRAYS not in content.array_records or keys.CONFIG not in content.config_records:
            raise BroadcastRejected(f"the broadcast has no '{keys.ARRAYS}' arrays or no '{keys.CONFIG}' config")
        cloud = content.array_records.get(keys.CLOUD_ARRAYS)
        saved = context.state.config_records.get(keys.BROADCAST_STATE)
        newest = None
        if saved is not None:
            newest = BroadcastPosition(int(saved[keys.EXPERIENCE]), int(saved[keys.BROADCAST_ROUND]))  # type: ignore[arg-type]
        position = verify_broadcast(
            key,
            {k: v.numpy() for k, v in content.array_records[keys.ARRAYS].items()},
            dict(content.config_records[keys.CONFIG]),
            purpose=purpose,
            run_id=context.run_id,
            cloud_arrays={k: v.numpy() for k, v in cloud.items()} if cloud is not None else None,
            newest=newest,
        )
    except BroadcastRejected as e:
        log(ERROR, "edge %d: refused the %s broadcast: %s", client, purpose, e)
        raise
    context.state[keys.BROADCAST_STATE] = ConfigRecord(
        {keys.EXPERIENCE: position.experience, keys.BROADCAST_ROUND: position.round}
    )
    return position


@app.train()
def train(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)  # many clients share the machine in simulation
    cfg, client, e, hard = _setup(msg, context)
    position = verify(msg, context, cfg, client, "train")  # before anything of the broadcast is loaded
    config = msg.content[keys.CONFIG]
    scope = str(config.get(keys.SCOPE, "edge"))  # verified with the rest of the config
    if scope not in keys.SCOPES:
        raise ValueError(f"the instruction's scope is {scope!r}; this edge trains one of {', '.join(keys.SCOPES)}")
    state = broadcast_state(msg, context, scope)  # a change: rebuilt from the state this edge holds
    # the node's own data-dir when its node config names one, else its partition of the shared stream
    view = edge_data("train", config, context.node_config, cfg, client, e, state)
    model = model_from_broadcast(cfg.model, view.num_classes, hard, state, view.mean, view.std, scope)
    if scope == "personal":  # the edge's own blocks: trained, kept, never sent (fl_client.personal_round)
        store = store_for(context, cfg, view, client, pinned_verify_key(context, cfg))
        return personal_train(msg, cfg, store, model, view, client, cfg.round_cycle(scope, position.round))
    loaded_digest = digest(model.state_dict())
    sent = {k: v.numpy().copy() for k, v in scoped_state(model.state_dict(), scope).items()}
    data = view.data
    # channels-last: 1.15x faster training on CPU (benchmarks/perf_training.py), same maths
    # the experience's rounds of this scope run one learning-rate schedule (FederationConfig.round_cycle)
    cycle = cfg.round_cycle(scope, position.round)
    epochs = cfg.local_epochs if scope == "main" else cfg.extension_stage_epochs
    stage, seed = cfg.stage(epochs, cycle), cfg.seed + client
    started, t0 = time.time(), time.perf_counter()
    history = []
    if scope == "main":  # a main round: every local image, the classes seen before kept by distillation (LwF)
        n_trained = len(data)
        old = [int(c) for c in config.get(keys.OLD_CLASSES, [])]  # type: ignore[union-attr]
        if n_trained:
            history = train_main(
                model,
                data,
                stage,
                distill_classes=old,
                distill_weight=cfg.main_distill,
                # after the first experience, a softmax over the classes this edge holds: its new-class images must
                # not push the old classes' logits down (they did, to 0.00 on the old classes); the cloud's epochs
                # on every class seen, which follow, set old against new
                label_classes=sorted({int(c) for c in data.y.tolist()}) if old else (),
                seed=seed,
                progress=False,
                channels_last=True,
            )
    else:
        n_trained = int(model.is_hard(data.y).sum())
        if n_trained:
            history = train_extension(model, data, stage, seed=seed, progress=False, channels_last=True)
        if digest(model.state_dict()) != loaded_digest:  # an internal invariant: training never touches the main block
            raise RuntimeError("the main block changed during edge fine-tuning")
    seconds = time.perf_counter() - t0
    ended = started + seconds
    metrics = MetricRecord(
        {
            keys.NUM_EXAMPLES: claimed(n_trained, cfg.faults, client),  # unless a test makes this edge lie
            "train-loss": history[-1]["loss"] if history else 0.0,
            "train-accuracy": history[-1]["train_accuracy"] if history else 0.0,
            keys.TRAIN_SECONDS: seconds,
        }
    )
    trained = {
        k: v.numpy()
        for k, v in inject(ArrayRecord(scoped_state(model.state_dict(), scope)), cfg.faults, client, sent).items()
    }
    t1 = time.perf_counter()
    record, encoding = encode_reply(trained, sent, cfg.upload_encoding, context, e, scope)
    info = ConfigRecord(
        {
            keys.MAIN_DIGEST: loaded_digest,
            keys.CLIENT: client,
            keys.TRAIN_STARTED: started,
            keys.TRAIN_ENDED: ended,
            keys.ENCODING: encoding,
            keys.ENCODE_SECONDS: time.perf_counter() - t1,
        }
    )
    content = RecordDict({keys.ARRAYS: record, keys.METRICS: metrics, keys.EDGE_INFO: info})
    return Message(content=content, reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The server asks this edge's name (:data:`~meanet_core.keys.DEVICE_NAME`): its partition id, by which it samples
    the fleet so that a rerun of one seed trains the same devices. Nothing else is answered."""
    asked = msg.content.config_records.get(keys.CONFIG)
    if asked is None or asked.get(keys.QUERY) != keys.DEVICE_NAME:
        raise ValueError(f"this edge answers only the query {keys.QUERY}={keys.DEVICE_NAME!r}; got {asked}")
    cfg = FederationConfig.from_run_config(dict(context.run_config))
    name = str(client_index(dict(context.node_config), cfg))
    return Message(RecordDict({keys.EDGE_INFO: ConfigRecord({keys.DEVICE_NAME: name})}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    cfg, client, e, hard = _setup(msg, context)
    verify(msg, context, cfg, client, "evaluate")
    state = broadcast_state(msg, context)
    view = edge_data("evaluate", msg.content[keys.CONFIG], context.node_config, cfg, client, e, state)
    model = model_from_broadcast(cfg.model, view.num_classes, hard, state, view.mean, view.std)
    cloud: CloudBackend
    if cfg.cloud_url:  # the real cloud offload service; credentials from this SuperNode's node config
        cloud = remote_cloud(cfg.cloud_url, model, context.node_config)
    elif isinstance(url := msg.content[keys.CONFIG].get(keys.OFFLOAD_URL), str) and url:  # the server's loopback one
        cloud = loopback_cloud(url, model, context.node_config, cfg.report_path())
    elif keys.CLOUD_ARRAYS in msg.content:  # a hand-built instruction with the cloud model in it (tests)
        cloud_model = build_cloud(cfg.cloud_model, view.num_classes, mean=view.mean, std=view.std)
        cloud_model.load_state_dict(msg.content[keys.CLOUD_ARRAYS].to_torch_state_dict())  # type: ignore[union-attr]
        cloud = LocalCloud(cloud_model, optimize=True)
    else:  # no cloud: the inputs the policy would offload keep the edge's answer, flagged as fallbacks
        cloud = EdgeOnly()
    test = view.data
    if not len(test):
        raise ValueError(f"edge {client} has no test image at experience {e}: nothing to evaluate")
    extra: dict[str, float] = {}
    try:
        if cfg.personal:  # the device as it runs (its own model), beside the global MEANet and the shared main block
            store = store_for(context, cfg, view, client, pinned_verify_key(context, cfg))
            pred, extra = personal_metrics(store, model, _policy(msg, cfg), cloud, test)
        else:
            engine = AdaptiveEngine(model, _policy(msg, cfg), cloud, optimize=True)  # fused BatchNorm, channels-last
            pred = Predictions.concat([engine.predict(test.x[i : i + 256]) for i in range(0, len(test), 256)])
    finally:
        if isinstance(cloud, RemoteCloud):
            cloud.close()
    summary = summarize(pred, test.y)
    metrics = MetricRecord(
        {
            keys.NUM_EXAMPLES: len(test),
            keys.ACCURACY: summary["accuracy"],
            keys.EXIT_MAIN: summary["exits"]["main"]["fraction"],
            keys.EXIT_EXTENSION: summary["exits"]["extension"]["fraction"],
            keys.EXIT_CLOUD: summary["exits"]["cloud"]["fraction"],
            keys.MACS_PER_IMAGE: summary["macs_per_image"],
            keys.ENERGY_PER_IMAGE: summary["energy_per_image_joule"],
            keys.BYTES_OFFLOADED_PER_IMAGE: summary["bytes_offloaded_per_image"],
            keys.OFFLOADED: int((pred.bytes_sent > 0).sum()),
            keys.FALLBACKS: summary["fallbacks"],
            keys.BYTES_SENT: int(pred.bytes_sent.sum()),
            **extra,
        }
    )
    info = ConfigRecord({keys.CLIENT: client, keys.CLOUD_BACKEND: backend_name(cloud)})
    return Message(content=RecordDict({keys.METRICS: metrics, keys.EDGE_INFO: info}), reply_to=msg)
