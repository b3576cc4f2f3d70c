"""Personal edges: the state a device keeps for itself, its own hard classes and test images, and a personal round on
the real ClientApp against the signing strategy (nothing personal goes up)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest.mock import Mock

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fl_client.personal import STATE_FILE, PersonalStore, state_file
from meanet_core import keys
from meanet_core.data.streams import own_test_shard
from meanet_core.inference.personal import (
    choose_prior_strength,
    device_hard_classes,
    is_personal_key,
    load_personal,
    log_label_prior,
    personal_arrays,
)
from meanet_core.models import build_meanet
from meanet_core.wire.personal_state import (
    PersonalState,
    PersonalStateError,
    check_owner,
    decode_personal,
    encode_personal,
)
from strategies.personal import personal_reply_problem
from tests.unit.test_signing import RUN, edge  # noqa: F401  (edge is a fixture)

OWNER = {"arch": "resnet20_cifar", "num_classes": 10, "federation": "abc"}


def _state(hard: list[int] = [2, 5, 7]) -> PersonalState:  # noqa: B006
    model = build_meanet("resnet20_cifar", 10, hard)
    meta = {**OWNER, "device": "3", "experience": 1, "hard_classes": hard, "policy": {"main_threshold": 0.1}}
    return PersonalState(personal_arrays(model), meta)


def test_a_personal_state_round_trips_and_a_corrupt_or_foreign_one_is_refused() -> None:
    state = _state()
    data = encode_personal(state)
    back = decode_personal(data)
    assert back.meta == state.meta and back.arrays.keys() == state.arrays.keys()
    assert all(np.array_equal(back.arrays[k], v) for k, v in state.arrays.items())
    check_owner(back, **OWNER)  # type: ignore[arg-type]
    flipped = bytearray(data)
    flipped[-100] ^= 1
    with pytest.raises(PersonalStateError, match="checksum does not match"):
        decode_personal(bytes(flipped))
    with pytest.raises(PersonalStateError, match="not a MEANet personal state"):
        decode_personal(b"PK\x03\x04 a zip file")
    with pytest.raises(PersonalStateError, match="another format"):
        decode_personal(b"MEANET-PERSONAL 9\n" + data[len(b"MEANET-PERSONAL 1\n") :])
    with pytest.raises(PersonalStateError, match="truncated"):
        decode_personal(data[:40])
    for name, value in (("federation", "xyz"), ("arch", "resnet32_cifar"), ("num_classes", 100)):
        with pytest.raises(PersonalStateError, match=f"foreign personal state: its {name}"):
            check_owner(back, **{**OWNER, name: value})  # type: ignore[arg-type]


def test_personal_entries_load_into_a_model_with_their_hard_classes_and_refuse_another_shape() -> None:
    state = _state([1, 4])
    model = build_meanet("resnet20_cifar", 10, [0, 1, 2, 3])
    load_personal(model, state)
    assert model.hard_classes.tolist() == [1, 4] and model.extension.fc.out_features == 2
    assert set(personal_arrays(model)) == {k for k in model.state_dict() if is_personal_key(k)}
    assert not any(is_personal_key(k) for k in model.state_dict() if k.startswith("main."))
    other = build_meanet("resnet32_cifar", 10, [1, 4])  # another main block: other feature channels? same here
    bad = PersonalState({k: v for k, v in state.arrays.items() if k != "class_prior"}, state.meta)
    with pytest.raises(PersonalStateError, match="does not fit the model: missing"):
        load_personal(other, bad)


def _context(tmp: Path | None = None, state: RecordDict | None = None) -> Context:
    node = {"state-dir": str(tmp)} if tmp is not None else {}
    return Context(run_id=RUN, node_id=1, node_config=node, state=state or RecordDict(), run_config={})


def test_the_store_keeps_the_state_in_context_state_and_in_the_nodes_folder(tmp_path: Path) -> None:
    state = _state()
    memory = PersonalStore(_context(), **OWNER, device=3)  # type: ignore[arg-type]
    assert memory.path is None and memory.load() is None
    memory.save(state.arrays, state.meta)
    assert set(memory.context.state.config_records) == {keys.PERSONAL_STATE}
    assert memory.load() is not None and memory.load().meta["device"] == "3"  # type: ignore[union-attr]

    disk = PersonalStore(_context(tmp_path), **OWNER, device=3)  # type: ignore[arg-type]
    disk.save(state.arrays, state.meta)
    assert (tmp_path / STATE_FILE).is_file() and oct((tmp_path / STATE_FILE).stat().st_mode)[-3:] == "600"
    restarted = PersonalStore(_context(tmp_path), **OWNER, device=3)  # type: ignore[arg-type]
    loaded = restarted.load()  # a restarted SuperNode: nothing in its context, the file in its folder
    assert loaded is not None and loaded.hard_classes == [2, 5, 7] and restarted.refused == ""

    (tmp_path / STATE_FILE).write_bytes((tmp_path / STATE_FILE).read_bytes()[:-7] + b"garbage")
    corrupt = PersonalStore(_context(tmp_path), **OWNER, device=3)  # type: ignore[arg-type]
    assert corrupt.load() is None and "checksum does not match" in corrupt.refused
    foreign = PersonalStore(_context(tmp_path), **{**OWNER, "federation": "other"}, device=3)  # type: ignore[arg-type]
    disk.save(state.arrays, state.meta)
    assert foreign.load() is None and "its federation is 'abc'" in foreign.refused
    assert state_file({"data-dir": "/d"}) == Path("/d/.meanet") / STATE_FILE
    assert state_file({"state-dir": "/s", "data-dir": "/d"}) == Path("/s") / STATE_FILE


def test_per_device_hard_classes_follow_that_devices_confusion_not_the_fleets() -> None:
    rng = np.random.default_rng(0)
    # the fleet's main block confuses 0 <-> 1 most; this device holds classes 5..8 and mixes up 6 and 8
    labels = np.repeat([5, 6, 7, 8], 20)
    pred = labels.copy()
    pred[(labels == 6) & (rng.random(80) < 0.5)] = 8
    pred[(labels == 8) & (rng.random(80) < 0.5)] = 6
    pred[np.flatnonzero(labels == 7)[:2]] = 0  # a couple of errors towards a class it does not hold
    hard = device_hard_classes(pred, labels, labels, 10, fraction=0.2)
    assert hard == [6, 8]
    assert device_hard_classes(pred, labels, np.array([5, 6]), 10, fraction=0.2) == []  # under 3 classes: none
    assert device_hard_classes(pred[:0], labels[:0], labels, 10, fraction=0.2) == []  # no validation image


def test_the_class_prior_is_chosen_on_validation_and_is_none_where_it_does_not_help() -> None:
    prior = log_label_prior(np.array([2, 2, 2, 3]), 5)
    assert prior.shape == (5,) and abs(float(prior.mean())) < 1e-6 and prior[2] > prior[3] > prior[0]
    labels = torch.tensor([2, 2, 2, 3])
    logits = torch.zeros(4, 5)
    logits[:, 0] = 0.5  # the shared block says 0, which this device never sees
    strength, accuracy = choose_prior_strength(logits, labels, prior)
    assert strength > 0 and accuracy[strength] == 0.75 and accuracy[0.0] == 0.0
    right = torch.nn.functional.one_hot(labels, 5).float() * 5
    assert choose_prior_strength(right, labels, prior)[0] == 0.0  # already right: the weakest prior that is


def test_a_skewed_devices_test_images_follow_its_own_class_proportions() -> None:
    test_labels = np.repeat(np.arange(10) * 3 + 1, 50)  # class ids differ from their positions
    held = np.array([4] * 60 + [13] * 30 + [22] * 10)
    shard = own_test_shard(test_labels, held, 200, seed=1)
    counts = {int(c): int(n) for c, n in zip(*np.unique(test_labels[shard], return_counts=True), strict=True)}
    assert counts == {4: 120, 13: 60, 22: 20}  # 120 > 50 test images of class 4: its images repeat
    assert np.array_equal(shard, own_test_shard(test_labels, held, 200, seed=1))
    assert not np.array_equal(shard, own_test_shard(test_labels, held, 200, seed=2))
    assert len(own_test_shard(test_labels, np.array([5]), 10, seed=0)) == 0  # a class without test images


@pytest.mark.usefixtures("task_identity")
def test_a_personal_reply_that_carries_arrays_is_refused() -> None:
    metrics = MetricRecord({keys.NUM_EXAMPLES: 10})
    ok = Message(RecordDict({keys.METRICS: metrics}), dst_node_id=1, message_type="train")
    assert personal_reply_problem(ok, keys.NUM_EXAMPLES) is None
    leaky = RecordDict({keys.METRICS: metrics, keys.ARRAYS: ArrayRecord({"extension.fc.weight": Array(np.ones(3))})})
    problem = personal_reply_problem(Message(leaky, dst_node_id=1, message_type="train"), keys.NUM_EXAMPLES)
    assert problem is not None and "personal blocks stay on the device" in problem


@pytest.mark.usefixtures("task_identity")
def test_a_personal_round_sends_nothing_up_and_the_device_keeps_its_own_blocks(
    edge: dict[str, Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    from fl_client.app import app

    strategy = edge["strategy"]
    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = [1, 2]  # the quorum; node 2 never answers
    run_config = {**edge["run_config"], "personal": True, "partition": "dirichlet", "alpha": 0.3}
    state, node = RecordDict(), {"partition-id": 0, "num-partitions": 2, "state-dir": str(tmp_path / "node0")}

    def context(fresh: bool = False) -> Context:  # fresh: a restarted SuperNode (its context state is gone)
        return Context(RUN, 1, node, RecordDict() if fresh else state, run_config)

    config = ConfigRecord({keys.EXPERIENCE: 0, keys.HARD_CLASSES: [3, 8], keys.SCOPE: "personal"})
    config[keys.CLOUD_ACCURACY] = 0.5
    digests = []
    for rnd, ctx in ((1, context()), (2, context()), (3, context(fresh=True))):
        msg = next(
            m for m in strategy.configure_train(rnd, edge["arrays"], config, grid) if m.metadata.dst_node_id == 1
        )
        answer = app(msg, ctx)
        assert not answer.has_error()
        assert not answer.content.array_records  # nothing personal (nothing at all) in the upload
        info = answer.content[keys.EDGE_INFO]
        # it starts from the blocks it kept (nothing the first time), read back after a restart too
        assert info[keys.PERSONAL_BASE] == (digests[-1] if digests else "")  # type: ignore[index]
        digests.append(info[keys.PERSONAL_DIGEST])  # type: ignore[index]
        arrays, metrics = strategy.aggregate_train(rnd, [answer])
        assert arrays is None and metrics is not None and strategy.last_round["accepted"] == 1
        assert strategy.last_round["personal_edges"][1]["hard_classes"] == list(info[keys.HARD_CLASSES])  # type: ignore[index,arg-type]
        assert (tmp_path / "node0" / STATE_FILE).is_file()
    saved = decode_personal(context().state.config_records[keys.PERSONAL_STATE]["bytes"])  # type: ignore[arg-type]
    model_keys = {k for k in saved.arrays if not k.startswith("memory.")}
    assert saved.meta["device"] == "0" and model_keys == {k for k in edge["arrays"] if is_personal_key(k)}
    # its validation memory of this experience (for the next ones), and its label counts by experience
    memory_y, memory_e = saved.arrays["memory.y"], saved.arrays["memory.experience"]
    assert 0 < len(memory_y) <= 128 and set(memory_e.tolist()) == {0} and saved.arrays["memory.x"].dtype == np.uint8
    assert set(saved.meta["label_counts"]) == {"0"} and sum(saved.meta["label_counts"]["0"]) > len(memory_y)
    assert len(set(digests)) == 3  # each round goes on from the blocks the device kept (the file, after a restart)

    (tmp_path / "node0" / STATE_FILE).write_bytes(b"MEANET-PERSONAL 1\n" + b"0" * 64 + b"\nnot an archive")
    msg = next(m for m in strategy.configure_train(4, edge["arrays"], config, grid) if m.metadata.dst_node_id == 1)
    answer = app(msg, context(fresh=True))  # a corrupt file: a clear error logged, a fresh start, no traceback
    assert not answer.has_error() and answer.content[keys.METRICS]["state-refused"] == 1  # type: ignore[index]
    leaky = Message(RecordDict(dict(answer.content.items())), dst_node_id=1, message_type="train")
    leaky.content[keys.ARRAYS] = ArrayRecord({k: Array(np.asarray(v)) for k, v in saved.arrays.items()})
    strategy.aggregate_train(4, [leaky])
    assert strategy.last_round["accepted"] == 0 and "stay on the device" in strategy.last_round["dropped"][0][1]


def test_meanet_export_writes_one_devices_personal_model_and_edge_predict_runs_it(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from typer.testing import CliRunner

    from fl_client.personal import federation_of
    from meanet_cli.main import app as cli
    from meanet_core.inference.edge_model import load_edge_model
    from meanet_core.training.checkpoint import FORMAT, atomic_save
    from meanet_core.trust.signing import private_key_pem, public_key_pem

    report = tmp_path / "fed"
    report.mkdir()
    key = Ed25519PrivateKey.generate()
    (report / "broadcast-signing.key").write_bytes(private_key_pem(key))
    (report / "broadcast-signing.pub").write_bytes(public_key_pem(key.public_key()))
    shared = build_meanet("resnet20_cifar", 10, [1, 3, 5])
    policy = {"name": "calibrated", "main_threshold": 0.25, "extension_threshold": 0.5}
    atomic_save(
        {
            "format": FORMAT,
            "config": {"model": "resnet20_cifar", "dataset": "digits", "data-dir": "", "signing-key": ""},
            "position": {"experience": 1, "phase": "cloud-start", "round": 0},
            "hard_classes": [1, 3, 5],
            "meanet": shared.state_dict(),
            "cloud": {},
            "report": {"experiences": [{"experience": 0, "evaluation": {"policy": policy}}]},
        },
        report / "state.pt",
    )
    device = build_meanet("resnet20_cifar", 10, [2, 7, 9])
    device.class_prior.copy_(torch.linspace(-1, 1, 10))
    torch.nn.init.normal_(device.extension.fc.weight)
    own = {"main_threshold": 0.1, "extension_threshold": 0.2, "use_extension": True}
    meta = {"experience": 0, "hard_classes": [2, 7, 9], "policy": {"name": "calibrated", **own}}
    owner = {"arch": "resnet20_cifar", "num_classes": 10, "federation": federation_of(report / "broadcast-signing.pub")}
    store = PersonalStore(_context(tmp_path / "node4"), **owner, device=4)  # type: ignore[arg-type]
    store.save(personal_arrays(device), meta)

    args = ["export", "--report-dir", str(report), "--out", str(tmp_path / "m.pt")]
    r = CliRunner().invoke(cli, [*args, "--personal", str(tmp_path / "node4" / STATE_FILE)])
    assert r.exit_code == 0, r.output
    assert "10 classes (3 hard)" in r.output and "personal state" in r.output and "main_threshold 0.1" in r.output
    exported = load_edge_model(tmp_path / "m.pt", report / "broadcast-signing.pub")
    assert exported.model.hard_classes.tolist() == [2, 7, 9] and exported.policy == {"name": "calibrated", **own}
    assert torch.equal(exported.model.class_prior, device.class_prior)
    assert torch.equal(exported.model.extension.fc.weight, device.extension.fc.weight)
    assert torch.equal(exported.model.main.fc.weight, shared.main.fc.weight)  # the shared main block
    x = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "in.npz", x=x)
    predict = [
        "edge",
        "predict",
        "--model",
        str(tmp_path / "m.pt"),
        "--verify-key",
        str(report / "broadcast-signing.pub"),
    ]
    r = CliRunner().invoke(cli, [*predict, "--images", str(tmp_path / "in.npz"), "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 7

    # the same device as an edge package: its own hard classes, policy and prior ride in the manifest and the graphs
    from meanet_edge.package import read_package
    from meanet_edge.policy import policy_from_dict
    from meanet_edge.runtime import EdgeRuntime

    package_args = [*args[:-1], str(tmp_path / "m.zip"), "--format", "onnx"]
    r = CliRunner().invoke(cli, [*package_args, "--personal", str(tmp_path / "node4" / STATE_FILE)])
    assert r.exit_code == 0, r.output
    package = read_package(tmp_path / "m.zip", report / "broadcast-signing.pub")
    assert package.manifest["hard_classes"] == [2, 7, 9] and package.manifest["policy"] == {"name": "calibrated", **own}
    runtime = EdgeRuntime(package, policy_from_dict(package.manifest["policy"]))
    xf = x.transpose(0, 3, 1, 2).astype(np.float32) / 255
    with torch.no_grad():
        want = exported.model.forward_main(torch.from_numpy(xf)).logits.numpy()
    assert np.abs(runtime.main(xf)[0] - want).max() < 1e-4  # the device's prior is in the main graph

    other = PersonalStore(_context(tmp_path / "node5"), **{**owner, "federation": "0" * 16}, device=5)  # type: ignore[arg-type]
    other.save(personal_arrays(device), meta)
    r = CliRunner().invoke(cli, [*args, "--personal", str(tmp_path / "node5" / STATE_FILE)])
    assert r.exit_code == 2 and "foreign personal state: its federation" in r.output


def test_a_device_remembers_its_earlier_experiences_validation_images_and_label_counts() -> None:
    from fl_client.personal_round import held_counts
    from meanet_core.data import ImageTensors
    from meanet_core.inference.personal import memory_arrays, split_memory

    def images(n: int, label: int) -> ImageTensors:
        return ImageTensors(torch.full((n, 3, 8, 8), label, dtype=torch.uint8), torch.full((n,), label))

    first = memory_arrays(None, images(200, 7), experience=0, seed=1)
    assert len(first["memory.y"]) == 128 and set(first["memory.experience"].tolist()) == {0}
    again = memory_arrays(first, images(50, 7), experience=0, seed=1)  # a second round of the same experience
    assert len(again["memory.y"]) == 50  # replaced, not added twice
    second = memory_arrays(first, images(30, 9), experience=1, seed=1)
    assert sorted(set(second["memory.y"].tolist())) == [7, 9] and len(second["memory.y"]) == 158
    past = split_memory(second, before=1)
    assert len(past) == 128 and set(past.y.tolist()) == {7}
    counts = held_counts({"label_counts": {"0": [0, 5, 0], "1": [9, 9, 9]}}, 1, torch.tensor([2, 2]), 3)
    assert counts == {"0": [0, 5, 0], "1": [0, 0, 2]}  # this experience's counts replace what a round saved
    assert held_counts({"label_counts": {"0": [1, 2]}}, 1, torch.tensor([0]), 3) == {"1": [1, 0, 0]}  # wrong size
