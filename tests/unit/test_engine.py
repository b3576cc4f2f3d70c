from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from meanet_core.inference.cost import CostConfig
from meanet_core.inference.engine import (
    EXIT_CLOUD,
    EXIT_EXTENSION,
    EXIT_MAIN,
    AdaptiveEngine,
    BlockCosts,
    CloudReply,
    LocalCloud,
    predictions_from_outputs,
    priced,
    route_outputs,
)
from meanet_core.inference.evaluation import BranchOutputs, reference_accuracy, summarize, sweep
from meanet_core.inference.policies import CalibratedPolicy, PaperPolicy, normalized_entropy
from meanet_core.models import build_cloud, build_meanet

HARD = [7, 2, 9, 4]  # hard-class ids that differ from their positions 0..3: a position/id mix-up shows


@pytest.fixture(scope="module")
def setup() -> tuple:
    torch.manual_seed(0)
    model = build_meanet("resnet20_cifar", 10, HARD).eval()
    with torch.no_grad():  # make the random main block opinionated so entropies spread out
        model.main.fc.weight.mul_(40)
    cloud = LocalCloud(build_cloud("resnet20_cifar", 10))
    images = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8)
    return model, cloud, images


@dataclass(frozen=True)
class FixedPolicy:
    """Routes by position: a test double for the pure routing decision."""

    cloud: tuple[int, ...]
    ext: tuple[int, ...]
    name: str = "fixed"

    def after_main(self, probs: torch.Tensor, top1_hard: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = probs.shape[0]
        to_cloud = torch.zeros(n, dtype=torch.bool)
        to_ext = torch.zeros(n, dtype=torch.bool)
        to_cloud[list(self.cloud)] = True
        to_ext[list(self.ext)] = True
        return to_cloud, to_ext

    def after_extension(self, ext_probs: torch.Tensor) -> torch.Tensor:
        return torch.zeros(ext_probs.shape[0], dtype=torch.bool)

    def as_dict(self) -> dict:
        return {"name": self.name}


def test_a_sample_computes_only_its_route(setup: tuple) -> None:
    model, cloud, images = setup
    policy = FixedPolicy(cloud=(0, 1, 2), ext=(3, 4, 5, 6, 7))
    engine = AdaptiveEngine(model, policy, cloud)
    with FlopCounterMode(display=False) as counter:
        pred = engine.predict(images)
    executed = counter.get_total_flops() // 2
    n = len(images)
    expected = n * engine.main_macs + 5 * engine.extension_macs + 3 * cloud.macs_per_image
    assert executed == expected
    assert int(pred.edge_macs.sum() + pred.cloud_macs.sum()) == expected
    assert pred.exit.tolist() == [EXIT_CLOUD] * 3 + [EXIT_EXTENSION] * 5 + [EXIT_MAIN] * (n - 8)
    assert pred.bytes_sent.tolist() == [3 * 32 * 32] * 3 + [0] * (n - 3)
    # computing every branch costs much more
    with FlopCounterMode(display=False) as counter:
        engine.predict_all_branches(images, cloud)
    assert counter.get_total_flops() // 2 == n * (engine.main_macs + engine.extension_macs + cloud.macs_per_image)


@pytest.mark.parametrize("policy", [PaperPolicy(0.3), CalibratedPolicy(0.5, 0.6)])
def test_engine_agrees_with_all_branches(setup: tuple, policy) -> None:
    model, cloud, images = setup
    engine = AdaptiveEngine(model, policy, cloud)
    pred = engine.predict(images)
    ref = engine.predict_all_branches(images, cloud)
    assert torch.equal(pred.labels, ref.labels)
    assert torch.equal(pred.exit, ref.exit)
    assert (pred.edge_macs <= ref.edge_macs).all()


@pytest.mark.parametrize(
    "policy", [FixedPolicy(cloud=(0, 1, 2), ext=(2, 3, 4, 5, 6, 7)), PaperPolicy(0.3), CalibratedPolicy(0.5, 0.6)]
)
def test_predictions_from_outputs_equal_the_engine(setup: tuple, policy) -> None:
    model, cloud, images = setup
    engine = AdaptiveEngine(model, policy, cloud)
    pred = engine.predict(images)
    with torch.inference_mode():
        main, ext = model(images.float() / 255)
        derived = engine.predictions_from_outputs(main, ext, cloud.logits(images))
    if isinstance(policy, FixedPolicy):  # every kind of route present, one sample through extension then cloud
        assert set(pred.exit.tolist()) == {EXIT_MAIN, EXIT_EXTENSION, EXIT_CLOUD}
    for field in ("labels", "exit", "edge_macs", "cloud_macs", "bytes_sent", "energy_joule", "fallback"):
        assert torch.equal(getattr(pred, field), getattr(derived, field)), field


def test_paper_policy_routes_by_entropy_and_hard_top1(setup: tuple) -> None:
    model, cloud, images = setup
    with torch.no_grad():
        probs = model.forward_main(images.float() / 255).logits.softmax(1)
    ent = normalized_entropy(probs)
    threshold = float(ent.median())
    pred = AdaptiveEngine(model, PaperPolicy(threshold), cloud).predict(images)
    top1_hard = model.hard_index[probs.argmax(1)] >= 0
    assert torch.equal(pred.exit == EXIT_CLOUD, ent > threshold)
    assert torch.equal(pred.exit == EXIT_EXTENSION, (ent <= threshold) & top1_hard)
    main_exit = pred.exit == EXIT_MAIN
    assert torch.equal(pred.labels[main_exit], probs.argmax(1)[main_exit])
    assert all(int(c) in HARD for c in pred.labels[pred.exit == EXIT_EXTENSION])


def test_extension_answers_are_class_ids_not_positions(setup: tuple) -> None:
    model, cloud, images = setup
    ext_rows = tuple(range(len(images)))  # every sample to the extension, none to the cloud
    pred = AdaptiveEngine(model, FixedPolicy(cloud=(), ext=ext_rows), cloud).predict(images)
    with torch.no_grad():
        x = images.float() / 255
        positions = model.forward_extension(x, model.forward_main(x).features).argmax(1)
    ids = model.hard_classes.tolist()  # the model keeps its hard classes sorted: [2, 4, 7, 9]
    assert sorted(HARD) == ids and all(c != i for i, c in enumerate(ids))  # no id equals its position
    assert torch.equal(pred.exit, torch.full_like(pred.exit, EXIT_EXTENSION))
    assert pred.labels.tolist() == [ids[p] for p in positions.tolist()]  # position -> class id, never the position
    assert set(pred.labels.tolist()) <= set(HARD)


def test_cost_fields(setup: tuple) -> None:
    model, cloud, images = setup
    cost = CostConfig()
    engine = AdaptiveEngine(model, FixedPolicy(cloud=(0,), ext=(1,)), cloud, cost)
    pred = engine.predict(images)
    expected0 = engine.main_macs * cost.joules_per_mac + 3 * 32 * 32 * 8 * cost.joules_per_bit
    assert pred.energy_joule[0].item() == pytest.approx(expected0)
    assert pred.energy_joule[2].item() == pytest.approx(engine.main_macs * cost.joules_per_mac)
    assert pred.cloud_macs[0] == cloud.macs_per_image and pred.cloud_macs[1:].sum() == 0


class FlakyCloud:
    """Answers only even positions of each request (a test double for a failing network)."""

    macs_per_image = 1

    def classify(self, images: torch.Tensor) -> CloudReply:
        n = images.shape[0]
        ok = torch.arange(n) % 2 == 0
        return CloudReply(torch.full((n,), 9, dtype=torch.long), ok)


def test_cloud_failure_falls_back_to_the_edge_answer(setup: tuple) -> None:
    model, _, images = setup
    engine = AdaptiveEngine(model, FixedPolicy(cloud=(0, 1, 2, 3), ext=()), FlakyCloud())
    edge = AdaptiveEngine(model, FixedPolicy(cloud=(), ext=()), None).predict(images)
    pred = engine.predict(images)
    assert len(pred) == len(images)
    assert pred.fallback.tolist()[:4] == [False, True, False, True]
    assert pred.labels[0] == 9 and pred.labels[2] == 9
    assert pred.labels[1] == edge.labels[1] and pred.labels[3] == edge.labels[3]
    assert pred.exit[1] != EXIT_CLOUD


def test_no_cloud_means_no_offload(setup: tuple) -> None:
    model, _, images = setup
    pred = AdaptiveEngine(model, PaperPolicy(0.0), None).predict(images)
    assert (pred.exit != EXIT_CLOUD).all() and pred.bytes_sent.sum() == 0


@pytest.mark.parametrize(
    "bad, error",
    [
        (torch.rand(2, 3, 28, 28), "32x32"),
        (torch.rand(2, 1, 32, 32), r"\(B, 3, H, W\)"),
        (torch.rand(3, 32, 32), r"\(B, 3, H, W\)"),
        (torch.full((2, 3, 32, 32), float("nan")), "NaN"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.int32), "uint8"),
        (np.zeros((2, 3, 32, 32)), "torch.Tensor"),
    ],
)
def test_bad_inputs_get_clear_errors(setup: tuple, bad, error: str) -> None:
    model, cloud, _ = setup
    engine = AdaptiveEngine(model, PaperPolicy(), cloud)
    with pytest.raises((ValueError, TypeError), match=error):
        engine.predict(bad)


