"""Signed broadcasts: the signing module on its own, then the real ClientApp refusing bad broadcasts.

The ClientApp tests build the broadcast with the server's own code (``SignedMEANetStrategy.signed_config``) and hand
a real Flower ``Message`` and ``Context`` to the real ``ClientApp`` (``fl_client.app.app``), as Flower's runtime does.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from meanet_core import keys
from meanet_core.trust.signing import (
    SIGNING_KEY_FILE,
    VERIFY_KEY_FILE,
    BroadcastPosition,
    BroadcastRejected,
    ensure_signing_key,
    load_verify_key,
    sign_broadcast,
    verify_broadcast,
)
from strategies.signed import SignedMEANetStrategy

RUN = 7


def _state() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "main.conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "main.bn.num_batches_tracked": np.array(12, dtype=np.int64),
        "main.fc.weight": rng.standard_normal((10, 4)).astype(np.float32),
        "normalize.mean": np.array([0.5, 0.4, 0.3], dtype=np.float32),
        "hard_classes": np.array([3, 8], dtype=np.int64),
        "adaptive.conv.weight": rng.standard_normal((2, 3, 3, 3)).astype(np.float32),
        "extension.fc.weight": rng.standard_normal((3, 6)).astype(np.float32),
    }


def _config(experience: int = 1, rnd: int = 2, hard: list[int] | None = None) -> dict[str, Any]:
    return {
        keys.EXPERIENCE: experience,
        keys.HARD_CLASSES: [3, 8] if hard is None else hard,
        keys.BROADCAST_ROUND: rnd,
        keys.POLICY: "calibrated",
        keys.MAIN_THRESHOLD: 0.7,
    }


def _signed(key: Ed25519PrivateKey, state: dict[str, np.ndarray], config: dict[str, Any], **kw: Any) -> dict:
    signature = sign_broadcast(key, state, config, purpose=kw.pop("purpose", "train"), run_id=RUN, **kw)
    return {**config, keys.BROADCAST_SIGNATURE: signature}


def _flipped(array: np.ndarray) -> np.ndarray:
    raw = bytearray(np.ascontiguousarray(array).tobytes())
    raw[len(raw) // 2] ^= 0x01
    return np.frombuffer(bytes(raw), dtype=array.dtype).reshape(array.shape).copy()


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_round_trip_returns_the_signed_position(key: Ed25519PrivateKey) -> None:
    state, config = _state(), _config()
    signed = _signed(key, state, config)
    signed[keys.SERVER_ROUND] = 5  # injected by Flower's strategy after signing: not covered, so harmless
    position = verify_broadcast(key.public_key(), state, signed, purpose="train", run_id=RUN)
    assert position == BroadcastPosition(1, 2)
    # the same position again (train then evaluate of one round, or a re-sent copy) and a newer one are accepted
    assert verify_broadcast(key.public_key(), state, signed, purpose="train", run_id=RUN, newest=position) == position
    assert verify_broadcast(
        key.public_key(), state, signed, purpose="train", run_id=RUN, newest=BroadcastPosition(0, 9)
    ) == BroadcastPosition(1, 2)


@pytest.mark.parametrize("name", list(_state()))
def test_a_flipped_byte_in_any_array_is_refused(key: Ed25519PrivateKey, name: str) -> None:
    state = _state()
    signed = _signed(key, state, _config())
    tampered = {**state, name: _flipped(state[name])}
    with pytest.raises(BroadcastRejected, match="does not match its signature"):
        verify_broadcast(key.public_key(), tampered, signed, purpose="train", run_id=RUN)


@pytest.mark.parametrize(
    "change",
    [
        {keys.HARD_CLASSES: [3, 9]},  # a changed hard class
        {keys.HARD_CLASSES: [3]},  # a dropped hard class
        {keys.EXPERIENCE: 2},  # a claimed newer experience
        {keys.BROADCAST_ROUND: 3},  # a claimed newer round
        {keys.MAIN_THRESHOLD: 0.0},  # routing thresholds are signed too
        {"extra": 1},  # nothing can be added
    ],
)
def test_a_changed_config_entry_is_refused(key: Ed25519PrivateKey, change: dict[str, Any]) -> None:
    state = _state()
    signed = _signed(key, state, _config())
    with pytest.raises(BroadcastRejected, match="does not match its signature"):
        verify_broadcast(key.public_key(), state, {**signed, **change}, purpose="train", run_id=RUN)


def test_an_older_round_or_experience_is_refused_as_a_replay(key: Ed25519PrivateKey) -> None:
    state = _state()
    old = _signed(key, state, _config(experience=1, rnd=1))
    with pytest.raises(BroadcastRejected, match="replayed broadcast"):
        verify_broadcast(key.public_key(), state, old, purpose="train", run_id=RUN, newest=BroadcastPosition(1, 2))
    older_experience = _signed(key, state, _config(experience=0, rnd=5))
    with pytest.raises(BroadcastRejected, match="replayed broadcast"):
        verify_broadcast(
            key.public_key(), state, older_experience, purpose="train", run_id=RUN, newest=BroadcastPosition(1, 1)
        )


def test_a_missing_signature_is_refused(key: Ed25519PrivateKey) -> None:
    with pytest.raises(BroadcastRejected, match="unsigned"):
        verify_broadcast(key.public_key(), _state(), _config(), purpose="train", run_id=RUN)
    with pytest.raises(BroadcastRejected, match="expected bytes"):
        verify_broadcast(
            key.public_key(), _state(), {**_config(), keys.BROADCAST_SIGNATURE: "00"}, purpose="train", run_id=RUN
        )


def test_a_wrong_key_another_run_or_another_purpose_is_refused(key: Ed25519PrivateKey) -> None:
    state = _state()
    signed = _signed(key, state, _config())
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(BroadcastRejected, match="does not match"):
        verify_broadcast(other, state, signed, purpose="train", run_id=RUN)
    with pytest.raises(BroadcastRejected, match="does not match"):
        verify_broadcast(key.public_key(), state, signed, purpose="train", run_id=RUN + 1)
    with pytest.raises(BroadcastRejected, match="does not match"):
        verify_broadcast(key.public_key(), state, signed, purpose="evaluate", run_id=RUN)


def test_the_cloud_arrays_of_an_evaluation_broadcast_are_covered(key: Ed25519PrivateKey) -> None:
    state, cloud = _state(), {"fc.weight": np.ones((10, 4), dtype=np.float32)}
    signed = _signed(key, state, _config(), purpose="evaluate", cloud_arrays=cloud)
    verify_broadcast(key.public_key(), state, signed, purpose="evaluate", run_id=RUN, cloud_arrays=cloud)
    for bad in ({"fc.weight": _flipped(cloud["fc.weight"])}, None):
        with pytest.raises(BroadcastRejected, match="does not match"):
            verify_broadcast(key.public_key(), state, signed, purpose="evaluate", run_id=RUN, cloud_arrays=bad)


def test_ensure_signing_key_makes_a_private_key_once_and_publishes_the_public_key(tmp_path: Path) -> None:
    key, public = ensure_signing_key("", tmp_path)
    private = tmp_path / SIGNING_KEY_FILE
    assert public == tmp_path / VERIFY_KEY_FILE
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    again, _ = ensure_signing_key("", tmp_path)  # a restarted server keeps its key
    assert again.public_key() == key.public_key() == load_verify_key(public)
    _, public2 = ensure_signing_key(str(private), tmp_path / "other")
    assert load_verify_key(public2) == key.public_key()
    with pytest.raises(ValueError, match=r"expected an Ed25519 private key|not an unencrypted PEM"):
        ensure_signing_key(str(public), tmp_path)


# ------------------------------------------------------------------------------------------------ the ClientApp
@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A run config on the digits data, a broadcast MEANet built as the server builds it, a signing strategy."""
    from meanet_core.config import FederationConfig
    from meanet_core.data.streams import stream_for
    from meanet_core.models import build_cloud, build_meanet

    report = tmp_path_factory.mktemp("report")
    run_config: dict[str, Any] = {
        "dataset": "digits", "model": "resnet20_cifar", "cloud-model": "resnet20_cifar", "num-clients": 2,
        "experiences": 1, "rounds-per-experience": 2, "main-rounds": 0, "batch-size": 32, "limit-train": 400,
        "report-dir": str(report),
    }  # fmt: skip
    cfg = FederationConfig.from_run_config(run_config)
    splits, _ = stream_for(cfg)
    signing_key, _ = ensure_signing_key("", report)  # as the server does; the edge reads REPORT_DIR's public key
    model = build_meanet(cfg.model, splits.num_classes, [3, 8], mean=splits.mean, std=splits.std)
    cloud = build_cloud(cfg.cloud_model, splits.num_classes, mean=splits.mean, std=splits.std)
    strategy = SignedMEANetStrategy(signing_key, run_id=RUN)
    strategy.cloud_arrays = ArrayRecord(cloud.state_dict())
    return {"run_config": run_config, "arrays": ArrayRecord(model.state_dict()), "strategy": strategy}


