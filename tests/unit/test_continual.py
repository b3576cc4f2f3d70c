"""Continual benchmark: metric logic against Avalanche's own plugins, scenarios, the class-space edge module, and
the fast routed evaluation against the adaptive engine. CPU, a few seconds in all."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks.continual.config import METHODS, BenchConfig, BenchConfigError
from benchmarks.continual.edge import EdgeClassSpace
from benchmarks.continual.metrics import (
    accuracy,
    average_accuracy,
    bwt,
    experience_forgetting,
    forgetting,
    new_matrix,
    summarize_matrix,
)
from benchmarks.continual.scenarios import build_scenario, corrupt
from benchmarks.continual.shared import block_costs, costs, meanet_outputs
from benchmarks.tables import mean_std
from meanet_core.data import DatasetSplits, ImageTensors
from meanet_core.inference.engine import AdaptiveEngine, LocalCloud, predictions_from_outputs, route_outputs
from meanet_core.inference.evaluation import summarize
from meanet_core.inference.policies import CalibratedPolicy
from meanet_core.models import build_cloud, build_meanet


def synthetic_splits(num_classes: int = 6, per_class: int = 20, seed: int = 0) -> DatasetSplits:
    """Tiny 32x32 images whose mean colour depends on the class (learnable), balanced splits."""
    g = torch.Generator().manual_seed(seed)

    def make(n: int) -> ImageTensors:
        y = torch.arange(num_classes).repeat_interleave(n)
        base = (y.float() / num_classes * 200 + 20).view(-1, 1, 1, 1)
        x = (base + torch.randn(len(y), 3, 32, 32, generator=g) * 20).clamp(0, 255).to(torch.uint8)
        return ImageTensors(x, y)

    return DatasetSplits(
        name="synthetic",
        train=make(per_class),
        val=make(per_class // 4),
        test=make(per_class // 2),
        num_classes=num_classes,
        class_names=tuple(str(c) for c in range(num_classes)),
        image_size=32,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )


# ------------------------------------------------------------------------------------------------ metrics
def test_metrics_of_a_learner_that_forgets_everything() -> None:
    a = new_matrix(3)
    a[0, 0] = 1.0
    a[1, :2] = [0.0, 1.0]
    a[2, :3] = [0.0, 0.0, 1.0]
    assert average_accuracy(a) == pytest.approx([1.0, 0.5, 1 / 3])
    assert forgetting(a) == pytest.approx([0.0, 1.0, 1.0])  # nothing to forget after the first experience
    assert bwt(a) == pytest.approx([0.0, -1.0, -1.0])
    assert experience_forgetting(a) == {0: 1.0, 1: 1.0}
    s = summarize_matrix(a)
    assert s["accuracy_matrix"][0] == [1.0, None, None] and s["final_forgetting"] == 1.0


def test_forgetting_uses_the_accuracy_right_after_training_not_the_best() -> None:
    # Avalanche: initial value = accuracy when the experience was trained (the diagonal), not the maximum since.
    a = new_matrix(3)
    a[0, 0] = 0.5
    a[1, :2] = [0.9, 0.8]  # experience 0 improved after training on 1 (positive backward transfer)
    a[2, :3] = [0.6, 0.4, 0.7]
    assert experience_forgetting(a) == pytest.approx({0: 0.5 - 0.6, 1: 0.8 - 0.4})
    assert forgetting(a)[1] == pytest.approx(0.5 - 0.9)
    assert forgetting(a)[2] == pytest.approx(((0.5 - 0.6) + (0.8 - 0.4)) / 2)
    assert bwt(a) == pytest.approx([-f for f in forgetting(a)])


def test_a_method_that_learns_nothing_scores_chance_with_zero_forgetting() -> None:
    # A constant predictor: the same row every time. Class-incremental, 4 experiences of 5 balanced classes, the
    # constant class in experience 2: accuracy 1/5 there, 0 elsewhere; nothing learned, so nothing forgotten.
    y = torch.arange(20).repeat_interleave(3)
    groups = [list(range(5 * k, 5 * k + 5)) for k in range(4)]
    const = torch.full_like(y, 12)
    a = new_matrix(4)
    for t in range(4):
        for k in range(t + 1):
            mask = torch.isin(y, torch.tensor(groups[k]))
            a[t, k] = accuracy(const[mask], y[mask])
    assert a[3].tolist() == pytest.approx([0.0, 0.0, 0.2, 0.0])
    assert forgetting(a) == pytest.approx([0.0] * 4) and bwt(a) == pytest.approx([0.0] * 4)
    assert average_accuracy(a) == pytest.approx([0.0, 0.0, 0.2 / 3, 0.05])  # the final one is chance, 1/20


def test_metrics_match_avalanche_plugins_on_a_real_run() -> None:
    """Train Avalanche's Naive on a 3-experience class-incremental benchmark with its evaluation plugins; our
    forgetting/BWT of the accuracy matrix it recorded equal its StreamForgetting/StreamBWT/ExperienceForgetting."""
    from avalanche.benchmarks.scenarios import class_incremental_benchmark
    from avalanche.evaluation.metrics import accuracy_metrics, bwt_metrics, forgetting_metrics
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    from benchmarks.continual.scenarios import to_avalanche

    torch.manual_seed(0)
    splits = synthetic_splits(num_classes=6, per_class=30)
    bench = class_incremental_benchmark(
        {"train": to_avalanche(splits.train), "test": to_avalanche(splits.test)},
        class_order=[3, 0, 5, 1, 4, 2],
        num_classes_per_exp=[2, 2, 2],
    )
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluator = EvaluationPlugin(
            accuracy_metrics(experience=True),
            forgetting_metrics(experience=True, stream=True),
            bwt_metrics(experience=True, stream=True),
            loggers=[],
        )
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    strategy = Naive(
        model=_FloatInput(model), optimizer=opt, criterion=nn.CrossEntropyLoss(), train_mb_size=16, train_epochs=2,
        evaluator=evaluator, device="cpu",
    )  # fmt: skip
    a = new_matrix(3)
    stream_forgetting, stream_bwt = [], []
    for t, exp in enumerate(bench.train_stream):
        strategy.train(exp)
        metrics = strategy.eval(bench.test_stream[: t + 1])
        for k in range(t + 1):
            a[t, k] = metrics[f"Top1_Acc_Exp/eval_phase/test_stream/Exp{k:03d}"]
        stream_forgetting.append(metrics["StreamForgetting/eval_phase/test_stream"])
        stream_bwt.append(metrics["StreamBWT/eval_phase/test_stream"])
    assert max(stream_forgetting) > 0.1  # the run really forgot something, so the comparison means something
    assert forgetting(a) == pytest.approx(stream_forgetting, abs=1e-9)
    assert bwt(a) == pytest.approx(stream_bwt, abs=1e-9)
    for k, value in experience_forgetting(a).items():
        assert value == pytest.approx(metrics[f"ExperienceForgetting/eval_phase/test_stream/Exp{k:03d}"])


class _FloatInput(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float() / 255.0)


def test_bad_matrices_and_mean_std() -> None:
    with pytest.raises(ValueError, match="square"):
        forgetting(np.zeros((2, 3)))
    bad = new_matrix(2)
    bad[0, 0] = 1.5
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        average_accuracy(bad)
    assert mean_std([0.5]) == {"mean": 0.5, "std": 0.0, "n": 1}
    ms = mean_std([0.2, 0.4, None])
    assert ms["mean"] == pytest.approx(0.3) and ms["std"] == pytest.approx(math.sqrt(0.02)) and ms["n"] == 2


def test_config_rejects_unknown_methods_and_ranges() -> None:
    assert BenchConfig().methods == METHODS
    with pytest.raises(BenchConfigError, match="valid"):
        BenchConfig(methods=("meanet-fl-sgd",))
    with pytest.raises(BenchConfigError, match="split-cifar100"):
        BenchConfig(scenario="split-imagenet")
    with pytest.raises(BenchConfigError, match="epochs=0"):
        BenchConfig(epochs=0)
    with pytest.raises(BenchConfigError, match="unknown benchmark setting"):
        BenchConfig.from_dict({"epoch": 3})


def test_a_stored_result_depends_only_on_the_settings_its_method_reads() -> None:
    base, other = BenchConfig(), BenchConfig(main_rounds=2, lwf_alpha=0.5)
    # the shared cloud trajectory and the methods that read neither setting keep their results
    for method in (None, "naive", "joint", "edge-only", "cloud-only", "fedavg-replay", "meanet-fl-ewc"):
        assert base.fingerprint(method) == other.fingerprint(method), method
    for method in ("meanet-fl-main-naive", "meanet-fl-lwf", "fedavg-lwf", "meanet-fl-main-lwf"):
        assert base.fingerprint(method) != other.fingerprint(method), method
    # every method's result depends on the shared settings
    assert all(base.fingerprint(m) != BenchConfig(lr=0.1).fingerprint(m) for m in (None, *METHODS))
    # target cloud fraction: MEANet's routing only
    routed = BenchConfig(target_cloud_fraction=0.1)
    assert base.fingerprint("fedavg-naive") == routed.fingerprint("fedavg-naive")
    assert base.fingerprint("meanet-static") != routed.fingerprint("meanet-static")


def test_settings_added_later_keep_the_keys_of_results_stored_before_them() -> None:
    # cloud epochs: unset (= epochs, as every earlier run) leaves the key as it was; set, the trajectory reruns
    assert "cloud_epochs" not in BenchConfig().fingerprint()
    assert BenchConfig(cloud_epochs=9).fingerprint()["cloud_epochs"] == 9
    assert BenchConfig(cloud_epochs=9).fingerprint("cloud-only") != BenchConfig().fingerprint("cloud-only")
    with pytest.raises(BenchConfigError, match="cloud_epochs=0"):
        BenchConfig(cloud_epochs=0)


# ------------------------------------------------------------------------------------------------ scenarios
def test_split_scenario_is_class_incremental_and_federated() -> None:
    s = build_scenario("split-cifar100", num_experiences=3, num_clients=2, cloud_share=0.3, seed=1,
                       splits=synthetic_splits(num_classes=6, per_class=20))  # fmt: skip
    assert len(s) == 3 and len(s.benchmark.train_stream) == 3 and len(s.benchmark.test_stream) == 3
    seen: set[int] = set()
    for e, exp in enumerate(s.experiences):
        assert not seen & set(exp.classes) and len(exp.classes) == 2
        seen |= set(exp.classes)
        assert exp.seen_classes == tuple(sorted(seen))
        assert set(exp.train.y.tolist()) == set(exp.test.y.tolist()) == set(exp.classes)
        assert len(s.benchmark.train_stream[e].dataset) == len(exp.train)
        assert len(exp.cloud) + sum(len(c) for c in exp.clients) == len(exp.train)
        assert len(exp.cloud) == round(0.3 * len(exp.train))
    assert s.test_offsets(2) == [0, 20, 40, 60]
    other = build_scenario("split-cifar100", num_experiences=3, seed=2, splits=synthetic_splits())
    assert [e.classes for e in other.experiences] != [e.classes for e in s.experiences]  # class order is seeded


def test_drift_scenario_keeps_the_classes_and_raises_the_shift() -> None:
    splits = synthetic_splits(num_classes=4, per_class=24)
    s = build_scenario("drift-cifar100", num_experiences=3, num_clients=2, partition_scheme="dirichlet", alpha=1.0,
                       splits=splits)  # fmt: skip
    assert [e.severity for e in s.experiences] == [0.0, 0.5, 1.0]
    assert all(e.seen_classes == (0, 1, 2, 3) for e in s.experiences)
    assert sum(len(e.train) for e in s.experiences) == len(splits.train)  # disjoint shares of the training images
    x = splits.train.x[:32]
    errors = [float((corrupt(x, sev, 0).float() - x.float()).abs().mean()) for sev in (0.0, 0.5, 1.0)]
    assert errors[0] == 0.0 < errors[1] < errors[2]
    with pytest.raises(ValueError, match="valid"):
        build_scenario("shuffle-cifar100", splits=splits)


# ------------------------------------------------------------------------------------------------ the edge module
def test_edge_class_space_is_a_distribution_that_trains_only_the_edge_blocks() -> None:
    torch.manual_seed(0)
    meanet = build_meanet("resnet20_cifar", 10, [2, 5, 7])
    edge = EdgeClassSpace(meanet).train()
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    out = edge(x)
    assert out.shape == (4, 10)
    assert out.detach().logsumexp(1).tolist() == pytest.approx(
        [0.0] * 4, abs=1e-5
    )  # log-probabilities over all classes
    nn.functional.cross_entropy(out, torch.tensor([2, 5, 7, 5])).backward()
    assert all(p.grad is None for p in meanet.main.parameters())  # main frozen
    # the head's hard-class rows learn first: they start at zero (a residual extension answers as the main block)
    assert edge.head.weight.grad is not None and edge.head.weight.grad[[2, 5, 7]].abs().sum() > 0
    with torch.no_grad():  # easy classes keep the main block's probabilities
        main = meanet.forward_main(x.float() / 255).logits.log_softmax(1)
        easy = [c for c in range(10) if c not in (2, 5, 7)]
        torch.testing.assert_close(out[:, easy], main[:, easy], atol=1e-5, rtol=0)


def test_fast_routing_matches_the_adaptive_engine() -> None:
    torch.manual_seed(0)
    meanet = build_meanet("resnet20_cifar", 10, [1, 4, 8]).eval()
    cloud_model = build_cloud("resnet20_cifar", 10).eval()
    data = ImageTensors(torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (24,)))
    with torch.inference_mode():
        main = meanet.forward_main(data.x.float() / 255).logits
        cloud = cloud_model(data.x.float() / 255)
    policy = CalibratedPolicy(main_threshold=float(main.softmax(1).max(1).values.median()), extension_threshold=0.5)
    out = meanet_outputs(meanet, data, main, cloud)
    routed = route_outputs(meanet, policy, out.main, out.extension, out.cloud.argmax(1))
    engine = AdaptiveEngine(meanet, policy, LocalCloud(cloud_model))
    pred = engine.predict(data.x)
    assert torch.equal(routed.labels, pred.labels) and torch.equal(routed.exit, pred.exit)
    # one cost accounting: the benchmark's offline routes, priced and summarised, are the engine's own numbers
    offline = predictions_from_outputs(meanet, policy, block_costs(meanet, cloud_model), out.main, out.extension, cloud)
    ref = summarize(pred, data.y)
    assert summarize(offline, data.y) == ref
    record = costs(offline)
    assert record["exits"] == {name: e["fraction"] for name, e in ref["exits"].items()}
    assert record["cloud_fraction"] == ref["exits"]["cloud"]["fraction"]
    assert record["macs_per_inference"] == ref["macs_per_image"]
    assert record["edge_macs_per_inference"] == ref["edge_macs_per_image"]
    assert record["energy_per_inference_joule"] == ref["energy_per_image_joule"]
    assert record["bytes_sent_per_inference"] == ref["bytes_offloaded_per_image"]
