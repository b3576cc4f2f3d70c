"""The routing baselines of the continual benchmark, on hand-made branch outputs (pure logic)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.continual.routing import compare_routing, early_exit, random_offload
from meanet_core.inference.cost import CostConfig
from meanet_core.inference.engine import BlockCosts
from meanet_core.inference.evaluation import BranchOutputs, hard_class_accuracy
from meanet_core.inference.policies import CalibratedPolicy
from meanet_core.models import build_meanet

K = 5
BLOCKS = BlockCosts(main_macs=1000, extension_macs=300, cloud_macs=5000, image_bytes=3072)


def _outputs() -> BranchOutputs:
    """Four inputs of classes 4, 1, 3, 0 (ids differ from positions). The main block is right and sure on the first
    two, wrong and unsure on the last two; the cloud is right on inputs 2 and 3 only."""
    labels = torch.tensor([4, 1, 3, 0])
    main = torch.full((4, K), -5.0)
    main[0, 4], main[1, 1] = 5.0, 5.0  # sure and right
    main[2, 2], main[2, 3] = 0.2, 0.1  # unsure, wrong (2 over 3)
    main[3, 1], main[3, 0] = 0.3, 0.0  # unsure, wrong
    cloud = torch.full((4, K), -5.0)
    cloud[0, 2], cloud[1, 3], cloud[2, 3], cloud[3, 0] = 5.0, 5.0, 5.0, 5.0
    return BranchOutputs(main, torch.zeros(4, 2), cloud, labels)


def test_early_exit_offloads_the_least_confident_inputs() -> None:
    out = _outputs()
    cost = CostConfig()
    none, two = early_exit(out, BLOCKS, 0, cost), early_exit(out, BLOCKS, 2, cost)
    assert none["accuracy"] == 0.5 and none["cloud_fraction"] == 0.0
    assert two["accuracy"] == 1.0 and two["cloud_fraction"] == 0.5  # the two unsure ones, both fixed by the cloud
    sent = float(cost.transmission_energy(3072.0))
    assert none["energy_joule"] == pytest.approx(1000 * cost.joules_per_mac)
    assert two["energy_joule"] == pytest.approx(1000 * cost.joules_per_mac + sent / 2)


def test_random_offload_is_the_exact_expectation() -> None:
    out = _outputs()
    # main right on 2 of 4, cloud right on 2 of 4 (other inputs): any fraction keeps the expectation at 1/2
    for n in range(5):
        assert random_offload(out, BLOCKS, n)["accuracy"] == pytest.approx(0.5)
    assert random_offload(out, BLOCKS, 1)["energy_joule"] == pytest.approx(early_exit(out, BLOCKS, 1)["energy_joule"])


def test_compare_routing_offloads_the_baselines_as_often_as_meanet() -> None:
    torch.manual_seed(0)
    model = build_meanet("resnet20_cifar", K, [2, 3])
    out = _outputs()
    policy = CalibratedPolicy(main_threshold=0.9, extension_threshold=0.99, use_extension=False)
    record = compare_routing(model, policy, BLOCKS, out)
    assert record["meanet"]["cloud_fraction"] == record["early_exit"]["cloud_fraction"] == 0.5
    assert record["meanet"]["accuracy"] == 1.0 and record["random"]["accuracy"] == pytest.approx(0.5)
    assert "curves" not in record
    hard = hard_class_accuracy(model, policy, out)  # input 2 (class 3) is the only hard-class input
    assert hard["inputs"] == 1 and hard["main_only"] == 0.0 and hard["edge_as_run"] == 0.0
