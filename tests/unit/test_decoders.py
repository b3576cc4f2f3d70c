"""Property-based tests (hypothesis) on every decoder of untrusted input: arbitrary input is either accepted as valid
or rejected with the decoder's own clear error (or reason), never another exception.

* the offload service's binary image payload (meanet_core.wire.payload);
* the strategy's reply checks (strategies.aggregation.validate_update, MEANetStrategy.aggregate_train);
* the run-config parser (FederationConfig.from_run_config);
* the dataset .npz loader (meanet_core.data.sources.load_npz);
* checkpoint loading (meanet_core.training.checkpoint.safe_load / load_meanet) on random bytes and truncated files.
"""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from meanet_core.config import ConfigError, FederationConfig
from meanet_core.data.sources import NPZ_KEYS, load_npz
from meanet_core.keys import ARRAYS, EDGE_INFO, METRICS, NUM_EXAMPLES
from meanet_core.models import build_meanet
from meanet_core.training.checkpoint import (
    CheckpointError,
    atomic_save,
    load_meanet,
    load_server_state,
    load_state,
    meanet_payload,
    safe_load,
)
from meanet_core.wire.payload import (
    HEADER_BYTES,
    PayloadError,
    decode_header,
    decode_images,
    decode_labels,
    encode_images,
)
from strategies import validate_update
from tests.unit.strategy_helpers import plain_strategy
from tests.unit.test_strategy import edge_of, send, sent_state

FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SOME = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

DTYPES = st.sampled_from(["u1", "i4", "i8", "f2", "f4", "f8", "bool", "c8", "<U3"])


def arrays(shape: Any = None) -> st.SearchStrategy[npt.NDArray[Any]]:
    """Small arrays of any dtype (floats with NaN and inf), any shape up to 3-d."""
    return DTYPES.flatmap(
        lambda dt: hnp.arrays(np.dtype(dt), shape if shape is not None else hnp.array_shapes(min_dims=0, max_dims=3))
    )


# ----------------------------------------------------------------------------------------- the image payload
@SOME
@given(st.binary(max_size=200))
def test_payload_random_bytes_decode_or_payload_error(buf: bytes) -> None:
    for decode in (decode_images, decode_labels, decode_header):
        with contextlib.suppress(PayloadError):
            decode(buf)


@SOME
@given(
    hnp.arrays(np.uint8, st.tuples(*(st.integers(1, 4),) * 4)),
    st.lists(st.tuples(st.integers(0, HEADER_BYTES + 40), st.integers(0, 255)), max_size=3),
    st.integers(-8, 8),
)
def test_payload_mutated_frames_decode_or_payload_error(
    images: npt.NDArray[np.uint8], flips: list[tuple[int, int]], resize: int
) -> None:
    frame = bytearray(encode_images(torch.from_numpy(images)))
    assert torch.equal(decode_images(bytes(frame)), torch.from_numpy(images))  # the round trip
    for pos, value in flips:
        if pos < len(frame):
            frame[pos] = value
    frame = frame[: len(frame) + resize] if resize < 0 else frame + bytes(resize)
    try:
        out = decode_images(bytes(frame))
    except PayloadError as e:
        assert str(e)
    else:
        header = decode_header(bytes(frame))
        assert tuple(out.shape) == header.shape and len(frame) == HEADER_BYTES + header.body_bytes


# ----------------------------------------------------------------------------------------- the strategy's reply checks
EDGE_KEYS = st.sampled_from(
    ["adaptive.layers.0.0.weight", "adaptive.layers.0.1.num_batches_tracked", "extension.fc.weight",
     "extension.fc.bias", "main.fc.weight", "hard_classes", "extension.x", "", "adaptive."]
)  # fmt: skip
KEYS = st.one_of(EDGE_KEYS, st.text(max_size=12))


@SOME
@given(st.dictionaries(KEYS, arrays(), max_size=6), st.one_of(st.none(), st.floats(0.01, 100)))
def test_validate_update_returns_none_or_a_reason(update: dict[str, npt.NDArray[Any]], bound: float | None) -> None:
    state = sent_state()
    reason = validate_update(update, state, max_norm_ratio=bound)
    if reason is None:  # accepted: exactly the edge keys, shapes, dtypes, finite
        edge = edge_of(state)
        assert set(update) == set(edge)
        for key, value in update.items():
            assert value.shape == edge[key].shape and value.dtype == edge[key].dtype
            assert not np.issubdtype(value.dtype, np.inexact) or np.isfinite(value).all()
    else:
        assert isinstance(reason, str) and reason


