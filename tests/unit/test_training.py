import copy
import json

import numpy as np
import pytest
import torch

import meanet_core.pipeline as pipeline
from meanet_core.config import ConfigError, TrainConfig, from_dict
from meanet_core.data import DatasetSplits, ImageTensors, load_dataset
from meanet_core.models import build_meanet
from meanet_core.training.checkpoint import CheckpointError, load_cloud, load_meanet
from meanet_core.training.stages import (
    StageConfig,
    hard_subset,
    predict_logits,
    select_hard_classes,
    train_extension,
    train_main,
)


def test_precision_split_picks_the_least_precise_classes() -> None:
    target = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    pred = np.array([0, 0, 0, 1, 2, 1, 3, 3])  # class 0 precision 2/3, class 1 1/2, class 2 1/1, class 3 1/1
    assert select_hard_classes(pred, target, 4, count=1) == [1]
    assert select_hard_classes(pred, target, 4, count=2) == [0, 1]
    assert select_hard_classes(pred, target, 4, fraction=0.5) == [0, 1]


def test_confusion_split_and_never_predicted_classes() -> None:
    target = np.array([0, 0, 1, 1, 2, 2, 2])
    pred = np.array([0, 0, 0, 2, 2, 2, 1])  # class 1: precision 0, (2 FN + 1 FP) / 2 = 1.5 confusion
    assert select_hard_classes(pred, target, 3, count=1, method="precision") == [1]
    assert select_hard_classes(pred, target, 3, count=1, method="confusion") == [1]


def test_precision_split_ranks_never_predicted_classes_last() -> None:
    target = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    pred = np.array([0, 1, 1, 1, 2, 2, 2, 2])  # class 3 never predicted; class 2 precision 1/2, class 1 2/3
    assert select_hard_classes(pred, target, 4, count=1) == [2]  # not class 3: nothing could reach the extension
    assert select_hard_classes(pred, target, 4, count=3) == [0, 1, 2]
    everything_zero = np.zeros(6, dtype=np.int64)  # classes 1 and 2 never predicted: chosen when nothing else is left
    assert select_hard_classes(everything_zero, np.array([0, 0, 1, 1, 2, 2]), 3, count=2) == [0, 1]


def test_cluster_split_picks_the_classes_confused_with_each_other() -> None:
    # classes 1 and 3 swap images (3 errors between them), 4 goes to 2 once, 0 and 5 are clean; 2's errors are
    # with 4, not with the chosen pair
    target = np.array([0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 5, 5])
    pred = np.array([0, 0, 3, 3, 1, 2, 2, 1, 3, 3, 2, 4, 5, 5])
    assert select_hard_classes(pred, target, 6, count=2, method="cluster") == [1, 3]
    assert select_hard_classes(pred, target, 6, count=3, method="cluster") == [1, 2, 3]  # ties: 2 and 4 have errors
    # ids are class ids, not positions among the candidates
    assert select_hard_classes(pred, target, 6, count=2, method="cluster", candidates=[3, 4, 1, 5]) == [1, 3]


def test_split_rejects_bad_arguments() -> None:
    y = np.array([0, 1, 2])
    with pytest.raises(ValueError, match="unknown hard-class method"):
        select_hard_classes(y, y, 3, method="recall")
    with pytest.raises(ValueError, match=r"1\.\.2"):
        select_hard_classes(y, y, 3, count=3)
    with pytest.raises(ValueError, match="fraction"):
        select_hard_classes(y, y, 3, fraction=1.5)
    with pytest.raises(ValueError, match="equal-length"):
        select_hard_classes(y, y[:2], 3)


def _tiny(n: int = 64, classes: int = 4, seed: int = 0) -> ImageTensors:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    x[:, 0] = (y * 60).view(-1, 1, 1).to(torch.uint8)  # learnable: the red channel encodes the class
    return ImageTensors(x, y)


def test_extension_training_leaves_the_main_block_untouched() -> None:
    torch.manual_seed(0)
    model = build_meanet("resnet20_cifar", 4, [2, 3])
    main_before = {k: v.clone() for k, v in model.main.state_dict().items()}
    ext_before = {k: v.clone() for k, v in model.extension.state_dict().items()}
    hist = train_extension(model, _tiny(), StageConfig(epochs=1, batch_size=16, lr=0.05), progress=False)
    assert len(hist) == 1
    for k, v in model.main.state_dict().items():  # weights and BatchNorm running statistics
        assert torch.equal(v, main_before[k]), f"main block changed: {k}"
    assert any(not torch.equal(v, ext_before[k]) for k, v in model.extension.state_dict().items())


def test_extension_trains_on_hard_class_samples_only() -> None:
    model = build_meanet("resnet20_cifar", 4, [2, 3])
    sub = hard_subset(model, _tiny())
    assert set(sub.y.tolist()) == {2, 3} and len(sub) == 32


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return load_dataset("digits", seed=0, limit_train=240)


