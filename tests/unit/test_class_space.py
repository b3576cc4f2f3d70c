"""Continual learning in class space on the edge (``benchmarks.continual.edge``): the class-space head keeps rows by
class id across hard-set changes, and each of EWC, LwF and Replay forgets less than Naive on a toy stream.

The toy: a tiny MEANet (one-convolution main block, frozen and random; 8x8 images; 8 classes) whose hard classes
are {1, 3, 4, 6}, then {0, 1, 3, 4, 6} (every class moves to another position of ``extension.fc``); experience 0
brings classes 3 and 6, experience 1 classes 1 and 4, as an edge of the split scenario sees them. Under half a
second per strategy, on one thread (tiny convolutions on two threads of a busy machine spend their time waiting)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from avalanche.training.plugins import EWCPlugin
from torch import nn

from benchmarks.continual.edge import (
    ClassSpaceLwF,
    EdgeClassSpace,
    HardClassReplayPlugin,
    experience_of,
    make_strategy,
    trained_images,
)
from meanet_core.data import ImageTensors
from meanet_core.models import MEANet
from meanet_core.models.backbones import Backbone

K = 8
H0, H1 = [1, 3, 4, 6], [0, 1, 3, 4, 6]
OLD, NEW = [3, 6], [1, 4]


class TinyBackbone(Backbone):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, num_classes)
        self.feature_channels = 8
        self.downsample = 2

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # (B, 8, 4, 4)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(features, 1).flatten(1))


def tiny_meanet(hard: list[int], residual: bool = True) -> MEANet:
    torch.manual_seed(0)
    return MEANet("tiny", TinyBackbone(K), K, hard, (0.5,) * 3, (0.25,) * 3, 8, adaptive_width=4,
                  extension_width=8, extension_blocks=0, residual_extension=residual)  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


PROTOTYPES = torch.rand(K, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 255


def toy_data(classes: list[int], per_class: int, seed: int) -> ImageTensors:
    """Each class a fixed random image plus noise: learnable in a few steps."""
    y = torch.tensor(classes).repeat_interleave(per_class)
    noise = torch.randn(len(y), 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 15
    return ImageTensors((PROTOTYPES[y] + noise).clamp(0, 255).to(torch.uint8), y)


def run_stream(kind: str, residual: bool = True, **kw: Any) -> tuple[EdgeClassSpace, Any]:
    """Train ``kind`` on the two experiences, the hard set changing in between (no broadcast: the edge keeps its
    own class rows, as ``EdgeClassSpace`` does across a hard-set change)."""
    meanet = tiny_meanet(H0, residual)
    edge = EdgeClassSpace(meanet)
    strategy = make_strategy(kind, edge, lr=0.1, epochs=8, batch_size=16, seed=0, **kw)
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True):
        strategy.train(experience_of(toy_data(OLD, 30, 1), 0, "edge"))
        meanet.set_hard_classes(H1)  # a fresh, positional extension.fc
        edge.store_extension_rows()  # filled from the head, by class id
        strategy.train(experience_of(toy_data(NEW, 30, 2), 1, "edge"))
    return edge, strategy


@torch.no_grad()
def old_class_scores(edge: EdgeClassSpace) -> tuple[float, float]:
    """On test images of experience 0's classes: the mean log-probability of the true class among the current hard
    classes, and the accuracy of the edge's answer (the best hard class)."""
    edge.eval()
    test = toy_data(OLD, 25, 9)
    hard = edge.hard_classes
    log_p = edge(test.x)[:, hard].log_softmax(1)
    true = log_p.gather(1, edge.meanet.hard_index[test.y][:, None]).mean().item()
    return true, (hard[log_p.argmax(1)] == test.y).float().mean().item()


@pytest.fixture(scope="module")
def naive_scores() -> tuple[float, float]:
    edge, _ = run_stream("naive")
    return old_class_scores(edge)


