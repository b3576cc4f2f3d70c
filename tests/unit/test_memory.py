"""Memory before the first batch (issue 38): an image folder's size follows the model, a step that will not fit stops
with the estimate, the memory available and the fix, and the estimate matches a measured peak."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import meanet_core.training.memory as memory
from meanet_cli.main import app
from meanet_core.config import TrainConfig
from meanet_core.data import ImageTensors
from meanet_core.models import build_meanet
from meanet_core.training.memory import MemoryBudgetError, bound_batch, estimate_inference
from meanet_core.training.stages import StageConfig, train_main

runner = CliRunner()


def _data(n: int = 16, size: int = 32) -> ImageTensors:
    g = torch.Generator().manual_seed(0)
    return ImageTensors(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g), torch.arange(n) % 4)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """An image folder of 3 classes of odd images (grayscale 28x28, RGBA, odd sizes)."""
    for split, per in (("train", 8), ("val", 2)):
        for c in range(3):
            d = tmp_path / "data" / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(per):
                mode, side = (("L", 28), ("RGBA", 40), ("RGB", 71))[i % 3]
                Image.new(mode, (side, side + i), 40 * c + i).save(d / f"{i}.png")
    return tmp_path / "data"


def _train(folder: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--dataset", "imagefolder", "--data-dir", str(folder), "--model", "resnet20_cifar",
        "--cloud-model", "resnet20_cifar", "--epochs", "1", "--batch-size", "8", "--hard-count", "1",
        "--val-fraction", "0.25", "--precision", "fp32", "--out", str(out), *extra,
    ]  # fmt: skip


def test_image_size_follows_the_model_and_an_explicit_size_wins() -> None:
    assert TrainConfig(dataset="imagefolder", model="resnet20_cifar").input_size == 32
    assert TrainConfig(dataset="imagefolder", model="mobilenetv2").input_size == 224
    assert TrainConfig(dataset="imagefolder", model="resnet20_cifar", image_size=48).input_size == 48
    assert TrainConfig(dataset="imagefolder", model="resnet20_cifar").size_warning() is None
    warning = TrainConfig(dataset="imagefolder", model="resnet20_cifar", image_size=224).size_warning()
    assert warning is not None and "resnet20_cifar" in warning and "32x32" in warning and "224" in warning


def test_cli_trains_an_image_folder_at_the_models_size(folder: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, _train(folder, tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "train.json").read_text())["dataset"]["image_size"] == 32
    assert "warning" not in result.output  # an explicit size wins: test_bad_input trains one at 24x24


def test_cli_stops_before_any_batch_when_memory_is_short(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory, "available_memory", lambda: 50 * 1024**2)  # 50 MiB free
    result = runner.invoke(app, _train(folder, tmp_path / "run", "--image-size", "64"))
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())
    assert "error: a training step of the main stage at batch 8 on 64x64 images needs about" in out
    assert "but 50 MiB is available" in out and "--batch-size" in out and "designed for 32x32" in out
    assert "warning: --image-size 64: resnet20_cifar was designed for 32x32 images" in out
    assert "Traceback" not in result.output and not (tmp_path / "run" / "state.pt").exists()  # nothing trained


def test_fit_stops_before_any_batch_and_leaves_the_model_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_meanet("resnet20_cifar", 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    monkeypatch.setattr(memory, "available_memory", lambda: 90 * 1024**2)
    with pytest.raises(MemoryBudgetError) as caught:
        train_main(model, _data(), StageConfig(epochs=1, batch_size=16), progress=False)
    e = caught.value
    assert isinstance(e, MemoryError) and e.available == 90 * 1024**2 and e.estimate.total > 0.9 * e.available
    assert "at most" in str(e) and "Fix: a smaller batch size" in str(e)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # no step, no BN statistics
    assert torch.equal(torch.get_rng_state(), rng)
    monkeypatch.setattr(memory, "available_memory", lambda: 64 * 1024**3)  # ample: it trains
    history = train_main(model, _data(), StageConfig(epochs=1, batch_size=16), progress=False)
    assert len(history) == 1


def test_estimate_scales_with_batch_and_pixels() -> None:
    model = build_meanet("resnet20_cifar", 4)
    data = _data()
    x, y = memory.TensorBatches(data, 4, shuffle=False).__iter__().__next__()

    def step(xs: torch.Tensor, ys: torch.Tensor) -> object:
        return torch.nn.functional.cross_entropy(model.forward_main(xs).logits, ys)

    small = memory.estimate_training(step, [model], model.main.parameters(), x, y, 16)
    large = memory.estimate_training(step, [model], model.main.parameters(), x, y, 64)
    assert large.per_image == small.per_image and large.total - small.total == 48 * small.per_image
    assert small.max_batch(small.total) < 16 <= small.max_batch(2 * small.total)
    model48 = build_meanet("resnet20_cifar", 4, input_size=48)
    x48 = torch.nn.functional.interpolate(x, size=48)

    def step48(xs: torch.Tensor, ys: torch.Tensor) -> object:
        return torch.nn.functional.cross_entropy(model48.forward_main(xs).logits, ys)

    at48 = memory.estimate_training(step48, [model48], model48.main.parameters(), x48, y, 16)
    assert 1.8 < at48.activations / small.activations < 2.6  # (48 / 32)^2 = 2.25 times the pixels


def test_inference_batch_is_bounded_by_memory() -> None:
    model = build_meanet("resnet20_cifar", 4).eval()
    x = torch.rand(1, 3, 32, 32)
    est = estimate_inference(lambda v: model.forward_main(v), [model], x, 256, what="inference")
    assert est.per_image > 3 * 32 * 32 * 4 and bound_batch(est, available=64 * 1024**3) == 256
    assert bound_batch(est, available=est.per_image * 10) == 9  # 90% usable
    assert bound_batch(est, available=0) == 1


def test_estimate_is_within_the_factor_of_a_measured_peak() -> None:
    from benchmarks.perf_memory import measure

    row = measure("resnet20_cifar", 32, 128, "fp32", threads=1)
    assert 1 / 1.5 <= row["ratio"] <= 1.5, row


def test_inference_batch_takes_the_most_demanding_model() -> None:
    from meanet_core.models import build_cloud
    from meanet_core.training.memory import inference_batch

    edge, cloud = build_meanet("resnet20_cifar", 4).eval(), build_cloud("resnet56_cifar", 4).eval()
    assert inference_batch([edge, cloud], 32, 256, available=64 * 1024**3) == 256
    small = inference_batch([edge, cloud], 32, 256, available=8 * 1024**2)
    assert 1 <= small < 256 and small == inference_batch([cloud], 32, 256, available=8 * 1024**2)