def _cfg(**kw) -> TrainConfig:
    base = dict(
        dataset="digits", model="resnet20_cifar", cloud_model="resnet20_cifar", epochs=1, batch_size=64,
        lr=0.05, hard_count=3, limit_train=240,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_pipeline_chooses_hard_classes_on_validation_data(tmp_path, digits: DatasetSplits) -> None:
    # Scramble the test labels: a split that peeked at the test set would pick other classes.
    rng = np.random.default_rng(0)
    scrambled = ImageTensors(digits.test.x, torch.from_numpy(rng.permutation(digits.test.y.numpy())))
    splits = DatasetSplits(**{**digits.__dict__, "test": scrambled})
    summary = pipeline.run_training(_cfg(), tmp_path, progress=False, log=lambda s: None, splits=splits)
    model = load_meanet(tmp_path / "meanet.pt")
    val_pred = predict_logits(lambda x: model.forward_main(x).logits, digits.val).argmax(1).numpy()
    expected = select_hard_classes(val_pred, digits.val.y.numpy(), 10, count=3)
    assert summary["hard_classes"] == expected == model.hard_classes.tolist()
    report = json.loads((tmp_path / "train.json").read_text())
    assert report["hard_classes"] == expected and set(report["history"]) == {"main", "extension", "cloud"}
    assert load_cloud(tmp_path / "cloud.pt").arch == "resnet20_cifar"


def test_pipeline_resumes_after_a_crash_without_retraining(tmp_path, digits, monkeypatch) -> None:
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "train_cloud", crash)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_training(_cfg(epochs=2), tmp_path, progress=False, log=lambda s: None, splits=digits)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["stage"] == "cloud" and len(state["history"]["main"]) == 2
    saved_main = {k: v.clone() for k, v in state["meanet"].items() if k.startswith("main.")}
    monkeypatch.undo()
    logs: list[str] = []
    pipeline.run_training(_cfg(epochs=2), tmp_path, progress=False, log=logs.append, splits=digits)
    assert any("resuming" in line and "stage cloud" in line for line in logs)
    model = load_meanet(tmp_path / "meanet.pt")
    for k, v in model.state_dict().items():
        if k.startswith("main."):
            assert torch.equal(v, saved_main[k]), k
    with pytest.raises(ValueError, match="other settings"):
        pipeline.run_training(_cfg(epochs=3), tmp_path, progress=False, log=lambda s: None, splits=digits)


def test_config_rejects_unknown_and_ill_typed_keys() -> None:
    with pytest.raises(ConfigError, match="unknown TrainConfig key"):
        from_dict(TrainConfig, {"epochz": 3})
    with pytest.raises(ConfigError, match="epochs must be int"):
        from_dict(TrainConfig, {"epochs": "3"})
    with pytest.raises(ConfigError, match="valid"):
        TrainConfig(model="resnet33")
    with pytest.raises(ConfigError, match="hard_fraction"):
        TrainConfig(hard_fraction=1.0)
    assert from_dict(TrainConfig, {"lr": 1}).lr == 1.0