def _context(edge: dict[str, Any], **node_config: Any) -> Context:
    nodes = {"partition-id": 0, "num-partitions": 2, **node_config}
    return Context(run_id=RUN, node_id=1, node_config=nodes, state=RecordDict(), run_config=edge["run_config"])


def _instruction(edge: dict[str, Any], rnd: int, purpose: str = "train", arrays: ArrayRecord | None = None) -> Message:
    """What the server's strategy sends: signed before Flower injects server-round."""
    strategy: SignedMEANetStrategy = edge["strategy"]
    arrays = arrays or edge["arrays"]
    config = ConfigRecord({keys.EXPERIENCE: 0, keys.HARD_CLASSES: [3, 8]})
    cloud = strategy.cloud_arrays if purpose == "evaluate" else None
    signed = strategy.signed_config(rnd, arrays, config, purpose, cloud)
    signed[keys.SERVER_ROUND] = rnd
    content = RecordDict({keys.ARRAYS: arrays, keys.CONFIG: signed})
    if cloud is not None:
        content[keys.CLOUD_ARRAYS] = cloud
    return Message(content=content, dst_node_id=1, message_type=purpose)


def _tampered(record: ArrayRecord, name: str, array: np.ndarray) -> ArrayRecord:
    out = ArrayRecord()
    for k, v in record.items():
        out[k] = Array(array) if k == name else v
    return out


