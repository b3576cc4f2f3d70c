"""Unit tests for the MEANet-FL strategy and its aggregation maths (tiny fabricated arrays, no Grid, no simulation).

Replies are real Flower ``Message`` objects: the instructions come from ``MEANetStrategy.configure_train`` (through
FedAvg's own sampling, with a mocked ``Grid``), and each reply is built with ``Message(content, reply_to=instruction)``
as a ClientApp builds it, so ``metadata.src_node_id`` is the node the instruction went to.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from unittest.mock import Mock

import numpy as np
import numpy.typing as npt
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError

from meanet_core.keys import (
    ARRAYS,
    CLOUD_ARRAYS,
    EDGE_INFO,
    MAIN_DIGEST,
    METRICS,
    NUM_EXAMPLES,
    SCOPE,
    is_edge_key,
    is_main_key,
)
from meanet_core.trust.broadcast import digest
from strategies import (
    MEANetStrategy,
    aggregate_metrics,
    coordinate_median,
    trimmed_mean,
    validate_update,
    weighted_average,
)
from tests.unit.strategy_helpers import plain_strategy

Arrays = dict[str, npt.NDArray[Any]]
NODES = (11, 12, 13)


# ----------------------------------------------------------------------------------------- fixtures and builders
def sent_state() -> Arrays:
    """A tiny 'full state dict': main block, edge blocks (with an integer BN counter) and a cloud-owned buffer."""
    rng = np.random.default_rng(0)
    return {
        "main.fc.weight": rng.standard_normal((3, 2)).astype(np.float32),
        "adaptive.layers.0.0.weight": rng.standard_normal((2, 2)).astype(np.float32),
        "adaptive.layers.0.1.num_batches_tracked": np.array(100, dtype=np.int64),
        "extension.fc.weight": rng.standard_normal((2, 3)).astype(np.float32),
        "extension.fc.bias": rng.standard_normal(2).astype(np.float32),
        "hard_classes": np.array([1, 4], dtype=np.int64),
    }


def edge_of(state: Arrays) -> Arrays:
    """The edge entries of a state dict (what a client sends back)."""
    return {k: v.copy() for k, v in state.items() if is_edge_key(k)}


def shifted(update: Arrays, delta: float, steps: int = 10) -> Arrays:
    """An update with every float entry moved by ``delta`` and the BN counter advanced by ``steps``."""
    out: Arrays = {}
    for k, v in update.items():
        out[k] = np.asarray((v + delta).astype(v.dtype) if np.issubdtype(v.dtype, np.floating) else v + steps)
    return out


def send(strategy: MEANetStrategy, state: Arrays, server_round: int = 1) -> dict[int, Message]:
    """Run ``configure_train`` against a mocked Grid with three nodes; instructions by destination node id."""
    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = list(NODES)
    record = ArrayRecord({k: Array(v) for k, v in state.items()})
    messages = strategy.configure_train(server_round, record, ConfigRecord({"lr": 0.01}), grid)
    return {msg.metadata.dst_node_id: msg for msg in messages}


def reply(instruction: Message, arrays: Arrays, num_examples: float, metrics: dict[str, Any] | None = None) -> Message:
    """A ClientApp-style reply: ArrayRecord under 'arrays', MetricRecord under 'metrics' with 'num-examples'."""
    content = RecordDict(
        {
            ARRAYS: ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            METRICS: MetricRecord({NUM_EXAMPLES: num_examples, **(metrics or {})}),
        }
    )
    return Message(content, reply_to=instruction)


def as_numpy(record: ArrayRecord) -> Arrays:
    return {k: v.numpy() for k, v in record.items()}


# ----------------------------------------------------------------------------------------- pure aggregation maths
def test_weighted_average_is_weighted_by_examples() -> None:
    a: Arrays = {"w": np.array([0.0, 4.0], dtype=np.float32), "n": np.array(10, dtype=np.int64)}
    b: Arrays = {"w": np.array([4.0, 8.0], dtype=np.float32), "n": np.array(20, dtype=np.int64)}
    out = weighted_average([(a, 1.0), (b, 3.0)])
    np.testing.assert_allclose(out["w"], [3.0, 7.0])  # (1*a + 3*b) / 4
    assert out["w"].dtype == np.float32
    assert out["n"].dtype == np.int64 and out["n"].shape == ()
    assert int(out["n"]) == 18  # weighted mean 17.5, rounded to the nearest integer


def test_weighted_average_rejects_inconsistent_updates_and_bad_weights() -> None:
    a = {"w": np.zeros(2, dtype=np.float32)}
    with pytest.raises(ValueError, match="missing \\['w'\\]"):
        weighted_average([(a, 1.0), ({"v": np.zeros(2, dtype=np.float32)}, 1.0)])
    with pytest.raises(ValueError, match="shape"):
        weighted_average([(a, 1.0), ({"w": np.zeros(3, dtype=np.float32)}, 1.0)])
    with pytest.raises(ValueError, match="weights sum to 0"):
        weighted_average([(a, 0.0), (a, 0.0)])
    with pytest.raises(ValueError, match="empty"):
        weighted_average([])


def test_median_and_trimmed_mean_resist_one_outlier() -> None:
    honest = [{"w": np.array([1.0 + 0.01 * i, -1.0], dtype=np.float32)} for i in range(4)]
    outlier = {"w": np.array([1e6, 1e6], dtype=np.float32)}
    updates = [(u, 1.0) for u in honest] + [(outlier, 1000.0)]  # even a huge claimed weight does not help

    assert np.abs(weighted_average(updates)["w"]).max() > 1e5  # the plain mean is ruined
    median = coordinate_median(updates)["w"]
    np.testing.assert_allclose(median, [1.02, -1.0], rtol=1e-6)
    trimmed = trimmed_mean(updates, trim_fraction=0.2)["w"]  # 5 updates: drops 1 from each end
    np.testing.assert_allclose(trimmed, [(1.01 + 1.02 + 1.03) / 3, -1.0], rtol=1e-6)
    assert median.dtype == trimmed.dtype == np.float32


def test_trimmed_mean_rejects_a_fraction_outside_range() -> None:
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        trimmed_mean([({"w": np.zeros(1)}, 1.0)], trim_fraction=0.5)


def test_aggregate_metrics_weighted_by_examples() -> None:
    out = aggregate_metrics(
        [
            ({"loss": 1.0, "accuracy": 0.5, "per-exit": [0.0, 1.0]}, 1.0),
            ({"loss": 3.0, "accuracy": 0.9, "per-exit": [1.0, 1.0]}, 3.0),
            ({"loss": 2.0}, 4.0),  # reports no accuracy: accuracy averages over the first two only
        ]
    )
    assert out["loss"] == pytest.approx((1.0 + 9.0 + 8.0) / 8)
    assert out["accuracy"] == pytest.approx((0.5 + 2.7) / 4)
    assert out["per-exit"] == pytest.approx([0.75, 1.0])


# ----------------------------------------------------------------------------------------- validation
BadCase = tuple[str, Callable[[Arrays], Arrays], str]
BAD_UPDATES: list[BadCase] = [
    ("main-key", lambda u: {**u, "main.fc.weight": np.zeros((3, 2), np.float32)}, "main.fc.weight"),
    ("unexpected-key", lambda u: {**u, "extension.extra.weight": np.zeros(1, np.float32)}, "extension.extra.weight"),
    ("missing-key", lambda u: {k: v for k, v in u.items() if k != "extension.fc.bias"}, "extension.fc.bias"),
    ("wrong-shape", lambda u: {**u, "extension.fc.weight": np.zeros((3, 2), np.float32)}, "extension.fc.weight"),
    (
        "wrong-dtype",
        lambda u: {**u, "adaptive.layers.0.0.weight": u["adaptive.layers.0.0.weight"].astype(np.float64)},
        "adaptive.layers.0.0.weight",
    ),
    ("nan", lambda u: {**u, "extension.fc.bias": np.array([np.nan, 0.0], np.float32)}, "extension.fc.bias"),
    ("inf", lambda u: {**u, "extension.fc.bias": np.array([np.inf, 0.0], np.float32)}, "extension.fc.bias"),
    ("norm", lambda u: {**u, "extension.fc.weight": u["extension.fc.weight"] * 100}, "extension.fc.weight"),
]


@pytest.mark.parametrize(("name", "corrupt", "key"), BAD_UPDATES, ids=[c[0] for c in BAD_UPDATES])
def test_validate_update_names_the_offending_key(name: str, corrupt: Callable[[Arrays], Arrays], key: str) -> None:
    state = sent_state()
    assert validate_update(edge_of(state), state, max_norm_ratio=1.0) is None  # the honest update passes
    reason = validate_update(corrupt(edge_of(state)), state, max_norm_ratio=1.0)
    assert reason is not None and key in reason, reason


def test_validate_update_explains_what_was_expected() -> None:
    state = sent_state()
    wrong = {**edge_of(state), "extension.fc.weight": np.zeros((3, 2), np.float32)}
    assert "shape (3, 2), expected (2, 3)" in (validate_update(wrong, state, max_norm_ratio=None) or "")
    with_main = {**edge_of(state), "main.fc.weight": state["main.fc.weight"]}
    assert "main block" in (validate_update(with_main, state, max_norm_ratio=None) or "")
    assert validate_update(shifted(edge_of(state), 0.01), state, max_norm_ratio=0.5) is None  # small change: fine


def test_validate_update_rejects_a_bad_norm_ratio() -> None:
    with pytest.raises(ValueError, match="max_norm_ratio"):
        validate_update({}, {}, max_norm_ratio=0.0)


# ----------------------------------------------------------------------------------------- the strategy
def test_aggregate_train_averages_edges_and_keeps_the_main_block_bit_for_bit(task_identity: None) -> None:
    state = sent_state()
    strategy = plain_strategy()
    instructions = send(strategy, state)
    sent_record = next(iter(instructions.values())).content[ARRAYS]
    assert isinstance(sent_record, ArrayRecord) and list(sent_record) == list(state)  # FedAvg sent everything
    ups = {11: shifted(edge_of(state), 1.0, 10), 12: shifted(edge_of(state), 2.0, 20), 13: shifted(edge_of(state), 5.0)}
    replies = [reply(instructions[n], ups[n], n_ex) for n, n_ex in ((11, 10), (12, 30), (13, 60))]

    arrays, metrics = strategy.aggregate_train(1, replies)

    assert arrays is not None and metrics is not None
    assert list(arrays) == list(state)  # the full state dict, in the sent order
    got = as_numpy(arrays)
    for key in ("main.fc.weight", "hard_classes"):  # cloud-owned entries: exactly as sent
        assert arrays[key].data == sent_record[key].data
        assert got[key].dtype == state[key].dtype and got[key].tobytes() == state[key].tobytes()
    expected = (
        ups[11]["extension.fc.weight"] * 10 + ups[12]["extension.fc.weight"] * 30 + ups[13]["extension.fc.weight"] * 60
    ) / 100
    np.testing.assert_allclose(got["extension.fc.weight"], expected, rtol=1e-6)
    np.testing.assert_allclose(got["extension.fc.weight"], state["extension.fc.weight"] + 3.7, rtol=1e-5)
    assert got["adaptive.layers.0.1.num_batches_tracked"] == 100 + round((10 * 10 + 20 * 30 + 10 * 60) / 100)
    assert got["extension.fc.bias"].dtype == np.float32
    for key, value in got.items():  # shapes survive aggregation (0-d counters stay 0-d: the next round checks them)
        assert value.shape == state[key].shape, key
    report = strategy.last_round
    assert report is not None
    assert (report["server_round"], report["received"], report["accepted"]) == (1, 3, 3)
    assert report["accepted_nodes"] == [11, 12, 13] and report["dropped"] == report["skipped"] == []
    assert report["num_examples"] == 100.0
    assert 0 < report["bytes_received_per_client"] < sent_record.count_bytes()  # edge entries only come back


@pytest.mark.parametrize(("name", "corrupt", "key"), BAD_UPDATES, ids=[c[0] for c in BAD_UPDATES])
def test_aggregate_train_drops_a_bad_update_with_a_reason(
    task_identity: None, caplog: pytest.LogCaptureFixture, name: str, corrupt: Callable[[Arrays], Arrays], key: str
) -> None:
    state = sent_state()
    strategy = plain_strategy(max_norm_ratio=1.0)
    instructions = send(strategy, state)
    good_a, good_b = shifted(edge_of(state), 0.1), shifted(edge_of(state), 0.3)
    replies = [
        reply(instructions[11], good_a, 1),
        reply(instructions[12], corrupt(edge_of(state)), 1000),  # a huge weight must not matter: it is dropped
        reply(instructions[13], good_b, 1),
    ]

    with caplog.at_level(logging.WARNING, logger="flwr"):
        arrays, _ = strategy.aggregate_train(1, replies)

    assert arrays is not None
    report = strategy.last_round
    assert report is not None and report["accepted"] == 2 and report["accepted_nodes"] == [11, 13]
    [(node, reason)] = report["dropped"]
    assert node == 12 and key in reason, reason
    assert any("node 12" in r.getMessage() and key in r.getMessage() for r in caplog.records)
    expected = (good_a["extension.fc.weight"] + good_b["extension.fc.weight"]) / 2
    np.testing.assert_allclose(arrays["extension.fc.weight"].numpy(), expected, rtol=1e-6)
    assert arrays["main.fc.weight"].data == Array(state["main.fc.weight"]).data


def test_all_bad_round_returns_none(task_identity: None, caplog: pytest.LogCaptureFixture) -> None:
    state = sent_state()
    strategy = plain_strategy()
    instructions = send(strategy, state)
    bad = {**edge_of(state), "main.fc.weight": state["main.fc.weight"]}
    replies = [
        reply(instructions[11], bad, 5),
        Message(Error(code=0, reason="client crashed: out of memory"), reply_to=instructions[12]),
        reply(instructions[13], edge_of(state), 0),  # valid, but trained on nothing
    ]

    with caplog.at_level(logging.WARNING, logger="flwr"):
        assert strategy.aggregate_train(1, replies) == (None, None)

    report = strategy.last_round
    assert report is not None and report["received"] == 3 and report["accepted"] == 0
    reasons = dict(report["dropped"])
    assert "main.fc.weight" in reasons[11]
    assert "out of memory" in reasons[12]
    [(node, reason)] = report["skipped"]
    assert node == 13 and NUM_EXAMPLES in reason
    assert any("no usable update" in r.getMessage() for r in caplog.records)
    assert strategy.aggregate_train(2, []) == (None, None)


def test_malformed_replies_are_dropped(task_identity: None) -> None:
    state = sent_state()
    strategy = plain_strategy()
    instructions = send(strategy, state)
    no_weight = Message(
        RecordDict({ARRAYS: ArrayRecord({k: Array(v) for k, v in edge_of(state).items()}), METRICS: MetricRecord()}),
        reply_to=instructions[11],
    )
    two_records = reply(instructions[12], edge_of(state), 5)
    two_records.content["more-arrays"] = ArrayRecord({"x": Array(np.zeros(1))})
    negative = reply(instructions[13], edge_of(state), -5)
    replies = [no_weight, two_records, negative]

    assert strategy.aggregate_train(1, replies) == (None, None)

    assert strategy.last_round is not None
    reasons = dict(strategy.last_round["dropped"])
    assert f"no '{NUM_EXAMPLES}' entry" in reasons[11]
    assert "exactly one ArrayRecord" in reasons[12]
    assert "-5" in reasons[13] and ">= 0" in reasons[13]


def test_zero_example_replies_are_skipped_not_aggregated(task_identity: None) -> None:
    state = sent_state()
    strategy = plain_strategy(aggregation="median")
    instructions = send(strategy, state)
    replies = [
        reply(instructions[11], shifted(edge_of(state), 1.0), 5),
        reply(instructions[12], edge_of(state), 0),  # would pull the median toward "no change"
        reply(instructions[13], shifted(edge_of(state), 3.0), 5),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and strategy.last_round is not None
    assert strategy.last_round["accepted_nodes"] == [11, 13] and [n for n, _ in strategy.last_round["skipped"]] == [12]
    np.testing.assert_allclose(arrays["extension.fc.bias"].numpy(), state["extension.fc.bias"] + 2.0, rtol=1e-5)


@pytest.mark.parametrize("require", [False, True])
def test_an_update_trained_on_another_main_block_is_dropped(task_identity: None, require: bool) -> None:
    state = sent_state()
    strategy = plain_strategy(require_main_digest=require)
    instructions = send(strategy, state)
    sent_digest = digest(state)
    reported = {11: sent_digest, 12: digest({**state, "main.fc.weight": state["main.fc.weight"] + 1})}
    replies = []
    for node in NODES:
        msg = reply(instructions[node], shifted(edge_of(state), 0.1 * node), 5)
        if node in reported:  # node 13 reports no digest
            msg.content[EDGE_INFO] = ConfigRecord({MAIN_DIGEST: reported[node], "client": node})
        replies.append(msg)
    arrays, _ = strategy.aggregate_train(1, replies)
    report = strategy.last_round
    assert report is not None and arrays is not None
    assert report["main_digests"] == reported  # collected as reported, right or wrong
    reasons = dict(report["dropped"])
    assert "not the one broadcast this round" in reasons[12]  # dropped, with the reason in the round's record
    assert report["accepted_nodes"] == ([11] if require else [11, 13])
    if require:
        assert "no main-block digest" in reasons[13]
    kept = [11] if require else [11, 13]  # the aggregate is the mean of the kept updates only
    expected = state["extension.fc.bias"] + np.mean([0.1 * n for n in kept])
    np.testing.assert_allclose(arrays["extension.fc.bias"].numpy(), expected, rtol=1e-5)


def test_configure_evaluate_adds_the_cloud_arrays_when_set(task_identity: None) -> None:
    strategy = plain_strategy()
    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = list(NODES)
    record = ArrayRecord({k: Array(v) for k, v in sent_state().items()})
    plain = list(strategy.configure_evaluate(1, record, ConfigRecord(), grid))
    assert len(plain) == 3 and all(CLOUD_ARRAYS not in m.content for m in plain)
    strategy.cloud_arrays = ArrayRecord({"net.fc.weight": Array(np.ones((2, 2), np.float32))})
    messages = list(strategy.configure_evaluate(1, record, ConfigRecord(), grid))
    for msg in messages:  # the state as given (no delta broadcasts here), and the cloud model
        assert as_numpy(msg.content[ARRAYS]).keys() == sent_state().keys()  # type: ignore[arg-type]
        assert all(np.array_equal(v, sent_state()[k]) for k, v in as_numpy(msg.content[ARRAYS]).items())  # type: ignore[arg-type]
        assert msg.content[CLOUD_ARRAYS] is strategy.cloud_arrays


def test_configure_evaluate_sends_nothing_on_rounds_without_evaluation(task_identity: None) -> None:
    strategy = plain_strategy()
    strategy.evaluate_rounds = lambda r: r % 2 == 0
    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = list(NODES)
    record = ArrayRecord({k: Array(v) for k, v in sent_state().items()})
    assert list(strategy.configure_evaluate(1, record, ConfigRecord(), grid)) == []
    assert strategy.aggregate_evaluate(1, []) is None and 1 not in strategy.last_evaluation_seconds
    assert len(list(strategy.configure_evaluate(2, record, ConfigRecord(), grid))) == 3
    assert strategy.aggregate_evaluate(2, []) is None
    assert strategy.last_evaluation_seconds[2] >= 0.0  # timed from sending to aggregating


def test_train_intervals_are_relative_to_sending_and_bad_ones_ignored(task_identity: None) -> None:
    state = sent_state()
    strategy = plain_strategy()
    instructions = send(strategy, state)
    sent = strategy._sent_wall
    assert sent is not None
    infos = {
        11: {"train-started": sent + 1.0, "train-ended": sent + 3.0},
        12: {"train-started": sent + 2.0, "train-ended": sent + 1.0},  # ends before it starts: ignored
        13: {"train-started": "soon", "train-ended": sent + 4.0},  # not a number: ignored
    }
    replies = []
    for node in NODES:
        msg = reply(instructions[node], edge_of(state), 5)
        msg.content[EDGE_INFO] = ConfigRecord(infos[node])
        replies.append(msg)
    strategy.aggregate_train(1, replies)
    assert strategy.last_round is not None
    [(start, end)] = strategy.last_round["client_train_intervals"]
    assert (start, end) == pytest.approx((1.0, 3.0))


def test_robust_aggregation_through_the_strategy(task_identity: None) -> None:
    state = sent_state()
    strategy = plain_strategy(aggregation="median")  # no norm bound: the outlier passes validation
    instructions = send(strategy, state)
    replies = [
        reply(instructions[11], shifted(edge_of(state), 0.1), 1),
        reply(instructions[12], shifted(edge_of(state), 0.2), 1),
        reply(instructions[13], shifted(edge_of(state), 1e4), 10_000),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    np.testing.assert_allclose(arrays["extension.fc.bias"].numpy(), state["extension.fc.bias"] + 0.2, rtol=1e-5)


def test_train_metrics_are_weighted_by_examples(task_identity: None) -> None:
    state = sent_state()
    strategy = plain_strategy()
    instructions = send(strategy, state)
    replies = [
        reply(instructions[11], edge_of(state), 10, {"loss": 1.0, "accuracy": 0.2}),
        reply(instructions[12], edge_of(state), 30, {"loss": 2.0, "accuracy": 0.6}),
    ]
    _, metrics = strategy.aggregate_train(1, replies)
    assert metrics is not None
    assert dict(metrics) == pytest.approx({"loss": 1.75, "accuracy": 0.5})  # 'num-examples' is the weight, not a metric


def test_evaluate_metrics_are_weighted_by_examples() -> None:
    strategy = plain_strategy()
    replies = []
    for n_ex, acc in ((10, 0.2), (30, 0.6)):
        msg = Mock(spec=Message)  # evaluation replies carry no arrays; FedAvg reads content and has_error only
        msg.content = RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: n_ex, "accuracy": acc})})
        msg.has_error.return_value = False
        replies.append(msg)
    metrics = strategy.aggregate_evaluate(1, replies)
    assert metrics is not None and metrics["accuracy"] == pytest.approx(0.5)


def test_aggregate_train_before_configure_train_fails_helpfully() -> None:
    with pytest.raises(AggregationError, match="configure_train"):
        plain_strategy().aggregate_train(1, [])


def test_constructor_and_configure_train_reject_bad_input(task_identity: None) -> None:
    with pytest.raises(ValueError, match="mean, median, trimmed-mean, multi-krum, fltrust"):
        plain_strategy(aggregation="average")
    with pytest.raises(ValueError, match="needs reference_fn"):
        plain_strategy(aggregation="fltrust")
    with pytest.raises(ValueError, match="claim_factor"):
        plain_strategy(claim_factor=-2.0)
    with pytest.raises(ValueError, match="trim_fraction"):
        plain_strategy(aggregation="trimmed-mean", trim_fraction=0.6)
    with pytest.raises(ValueError, match="max_norm_ratio"):
        plain_strategy(max_norm_ratio=-1.0)
    with pytest.raises(ValueError, match="adaptive"):
        send(plain_strategy(), {"main.fc.weight": np.zeros(2, np.float32)})


# ----------------------------------------------------------------------------------------- main rounds (scope "main")
def send_main(strategy: MEANetStrategy, state: Arrays) -> dict[int, Message]:
    """``configure_train`` of a main round (config ``scope = "main"``) against a mocked Grid with three nodes."""
    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = list(NODES)
    record = ArrayRecord({k: Array(v) for k, v in state.items()})
    messages = strategy.configure_train(1, record, ConfigRecord({SCOPE: "main", "experience": 0}), grid)
    return {msg.metadata.dst_node_id: msg for msg in messages}


def main_of(state: Arrays) -> Arrays:
    return {k: v.copy() for k, v in state.items() if is_main_key(k)}


def test_a_main_round_aggregates_the_main_block_and_keeps_the_edge_blocks_as_sent(task_identity: None) -> None:
    state = sent_state()
    strategy = plain_strategy(norm_bound_factor=3.0, max_norm_ratio=1.0)
    instructions = send_main(strategy, state)
    assert strategy.scope == "main"
    # a first main round moves a block trained from scratch far beyond its own norm: the edge-round ceiling (1.0)
    # must not drop every honest edge; the round's relative bound still holds
    ups = {n: shifted(main_of(state), d) for n, d in ((11, 4.0), (12, 5.0), (13, 6.0))}
    arrays, _ = strategy.aggregate_train(1, [reply(instructions[n], ups[n], 10) for n in NODES])
    assert arrays is not None
    got = as_numpy(arrays)
    np.testing.assert_allclose(got["main.fc.weight"], state["main.fc.weight"] + 5.0, rtol=1e-5)
    assert got["hard_classes"].tobytes() == state["hard_classes"].tobytes()  # as sent, bit for bit
    assert not any(is_edge_key(k) for k in got)  # a main round sends no edge block, and returns none
    assert all(not any(is_edge_key(k) for k in m.content[ARRAYS]) for m in instructions.values())  # type: ignore[union-attr]
    report = strategy.last_round
    assert report is not None and report["accepted"] == 3 and report["norm_bound"] is not None


def test_a_main_round_drops_an_update_carrying_edge_blocks_or_far_away(task_identity: None) -> None:
    state = sent_state()
    strategy = plain_strategy(norm_bound_factor=3.0)
    instructions = send_main(strategy, state)
    honest = shifted(main_of(state), 0.1)
    sneaky = {**shifted(main_of(state), 0.1), **shifted(edge_of(state), 9.0)}  # also rewrites the edge blocks
    far = shifted(main_of(state), 50.0)  # 500x the honest step
    replies = [reply(instructions[n], up, 10) for n, up in ((11, honest), (12, sneaky), (13, far))]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    report = strategy.last_round
    assert report is not None and report["accepted_nodes"] == [11]
    reasons = dict(report["dropped"])
    assert "unexpected key 'adaptive." in reasons[12] and "main round" in reasons[12]
    assert "norm" in reasons[13]
    np.testing.assert_allclose(as_numpy(arrays)["main.fc.weight"], honest["main.fc.weight"], rtol=1e-6)


def test_an_edge_round_after_a_main_round_is_checked_against_the_edge_blocks_again(task_identity: None) -> None:
    state = sent_state()
    strategy = plain_strategy()
    send_main(strategy, state)
    instructions = send(strategy, state)  # no scope in the config: an edge round
    assert strategy.scope == "edge"
    arrays, _ = strategy.aggregate_train(1, [reply(instructions[n], main_of(state), 10) for n in NODES])
    assert arrays is None  # a main-block update in an edge round never enters the model
    assert all("main block" in reason for _, reason in (strategy.last_round or {})["dropped"])


def test_configure_train_rejects_an_unknown_scope(task_identity: None) -> None:
    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = list(NODES)
    record = ArrayRecord({k: Array(v) for k, v in sent_state().items()})
    with pytest.raises(ValueError, match=r"scope.*'cloud'.*edge, main"):
        plain_strategy().configure_train(1, record, ConfigRecord({SCOPE: "cloud"}), grid)
