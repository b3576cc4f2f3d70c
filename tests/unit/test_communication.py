"""Communication: compressed uploads (int8 / int4 / fp16 with error feedback) and compressed broadcasts (the change
from the state the edge holds, rebuilt bit for bit).

The codecs are pure numpy; the strategy tests send real ``Message`` replies; the broadcast tests run the real
ClientApp against the real signed strategy (the fixtures of ``test_signing.py``).
"""

from __future__ import annotations

from typing import Any
from unittest.mock import Mock

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, RecordDict
from flwr.serverapp import Grid

from fl_client.transport import MissingBase
from meanet_core import keys
from meanet_core.trust.broadcast import digest
from meanet_core.trust.signing import BroadcastRejected
from meanet_core.wire.broadcast_delta import SHAPE_SUFFIX, decode_broadcast, encode_broadcast, q_suffix
from meanet_core.wire.compression import SCALE_SUFFIX, PayloadError, decode_update, encode_update, payload_bytes
from tests.unit.test_signing import _context, edge  # noqa: F401  (edge is a fixture)


def _sent() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "extension.conv.weight": rng.standard_normal((16, 8, 3, 3)).astype(np.float32),
        "extension.fc.bias": rng.standard_normal(10).astype(np.float32),
        "extension.bn.running_var": rng.uniform(0.5, 2, 16).astype(np.float32),
        "extension.bn.num_batches_tracked": np.array(40, dtype=np.int64),
    }


def _trained(sent: dict[str, np.ndarray], seed: int, scale: float = 0.05) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in sent.items():
        if v.dtype.kind == "f":
            change = (
                rng.standard_normal(v.shape) * scale * (1 + np.arange(v.shape[0]).reshape((-1,) + (1,) * (v.ndim - 1)))
            )
            out[k] = (v + change).astype(v.dtype)  # rows of very different size: per-channel scales matter
        else:
            out[k] = np.asarray(v + 5)
    return out


def _err(a: dict[str, np.ndarray], b: dict[str, np.ndarray], sent: dict[str, np.ndarray]) -> float:
    """Relative error of the decoded change: ||a - b|| / ||b - sent|| over the floating keys."""
    keys_ = [k for k, v in sent.items() if v.dtype.kind == "f"]
    num = sum(float(np.sum((a[k].astype(np.float64) - b[k]) ** 2)) for k in keys_)
    den = sum(float(np.sum((b[k].astype(np.float64) - sent[k]) ** 2)) for k in keys_)
    return float(np.sqrt(num / den))


# ----------------------------------------------------------------------------------------- the codec
@pytest.mark.parametrize(
    ("encoding", "max_error", "max_bytes"), [("fp16", 1e-3, 0.52), ("int8", 0.02, 0.27), ("int4", 0.3, 0.15)]
)
def test_a_compressed_update_decodes_close_to_the_original_at_a_fraction_of_the_bytes(
    encoding: str, max_error: float, max_bytes: float
) -> None:
    sent = _sent()
    trained = _trained(sent, 1)
    payload, residual = encode_update(trained, sent, encoding)
    decoded = decode_update(payload, sent, encoding)
    assert {k: v.dtype for k, v in decoded.items()} == {k: v.dtype for k, v in sent.items()}
    assert int(decoded["extension.bn.num_batches_tracked"]) == 45  # integers travel as they are
    assert _err(decoded, trained, sent) < max_error
    assert payload_bytes(payload) <= max_bytes * payload_bytes(trained)
    if encoding == "int8":
        assert payload["extension.conv.weight"].dtype == np.int8
        assert payload["extension.conv.weight" + SCALE_SUFFIX].shape == (16,)  # one scale per output channel
    if encoding == "int4":  # two values a byte
        assert payload["extension.conv.weight"].dtype == np.uint8 and payload["extension.conv.weight"].size == 576
    assert set(residual) == {k for k, v in sent.items() if v.dtype.kind == "f"}


