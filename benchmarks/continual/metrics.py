"""Continual-learning metrics over an accuracy matrix, computed with Avalanche's own metric classes.

The accuracy matrix ``A`` is (experiences trained) x (experiences tested): ``A[t, k]`` is the accuracy on the test
images of experience ``k`` after training on experience ``t``. Only ``k <= t`` is evaluated (the rest is NaN).

Definitions, as Avalanche's evaluation plugins compute them (``avalanche.evaluation.metrics``):

* accuracy of one cell: Avalanche's ``Accuracy`` over the predictions (``accuracy``);
* average accuracy after experience ``t``: the mean of ``A[t, k]`` over the experiences seen so far, ``k <= t``
  (ACC of Lopez-Paz & Ranzato, 2017);
* forgetting of experience ``k`` after ``t > k``: Avalanche's ``ExperienceForgetting``, the accuracy recorded right
  after training on ``k`` minus the current one, ``A[k, k] - A[t, k]``; the stream forgetting after ``t`` is the
  mean over ``k < t`` (``StreamForgetting``; 0 after the first experience, where nothing can be forgotten);
* backward transfer: Avalanche's ``BWT``/``StreamBWT``, minus the forgetting.

``forgetting`` and ``bwt`` feed Avalanche's standalone ``Forgetting``/``BWT`` metrics cell by cell in the order the
plugins do; ``tests/unit/test_continual.py`` checks them against Avalanche's plugins on a real training run.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from avalanche.evaluation.metrics import BWT, Accuracy, Forgetting
from avalanche.evaluation.metrics.mean import Mean


def new_matrix(num_experiences: int) -> np.ndarray:
    """An empty (T, T) accuracy matrix (NaN = not evaluated)."""
    if num_experiences < 1:
        raise ValueError(f"an accuracy matrix needs at least one experience; got {num_experiences}")
    return np.full((num_experiences, num_experiences), np.nan)


def accuracy(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """Avalanche's ``Accuracy`` of predicted labels (or logits) against the targets."""
    if len(target) == 0:
        raise ValueError("cannot compute an accuracy over zero samples")
    metric = Accuracy()
    metric.update(predicted, target)
    return float(metric.result())


def _check(matrix: np.ndarray) -> np.ndarray:
    a = np.asarray(matrix, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"the accuracy matrix must be square (trained x tested); got shape {a.shape}")
    for t in range(a.shape[0]):
        row = a[t, : t + 1]
        if np.isnan(row).all():
            continue  # experience t not trained yet
        if np.isnan(row).any() or (row < 0).any() or (row > 1).any():
            raise ValueError(f"row {t} of the accuracy matrix must hold accuracies in [0, 1] for k <= {t}; got {row}")
    return a


def trained_rows(matrix: np.ndarray) -> int:
    """How many experiences have been trained (rows with values)."""
    a = _check(matrix)
    return int(sum(not np.isnan(a[t, : t + 1]).all() for t in range(a.shape[0])))


def average_accuracy(matrix: np.ndarray) -> list[float]:
    """Mean accuracy over the experiences seen so far, after each trained experience."""
    a = _check(matrix)
    return [float(np.mean(a[t, : t + 1])) for t in range(trained_rows(a))]


def _forgetting_metric(a: np.ndarray, t: int, metric: Forgetting) -> dict[int, float]:
    """Feed ``metric`` as Avalanche's plugins do after training on ``t``: initial values on the diagonal, current
    values (reset before each evaluation) for every other experience evaluated."""
    for k in range(t + 1):
        metric.update(k, float(a[k, k]), initial=True)
    metric.reset_last()
    for k in range(t + 1):
        if k != t:
            metric.update(k, float(a[t, k]))
    return metric.result()


def experience_forgetting(matrix: np.ndarray, t: int | None = None) -> dict[int, float]:
    """Avalanche's ``ExperienceForgetting`` of every experience ``k < t`` after training on ``t`` (default: last)."""
    a = _check(matrix)
    t = trained_rows(a) - 1 if t is None else t
    return dict(sorted(_forgetting_metric(a, t, Forgetting()).items()))


def forgetting(matrix: np.ndarray) -> list[float]:
    """Avalanche's ``StreamForgetting`` after each trained experience (mean over the earlier experiences)."""
    a = _check(matrix)
    out = []
    for t in range(trained_rows(a)):
        mean = Mean()
        for value in _forgetting_metric(a, t, Forgetting()).values():
            mean.update(value, weight=1)
        out.append(float(mean.result()))
    return out


def bwt(matrix: np.ndarray) -> list[float]:
    """Avalanche's ``StreamBWT`` after each trained experience (minus the stream forgetting)."""
    a = _check(matrix)
    out = []
    for t in range(trained_rows(a)):
        mean = Mean()
        for value in _forgetting_metric(a, t, BWT()).values():
            mean.update(value, weight=1)
        out.append(float(mean.result()))
    return out


def summarize_matrix(matrix: np.ndarray) -> dict[str, Any]:
    """Every continual-learning number of one run, JSON-ready (NaN cells become ``None``)."""
    a = _check(matrix)
    acc, fgt, bw = average_accuracy(a), forgetting(a), bwt(a)
    return {
        "accuracy_matrix": [[None if math.isnan(v) else float(v) for v in row] for row in a],
        "average_accuracy": acc,
        "forgetting": fgt,
        "bwt": bw,
        "final_average_accuracy": acc[-1] if acc else None,
        "final_forgetting": fgt[-1] if fgt else None,
        "final_bwt": bw[-1] if bw else None,
        "final_experience_forgetting": {str(k): v for k, v in experience_forgetting(a).items()} if acc else {},
    }
