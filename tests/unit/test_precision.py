"""Training and inference precision (``meanet_core.training.precision``): ``auto`` resolves by the hardware, ``bf16``
runs the
heavy operations in bfloat16 and hands float32 back, and every place that takes the setting rejects a bad one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import meanet_core.training.precision as precision
from benchmarks.continual.config import BenchConfig, BenchConfigError
from benchmarks.continual.edge import EdgeClassSpace, MainClassifier
from meanet_core.data import ImageTensors
from meanet_core.inference.fastpath import optimize_for_inference
from meanet_core.models import build_meanet
from meanet_core.training.stages import StageConfig, predict_logits, train_main


def _data(n: int = 48, classes: int = 4, seed: int = 0) -> ImageTensors:
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) % classes) * 2 + 1  # class ids 1, 3, 5, 7 of 8: ids differ from their positions
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    x[:, 0] = (y * 30).view(-1, 1, 1).to(torch.uint8)  # learnable: the red channel encodes the class
    return ImageTensors(x, y)


@pytest.mark.parametrize(("flags", "expected"), [({"avx2"}, "fp32"), ({"avx2", "avx512_bf16"}, "bf16"),
                                                 ({"amx_bf16"}, "bf16")])  # fmt: skip
def test_auto_picks_bf16_only_where_the_cpu_has_it(monkeypatch, flags, expected) -> None:
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset(flags))
    assert precision.resolve_precision("auto") == expected
    assert precision.resolve_precision("fp32") == "fp32" and precision.resolve_precision("bf16") == "bf16"
    assert BenchConfig(precision="auto").precision == expected  # resolved when the config is built


def test_bad_precision_is_refused_everywhere_with_the_valid_choices() -> None:
    for make in (
        lambda: precision.resolve_precision("fp16"),
        lambda: StageConfig(precision="fp16"),
        lambda: MainClassifier(build_meanet("resnet20_cifar", 8), "half"),
    ):
        with pytest.raises(ValueError, match=r"fp32, bf16 .*auto"):
            make()
    with pytest.raises(BenchConfigError, match="unknown precision 'float16'"):
        BenchConfig(precision="float16")


def test_autocast_runs_matmuls_in_bfloat16_and_fp32_changes_nothing() -> None:
    a = torch.randn(4, 8)
    with precision.autocast("fp32"):
        assert (a @ a.T).dtype == torch.float32
    with precision.autocast("bf16"):
        assert (a @ a.T).dtype == torch.bfloat16
    assert (a @ a.T).dtype == torch.float32  # only inside


def test_a_stored_fp32_result_keeps_its_key_and_bf16_gets_its_own() -> None:
    fp32, bf16 = BenchConfig(precision="fp32"), BenchConfig(precision="bf16")
    assert "precision" not in fp32.fingerprint() and "precision" not in fp32.fingerprint("edge-only")
    for method in (None, "edge-only", "meanet-fl-lwf", "fedavg-naive", "joint"):
        assert fp32.fingerprint(method) != bf16.fingerprint(method)
        assert bf16.fingerprint(method)["precision"] == "bf16"


def test_bf16_inference_returns_float32_logits_close_to_fp32() -> None:
    torch.manual_seed(0)
    model = build_meanet("resnet20_cifar", 8, [1, 3]).eval()
    data = _data()
    fast = optimize_for_inference(model)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return fast.forward_main(x).logits

    ref = predict_logits(fn, data, 16, memory_format=torch.channels_last)
    low = predict_logits(fn, data, 16, memory_format=torch.channels_last, precision="bf16")
    assert low.dtype == torch.float32 and low.shape == ref.shape
    assert not torch.equal(low, ref)  # it did run in bfloat16
    assert (low - ref).abs().max() <= 0.05 * ref.abs().max() + 1e-3


@pytest.fixture
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions on two threads of a busy machine spend their time waiting
    yield
    torch.set_num_threads(threads)


def test_bf16_training_learns_and_keeps_float32_weights(one_thread: None) -> None:
    data = _data(64)
    accs = {}
    for prec in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = build_meanet("resnet20_cifar", 8, [1, 3])
        hist = train_main(model, data, StageConfig(epochs=4, batch_size=16, lr=0.05, precision=prec), progress=False)
        assert all(p.dtype == torch.float32 for p in model.parameters())
        accs[prec] = hist[-1]["train_accuracy"]
        assert hist[-1]["loss"] < hist[0]["loss"], prec
    assert accs["bf16"] >= accs["fp32"] - 0.25  # the same learning, up to rounding on 64 images


def test_avalanche_wrappers_run_in_bf16_and_hand_back_float32() -> None:
    torch.manual_seed(0)
    meanet = build_meanet("resnet20_cifar", 8, [1, 3]).eval()
    x = _data(8).x
    ref, low = MainClassifier(meanet)(x), MainClassifier(meanet, "bf16")(x)
    assert low.dtype == torch.float32 and not torch.equal(low, ref)
    assert (low - ref).abs().max() <= 0.05 * ref.abs().max() + 1e-3
    edge_ref, edge_low = EdgeClassSpace(meanet)(x), EdgeClassSpace(meanet, "bf16")(x)
    assert edge_low.dtype == torch.float32  # log-probabilities over all 8 classes, hard ones from the extension
    assert torch.allclose(edge_low.exp().sum(1), torch.ones(8), atol=1e-4)
    assert (edge_low - edge_ref).abs().max() < 0.1
