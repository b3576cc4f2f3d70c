"""Bad input ends in a clear message, never a traceback; no input is silently ignored; a run that trains evaluates.

Real files made here: ImageFolder trees of PNGs written with PIL, a truncated PNG, a text file renamed ``.png``, a
``.gif`` (not a format read), a hidden file; class folders named ``10``, ``9``, ``2`` so that their sorted order
(``10``, ``2``, ``9``) differs from their numeric order.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from meanet_cli.main import app
from meanet_core.config import ConfigError, TrainConfig
from meanet_core.data import BadImageError, load_dataset
from meanet_core.models import build_cloud, build_meanet
from meanet_core.training.checkpoint import FORMAT, load_cloud, load_meanet, meanet_payload

runner = CliRunner()
CLASSES = {"10": 10, "9": 90, "2": 170}  # folder name -> the grey level of its images


def write_tree(root: Path, per_class: int, size: tuple[int, int] = (20, 20)) -> None:
    """``root/<class>/<i>.png``: every image of a class is one grey level, so an image tells its folder."""
    from PIL import Image

    for name, level in CLASSES.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.full((size[1], size[0], 3), level + i, dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def add_bad_files(folder: Path) -> tuple[Path, Path, Path]:
    """A truncated PNG, a text file named .png and a GIF in ``folder``; also a hidden file, which is not data."""
    from PIL import Image

    good = next(folder.glob("*.png")).read_bytes()
    truncated, text, gif = folder / "truncated.png", folder / "notes.png", folder / "anim.gif"
    truncated.write_bytes(good[: len(good) // 2])
    text.write_text("not an image")
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(gif)
    (folder / ".DS_Store").write_bytes(b"\0\1\2")
    return truncated, text, gif


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_tree(tmp_path / "data" / "train", per_class=6)
    write_tree(tmp_path / "data" / "val", per_class=2)
    return tmp_path / "data"


def level_of(image: torch.Tensor) -> int:
    return int(image[0, image.shape[1] // 2, image.shape[2] // 2])


def test_bad_images_are_skipped_counted_and_named(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    truncated, text, gif = add_bad_files(folder / "train" / "9")
    write_tree(folder / "train" / ".ipynb_checkpoints", per_class=1)  # a hidden folder is no class
    with caplog.at_level(logging.WARNING, logger="meanet.data"):
        splits = load_dataset("imagefolder", data_dir=folder, image_size=16, val_fraction=0.25)
    assert sorted(s.path for s in splits.skipped_images) == sorted([truncated, text, gif])
    reasons = {s.path: s.reason for s in splits.skipped_images}
    assert "truncated" in reasons[truncated] and "unsupported format (.gif)" in reasons[gif]
    assert len(splits.train) + len(splits.val) == 18 and len(splits.test) == 6  # 3 classes x 6 and x 2
    warning = caplog.records[-1].getMessage()
    assert "skipped 3 of 21 files" in warning and str(text) in warning and "bad_images='error'" in warning
    # Labels index the sorted folder names ("10", "2", "9"); each image's grey level says which folder it came from.
    assert splits.class_names == ("10", "2", "9")
    for part in (splits.train, splits.val, splits.test):
        for image, label in zip(part.x, part.y.tolist(), strict=True):
            assert level_of(image) - CLASSES[splits.class_names[label]] in range(6)


def test_bad_images_error_names_every_file(folder: Path) -> None:
    truncated, text, gif = add_bad_files(folder / "val" / "2")
    with pytest.raises(BadImageError) as info:
        load_dataset("imagefolder", data_dir=folder, image_size=16, bad_images="error")
    message = str(info.value)
    assert "3 of 9 files" in message and all(str(p) in message for p in (truncated, text, gif))
    assert "bad_images='skip'" in message  # the way out
    assert {b.path for b in info.value.bad} == {truncated, text, gif}


def test_a_class_left_without_images_is_refused(folder: Path) -> None:
    for png in (folder / "val" / "10").glob("*.png"):
        png.write_text("garbage")
    with pytest.raises(FileNotFoundError, match=r"class folder\(s\) 10 .* hold no readable image"):
        load_dataset("imagefolder", data_dir=folder, image_size=16)


def test_unknown_bad_images_policy_lists_the_valid_ones(folder: Path) -> None:
    with pytest.raises(ValueError, match="skip, error"):
        load_dataset("imagefolder", data_dir=folder, bad_images="ignore")
    with pytest.raises(ConfigError, match="bad_images"):
        TrainConfig(bad_images="ignore")
    with pytest.raises(ConfigError, match="image_size"):
        TrainConfig(dataset="imagefolder", image_size=0)


def _train_args(folder: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--dataset", "imagefolder", "--data-dir", str(folder), "--model", "resnet20_cifar",
        "--cloud-model", "resnet20_cifar", "--epochs", "1", "--batch-size", "8", "--hard-count", "1",
        "--val-fraction", "0.25", "--out", str(out), *extra,
    ]  # fmt: skip


def test_cli_refuses_bad_images_naming_the_file(folder: Path, tmp_path: Path) -> None:
    _, text, _ = add_bad_files(folder / "train" / "10")
    result = runner.invoke(app, _train_args(folder, tmp_path / "run", "--image-size", "24", "--bad-images", "error"))
    assert result.exit_code == 2, result.output
    assert "error: 3 of 21 files" in result.output and str(text) in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)  # not an uncaught error
    result = runner.invoke(app, _train_args(folder, tmp_path / "run", "--bad-images", "sometimes"))
    assert result.exit_code == 2 and "bad_images" in result.output and "skip, error" in result.output


def test_a_run_trained_at_a_non_native_size_evaluates_at_that_size(folder: Path, tmp_path: Path) -> None:
    """resnet20_cifar is registered at 32x32; trained at 24x24 it is checkpointed, evaluated and served at 24x24
    (before: evaluate refused the run, "this model takes 32x32 images; got 24x24")."""
    add_bad_files(folder / "train" / "2")  # skipped (the default), with a warning line
    run = tmp_path / "run"
    result = runner.invoke(app, _train_args(folder, run, "--image-size", "24"))
    assert result.exit_code == 0, result.output
    assert "warning: skipped 3 of 21 files" in result.output and "3 unreadable files skipped" in result.output
    summary = json.loads((run / "train.json").read_text())
    assert summary["dataset"]["image_size"] == 24 and len(summary["dataset"]["skipped_images"]) == 3
    assert load_meanet(run / "meanet.pt").input_size == 24 and load_cloud(run / "cloud.pt").input_size == 24
    result = runner.invoke(app, ["evaluate", "--run", str(run), "--json", str(tmp_path / "eval.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "eval.json").read_text())["num_images"] == 6

    from fl_server.offload.handoff import load_cloud_from_run

    assert load_cloud_from_run(run).input_size == 24  # the offload service takes the run's size too


def test_checkpoints_record_the_input_size(tmp_path: Path) -> None:
    from meanet_core.inference.engine import check_images

    model = build_meanet("mobilenetv2", 4, [1], input_size=96)  # registered at 224x224
    payload = meanet_payload(model)
    assert payload["input_size"] == 96 and payload["format"] == FORMAT
    torch.save(payload, tmp_path / "new.pt")
    check_images(torch.zeros(2, 3, 96, 96, dtype=torch.uint8), load_meanet(tmp_path / "new.pt").input_size)
    del payload["input_size"]  # as written before the size was recorded
    torch.save(payload, tmp_path / "old.pt")
    assert load_meanet(tmp_path / "old.pt").input_size == 224  # the architecture's native size
    assert load_meanet(tmp_path / "old.pt", default_input_size=96).input_size == 96
    with pytest.raises(ValueError, match="positive number of pixels"):
        build_cloud("resnet20_cifar", 4, input_size=0)


def test_evaluate_a_damaged_train_json_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "train.json").write_text('{"config": ')
    result = runner.invoke(app, ["evaluate", "--run", str(tmp_path)])
    assert result.exit_code == 2 and "train.json" in result.output and "Traceback" not in result.output


class FakeRuns:
    """Stands in for the Flower runner: records what the CLI asked for."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.calls: list[tuple[dict[str, object], int]] = []

    def __call__(self, run_config: dict[str, object], num_supernodes: int, **_: Any) -> Any:
        from fl_server.launch import FlowerRun

        self.calls.append((dict(run_config), num_supernodes))
        return FlowerRun("1", "finished:completed", "", "", self.home)


