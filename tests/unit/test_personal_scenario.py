"""The personalised-FL benchmark's fleet (disjoint partitions, each device's test split in its own class mix, labels
that are class ids) and its metrics (worst 10%), on synthetic images that encode their class and index."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.personal.common import Context, MethodResult, worst_fraction_mean
from benchmarks.personal.config import PersonalConfig, PersonalConfigError
from benchmarks.personal.scenario import (
    DeviceData,
    PersonalScenario,
    apportion,
    build_personal_scenario,
    classes_partition,
    draw_test,
)
from meanet_core.data import DatasetSplits, ImageTensors

CLASS_IDS = np.array([7, 13, 21, 34, 42, 55, 61, 78, 89, 96])
"""Ten of a hundred class ids, none equal to its position: a label read as a position would show."""


def images(labels: np.ndarray, offset: int) -> ImageTensors:
    """Images whose pixel (0, 0, 0) is their class id and pixels (1, 0, 0..1) their index + ``offset``."""
    n = len(labels)
    x = torch.zeros((n, 3, 32, 32), dtype=torch.uint8)
    idx = torch.arange(n) + offset
    x[:, 0, 0, 0] = torch.as_tensor(labels, dtype=torch.uint8)
    x[:, 1, 0, 0], x[:, 1, 0, 1] = (idx // 256).to(torch.uint8), (idx % 256).to(torch.uint8)
    return ImageTensors(x, torch.as_tensor(labels, dtype=torch.int64))


def splits(train_per_class: int = 40, test_per_class: int = 30) -> DatasetSplits:
    train = images(np.repeat(CLASS_IDS, train_per_class), 0)
    test = images(np.repeat(CLASS_IDS, test_per_class), 10_000)
    empty = images(np.empty(0, dtype=np.int64), 0)
    names = tuple(f"c{i}" for i in range(100))
    return DatasetSplits("synthetic", train, empty, test, 100, names, 32, (0.5,) * 3, (0.25,) * 3)


def ids(data: ImageTensors) -> set[int]:
    return {int(a) * 256 + int(b) for a, b in zip(data.x[:, 1, 0, 0], data.x[:, 1, 0, 1], strict=True)}


def fleet(**kw: object) -> tuple[PersonalConfig, PersonalScenario]:
    values: dict[str, object] = {
        "edges": 6,
        "test_per_edge": 50,
        "limit_train": None,
        "beta": 0.3,
        "edges_per_round": 3,
        **kw,
    }
    cfg = PersonalConfig.from_dict(values)
    return cfg, build_personal_scenario(cfg, seed=3, splits=splits())


@pytest.mark.parametrize("partition", ["dirichlet", "classes"])
def test_partitions_are_disjoint_and_labels_are_class_ids(partition: str) -> None:
    _, s = fleet(partition=partition, classes_per_edge=3)
    seen = ids(s.server)
    assert len(seen) == round(0.1 * 400) and len(s) == 6
    for d in s.devices:
        for part in (d.train, d.val, d.test):  # every label is the class id the image holds, never a position
            assert torch.equal(part.x[:, 0, 0, 0].long(), part.y)
            assert set(part.y.tolist()) <= set(CLASS_IDS.tolist())
        mine = ids(d.train) | ids(d.val)
        assert not mine & seen, f"device {d.index} shares images with the server or another device"
        assert not ids(d.train) & ids(d.val) and len(d.val) > 0
        seen |= mine
    if partition == "dirichlet":
        assert len(seen) == 400  # the server and the devices hold every training image
    else:
        assert all(len(d.classes) == 3 for d in s.devices)


def test_each_device_is_tested_in_its_own_class_proportions() -> None:
    _, s = fleet(beta=0.2)
    mixes = set()
    for d in s.devices:
        counts = d.class_counts(100)
        test_counts = np.bincount(d.test.y.numpy(), minlength=100)
        assert np.array_equal(test_counts, apportion(counts, len(d.test)))  # its own mix, class by class
        assert set(d.test.y.tolist()) <= set(d.classes)
        assert len(ids(d.test)) == len(d.test)  # no test image twice
        mixes.add(tuple(test_counts.tolist()))
    assert len(mixes) == len(s.devices)  # label skew: no two devices are tested alike


def test_a_dominant_class_shrinks_the_test_split_rather_than_repeating_images() -> None:
    labels = np.repeat(CLASS_IDS[:2], [5, 5])  # 5 test images of each of two classes
    counts = np.zeros(100, dtype=np.int64)
    counts[CLASS_IDS[0]], counts[CLASS_IDS[1]] = 80, 20
    pos, total = draw_test(counts, labels, 50, np.random.default_rng(0))
    assert total == 6 and len(pos) == 6 and len(set(pos.tolist())) == 6  # 5 / 0.8 = 6.25: 5 + 1 fit
    assert np.bincount(labels[pos], minlength=100)[CLASS_IDS[:2]].tolist() == [5, 1]


def test_the_fleet_is_seeded() -> None:
    cfg, a = fleet()
    b = build_personal_scenario(cfg, seed=3, splits=splits())
    c = build_personal_scenario(cfg, seed=4, splits=splits())
    assert all(
        torch.equal(x.test.y, y.test.y) and torch.equal(x.train.x, y.train.x)
        for x, y in zip(a.devices, b.devices, strict=True)
    )
    assert any(len(x.train) != len(y.train) for x, y in zip(a.devices, c.devices, strict=True))


def test_classes_partition_deals_k_classes_and_rejects_too_many() -> None:
    y = np.repeat(CLASS_IDS, 10)
    parts = classes_partition(y, 4, 2, seed=0)
    assert all(len(np.unique(y[p])) == 2 for p in parts)
    assert len(np.unique(np.concatenate(parts))) == sum(len(p) for p in parts)
    with pytest.raises(ValueError, match=r"classes per edge must lie in 1\.\.10"):
        classes_partition(y, 4, 11, seed=0)


def test_every_method_of_a_seed_samples_the_same_devices() -> None:
    cfg, s = fleet()
    a, b = Context(cfg, s, seed=3), Context(cfg, s, seed=3)
    assert [a.sampled(r) for r in range(5)] == [b.sampled(r) for r in range(5)]
    assert all(len(a.sampled(r)) == cfg.edges_per_round == len(set(a.sampled(r))) for r in range(5))
    assert sum(a.participation()) == cfg.rounds * cfg.edges_per_round
    assert [Context(cfg, s, seed=4).sampled(r) for r in range(5)] != [a.sampled(r) for r in range(5)]


def test_worst_ten_percent_is_the_mean_of_the_lowest_devices() -> None:
    accs = [0.1 * i for i in range(20)]  # 20 devices: the lowest 2
    assert worst_fraction_mean(accs) == pytest.approx(0.05)
    assert worst_fraction_mean([0.9, 0.2, 0.5]) == pytest.approx(0.2)  # at least one device
    assert worst_fraction_mean([0.3] * 25) == pytest.approx(0.3)
    assert worst_fraction_mean([0.0, 1.0] + [0.5] * 9) == pytest.approx(0.25)  # 11 devices: ceil(1.1) = 2
    with pytest.raises(ValueError, match="no per-device accuracy"):
        worst_fraction_mean([])
    r = MethodResult("m", 0, accs, 1, 2, 3, 4, 5.0, 6)
    d = r.as_dict()
    assert d["worst10_accuracy"] == pytest.approx(0.05) and d["trained_images"] == 7
    assert MethodResult.from_dict(d) == r


def test_settings_are_checked() -> None:
    with pytest.raises(PersonalConfigError, match="edges_per_round=30"):
        PersonalConfig(edges=20, edges_per_round=30)
    with pytest.raises(PersonalConfigError, match="unknown partition"):
        PersonalConfig(partition="iid")
    with pytest.raises(PersonalConfigError, match="unknown benchmark setting"):
        PersonalConfig.from_dict({"alpha": 0.1})
    assert DeviceData.__dataclass_fields__.keys() == {"index", "train", "val", "test"}


def test_a_stored_result_holds_while_the_settings_it_reads_stay() -> None:
    cfg = PersonalConfig()
    stored = cfg.fingerprint("fedper")
    changed = PersonalConfig(ft_epochs=9)
    assert changed.matches(stored, "fedper") and not changed.matches(cfg.fingerprint("fedavg-ft"), "fedavg-ft")
    assert not PersonalConfig(rounds=3).matches(stored, "fedper")
    older = {k: v for k, v in stored.items() if k != "head_epochs"}  # stored before a setting existed
    assert cfg.matches(older, "fedrep") and not PersonalConfig(head_epochs=2).matches(older, "fedrep")