def test_route_outputs_without_cloud_keeps_edge_answers(setup: tuple) -> None:
    model, _, images = setup
    with torch.no_grad():
        main, ext = model(images.float() / 255)
    routed = route_outputs(model, PaperPolicy(0.0), main, ext, None)
    assert (routed.exit != EXIT_CLOUD).all()


def test_calibrated_fit_meets_the_cloud_budget_and_finds_the_obvious_thresholds() -> None:
    rng = np.random.default_rng(0)
    n = 400
    main_conf = rng.uniform(0, 1, n)
    top1_hard = rng.uniform(0, 1, n) < 0.3
    ext_conf = rng.uniform(0, 1, n)
    main_correct = (main_conf > 0.4) & ~top1_hard  # low confidence <=> wrong; a hard top-1 needs the extension
    ext_correct = ext_conf > 0.5
    cloud_correct = np.ones(n, dtype=bool)
    for target in (0.0, 0.1, 0.25, 1.0):
        pol = CalibratedPolicy.fit(
            main_conf,
            main_correct,
            top1_hard,
            ext_conf,
            ext_correct,
            cloud_correct,
            target_cloud_fraction=target,
        )
        offloaded = (~top1_hard & (main_conf < pol.main_threshold)) | (top1_hard & (ext_conf < pol.extension_threshold))
        assert offloaded.mean() <= target + 1e-9 and pol.use_extension
    # with enough budget, it offloads exactly the wrong ones
    pol = CalibratedPolicy.fit(
        main_conf, main_correct, top1_hard, ext_conf, ext_correct, cloud_correct, target_cloud_fraction=1.0
    )
    offloaded = (~top1_hard & (main_conf < pol.main_threshold)) | (top1_hard & (ext_conf < pol.extension_threshold))
    wrong = (~top1_hard & ~main_correct) | (top1_hard & ~ext_correct)
    assert (offloaded >= wrong).all()
    with pytest.raises(ValueError, match="exactly one"):
        CalibratedPolicy.fit(main_conf, main_correct, top1_hard, ext_conf, ext_correct, cloud_correct)
    with pytest.raises(ValueError, match="raise the budget"):
        CalibratedPolicy.fit(
            main_conf, main_correct, top1_hard, ext_conf, ext_correct, cloud_correct,
            energy_budget_joule=0.5, edge_energy=(1.0, 2.0), offload_energy=1.0,
        )  # fmt: skip