# ------------------------------------------------------------------------------------------ the class-space head
def test_head_rows_follow_class_ids_when_the_hard_set_changes() -> None:
    meanet = tiny_meanet([5, 2, 7])  # positions 0, 1, 2 = classes 2, 5, 7
    with torch.no_grad():
        meanet.extension.fc.weight.copy_(torch.arange(3.0)[:, None].expand(3, 8))  # row j holds the value j
    edge = EdgeClassSpace(meanet)
    assert edge.head.weight[[2, 5, 7], 0].tolist() == [0.0, 1.0, 2.0]
    meanet.set_hard_classes([0, 1, 5, 7])  # 5 moves to position 2, 7 to position 3; the MEANet's fc is rebuilt
    edge.store_extension_rows()
    fc = meanet.extension.fc.weight[:, 0]
    assert fc[meanet.hard_index[5]].item() == 1.0 and fc[meanet.hard_index[7]].item() == 2.0
    # the class-space module answers as the MEANet does with those rows
    x = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    meanet.eval()
    edge.eval()
    with torch.no_grad():
        xf = x.float() / 255
        features = meanet.forward_main(xf).features
        torch.testing.assert_close(edge.extension_logits(xf, features), meanet.forward_extension(xf, features))
    # a broadcast's rows come in by class id too
    with torch.no_grad():
        meanet.extension.fc.weight.fill_(9.0)
    edge.load_extension_rows()
    assert edge.head.weight[[0, 1, 5, 7], 0].tolist() == [9.0] * 4 and edge.head.weight[2, 0].item() == 0.0


def test_only_the_edge_blocks_and_the_head_are_trained_and_regularised() -> None:
    meanet = tiny_meanet(H0)
    edge = EdgeClassSpace(meanet)
    names = {n.split(".")[0] for n, _ in edge.named_parameters()}
    assert names == {"adaptive", "merge", "head"}  # (and "blocks" with extension blocks) no main, no extension.fc
    assert edge.head.weight.shape == (K, 8)
    trainable = {id(p) for p in edge.parameters()}
    assert not trainable & {id(p) for p in [*meanet.main.parameters(), *meanet.extension.fc.parameters()]}


# ------------------------------------------------------------------------------------------ one test per strategy
def test_ewc_importances_sit_on_class_rows_and_it_forgets_less_than_naive(naive_scores: tuple[float, float]) -> None:
    edge, strategy = run_stream("ewc", ewc_lambda=10.0)
    ewc = next(p for p in strategy.plugins if isinstance(p, EWCPlugin))
    rows = ewc.importances[0]["head.weight"].data.abs().sum(1)  # Fisher of experience 0, one value per class id
    assert (rows[H0] > 0).all() and rows[[c for c in range(K) if c not in H0]].abs().sum() == 0
    true_lp, _ = old_class_scores(edge)
    assert true_lp > naive_scores[0] + 1.0, (true_lp, naive_scores)


def test_lwf_distils_over_the_shared_hard_classes_and_forgets_less_than_naive(
    naive_scores: tuple[float, float],
) -> None:
    edge, strategy = run_stream("lwf", lwf_alpha=1.0)
    true_lp, _ = old_class_scores(edge)
    assert true_lp > naive_scores[0] + 1.0, (true_lp, naive_scores)
    # with an extension that classifies on its own (not a correction of the main block's logits), the penalty
    # depends only on the extension: shifting the main block's logits leaves it unchanged
    edge, strategy = run_stream("lwf", residual=False, lwf_alpha=1.0)
    lwf = next(p.lwf for p in strategy.plugins if hasattr(p, "lwf"))
    assert isinstance(lwf, ClassSpaceLwF)
    x = toy_data(OLD + NEW, 4, 3).x
    edge.eval()
    with torch.no_grad():  # the teacher is the model as trained: move the student away from it
        edge.head.weight.add_(torch.randn(edge.head.weight.shape, generator=torch.Generator().manual_seed(0)))
    before = float(lwf._lwf_penalty(edge(x), x, edge))
    main_fc = edge.meanet.main.fc
    assert isinstance(main_fc, nn.Linear)
    with torch.no_grad():
        main_fc.bias.add_(torch.linspace(-3, 3, K))
    assert before > 1e-3 and float(lwf._lwf_penalty(edge(x), x, edge)) == pytest.approx(before, rel=1e-4)


def test_replay_keeps_only_now_hard_classes_and_forgets_less_than_naive(naive_scores: tuple[float, float]) -> None:
    edge, strategy = run_stream("replay", mem_size=40)
    true_lp, acc = old_class_scores(edge)
    assert true_lp > naive_scores[0] + 1.0 and acc > naive_scores[1] + 0.5, (true_lp, acc, naive_scores)
    replay = next(p for p in strategy.plugins if isinstance(p, HardClassReplayPlugin))
    memory = replay.storage_policy
    assert set(memory.buffer_groups) == set(OLD + NEW)  # keyed by class id
    memory.active = {1, 4, 6}  # class 3 became easy: its samples stay in memory but are not replayed
    assert set(memory.buffer.targets) == {1, 4, 6} and memory.stored() == 40
    assert trained_images(strategy) > 2 * 8 * 60  # the replayed samples count as trained images
