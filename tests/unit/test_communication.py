"""Communication: compressed uploads (int8 / fp16 with error feedback) and delta broadcasts (no main block resent).

The codec is pure numpy; the strategy tests send real ``Message`` replies; the delta-broadcast test runs the real
ClientApp against the real signed strategy (the fixtures of ``test_signing.py``).
"""

from __future__ import annotations

from typing import Any
from unittest.mock import Mock

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, RecordDict
from flwr.serverapp import Grid

from fl_client.transport import MissingMainBlock
from meanet_core import keys
from meanet_core.trust.signing import BroadcastRejected
from meanet_core.wire.compression import SCALE_SUFFIX, PayloadError, decode_update, encode_update, payload_bytes
from tests.unit.strategy_helpers import plain_strategy
from tests.unit.test_signing import _context, edge  # noqa: F401  (edge is a fixture)
from tests.unit.test_strategy import edge_of, reply, send, sent_state


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
@pytest.mark.parametrize(("encoding", "max_error", "max_bytes"), [("fp16", 1e-3, 0.52), ("int8", 0.02, 0.27)])
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
    assert set(residual) == {k for k, v in sent.items() if v.dtype.kind == "f"}


def test_error_feedback_sends_over_rounds_what_one_round_loses() -> None:
    sent = _sent()
    rounds = [_trained(sent, seed, scale=0.01) for seed in range(8)]
    total_true = {k: sum(r[k].astype(np.float64) - sent[k] for r in rounds) for k in sent if sent[k].dtype.kind == "f"}
    with_feedback, without = dict.fromkeys(total_true, 0.0), dict.fromkeys(total_true, 0.0)
    residual: dict[str, np.ndarray] | None = None
    for r in rounds:  # every round starts from `sent` (the aggregate is not the point here)
        payload, residual = encode_update(r, sent, "int8", residual)
        plain, _ = encode_update(r, sent, "int8")
        for k in total_true:
            with_feedback[k] = with_feedback[k] + decode_update(payload, sent, "int8")[k].astype(np.float64) - sent[k]
            without[k] = without[k] + decode_update(plain, sent, "int8")[k].astype(np.float64) - sent[k]
    err = {name: sum(float(np.sum((d[k] - total_true[k]) ** 2)) for k in total_true) for name, d in
           (("feedback", with_feedback), ("plain", without))}  # fmt: skip
    assert err["feedback"] < 0.25 * err["plain"]  # what is left behind is at most one round's rounding


def test_float32_is_the_arrays_themselves_and_bad_input_is_refused() -> None:
    sent, trained = _sent(), _trained(_sent(), 2)
    payload, residual = encode_update(trained, sent, "float32")
    assert residual == {} and all(np.array_equal(payload[k], trained[k]) for k in sent)
    with pytest.raises(ValueError, match="unknown upload encoding"):
        encode_update(trained, sent, "int4")
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


# ----------------------------------------------------------------------------------------- the strategy
def _encoded_reply(
    instruction: Message, state: dict[str, np.ndarray], delta: float, encoding: str, **kw: Any
) -> Message:
    sent = edge_of(state)
    trained = {k: (v + delta).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in sent.items()}
    payload, _ = encode_update(trained, sent, encoding)
    msg = reply(instruction, _corrupt(payload, kw["corrupt"]) if "corrupt" in kw else payload, 10)
    msg.content[keys.EDGE_INFO] = ConfigRecord({keys.ENCODING: encoding})
    return msg