@pytest.mark.parametrize(
    ("args", "clients"),
    [
        ([], 3),
        (["-c", "num-clients=5"], 5),
        (["--num-clients", "4"], 4),
        (["--num-clients", "2", "-c", "num-clients=2"], 2),
    ],
)
def test_federate_takes_the_number_of_clients_from_one_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], clients: int
) -> None:
    fake = FakeRuns(tmp_path)
    monkeypatch.setattr("fl_server.launch.run_simulation", fake)
    result = runner.invoke(app, ["federate", "--report-dir", str(tmp_path / "report"), *args])
    assert result.exit_code == 0, result.output
    assert [(c["num-clients"], n) for c, n in fake.calls] == [(clients, clients)]
    assert f"with {clients} clients" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num-clients", "3", "-c", "num-clients=5"], "--num-clients 3 and -c num-clients=5 disagree"),
        (["-c", "num-clients=abc"], "num_clients must be int; got 'abc'"),
        (["-c", "num-clients=-3"], "num-clients: must be >= 1; got -3"),
        (["-c", "experiences=2", "-c", "experiences=3"], "-c experiences is given twice"),
        (["-c", "report-dir=elsewhere"], "--report-dir"),
        (["-c", "experiences"], "KEY=VALUE"),
    ],
)
def test_federate_refuses_conflicting_or_bad_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    fake = FakeRuns(tmp_path)
    monkeypatch.setattr("fl_server.launch.run_simulation", fake)
    result = runner.invoke(app, ["federate", "--report-dir", str(tmp_path / "report"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert fake.calls == []  # nothing started


def test_federate_reads_the_report_dir_from_the_run_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRuns(tmp_path)
    monkeypatch.setattr("fl_server.launch.run_simulation", fake)
    result = runner.invoke(app, ["federate", "-c", f'report-dir="{tmp_path / "via-c"}"'])
    assert result.exit_code == 0, result.output
    assert fake.calls[0][0]["report-dir"] == str(tmp_path / "via-c")


def test_tracebacks_never_show_local_variables() -> None:
    assert app.pretty_exceptions_show_locals is False


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--out", "{file}"],
        ["evaluate", "--run", "{tmp}", "--json", "{tmp}"],
        ["evaluate", "--run", "{tmp}", "--threads", "-1"],
        ["federate", "--report-dir", "{file}"],
        ["federate", "--timeout", "0"],
        ["federate", "--secure", "{tmp}/nothing", "--deployment"],
        ["cloud", "serve", "--run", "{tmp}", "--insecure"],
        ["cloud", "serve", "--run", "{tmp}", "--insecure", "--port", "99999"],
        ["certs", "--out", "{file}"],
    ],
)
def test_user_mistakes_exit_2_with_a_message(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "a-file").write_text("x")
    argv = [a.format(file=tmp_path / "a-file", tmp=tmp_path) for a in args]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), repr(result.exception)
    assert "error" in result.output.lower() or "Invalid value" in result.output