def _near_valid_update() -> st.SearchStrategy[dict[str, npt.NDArray[Any]]]:
    """The honest update with some entries replaced by arbitrary arrays (keeps many examples close to valid)."""
    edge = edge_of(sent_state())
    return st.dictionaries(st.sampled_from(sorted(edge)), arrays(), max_size=2).map(lambda d: {**edge, **d})


WEIGHTS = st.one_of(
    st.integers(-5, 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.floats(-1, 1), max_size=2),
)


@FEW
@given(
    st.lists(
        st.tuples(st.one_of(_near_valid_update(), st.dictionaries(KEYS, arrays(), max_size=4)), WEIGHTS, st.booleans()),
        min_size=1,
        max_size=3,
    )
)
def test_aggregate_train_never_raises_on_arbitrary_replies(
    task_identity: None, replies: list[tuple[dict[str, npt.NDArray[Any]], Any, bool]]
) -> None:
    state = sent_state()
    strategy = plain_strategy(max_norm_ratio=1.0)
    instructions = list(send(strategy, state).values())
    messages = []
    for (update, weight, with_info), instruction in zip(replies, instructions, strict=False):
        content = RecordDict(
            {
                ARRAYS: ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in update.items()}),
                METRICS: MetricRecord({NUM_EXAMPLES: weight}),
            }
        )
        if with_info:
            content[EDGE_INFO] = ConfigRecord({"client": 1, "main-digest": "x"})
        messages.append(Message(content, reply_to=instruction))
    arrays_out, _ = strategy.aggregate_train(1, messages)
    report = strategy.last_round
    assert report is not None
    assert report["accepted"] + len(report["dropped"]) + len(report["skipped"]) == len(messages)
    if arrays_out is not None:
        out = {k: v.numpy() for k, v in arrays_out.items()}
        assert list(out) == list(state)
        for key in ("main.fc.weight", "hard_classes"):
            np.testing.assert_array_equal(out[key], state[key])


@FEW
@given(st.binary(max_size=64), st.sampled_from(["float32", "int64"]), st.lists(st.integers(0, 4), max_size=3))
def test_undecodable_array_bytes_are_dropped(task_identity: None, data: bytes, dtype: str, shape: list[int]) -> None:
    state = sent_state()
    strategy = plain_strategy()
    instruction = next(iter(send(strategy, state).values()))
    update = {k: Array(v) for k, v in edge_of(state).items()}
    update["extension.fc.bias"] = Array(dtype=dtype, shape=tuple(shape), stype="numpy.ndarray", data=data)
    content = RecordDict({ARRAYS: ArrayRecord(update), METRICS: MetricRecord({NUM_EXAMPLES: 3})})
    assert strategy.aggregate_train(1, [Message(content, reply_to=instruction)]) == (None, None)
    assert strategy.last_round is not None and len(strategy.last_round["dropped"]) == 1


# ----------------------------------------------------------------------------------------- the run config
FIELDS = sorted(FederationConfig().as_run_config())
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.sampled_from(["iid", "mean", "median", "digits", "resnet20_cifar", "0:nan", "1:scale=9", "paper"]),
    st.lists(st.integers(), max_size=2),
)


@SOME
@given(st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)), VALUES, max_size=5))
def test_run_config_parses_or_raises_config_error(run_config: dict[str, Any]) -> None:
    try:
        cfg = FederationConfig.from_run_config(run_config)
    except ConfigError as e:
        assert "run config" in str(e) or "FederationConfig" in str(e)
    else:
        for key, value in cfg.as_run_config().items():
            if isinstance(value, float):
                assert math.isfinite(value), key


# ----------------------------------------------------------------------------------------- the .npz loader
NPZ_VALUE = st.one_of(
    arrays(),
    hnp.arrays(np.uint8, st.tuples(st.integers(0, 3), st.integers(1, 3), st.integers(1, 3), st.integers(1, 4))),
    hnp.arrays(np.int64, st.integers(0, 3), elements=st.integers(-3, 12)),
)