@pytest.mark.parametrize("encoding", ["int8", "int4"])
def test_error_feedback_sends_over_rounds_what_one_round_loses(encoding: str) -> None:
    sent = _sent()
    rounds = [_trained(sent, seed, scale=0.01) for seed in range(8)]
    total_true = {k: sum(r[k].astype(np.float64) - sent[k] for r in rounds) for k in sent if sent[k].dtype.kind == "f"}
    with_feedback, without = dict.fromkeys(total_true, 0.0), dict.fromkeys(total_true, 0.0)
    residual: dict[str, np.ndarray] | None = None
    for r in rounds:  # every round starts from `sent` (the aggregate is not the point here)
        payload, residual = encode_update(r, sent, encoding, residual)
        plain, _ = encode_update(r, sent, encoding)
        for k in total_true:
            with_feedback[k] = with_feedback[k] + decode_update(payload, sent, encoding)[k].astype(np.float64) - sent[k]
            without[k] = without[k] + decode_update(plain, sent, encoding)[k].astype(np.float64) - sent[k]
    err = {name: sum(float(np.sum((d[k] - total_true[k]) ** 2)) for k in total_true) for name, d in
           (("feedback", with_feedback), ("plain", without))}  # fmt: skip
    assert err["feedback"] < 0.25 * err["plain"]  # what is left behind is at most one round's rounding


def test_float32_is_the_arrays_themselves_and_bad_input_is_refused() -> None:
    sent, trained = _sent(), _trained(_sent(), 2)
    payload, residual = encode_update(trained, sent, "float32")
    assert residual == {} and all(np.array_equal(payload[k], trained[k]) for k in sent)
    with pytest.raises(ValueError, match="unknown upload encoding"):
        encode_update(trained, sent, "int2")
    with pytest.raises(ValueError, match="non-finite"):
        encode_update({**trained, "extension.fc.bias": np.full(10, np.nan, np.float32)}, sent, "int8")
    with pytest.raises(ValueError, match="dtype"):
        encode_update({**trained, "extension.fc.bias": trained["extension.fc.bias"].astype(np.float64)}, sent, "int8")


def _corrupt(payload: dict[str, np.ndarray], how: str) -> dict[str, np.ndarray]:
    out = dict(payload)
    s = next(k for k in payload if k.endswith(SCALE_SUFFIX) and payload[k].ndim == 1)  # a per-channel scale
    w = s.removesuffix(SCALE_SUFFIX)
    if how == "missing-scale":
        del out[s]
    elif how == "nan-scale":
        out[s] = np.full(out[s].shape, np.nan, np.float32)
    elif how == "negative-scale":
        out[s] = -np.abs(out[s])
    elif how == "scale-shape":
        out[s] = out[s][:-1]
    elif how == "dtype":
        out[w] = out[w].astype(np.float32)
    elif how == "shape":
        out[w] = out[w][:-1]
    elif how == "extra":
        out["extension.evil"] = np.zeros(3, np.int8)
    return out


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("missing-scale", "missing key"),
        ("nan-scale", "non-finite"),
        ("negative-scale", "negative"),
        ("scale-shape", "expected float32"),
        ("dtype", "expected int8"),
        ("shape", "has shape"),
        ("extra", "unexpected key"),
    ],
)
def test_a_malformed_payload_is_refused_naming_what_is_wrong(how: str, message: str) -> None:
    sent = _sent()
    payload, _ = encode_update(_trained(sent, 3), sent, "int8")
    with pytest.raises(PayloadError, match=message):
        decode_update(_corrupt(payload, how), sent, "int8")


@pytest.mark.parametrize(
    ("how", "message"),
    [("short", "expected uint8"), ("zero-nibble", "nibble of 0"), ("int8", "expected uint8"), ("extra", "unexpected")],
)
def test_a_malformed_int4_payload_is_refused(how: str, message: str) -> None:
    sent = _sent()
    payload, _ = encode_update(_trained(sent, 3), sent, "int4")
    w = "extension.conv.weight"
    bad = dict(payload)
    if how == "short":
        bad[w] = payload[w][:-1]
    elif how == "zero-nibble":
        bad[w] = payload[w].copy()
        bad[w][3] &= 0xF0
    elif how == "int8":
        bad[w] = payload[w].astype(np.int8)
    else:
        bad["extension.evil"] = np.zeros(3, np.uint8)
    with pytest.raises(PayloadError, match=message):
        decode_update(bad, sent, "int4")


# ----------------------------------------------------------------------------------------- the broadcast codec
def _model_state() -> dict[str, np.ndarray]:
    return {**_sent(), "main.conv.weight": np.random.default_rng(5).standard_normal((32, 16, 3, 3)).astype(np.float32)}


