"""The edge runtime's pure logic against the torch engine's: routing policies, the summary, the cost model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meanet_core.inference.engine import Predictions
from meanet_core.inference.evaluation import summarize as torch_summarize
from meanet_core.inference.policies import CalibratedPolicy, PaperPolicy
from meanet_edge.policy import choose_policy, policy_from_dict, softmax
from meanet_edge.report import summarize


def probabilities(n: int = 400, k: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return softmax((rng.normal(size=(n, k)) * rng.uniform(0.2, 4.0, size=(n, 1))).astype(np.float32))


@pytest.mark.parametrize(
    "policy",
    [
        PaperPolicy(0.3),
        PaperPolicy(0.8),
        CalibratedPolicy(0.4, 0.6),
        CalibratedPolicy(0.2, 0.5, use_extension=False),
        CalibratedPolicy(0.0, 0.0),
    ],
)
def test_numpy_policies_route_as_the_torch_ones(policy) -> None:
    probs = probabilities()
    hard = np.random.default_rng(1).random(len(probs)) < 0.3
    ext = probabilities(len(probs), 4, seed=2)
    edge = policy_from_dict(policy.as_dict())
    assert edge.as_dict() == policy.as_dict()
    cloud, to_ext = edge.after_main(probs, hard)
    t_cloud, t_ext = policy.after_main(torch.from_numpy(probs), torch.from_numpy(hard))
    assert np.array_equal(cloud, t_cloud.numpy()) and np.array_equal(to_ext, t_ext.numpy())
    assert 0 < cloud.sum() < len(probs) or (isinstance(policy, CalibratedPolicy) and policy.main_threshold == 0)
    assert np.array_equal(edge.after_extension(ext), policy.after_extension(torch.from_numpy(ext)).numpy())


def test_choose_policy_explains_what_is_missing() -> None:
    assert choose_policy(None).as_dict() == {"name": "paper", "entropy_threshold": 0.5}
    assert choose_policy({"name": "paper", "entropy_threshold": 0.2}).entropy_threshold == 0.2
    assert choose_policy({"name": "paper", "entropy_threshold": 0.2}, "paper", 0.7).entropy_threshold == 0.7
    with pytest.raises(ValueError, match="holds no calibrated thresholds"):
        choose_policy({"name": "paper", "entropy_threshold": 0.2}, "calibrated")
    with pytest.raises(ValueError, match="lacks or mistypes"):
        policy_from_dict({"name": "calibrated", "main_threshold": 0.3})
    with pytest.raises(ValueError, match="entropy_threshold is a normalised entropy"):
        policy_from_dict({"name": "paper", "entropy_threshold": 1.5})
    with pytest.raises(ValueError, match="paper or calibrated"):
        choose_policy(None, "fastest")


def test_the_torch_summary_is_the_edge_summary() -> None:
    rng = np.random.default_rng(0)
    n = 50
    pred = Predictions(
        labels=torch.from_numpy(rng.integers(0, 7, n)),
        exit=torch.from_numpy(rng.integers(0, 3, n).astype(np.int8)),
        edge_macs=torch.from_numpy(rng.integers(10, 20, n)),
        cloud_macs=torch.from_numpy(rng.integers(0, 90, n)),
        bytes_sent=torch.from_numpy(rng.integers(0, 2, n) * 3072),
        energy_joule=torch.from_numpy(rng.random(n)),
        latency_s=torch.from_numpy(rng.random(n)),
        fallback=torch.from_numpy(rng.random(n) < 0.1),
        edge_confidence=torch.rand(n),
    )
    truth = rng.integers(0, 7, n)
    edge = summarize(
        labels=pred.labels.numpy(), exits=pred.exit.numpy(), fallback=pred.fallback.numpy(),
        edge_macs=pred.edge_macs.numpy(), cloud_macs=pred.cloud_macs.numpy(), energy_joule=pred.energy_joule.numpy(),
        bytes_sent=pred.bytes_sent.numpy(), latency_s=pred.latency_s.numpy(), truth=truth,
    )  # fmt: skip
    assert torch_summarize(pred, torch.from_numpy(truth)) == edge
    assert edge["accuracy"] == pytest.approx(float((pred.labels.numpy() == truth).mean()))
    assert sum(e["count"] for e in edge["exits"].values()) == n