def test_checkpoint_errors_are_clear(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_meanet(tmp_path / "missing.pt")
    bad = tmp_path / "trunc.pt"
    bad.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(CheckpointError, match="truncated"):
        load_meanet(bad)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not a meanet-fl/1 checkpoint"):
        load_meanet(other)


def test_split_restricted_to_candidate_classes() -> None:
    target = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    pred = np.array([0, 0, 0, 1, 2, 2, 3, 3])  # classes 4..9 never predicted: precision 0, but not seen yet
    assert select_hard_classes(pred, target, 10, count=1, candidates=[0, 1, 2, 3]) == [0]  # precision 2/3
    assert select_hard_classes(pred, target, 10, fraction=0.5, candidates=[0, 1, 2, 3]) == [0, 1]
    with pytest.raises(ValueError, match="candidates"):
        select_hard_classes(pred, target, 10, count=1, candidates=[12])


def _classes(data: ImageTensors, classes: list[int]) -> ImageTensors:
    return data.subset(torch.isin(data.y, torch.tensor(classes)).nonzero().flatten())


def test_main_training_with_distillation_keeps_the_old_classes_by_class_id() -> None:
    # 6 classes; the old ones are ids 1 and 4 (not positions 0, 1): a position/id mix-up would distil the wrong logits
    g = torch.Generator().manual_seed(1)
    y = torch.arange(96) % 6
    x = torch.randint(0, 256, (96, 3, 8, 8), generator=g, dtype=torch.uint8)  # 8 x 8: the backbone pools globally
    x[:, 0] = (y * 40).view(-1, 1, 1).to(torch.uint8)  # the red channel encodes the class
    data = ImageTensors(x, y)
    old, new = [1, 4], [0, 5]
    torch.manual_seed(0)
    model = build_meanet("resnet20_cifar", 6, [])
    train_main(model, _classes(data, old), StageConfig(epochs=1, batch_size=16, lr=0.05, augment=False), progress=False)
    model.eval()
    probe = _classes(data, old).x
    with torch.no_grad():
        before = model.forward_main(probe).logits[:, old].log_softmax(1)

    def drift(weight: float) -> float:
        """How far the answers among the old classes move (KL) while training on the new classes only."""
        student = copy.deepcopy(model)
        stage = StageConfig(epochs=3, batch_size=16, lr=0.05, augment=False)
        train_main(student, _classes(data, new), stage, distill_classes=old, distill_weight=weight, progress=False)
        student.eval()
        with torch.no_grad():
            after = student.forward_main(probe).logits[:, old].log_softmax(1)
        return float(torch.nn.functional.kl_div(after, before, log_target=True, reduction="batchmean"))

    plain, distilled = drift(0.0), drift(1.0)
    assert distilled < 0.5 * plain, (distilled, plain)  # the answers among the old classes move less


def test_main_training_rejects_bad_distillation_input() -> None:
    model = build_meanet("resnet20_cifar", 4, [])
    with pytest.raises(ValueError, match=r"distill_classes must lie in 0\.\.3"):
        train_main(model, _tiny(), StageConfig(epochs=1), distill_classes=[7], distill_weight=1.0, progress=False)
    with pytest.raises(ValueError, match="distill_weight must be >= 0"):
        train_main(model, _tiny(), StageConfig(epochs=1), distill_classes=[1], distill_weight=-1.0, progress=False)


def _learning_rates(monkeypatch: pytest.MonkeyPatch, stages: list[StageConfig], data: ImageTensors) -> list[float]:
    """The learning rate of every optimiser step over ``stages``, trained one after the other (a spy on SGD)."""
    seen: list[float] = []
    step = torch.optim.SGD.step

    def spy(self: torch.optim.SGD, *args: object, **kwargs: object) -> object:
        seen.append(float(self.param_groups[0]["lr"]))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    model = build_meanet("resnet20_cifar", 4, [])
    for stage in stages:
        train_main(model, data, stage, progress=False)
    monkeypatch.undo()
    return seen


def test_rounds_that_split_one_cycle_follow_the_whole_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    # 3 rounds of 1 epoch with cycle (r/3, (r+1)/3) take the same learning rates as 3 epochs in one stage: warm-up
    # once, annealing once, not 3 short cycles each annealed to nearly zero
    data = ImageTensors(torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8), torch.arange(40) % 4)
    kw = {"batch_size": 8, "lr": 0.1, "augment": False}  # 5 steps per epoch
    whole = _learning_rates(monkeypatch, [StageConfig(epochs=3, **kw)], data)
    rounds = [StageConfig(epochs=1, cycle=(r / 3, (r + 1) / 3), **kw) for r in range(3)]
    split = _learning_rates(monkeypatch, rounds, data)
    separate = _learning_rates(monkeypatch, [StageConfig(epochs=1, **kw) for _ in range(3)], data)
    assert len(whole) == len(split) == len(separate) == 15
    assert split == pytest.approx(whole)
    assert max(whole) == pytest.approx(0.1, rel=0.05) and whole[-1] < 1e-3
    # separate cycles anneal to nearly zero at the end of every round; split ones only at the end of the last
    assert separate[4] < 1e-3 and separate[9] < 1e-3
    assert split[4] > 0.05 and split[9] > 0.01


def test_stage_rejects_a_bad_cycle() -> None:
    for cycle in [(0.5, 0.5), (-0.1, 0.5), (0.2, 1.2), (0.8, 0.3)]:
        with pytest.raises(ValueError, match="cycle must be"):
            StageConfig(cycle=cycle)


def test_a_softmax_over_the_held_classes_keeps_old_classes_answerable() -> None:
    # an edge holding only new classes (0 and 5) trains the main block; old classes are ids 1 and 4 (not positions):
    # plain cross-entropy pushes the old logits down until old images are answered with new classes; a softmax over
    # the held classes (label_classes) does not
    g = torch.Generator().manual_seed(1)
    y = torch.arange(96) % 6
    x = torch.randint(0, 256, (96, 3, 8, 8), generator=g, dtype=torch.uint8)
    x[:, 0] = (y * 40).view(-1, 1, 1).to(torch.uint8)
    data = ImageTensors(x, y)
    old, new = [1, 4], [0, 5]
    torch.manual_seed(0)
    model = build_meanet("resnet20_cifar", 6, [])
    train_main(model, _classes(data, old), StageConfig(epochs=2, batch_size=16, lr=0.05, augment=False), progress=False)
    probe = _classes(data, old).x

    def answered_old(label_classes: list[int]) -> float:
        student = copy.deepcopy(model)
        stage = StageConfig(epochs=3, batch_size=16, lr=0.05, augment=False)
        train_main(student, _classes(data, new), stage, label_classes=label_classes, progress=False)
        student.eval()
        with torch.no_grad():
            top1 = student.forward_main(probe).logits.argmax(1)
        return float(torch.isin(top1, torch.tensor(old)).float().mean())

    plain, separated = answered_old([]), answered_old(new)
    assert plain < 0.2 and separated > 0.8, (plain, separated)
    with pytest.raises(ValueError, match="a label outside label_classes"):
        train_main(copy.deepcopy(model), _classes(data, new), StageConfig(epochs=1), label_classes=[0], progress=False)
    with pytest.raises(ValueError, match=r"label_classes must lie in 0\.\.5"):
        train_main(copy.deepcopy(model), _classes(data, new), StageConfig(epochs=1), label_classes=[9], progress=False)