@pytest.mark.usefixtures("task_identity")
def test_the_client_accepts_a_signed_broadcast_then_refuses_a_replay(edge: dict[str, Any]) -> None:
    from fl_client.app import app

    context = _context(edge)
    reply = app(_instruction(edge, rnd=2), context)
    assert not reply.has_error()
    assert all(k.startswith(keys.EDGE_PREFIXES) for k in reply.content[keys.ARRAYS])  # type: ignore[union-attr]
    saved = context.state.config_records[keys.BROADCAST_STATE]
    assert (saved[keys.EXPERIENCE], saved[keys.BROADCAST_ROUND]) == (0, 2)
    with pytest.raises(BroadcastRejected, match=r"replayed broadcast: signed for experience 0, round 1"):
        app(_instruction(edge, rnd=1), context)  # an older (validly signed) round
    with pytest.raises(BroadcastRejected, match=r"replayed broadcast"):
        app(_instruction(edge, rnd=1, purpose="evaluate"), context)


@pytest.mark.usefixtures("task_identity")
def test_the_client_refuses_a_tampered_main_block_before_loading_it(edge: dict[str, Any]) -> None:
    from fl_client.app import app

    good = _instruction(edge, rnd=1)
    name = next(k for k in good.content[keys.ARRAYS] if k.startswith(keys.MAIN_PREFIX) and k.endswith("weight"))
    original = good.content[keys.ARRAYS][name].numpy()  # type: ignore[union-attr]
    for bad in (_flipped(original), original[:1]):  # a flipped byte; a wrong shape, which loading would reject
        tampered = _tampered(good.content[keys.ARRAYS], name, bad)  # type: ignore[arg-type]
        good.content[keys.ARRAYS] = tampered
        context = _context(edge)
        with pytest.raises(BroadcastRejected, match="does not match its signature"):
            app(good, context)  # BroadcastRejected, not the loader's "does not fit": verified before loading
        assert keys.BROADCAST_STATE not in context.state.config_records


@pytest.mark.usefixtures("task_identity")
def test_the_client_refuses_unsigned_wrongly_keyed_and_tampered_evaluation_broadcasts(
    edge: dict[str, Any], tmp_path: Path
) -> None:
    from fl_client.app import app

    unsigned = _instruction(edge, rnd=1)
    del unsigned.content[keys.CONFIG][keys.BROADCAST_SIGNATURE]  # type: ignore[union-attr]
    with pytest.raises(BroadcastRejected, match="unsigned"):
        app(unsigned, _context(edge))

    # the SuperNode pins another key in its node config: the node config wins over the run's report dir
    other = tmp_path / "other.pub"
    other.write_bytes(
        load_verify_key(Path(edge["run_config"]["report-dir"]) / VERIFY_KEY_FILE)
        .public_bytes_raw()
        .hex()
        .encode()  # not a key file at all
    )
    with pytest.raises(BroadcastRejected, match="not a PEM or OpenSSH public key"):
        app(_instruction(edge, rnd=1), _context(edge, **{"verify-key": str(other)}))
    from cryptography.hazmat.primitives import serialization

    other.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(BroadcastRejected, match="does not match its signature"):
        app(_instruction(edge, rnd=1), _context(edge, **{"verify-key": str(other)}))
    with pytest.raises(BroadcastRejected, match="does not exist"):
        app(_instruction(edge, rnd=1), _context(edge, **{"verify-key": str(tmp_path / "missing.pub")}))

    evaluation = _instruction(edge, rnd=1, purpose="evaluate")
    cloud = evaluation.content[keys.CLOUD_ARRAYS]
    name = next(iter(cloud))
    evaluation.content[keys.CLOUD_ARRAYS] = _tampered(cloud, name, _flipped(cloud[name].numpy()))  # type: ignore[arg-type,index,union-attr]
    with pytest.raises(BroadcastRejected, match=r"evaluate broadcast .* does not match"):
        app(evaluation, _context(edge))