@pytest.mark.usefixtures("task_identity")
def test_the_strategy_decodes_compressed_updates_and_drops_a_malformed_one() -> None:
    state = sent_state()
    strategy = plain_strategy(max_norm_ratio=1.0)
    instructions = send(strategy, state)
    replies = [
        _encoded_reply(instructions[11], state, 0.1, "int8"),
        _encoded_reply(instructions[12], state, 0.3, "fp16"),
        reply(instructions[13], edge_of(state), 10),  # float32, nothing changed
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and strategy.last_round is not None and strategy.last_round["accepted"] == 3
    np.testing.assert_allclose(arrays["extension.fc.bias"].numpy(), state["extension.fc.bias"] + 0.4 / 3, atol=2e-3)

    instructions = send(strategy, state, server_round=2)
    bad = _encoded_reply(instructions[11], state, 0.1, "int8", corrupt="nan-scale")
    strategy.aggregate_train(2, [bad, *(reply(instructions[n], edge_of(state), 10) for n in (12, 13))])
    [(node, reason)] = strategy.last_round["dropped"]
    assert node == 11 and "malformed compressed update" in reason and "non-finite" in reason


# ----------------------------------------------------------------------------------------- delta broadcasts
@pytest.mark.usefixtures("task_identity")
def test_an_edge_holding_the_main_block_gets_a_signed_delta_and_uses_its_cache(edge: dict[str, Any]) -> None:  # noqa: F811
    from fl_client.app import app

    strategy = edge["strategy"]
    strategy.delta_broadcast = True
    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = [1, 2]
    config = ConfigRecord({keys.EXPERIENCE: 0, keys.HARD_CLASSES: [3, 8]})
    context = _context(edge)

    first = {m.metadata.dst_node_id: m for m in strategy.configure_train(1, edge["arrays"], config, grid)}
    full_bytes = strategy.bytes_sent["train"]
    answer = app(first[1], context)  # a full broadcast: the edge keeps its main block
    assert not answer.has_error() and keys.MAIN_CACHE in context.state.array_records
    assert answer.content[keys.EDGE_INFO][keys.ENCODING] == "int8"  # type: ignore[index]
    aggregated, _ = strategy.aggregate_train(1, [answer])
    assert aggregated is not None and strategy.holds[1] == strategy.sent_main_digest

    second = {m.metadata.dst_node_id: m for m in strategy.configure_train(2, aggregated, config, grid)}
    delta, full = second[1].content, second[2].content
    assert not any(k.startswith(keys.MAIN_PREFIX) for k in delta[keys.ARRAYS])  # type: ignore[union-attr]
    assert any(k.startswith(keys.MAIN_PREFIX) for k in full[keys.ARRAYS])  # node 2 never said it holds it
    assert delta[keys.CONFIG][keys.HELD_MAIN] == strategy.sent_main_digest  # type: ignore[index]
    delta_bytes = delta[keys.ARRAYS].count_bytes()  # type: ignore[union-attr]
    assert delta_bytes < 0.5 * full[keys.ARRAYS].count_bytes()  # type: ignore[union-attr]
    assert strategy.bytes_sent["train"] == pytest.approx((delta_bytes + full_bytes) / 2)

    answer = app(second[1], context)  # verifies the delta's own signature, rebuilds the state from its cache
    assert not answer.has_error()
    assert answer.content[keys.EDGE_INFO][keys.MAIN_DIGEST] == strategy.sent_main_digest  # type: ignore[index]

    tampered = Message(content=RecordDict({k: v for k, v in delta.items()}), dst_node_id=1, message_type="train")
    tampered.content[keys.CONFIG] = ConfigRecord({**dict(delta[keys.CONFIG].items()), keys.HELD_MAIN: "0" * 64})  # type: ignore[union-attr]
    with pytest.raises(BroadcastRejected, match="does not match its signature"):
        app(tampered, context)  # the digest the edge must hold is covered by the signature

    with pytest.raises(MissingMainBlock, match="does not hold"):
        app(second[1], _context(edge))  # a restarted edge: no cache; Flower turns this into an error reply
    strategy.aggregate_train(2, [Message(Error(code=0, reason="MissingMainBlock"), reply_to=second[1])])
    third = {m.metadata.dst_node_id: m for m in strategy.configure_train(3, aggregated, config, grid)}
    assert any(k.startswith(keys.MAIN_PREFIX) for k in third[1].content[keys.ARRAYS])  # so it gets the full state
    strategy.delta_broadcast = False