@pytest.mark.parametrize(("bits", "max_error", "max_bytes"), [(8, 0.02, 0.27), (6, 0.06, 0.21)])
def test_a_broadcast_change_rebuilds_exactly_what_the_cloud_computed_at_a_fraction_of_the_bytes(
    bits: int, max_error: float, max_bytes: float
) -> None:
    base = _model_state()
    target = {**_trained(base, 4, scale=0.02), "extension.fc.bias": base["extension.fc.bias"]}  # one key unchanged
    payload, rebuilt = encode_broadcast(target, base, bits)
    q = q_suffix(bits)
    assert "extension.fc.bias" not in payload and "extension.fc.bias" + q not in payload  # left out
    assert payload["main.conv.weight" + q].size == 32 * 16 * 9 * bits // 8  # packed, bits a value
    assert payload["extension.bn.running_var"].dtype == np.float32  # 1-d: exact
    assert int(payload["extension.bn.num_batches_tracked"]) == 45  # integers: exact
    on_edge = decode_broadcast(payload, base, target.keys())  # what the edge computes
    assert digest(on_edge, prefix="") == digest(rebuilt, prefix="")  # bit for bit
    assert not np.array_equal(rebuilt["main.conv.weight"], target["main.conv.weight"])  # lossy, yet close:
    assert _err(rebuilt, target, base) < max_error
    assert payload_bytes(payload) < max_bytes * payload_bytes(target)
    # the error stays on the cloud: the next change is taken from the reconstruction and carries what was lost
    again, rebuilt2 = encode_broadcast(target, rebuilt, bits)
    assert _err(rebuilt2, target, base) < 0.1 * _err(rebuilt, target, base)
    assert {k.split("|")[0] for k in again} == {"main.conv.weight", "extension.conv.weight"}


def test_a_new_or_reshaped_weight_goes_as_a_change_from_zeros_with_its_dimensions() -> None:
    base = _model_state()
    target = {
        **base,
        "main.conv.weight": base["main.conv.weight"][:8],
        "extension.new.weight": base["main.conv.weight"],
    }
    payload, rebuilt = encode_broadcast(target, base, 6)
    assert payload["main.conv.weight" + SHAPE_SUFFIX].tolist() == [8, 16, 3, 3]
    assert payload["extension.new.weight" + SHAPE_SUFFIX].tolist() == [32, 16, 3, 3]
    held = dict(base)  # the old shape, and nothing of the new entry
    assert digest(decode_broadcast(payload, held, target.keys()), prefix="") == digest(rebuilt, prefix="")
    assert (
        np.abs(rebuilt["extension.new.weight"] - target["extension.new.weight"]).max()
        < 0.02 * np.abs(target["extension.new.weight"]).max()
    )


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("extra", "unexpected or unpaired"),
        ("unpaired", "unexpected or unpaired"),
        ("both", "unexpected or unpaired"),
        ("not-held", "neither sent nor held"),
        ("change-not-held", "does not hold"),
        ("short", "expected uint8"),
        ("low", "not a 6-bit change"),
        ("scale", "negative or non-finite"),
        ("scale-shape", "expected float32"),
        ("dims", "not the dimensions"),
    ],
)
def test_a_malformed_broadcast_change_is_refused(how: str, message: str) -> None:
    base = _model_state()
    payload, _ = encode_broadcast(_trained(base, 6), base, 6)
    w, q = "main.conv.weight", q_suffix(6)
    bad, held, keys_ = dict(payload), dict(base), list(base)
    if how == "extra":
        bad["extension.evil"] = np.zeros(2, np.float32)
    elif how == "unpaired":
        del bad[w + SCALE_SUFFIX]
    elif how == "both":
        bad[w + q_suffix(8)] = np.zeros(base[w].size, np.uint8)
    elif how == "not-held":
        del held["extension.fc.bias"], bad["extension.fc.bias"]
    elif how == "change-not-held":
        del held[w]
    elif how == "short":
        bad[w + q] = bad[w + q][:-1]
    elif how == "low":
        bad[w + q] = np.zeros_like(bad[w + q])  # every 6-bit field 0: the value -32, outside [-31, 31]
    elif how == "scale":
        bad[w + SCALE_SUFFIX] = np.full(32, np.inf, np.float32)
    elif how == "scale-shape":
        bad[w + SCALE_SUFFIX] = bad[w + SCALE_SUFFIX][:-1]
    else:
        bad[w + SHAPE_SUFFIX] = np.array([1 << 20, 1 << 20], np.int64)  # a 4 TB "weight"
    with pytest.raises(PayloadError, match=message):
        decode_broadcast(bad, held, keys_)