@FEW
@given(st.dictionaries(st.sampled_from([*NPZ_KEYS, "extra"]), NPZ_VALUE, max_size=5))
def test_npz_loader_loads_or_names_the_file(contents: dict[str, npt.NDArray[Any]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.npz"
        np.savez(path, **contents)  # type: ignore[arg-type]
        try:
            train, test = load_npz(path, num_classes=10)
        except ValueError as e:
            assert str(path) in str(e)
        else:
            for part, split in (("train", train), ("test", test)):
                x, y = contents[f"x_{part}"], contents[f"y_{part}"]
                assert split.x.shape == (x.shape[0], 3, x.shape[1], x.shape[2]) and len(split.y) == len(y)
                assert len(y) == 0 or 0 <= int(y.min()) <= int(y.max()) < 10


@FEW
@given(st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(lambda b: b"PK\x03\x04" + b)))
def test_npz_loader_on_random_bytes_raises_value_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.npz"
        path.write_bytes(data)
        with pytest.raises(ValueError, match=r"data\.npz"):
            load_npz(path, num_classes=10)


def test_npz_loader_rejects_a_plain_npy_file_and_a_corrupt_member(tmp_path: Path) -> None:
    npy = tmp_path / "plain.npz"
    with npy.open("wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(ValueError, match=r"plain\.npz.*not a \.npz archive"):
        load_npz(npy, num_classes=10)
    good = tmp_path / "good.npz"
    np.savez(good, x_train=np.zeros((2, 4, 4, 3), np.uint8), y_train=np.zeros(2, np.int64),
             x_test=np.zeros((1, 4, 4, 3), np.uint8), y_test=np.zeros(1, np.int64))  # fmt: skip
    corrupt = tmp_path / "corrupt.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(corrupt, "w") as dst:
        for item in src.infolist():
            payload = src.read(item)
            dst.writestr(item, payload[: len(payload) // 2] if item.filename == "x_train.npy" else payload)
    with pytest.raises(ValueError, match=r"corrupt\.npz.*x_train"):
        load_npz(corrupt, num_classes=10)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, x_train=np.array([object()], dtype=object), y_train=np.zeros(1), x_test=np.zeros(1),
             y_test=np.zeros(1))  # fmt: skip
    with pytest.raises(ValueError, match=r"pickled\.npz"):
        load_npz(pickled, num_classes=10)


# ----------------------------------------------------------------------------------------- checkpoints
@FEW
@given(st.one_of(st.binary(max_size=400), st.binary(max_size=400).map(lambda b: b"PK\x03\x04" + b)))
def test_checkpoint_random_bytes_give_a_checkpoint_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "state.pt"
        path.write_bytes(data)
        with pytest.raises(CheckpointError, match=r"state\.pt"):
            safe_load(path)


@pytest.fixture(scope="module")
def meanet_file() -> bytes:
    buf = io.BytesIO()
    torch.save(meanet_payload(build_meanet("resnet20_cifar", 10, [1, 2])), buf)
    return buf.getvalue()


@FEW
@given(st.floats(0.0, 0.999))
def test_truncated_checkpoints_give_a_checkpoint_error(meanet_file: bytes, keep: float) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "meanet.pt"
        path.write_bytes(meanet_file[: int(len(meanet_file) * keep)])
        with pytest.raises(CheckpointError, match=r"meanet\.pt"):
            load_meanet(path)


def test_checkpoint_with_code_or_another_model_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (print, ("this must never run",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "meanet-fl/1", "x": Evil()}, evil)
    with pytest.raises(CheckpointError, match="weights-only"):
        safe_load(evil)
    other = tmp_path / "other.pt"  # a ResNet-32 state under a ResNet-20 header
    payload = meanet_payload(build_meanet("resnet20_cifar", 10, [1]))
    payload["state_dict"] = build_meanet("resnet32_cifar", 10, [1]).state_dict()
    atomic_save(payload, other)
    with pytest.raises(CheckpointError, match="do not fit the model"):
        load_meanet(other)
    wrong = tmp_path / "wrong.pt"
    atomic_save({"format": "meanet-fl/1", "kind": "meanet"}, wrong)  # a header without its fields
    with pytest.raises(CheckpointError, match="lacks"):
        load_meanet(wrong)


def test_server_state_errors_name_the_file_and_the_way_out(tmp_path: Path) -> None:
    config = FederationConfig(dataset="digits").as_run_config()
    state = {
        "format": "meanet-fl/1", "config": config, "position": {"experience": 0, "phase": "federation", "round": 1},
        "hard_classes": [1], "meanet": {}, "cloud": {}, "report": "{}",
    }  # fmt: skip
    path = tmp_path / "state.pt"
    atomic_save(state, path)
    assert load_server_state(path, config)["position"]["round"] == 1
    with pytest.raises(
        CheckpointError, match=r"other settings \(model: saved 'resnet20_cifar', now 'resnet32_cifar'\)"
    ):
        load_server_state(path, {**config, "model": "resnet32_cifar"})
    path.write_bytes(path.read_bytes()[:-100])  # truncated (a crash while copying it, a full disk)
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_server_state(path, config)
    atomic_save({k: v for k, v in state.items() if k != "cloud"}, path)
    with pytest.raises(CheckpointError, match=r"lacks field\(s\) \['cloud'\]"):
        load_server_state(path, config)
    model = build_meanet("resnet20_cifar", 10, [1])
    with pytest.raises(CheckpointError, match="do not fit the MEANet"):
        load_state(model, build_meanet("resnet32_cifar", 10, [1]).state_dict(), path, "the MEANet")