def test_calibrated_fit_keeps_the_extension_only_where_it_scores_higher() -> None:
    rng = np.random.default_rng(1)
    n = 500
    main_conf = rng.uniform(0, 1, n)
    top1_hard = rng.uniform(0, 1, n) < 0.3
    ext_conf = rng.uniform(0, 1, n)
    main_correct = main_conf > 0.3
    cloud_correct = rng.uniform(0, 1, n) < 0.5
    for target in (0.0, 0.2):
        # an extension that is always wrong where the main block is mostly right: dropped
        pol = CalibratedPolicy.fit(
            main_conf, main_correct, top1_hard, ext_conf, np.zeros(n, dtype=bool), cloud_correct,
            target_cloud_fraction=target,
        )  # fmt: skip
        assert pol.use_extension is False and pol.as_dict()["use_extension"] is False
        probs = torch.tensor(np.stack([main_conf, 1 - main_conf], 1))
        to_cloud, to_ext = pol.after_main(probs, torch.tensor(top1_hard))
        assert not to_ext.any()  # the extension never runs; hard top-1s exit at the main block or go to the cloud
        # hard top-1s stay at the main exit on their own threshold on the main block's confidence
        conf, hard = probs.max(1).values, torch.tensor(top1_hard)
        want = (~hard & (conf < pol.main_threshold)) | (hard & (conf < pol.extension_threshold))
        assert torch.equal(to_cloud, want)
        offloaded = np.where(top1_hard, main_conf < pol.extension_threshold, main_conf < pol.main_threshold)
        assert offloaded.mean() <= target + 1e-9  # the budget, on the fitted confidences
        # an extension that is always right: kept
        pol = CalibratedPolicy.fit(
            main_conf, main_correct, top1_hard, ext_conf, np.ones(n, dtype=bool), cloud_correct,
            target_cloud_fraction=target,
        )  # fmt: skip
        assert pol.use_extension is True
    # exactly as good as the main block on the hard top-1s: a tie keeps the extension (strictly higher to drop it)
    pol = CalibratedPolicy.fit(
        main_conf, main_correct, top1_hard, ext_conf, main_correct.copy(), cloud_correct, target_cloud_fraction=0.0
    )
    assert pol.use_extension is True