# ----------------------------------------------------------------------------------------- compressed broadcasts
def _retrained(arrays: ArrayRecord, scale: float = 0.01) -> ArrayRecord:
    """Every floating entry moved a little: what a round of cloud and edge training does to the state."""
    rng = np.random.default_rng(9)
    out = ArrayRecord()
    for k, v in arrays.items():
        a = v.numpy()
        out[k] = Array((a + scale * rng.standard_normal(a.shape)).astype(a.dtype) if a.dtype.kind == "f" else a)
    return out


def _fresh(strategy: Any) -> None:
    strategy.delta_broadcast, strategy.reference, strategy.node_holds, strategy.plans = True, {}, {}, {}
    strategy.history = {}


@pytest.mark.usefixtures("task_identity")
def test_an_edge_holding_the_last_state_gets_a_signed_change_and_rebuilds_it(edge: dict[str, Any]) -> None:  # noqa: F811
    from fl_client.app import app

    strategy = edge["strategy"]
    _fresh(strategy)
    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = [1, 2]
    config = ConfigRecord({keys.EXPERIENCE: 0, keys.HARD_CLASSES: [3, 8]})
    context = _context(edge)

    first = {m.metadata.dst_node_id: m for m in strategy.configure_train(1, edge["arrays"], config, grid)}
    full_bytes = strategy.bytes_sent["train"]
    assert keys.BASE_DIGEST not in first[1].content[keys.CONFIG]  # nobody holds anything yet: the full state
    answer = app(first[1], context)
    assert not answer.has_error() and keys.STATE_CACHE in context.state.array_records
    strategy.aggregate_train(1, [answer])  # node 2 did not answer: it will get the full state

    target = _retrained(edge["arrays"])  # the cloud retrained everything
    second = {m.metadata.dst_node_id: m for m in strategy.configure_train(2, target, config, grid)}
    change, full = second[1].content, second[2].content
    assert change[keys.CONFIG][keys.BASE_DIGEST] and keys.BASE_DIGEST not in full[keys.CONFIG]  # type: ignore[index]
    change_bytes = change[keys.ARRAYS].count_bytes()  # type: ignore[union-attr]
    assert change_bytes < 0.22 * full_bytes  # 6-bit changes (and the 1-d entries exact)
    assert strategy.bytes_sent["train"] == pytest.approx((change_bytes + full_bytes) / 2)
    sent = {k: v.numpy() for k, v in strategy.current_arrays.items()}  # what the strategy checks replies against
    assert digest(sent, prefix="") == change[keys.CONFIG][keys.STATE_DIGEST] == full[keys.CONFIG][keys.STATE_DIGEST]  # type: ignore[index]
    assert {k: v.numpy() for k, v in full[keys.ARRAYS].items()}.keys() == sent.keys()  # type: ignore[union-attr]

    answer = app(second[1], context)  # verifies the change's signature, rebuilds the state from what it holds
    assert not answer.has_error()
    held = {k: v.numpy() for k, v in context.state.array_records[keys.STATE_CACHE].items()}
    assert digest(held, prefix="") == digest(sent, prefix="")  # bit for bit the signed state
    assert answer.content[keys.EDGE_INFO][keys.MAIN_DIGEST] == strategy.sent_main_digest  # type: ignore[index]

    name = next(k for k in change[keys.ARRAYS] if k.endswith(q_suffix(6)))  # type: ignore[union-attr]
    blob = change[keys.ARRAYS][name].numpy().copy()  # type: ignore[index,union-attr]
    blob[len(blob) // 2] ^= 1
    tampered = Message(content=RecordDict(dict(change.items())), dst_node_id=1, message_type="train")
    tampered.content[keys.ARRAYS] = ArrayRecord({**dict(change[keys.ARRAYS].items()), name: Array(blob)})  # type: ignore[union-attr]
    with pytest.raises(BroadcastRejected, match="does not match its signature"):
        app(tampered, context)  # a tampered change
    tampered = Message(content=RecordDict(dict(change.items())), dst_node_id=1, message_type="train")
    tampered.content[keys.CONFIG] = ConfigRecord({**dict(change[keys.CONFIG].items()), keys.BASE_DIGEST: "0" * 64})  # type: ignore[union-attr]
    with pytest.raises(BroadcastRejected, match="does not match its signature"):
        app(tampered, context)  # the base it applies to is signed

    other = _context(edge)  # an edge holding another state: the change applies to a base it does not have
    app(first[1], other)
    other.state[keys.STATE_CACHE] = _retrained(other.state.array_records[keys.STATE_CACHE], 0.5)
    with pytest.raises(MissingBase, match="does not hold"):
        app(second[1], other)
    with pytest.raises(MissingBase, match="does not hold"):
        app(second[1], _context(edge))  # a restarted edge: nothing kept; Flower turns this into an error reply
    strategy.aggregate_train(2, [Message(Error(code=0, reason="MissingBase"), reply_to=second[1])])
    third = {m.metadata.dst_node_id: m for m in strategy.configure_train(3, target, config, grid)}
    assert keys.BASE_DIGEST not in third[1].content[keys.CONFIG]  # so it gets the full state
    restarted = _context(edge)
    assert not app(third[1], restarted).has_error()
    _fresh(strategy)
    strategy.delta_broadcast = False


@pytest.mark.usefixtures("task_identity")
def test_a_main_round_sends_no_edge_block_and_the_edge_trains_the_main_block(edge: dict[str, Any]) -> None:  # noqa: F811
    from fl_client.app import app

    strategy = edge["strategy"]
    _fresh(strategy)
    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = [1, 2]
    config = ConfigRecord({keys.EXPERIENCE: 0, keys.HARD_CLASSES: [3, 8], keys.SCOPE: "main"})
    context = _context(edge)
    for rnd, arrays in ((1, edge["arrays"]), (2, _retrained(edge["arrays"]))):  # the full state, then a change
        msg = next(m for m in strategy.configure_train(rnd, arrays, config, grid) if m.metadata.dst_node_id == 1)
        sent = msg.content[keys.ARRAYS]
        assert sent and not any(keys.is_edge_key(k) for k in sent)  # type: ignore[union-attr]
        assert (keys.BASE_DIGEST in msg.content[keys.CONFIG]) == (rnd == 2)
        answer = app(msg, context)
        assert not answer.has_error()
        assert answer.content[keys.ARRAYS] and all(k.startswith(keys.MAIN_PREFIX) for k in answer.content[keys.ARRAYS])  # type: ignore[union-attr]
        arrays_back, _ = strategy.aggregate_train(rnd, [answer])
        assert arrays_back is not None and not any(keys.is_edge_key(k) for k in arrays_back)
    _fresh(strategy)
    strategy.delta_broadcast = False


@pytest.mark.usefixtures("task_identity")
def test_an_edge_that_missed_broadcasts_catches_up_with_their_changes(
    edge: dict[str, Any],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Node 2 trains in round 1, is not sampled in round 2 (a main round) and comes back in round 3 (an edge round):
    it gets the two changes in one message, checks every step, and loads the signed state of round 3."""
    from fl_client.app import app
    from fl_client.transport import broadcast_state
    from strategies import broadcasts

    strategy = edge["strategy"]
    _fresh(strategy)
    for attr in ("min_available_nodes", "min_train_nodes"):  # round 2 goes on with the one edge sampled
        monkeypatch.setattr(strategy, attr, 1)
    monkeypatch.setattr(strategy, "missed_at", {})  # nobody rests after the earlier tests' missed rounds
    grid = Mock(spec=Grid)
    config = ConfigRecord({keys.EXPERIENCE: 0, keys.HARD_CLASSES: [3, 8]})
    main = ConfigRecord({**dict(config.items()), keys.SCOPE: "main"})
    one, two = _context(edge), _context(edge)

    def round_(rnd: int, arrays: ArrayRecord, cfg: ConfigRecord, nodes: list[int]) -> dict[int, Message]:
        grid.get_node_ids.return_value = nodes
        return {m.metadata.dst_node_id: m for m in strategy.configure_train(rnd, arrays, cfg, grid)}

    first = round_(1, edge["arrays"], config, [1, 2])
    full_bytes = first[1].content[keys.ARRAYS].count_bytes()  # type: ignore[union-attr]
    strategy.aggregate_train(1, [app(first[1], one), app(first[2], two)])
    second = round_(2, _retrained(edge["arrays"]), main, [1])  # node 2 is not sampled
    strategy.aggregate_train(2, [app(second[1], one)])
    third = round_(3, _retrained(edge["arrays"], 0.02), config, [1, 2])
    change, catch_up = third[1].content, third[2].content
    assert keys.CATCH_UP not in change[keys.CONFIG]  # type: ignore[operator]  node 1 holds round 2: one change
    steps = catch_up[keys.CONFIG][keys.CATCH_UP]  # type: ignore[index]
    assert sorted(s.split(":")[0] for s in steps) == ["edge", "rest", "rest"]  # type: ignore[union-attr]
    catch_up_bytes = catch_up[keys.ARRAYS].count_bytes()  # type: ignore[union-attr]
    assert catch_up_bytes < 0.5 * full_bytes  # 6-bit changes: two of the rest, one of the edge blocks
    answer = app(third[2], two)
    assert not answer.has_error()
    held = {k: v.numpy() for k, v in two.state.array_records[keys.STATE_CACHE].items()}
    sent = {k: v.numpy() for k, v in strategy.current_arrays.items()}
    assert digest(held, prefix="") == digest(sent, prefix="") == catch_up[keys.CONFIG][keys.STATE_DIGEST]  # type: ignore[index]
    answer_one = app(third[1], one)
    assert not answer_one.has_error()

    # the steps are signed: another order does not verify; a step whose arrays name no step is refused
    swapped = Message(content=RecordDict(dict(catch_up.items())), dst_node_id=2, message_type="train")
    swapped.content[keys.CONFIG] = ConfigRecord({**dict(catch_up[keys.CONFIG].items()), keys.CATCH_UP: steps[::-1]})  # type: ignore[union-attr,index]
    with pytest.raises(BroadcastRejected, match="does not match its signature"):
        app(swapped, _context(edge))
    stray = Message(content=RecordDict(dict(catch_up.items())), dst_node_id=2, message_type="train")
    stray.content[keys.ARRAYS] = ArrayRecord(
        {k.replace("1>", "7>", 1): v for k, v in catch_up[keys.ARRAYS].items()}  # type: ignore[union-attr]
    )
    with pytest.raises(MissingBase, match="names no step of 3"):
        broadcast_state(stray, two)
    behind = _context(edge)  # holds round 1's state: round 3's change alone (node 1's) does not apply to it
    app(first[2], behind)
    with pytest.raises(MissingBase, match="does not hold"):
        broadcast_state(third[1], behind)
    # holdings out of step: node 2 takes a main round node 1 missed, node 1 an edge round node 2 missed; each
    # catches up per group (the edge blocks, the rest) from where it stands
    strategy.aggregate_train(3, [answer_one, answer])
    fourth = round_(4, _retrained(edge["arrays"], 0.03), config, [1])
    strategy.aggregate_train(4, [app(fourth[1], one)])
    fifth = round_(5, _retrained(edge["arrays"], 0.04), main, [2])
    assert keys.CATCH_UP in fifth[2].content[keys.CONFIG]  # type: ignore[operator]  the rest of rounds 4 and 5
    strategy.aggregate_train(5, [app(fifth[2], two)])
    sixth = round_(6, _retrained(edge["arrays"], 0.05), config, [1, 2])
    replies = []
    for node, context in ((1, one), (2, two)):
        content = sixth[node].content
        assert keys.CATCH_UP in content[keys.CONFIG]  # type: ignore[operator]
        assert content[keys.ARRAYS].count_bytes() < 0.5 * full_bytes  # type: ignore[union-attr]
        replies.append(app(sixth[node], context))
        assert not replies[-1].has_error()
        held = {k: v.numpy() for k, v in context.state.array_records[keys.STATE_CACHE].items()}
        assert digest(held, prefix="") == digest({k: v.numpy() for k, v in strategy.current_arrays.items()}, prefix="")
    strategy.aggregate_train(6, replies)

    monkeypatch.setattr(broadcasts, "HISTORY", 1)  # keeps one change per group: node 2, behind again, gets the state
    seventh = round_(7, _retrained(edge["arrays"], 0.06), main, [1])
    strategy.aggregate_train(7, [app(seventh[1], one)])
    eighth = round_(8, _retrained(edge["arrays"], 0.07), config, [1, 2])
    behind_config = eighth[2].content[keys.CONFIG]
    assert keys.BASE_DIGEST not in behind_config and keys.CATCH_UP not in behind_config  # type: ignore[operator]
    assert keys.BASE_DIGEST in eighth[1].content[keys.CONFIG]  # type: ignore[operator]
    assert not app(eighth[2], two).has_error()
    _fresh(strategy)
    strategy.delta_broadcast = False
