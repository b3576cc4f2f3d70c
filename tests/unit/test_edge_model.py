"""Signed edge model files (meanet export) and edge-only prediction (meanet edge predict without a cloud)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from fl_client.predict import check_cloud_contract
from meanet_cli.main import app as cli
from meanet_core.inference.edge_model import (
    EdgeModelError,
    describe_policy,
    load_edge_model,
    policy_from_dict,
    write_edge_model,
)
from meanet_core.inference.policies import CalibratedPolicy, PaperPolicy
from meanet_core.models import MEANet, build_meanet
from meanet_core.training.checkpoint import FORMAT, atomic_save, meanet_payload
from meanet_core.trust.signing import private_key_pem, public_key_pem
from meanet_edge.inputs import open_inputs

NAMES = ("cat", "9", "dog", "2", "10", "ant", "bee", "cow", "elk", "fox")


@pytest.fixture(scope="module")
def model() -> MEANet:
    torch.manual_seed(0)
    return build_meanet("resnet20_cifar", 10, [1, 3, 5]).eval()  # random weights: plumbing, not accuracy


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def exported(tmp_path: Path, model: MEANet, key: Ed25519PrivateKey) -> Path:
    return write_edge_model(model, NAMES, key, tmp_path / "model.pt", policy=CalibratedPolicy(0.3, 0.4), source="t")


def rewrite(path: Path, change: Any) -> None:
    obj = torch.load(path, weights_only=True)
    change(obj)
    torch.save(obj, path)


def test_an_exported_model_loads_with_its_key_and_answers_as_the_original(exported, model, key) -> None:
    edge = load_edge_model(exported, key.public_key())
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(edge.model.forward_main(x).logits, model.forward_main(x).logits)
    assert torch.equal(edge.model(x)[1], model(x)[1])
    assert edge.class_names == NAMES and edge.model.hard_classes.tolist() == [1, 3, 5]
    assert edge.routing_policy() == CalibratedPolicy(0.3, 0.4)  # the recorded policy by default
    assert edge.routing_policy("paper") == PaperPolicy(0.5)
    assert torch.load(exported, weights_only=True)["header"]["input_size"] == 32
    bare = load_edge_model(write_edge_model(model, NAMES, key, exported.with_name("bare.pt")), key.public_key())
    assert bare.policy is None and bare.routing_policy() == PaperPolicy(0.5)
    with pytest.raises(EdgeModelError, match="no calibrated thresholds"):
        bare.routing_policy("calibrated")


@pytest.mark.parametrize(
    "change",
    [
        lambda o: o["state_dict"]["main.fc.weight"].add_(1e-3),  # weights
        lambda o: o["header"].update(class_names=list(reversed(o["header"]["class_names"]))),  # class ids
        lambda o: o["header"].update(policy={"name": "calibrated", "main_threshold": 0.0, "extension_threshold": 0.0}),
        lambda o: o["header"].update(hard_classes=[1, 3]),
    ],
    ids=["weights", "class-names", "thresholds", "hard-classes"],
)
def test_a_tampered_model_is_refused(exported, key, change) -> None:
    rewrite(exported, change)
    with pytest.raises(EdgeModelError, match="does not match its signature"):
        load_edge_model(exported, key.public_key())


def test_a_model_signed_by_another_key_is_refused(exported, tmp_path) -> None:
    other = tmp_path / "other.pub"
    other.write_bytes(public_key_pem(Ed25519PrivateKey.generate().public_key()))
    with pytest.raises(EdgeModelError, match="not by the pinned key"):
        load_edge_model(exported, other)


def test_unsigned_missing_and_foreign_files_are_refused(exported, key, tmp_path, model) -> None:
    pub = key.public_key()
    with pytest.raises(EdgeModelError, match="does not exist"):
        load_edge_model(exported, tmp_path / "nope.pub")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(EdgeModelError, match="not an edge model file"):
        load_edge_model(tmp_path / "junk.pt", pub)
    atomic_save(meanet_payload(model), tmp_path / "meanet.pt")
    with pytest.raises(EdgeModelError, match="training checkpoint"):
        load_edge_model(tmp_path / "meanet.pt", pub)
    rewrite(exported, lambda o: o.pop("signature"))
    with pytest.raises(EdgeModelError, match="unsigned"):
        load_edge_model(exported, pub)


def test_export_refuses_class_names_that_do_not_name_every_class(model, key, tmp_path) -> None:
    with pytest.raises(ValueError, match="one unique name per class"):
        write_edge_model(model, NAMES[:9], key, tmp_path / "m.pt")
    with pytest.raises(ValueError, match="duplicates"):
        write_edge_model(model, ("a",) * 10, key, tmp_path / "m.pt")


def test_export_a_federation_report_dir_with_its_key_thresholds_and_class_names(model, tmp_path) -> None:
    report = tmp_path / "fed"
    key = Ed25519PrivateKey.generate()
    report.mkdir()
    (report / "broadcast-signing.key").write_bytes(private_key_pem(key))  # the federation's own key
    policy = {"name": "calibrated", "main_threshold": 0.25, "extension_threshold": 0.5}
    state = {
        "format": FORMAT,
        "config": {"model": "resnet20_cifar", "dataset": "digits", "data-dir": "", "signing-key": ""},
        "position": {"experience": 2, "phase": "cloud-training", "round": 0},
        "hard_classes": [1, 3, 5],
        "meanet": model.state_dict(),
        "cloud": {},
        "report": {"experiences": [{"experience": 0}, {"experience": 1, "evaluation": {"policy": policy}}]},
    }
    atomic_save(state, report / "state.pt")
    r = CliRunner().invoke(cli, ["export", "--report-dir", str(report), "--out", str(tmp_path / "m.pt")])
    assert r.exit_code == 0, r.output
    assert "10 classes (3 hard)" in r.output and "calibrated (main_threshold 0.25, extension_threshold 0.5)" in r.output
    edge = load_edge_model(tmp_path / "m.pt", report / "broadcast-signing.pub")  # the key the edges already pin
    # recorded in its validated form: a policy stored before use_extension existed used the extension
    assert edge.class_names == tuple(str(i) for i in range(10)) and edge.policy == {**policy, "use_extension": True}
    r = CliRunner().invoke(cli, ["export", "--run", str(report), "--out", str(tmp_path / "m.pt")])
    assert r.exit_code == 2 and "--report-dir" in r.output


def test_edge_predict_without_a_cloud_answers_every_input_on_the_edge(model, key, tmp_path) -> None:
    policy = CalibratedPolicy(1.0, 0.0)  # every easy top-1 goes to the cloud: there is none, so the edge answers
    write_edge_model(model, NAMES, key, tmp_path / "m.pt", policy=policy)
    (tmp_path / "k.pub").write_bytes(public_key_pem(key.public_key()))
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 20)
    np.savez(tmp_path / "in.npz", x=x, y=y)
    args = ["edge", "predict", "--model", str(tmp_path / "m.pt"), "--verify-key", str(tmp_path / "k.pub")]
    r = CliRunner().invoke(cli, [*args, "--images", str(tmp_path / "in.npz"), "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [row["input"] for row in rows] == [str(i) for i in range(20)]
    assert [int(row["true_label"]) for row in rows] == y.tolist()
    assert all(row["true_class_name"] == NAMES[int(row["true_label"])] for row in rows)
    assert all(row["class_name"] == NAMES[int(row["label"])] for row in rows)
    assert {row["exit"] for row in rows} <= {"main", "extension"}  # nothing answered by a cloud
    assert all(row["bytes_sent"] == "0" and row["cloud_macs"] == "0" for row in rows)  # nothing sent
    easy = [row for row in rows if int(row["label"]) not in (1, 3, 5)]
    assert easy and all(row["fallback"] == "true" and row["exit"] == "main" for row in easy)
    assert "accuracy" in r.output and "inputs routed to the cloud were answered by the edge" in r.output


def test_inputs_flat_or_by_class_name_and_clear_errors(tmp_path, model, key) -> None:
    from PIL import Image

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.fromarray(np.full((24, 40, 3), 40 * i, dtype=np.uint8)).save(flat / f"{i}.jpg")
    (flat / "README.txt").write_text("not an image")
    inputs = open_inputs(flat, 32, NAMES)
    batches = list(inputs.batches(2))
    assert not inputs.labelled and all(b.labels is None for b in batches)
    assert [n for b in batches for n in b.names] == [str(flat / f"{i}.jpg") for i in range(3)]
    assert batches[0].x.shape == (2, 3, 32, 32) and [s.path.name for s in inputs.skipped] == ["README.txt"]
    (flat / "cat").mkdir()
    with pytest.raises(ValueError, match="both files"):
        open_inputs(flat, 32, NAMES)
    labelled = tmp_path / "labelled"
    (labelled / "owl").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"owl of .* are not classes of this model"):
        open_inputs(labelled, 32, NAMES)
    np.save(tmp_path / "one.npz", np.zeros(3))  # saved as one.npz.npy
    (tmp_path / "one.npz.npy").rename(tmp_path / "one.npz")
    with pytest.raises(ValueError, match="single array"):
        open_inputs(tmp_path / "one.npz", 32, NAMES)
    edge = load_edge_model(write_edge_model(model, NAMES, key, tmp_path / "m.pt"), key.public_key())
    check_cloud_contract({"input_shape": [3, 32, 32], "num_classes": 10}, edge, "https://c")
    with pytest.raises(ValueError, match="classifies 100 classes, this edge model 10"):
        check_cloud_contract({"input_shape": [3, 32, 32], "num_classes": 100}, edge, "https://c")


def test_a_recorded_policy_keeps_whether_the_extension_runs() -> None:
    without = CalibratedPolicy(0.3, 0.6, use_extension=False)
    assert policy_from_dict(without.as_dict()) == without
    assert "use_extension no" in describe_policy(without.as_dict())
    # recorded before the option existed: the extension ran
    assert policy_from_dict({"name": "calibrated", "main_threshold": 0.3, "extension_threshold": 0.6}).use_extension
    with pytest.raises(ValueError, match="use_extension must be true or false"):
        policy_from_dict({**without.as_dict(), "use_extension": "no"})
