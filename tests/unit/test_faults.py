"""Fault injection (meanet_core.faults, fl_client.faults) and what the strategy does with each injected fault."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from flwr.app import Array, ArrayRecord, Error, Message

from fl_client.faults import MAIN_KEY, InjectedCrash, apply_fault, claimed, inject
from meanet_core.config import ConfigError, FederationConfig
from meanet_core.faults import FAULT_KINDS, Fault, parse_faults
from tests.unit.strategy_helpers import plain_strategy
from tests.unit.test_strategy import edge_of, reply, send, sent_state, shifted

Arrays = dict[str, npt.NDArray[Any]]


# ----------------------------------------------------------------------------------------- the spec
def test_parse_faults_reads_every_kind() -> None:
    spec = " 0:nan, 1:scale=100 ,2:shape,3:dtype,4:missing-key,5:main-key,6:crash,7:flip=3+claim=1000,8:claim=50"
    faults = parse_faults(spec, num_clients=9)
    assert faults == {
        0: Fault("nan"),
        1: Fault("scale", 100.0),
        2: Fault("shape"),
        3: Fault("dtype"),
        4: Fault("missing-key"),
        5: Fault("main-key"),
        6: Fault("crash"),
        7: Fault("flip", 3.0, claim=1000.0),
        8: Fault("claim", claim=50.0),
    }
    assert {f.kind for f in faults.values()} == set(FAULT_KINDS)
    assert str(faults[1]) == "scale=100" and parse_faults("") == {} and parse_faults("  ") == {}
    assert str(faults[7]) == "flip=3+claim=1000" and str(faults[8]) == "claim=50"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0:nan,", "empty item"),
        ("0-nan", "has no ':'"),
        ("x:nan", "not an integer index"),
        ("-1:nan", "not a non-negative index"),
        ("0:explode", "unknown fault 'explode'"),
        ("0:nan=3", "takes no '=value'"),
        ("0:scale", "scale needs a number"),
        ("0:scale=big", "scale needs a number"),
        ("0:scale=inf", "must be finite"),
        ("0:nan,0:shape", "already has a fault"),
        ("0:flip=2+nan", "only 'claim=K' combines"),
        ("0:claim=0", "positive multiple"),
    ],
)
def test_parse_faults_rejects_malformed_specs(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_faults(spec)


def test_the_run_config_validates_faults() -> None:
    assert FederationConfig.from_run_config({"faults": "1:scale=10", "num-clients": 2}).faults == "1:scale=10"
    with pytest.raises(ConfigError, match=r"run config faults: .*client 3 is not an index in 0\.\.2"):
        FederationConfig.from_run_config({"faults": "3:nan", "num-clients": 3})
    with pytest.raises(ConfigError, match=r"run config faults: .*unknown fault 'boom'.*valid faults: nan, scale"):
        FederationConfig.from_run_config({"faults": "0:boom"})
    with pytest.raises(ConfigError, match="faults must be str"):
        FederationConfig.from_run_config({"faults": 3})


# ----------------------------------------------------------------------------------------- applying a fault
def test_lies_stay_inside_the_checks() -> None:
    sent = {"extension.fc.weight": np.ones((2, 2), np.float32), "extension.bn.num_batches_tracked": np.array(3)}
    trained = {"extension.fc.weight": np.full((2, 2), 1.5, np.float32), "extension.bn.num_batches_tracked": np.array(4)}
    flipped = apply_fault(trained, Fault("flip", 2.0), sent=sent)
    np.testing.assert_allclose(flipped["extension.fc.weight"], 0.0)  # 1 - 2 x (1.5 - 1): reversed, twice as far
    assert flipped["extension.fc.weight"].dtype == np.float32 and int(flipped["extension.bn.num_batches_tracked"]) == 4
    with pytest.raises(ValueError, match="are needed"):
        apply_fault(trained, Fault("flip", 2.0))
    assert apply_fault(trained, Fault("claim", claim=9.0)).keys() == trained.keys()
    assert claimed(40, "1:flip=3+claim=1000", 1) == 40_000 and claimed(40, "1:claim=5", 0) == 40


def test_apply_fault_corrupts_a_copy() -> None:
    sent = edge_of(sent_state())
    original = {k: v.copy() for k, v in sent.items()}
    first = "adaptive.layers.0.0.weight"
    nan = apply_fault(sent, Fault("nan"))
    assert np.isnan(nan[first]).sum() == 1
    scaled = apply_fault(sent, Fault("scale", 100.0))
    np.testing.assert_allclose(scaled["extension.fc.weight"], 100 * sent["extension.fc.weight"], rtol=1e-6)
    assert scaled["adaptive.layers.0.1.num_batches_tracked"] == 100  # integer counters are left alone
    assert apply_fault(sent, Fault("shape"))[first].shape == (1, 2)
    assert all(v.dtype == np.float64 for k, v in apply_fault(sent, Fault("dtype")).items() if "weight" in k)
    assert list(apply_fault(sent, Fault("missing-key"))) == list(sent)[:-1]
    assert MAIN_KEY in apply_fault(sent, Fault("main-key"))
    with pytest.raises(InjectedCrash, match="client 4 crashed"):
        apply_fault(sent, Fault("crash"), client=4)
    for key, value in sent.items():  # the input is never modified
        np.testing.assert_array_equal(value, original[key])


def test_inject_is_a_no_op_without_a_fault_for_this_client() -> None:
    record = ArrayRecord({k: Array(v) for k, v in edge_of(sent_state()).items()})
    assert inject(record, "", 0) is record
    assert inject(record, "1:nan", 0) is record
    faulty = inject(record, "1:nan", 1)
    assert faulty is not record and np.isnan(faulty["adaptive.layers.0.0.weight"].numpy()).any()
    for key, array in record.items():  # every other entry keeps its shape (0-d counters stay 0-d) and dtype
        assert faulty[key].shape == array.shape and faulty[key].dtype == array.dtype


# ----------------------------------------------------------------------------------------- what the strategy does
@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (Fault("nan"), "non-finite value"),
        (Fault("scale", 100.0), "exceeds max_norm_ratio 1"),
        (Fault("scale", -1.0), "exceeds max_norm_ratio 1"),  # a sign flip
        (Fault("shape"), "has shape (1, 2), expected (2, 2)"),
        (Fault("dtype"), "has dtype float64, expected float32"),
        (Fault("missing-key"), "missing key(s) ['extension.fc.bias']"),
        (Fault("main-key"), "belongs to the main block"),
    ],
    ids=str,
)
def test_each_injected_fault_is_dropped_with_its_reason(
    task_identity: None, caplog: pytest.LogCaptureFixture, fault: Fault, reason: str
) -> None:
    state = sent_state()
    strategy = plain_strategy(max_norm_ratio=1.0)  # the default of the run config
    instructions = send(strategy, state)
    honest = shifted(edge_of(state), 0.05)
    replies = [
        reply(instructions[11], honest, 10),
        reply(instructions[12], apply_fault(shifted(edge_of(state), 0.05), fault), 10),
        reply(instructions[13], honest, 10),
    ]
    with caplog.at_level(logging.WARNING, logger="flwr"):
        arrays, _ = strategy.aggregate_train(1, replies)
    report = strategy.last_round
    assert arrays is not None and report is not None
    assert report["accepted_nodes"] == [11, 13] and len(report["dropped"]) == 1
    [(node, why)] = report["dropped"]
    assert node == 12 and reason in why, why
    assert any("node 12" in r.getMessage() and reason in r.getMessage() for r in caplog.records)
    assert set(report["norm_ratios"]) == ({11, 12, 13} if fault.kind == "scale" else {11, 13})
    assert report["norm_ratios"][11] < 1.0 and report["max_norm_ratio"] == 1.0
    if fault.kind == "scale":
        assert report["norm_ratios"][12] > 1.0


def test_error_replies_are_recorded_with_the_exception_message_only(task_identity: None) -> None:
    state = sent_state()
    strategy = plain_strategy()
    instructions = send(strategy, state)
    ray_reason = (  # what Flower's simulation engine sends when a ClientApp raises
        "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor.run()\x1b[39m\n"
        '  File "fl_client/faults.py", line 40, in apply_fault\n'
        "Exception ClientAppException occurred. Message: fault injection: client 2 crashed mid-round (fault 'crash')'>"
    )
    replies = [
        reply(instructions[11], shifted(edge_of(state), 0.05), 10),
        Message(Error(code=2, reason=ray_reason), reply_to=instructions[12]),
        reply(instructions[13], shifted(edge_of(state), 0.05), 10),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and strategy.last_round is not None
    assert strategy.last_round["dropped"] == [
        (12, "error reply (code 2): fault injection: client 2 crashed mid-round (fault 'crash')")
    ]