def test_cost_model_follows_the_lte_power_model() -> None:
    cost = CostConfig()
    # Huang et al. 2012: P = 438.39 mW/Mbps * 5.64 Mbps + 1288.04 mW = 3.7605 W; per bit: P / 5.64e6
    assert cost.uplink_power_w == pytest.approx(3.76053, rel=1e-4)
    assert cost.joules_per_bit == pytest.approx(3.76053 / 5.64e6, rel=1e-4)
    assert cost.uplink_seconds(705_000.0) == pytest.approx(705_000 * 8 / 5.64e6 + 0.07)
    with pytest.raises(ValueError, match="unknown cost setting"):
        CostConfig.from_dict({"joules_per_flop": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        CostConfig(joules_per_mac=-1.0)
    with pytest.raises(ValueError, match="entropy_threshold"):
        PaperPolicy(1.5)


def test_one_summary_for_the_engine_its_offline_routes_and_the_sweep(setup: tuple) -> None:
    model, cloud, images = setup
    labels = torch.arange(len(images)) % 10
    with torch.inference_mode():
        main, ext = model(images.float() / 255)
        cloud_logits = cloud.logits(images)
    policy = FixedPolicy(cloud=(0, 1, 2), ext=(2, 3, 4, 5))  # every kind of route, one through extension and cloud
    engine = AdaptiveEngine(model, policy, cloud)
    online = summarize(engine.predict(images), labels)
    offline = predictions_from_outputs(model, policy, engine.blocks, main, ext, cloud_logits, engine.cost)
    assert summarize(offline, labels) == online
    [point] = sweep(model, BranchOutputs(main, ext, cloud_logits, labels), engine, [policy])
    assert point["accuracy"] == online["accuracy"]
    assert point["cloud_fraction"] == online["exits"]["cloud"]["fraction"]
    assert point["extension_fraction"] == online["exits"]["extension"]["fraction"]
    assert point["energy_per_image_joule"] == online["energy_per_image_joule"]
    paper = PaperPolicy(0.3)
    empty = predictions_from_outputs(model, paper, engine.blocks, main[:0], ext[:0], cloud_logits[:0], engine.cost)
    with pytest.raises(ValueError, match="evaluation data is empty"):
        summarize(empty, labels[:0])
    with pytest.raises(ValueError, match="24 predictions but 23 labels"):
        summarize(offline, labels[:-1])


def test_priced_counts_each_route_once() -> None:
    blocks = BlockCosts(main_macs=100, extension_macs=30, cloud_macs=500, image_bytes=3072)
    cost = CostConfig()
    exits = torch.tensor([EXIT_MAIN, EXIT_EXTENSION, EXIT_CLOUD, EXIT_CLOUD], dtype=torch.int8)
    ran_ext = torch.tensor([False, True, True, False])
    pred = priced(torch.zeros(4, dtype=torch.int64), exits, ran_ext, blocks, cost)
    assert pred.edge_macs.tolist() == [100, 130, 130, 100]
    assert pred.cloud_macs.tolist() == [0, 0, 500, 500] and pred.bytes_sent.tolist() == [0, 0, 3072, 3072]
    send = 3072 * 8 * cost.joules_per_bit
    assert pred.energy_joule.tolist() == pytest.approx([1e-8, 1.3e-8, 1.3e-8 + send, 1e-8 + send])
    # a device that runs nothing (cloud-only): no edge MACs, every image sent
    cloud_only = priced(
        torch.zeros(2, dtype=torch.int64), exits[2:], torch.zeros(2, dtype=torch.bool), replace(blocks, main_macs=0)
    )
    assert cloud_only.edge_macs.tolist() == [0, 0] and cloud_only.energy_joule.tolist() == pytest.approx([send] * 2)


def test_reference_accuracy_compares_edge_and_cloud_on_the_offloaded_inputs(setup: tuple) -> None:
    model, _, _ = setup
    n, k = 12, 10
    main = torch.full((n, k), -5.0)
    main[torch.arange(n), torch.tensor([0, 1, 3, 5, 0, 1, 3, 5, 7, 2, 9, 4])] = 5.0  # samples 8..11: a hard top-1
    ext = torch.zeros(n, len(HARD))
    ext[torch.arange(8, n), model.hard_index[torch.tensor([7, 2, 4, 9])]] = 5.0  # answers for 8..11, at positions
    cloud = torch.zeros(n, k)
    cloud[torch.arange(n), torch.tensor([6, 6, 6, 6, 0, 1, 3, 5, 7, 2, 9, 4])] = 5.0
    labels = torch.tensor([6, 6, 0, 5, 0, 1, 3, 5, 7, 2, 9, 9])
    policy = FixedPolicy(cloud=(0, 1, 2, 3), ext=(8, 9, 10, 11))  # offloads 0..3: edge 0, 1, 3, 5 - cloud 6, 6, 6, 6
    out = BranchOutputs(main, ext, cloud, labels)
    ref = reference_accuracy(model, policy, out, meanet_accuracy=9 / 12)  # 0, 1 from the cloud; 4..9, 11
    assert ref["offloaded_edge"] == pytest.approx(1 / 4)  # sample 3 (edge 5, label 5)
    assert ref["offloaded_cloud"] == pytest.approx(2 / 4)  # samples 0 and 1
    # the extension answers in class ids: 8, 9 and 11 right, 10 wrong (4 for a 9)
    assert ref["edge_main_plus_extension"] == pytest.approx(8 / 12)
    # what the cloud adds = the offloaded share x (cloud - edge) on them
    edge = ref["edge_main_plus_extension"]
    assert ref["meanet_with_cloud"] - edge == pytest.approx(4 / 12 * (ref["offloaded_cloud"] - ref["offloaded_edge"]))
    none = reference_accuracy(model, FixedPolicy(cloud=(), ext=()), out, meanet_accuracy=0.0)
    assert none["offloaded_edge"] is None and none["offloaded_cloud"] is None


def test_measured_energy_is_seconds_per_block_times_the_stated_power_plus_the_uplink(setup: tuple) -> None:
    from meanet_core.inference.cost import RouteLatency
    from meanet_core.inference.evaluation import measured_energy

    model, cloud, images = setup
    labels = torch.arange(len(images)) % 10
    policy = FixedPolicy(cloud=(0, 1, 2), ext=(2, 3, 4, 5))  # 3 of 24 sent; 4 of 24 run the extension
    latency = RouteLatency(main_s=0.002, extension_s=0.001, cloud_s=0.0, batch_size=24)
    engine = AdaptiveEngine(model, policy, cloud, latency=latency)
    pred = engine.predict(images)
    uplink = float(engine.cost.transmission_energy(float(engine.image_bytes)))
    want = 3.0 * (0.002 + 4 / 24 * 0.001) + 3 / 24 * uplink
    assert measured_energy(pred, engine, 3.0) == pytest.approx(want)
    with torch.inference_mode():
        main, ext = model(images.float() / 255)
    [point] = sweep(model, BranchOutputs(main, ext, cloud.logits(images), labels), engine, [policy], power_w=3.0)
    assert point["measured_energy_per_image_joule"] == pytest.approx(want)
    assert point["energy_per_image_joule"] != point["measured_energy_per_image_joule"]  # two models, both reported
