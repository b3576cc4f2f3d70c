"""The federation's run config and the routing policy it hands to the edges."""

import re
from pathlib import Path

import pytest
import tomllib
import torch
from flwr.app import ConfigRecord, Message, RecordDict

from fl_client.app import _policy
from meanet_core import keys
from meanet_core.config import ConfigError, FederationConfig
from meanet_core.data import ImageTensors
from meanet_core.inference.engine import LocalCloud
from meanet_core.inference.evaluation import branch_outputs, calibrate_for_cloud_fraction
from meanet_core.inference.policies import CalibratedPolicy, PaperPolicy
from meanet_core.models import build_cloud, build_meanet

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _defaults() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]


def test_the_app_defaults_parse_and_round_trip() -> None:
    cfg = FederationConfig.from_run_config(_defaults())
    assert cfg.policy == "calibrated" and cfg.num_clients == 3
    assert cfg.as_run_config() == {**cfg.as_run_config(), **_defaults()}  # every pyproject key is a config field
    assert FederationConfig.from_run_config(cfg.as_run_config()) == cfg


@pytest.mark.parametrize(
    "override, message",
    [
        ({"num-clients": 0}, "num-clients: must be >= 1"),
        ({"policy": "oracle"}, "policy: 'oracle' is not one of paper, calibrated"),
        ({"target-cloud-fraction": 1.5}, "target-cloud-fraction: must lie in [0, 1]"),
        ({"rounds": 3}, "unknown FederationConfig key"),
        ({"lr": "fast"}, "lr"),
        ({"num-clients": 2.0}, "num_clients must be int; got 2.0 (float)"),
        ({"partition": True}, "partition must be str"),
        ({"max-norm-ratio": float("nan")}, "max-norm-ratio: must be a finite number"),
        ({"lr": float("inf")}, "lr: must be a finite number"),
        ({"max-norm-ratio": -1.0}, "max-norm-ratio: must be >= 0 (0 turns it off)"),
        ({"limit-train": -5}, "limit-train: must be >= 0"),
        ({"evaluate-every": -1}, "evaluate-every: must be >= 0 (0 = only after each experience's last round)"),
        ({"entropy-threshold": 2.0}, "entropy-threshold: must lie in [0, 1]"),
        ({"faults": "0:nan,7:shape"}, "faults: faults item '7:shape': client 7 is not an index in 0..2"),
        ({"faults": "0:melt"}, "unknown fault 'melt'"),
    ],
)
def test_bad_keys_name_what_is_wrong(override: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        FederationConfig.from_run_config({**_defaults(), **override})


def _evaluate_message(config: dict) -> Message:
    return Message(RecordDict({keys.CONFIG: ConfigRecord(config)}), dst_node_id=1, message_type="evaluate")


def test_the_client_uses_the_thresholds_the_server_sent(task_identity: None) -> None:
    cfg = FederationConfig.from_run_config({**_defaults(), "entropy-threshold": 0.3})
    sent = {keys.POLICY: "calibrated", keys.MAIN_THRESHOLD: 0.4, keys.EXTENSION_THRESHOLD: 0.7}
    assert _policy(_evaluate_message(sent), cfg) == CalibratedPolicy(0.4, 0.7)
    assert _policy(_evaluate_message({keys.POLICY: "paper"}), cfg) == PaperPolicy(0.3)
    with pytest.raises(ValueError, match="calibrated policy without valid thresholds"):
        _policy(_evaluate_message({keys.POLICY: "calibrated", keys.MAIN_THRESHOLD: 0.4}), cfg)
    # the fit can drop the extension (it scored lower on validation); the edge follows
    without = _policy(_evaluate_message({**sent, keys.USE_EXTENSION: False}), cfg)
    assert without == CalibratedPolicy(0.4, 0.7, use_extension=False)
    with pytest.raises(ValueError, match="use-extension must be a bool"):
        _policy(_evaluate_message({**sent, keys.USE_EXTENSION: "no"}), cfg)


@pytest.mark.parametrize("target", [0.0, 0.25, 1.0])
def test_calibration_keeps_the_offloaded_share_within_the_target(target: float) -> None:
    torch.manual_seed(0)
    model = build_meanet("resnet20_cifar", 10, [0, 1, 2]).eval()
    with torch.no_grad():
        model.main.fc.weight.mul_(30)  # spread the confidences of the random main block
    cloud_model = build_cloud("resnet20_cifar", 10).eval()
    val = ImageTensors(torch.randint(0, 256, (80, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (80,)))
    policy = calibrate_for_cloud_fraction(model, cloud_model, val, target)
    out = branch_outputs(model, LocalCloud(cloud_model), val)
    probs = out.main.softmax(1)
    top1_hard = model.hard_index[probs.argmax(1)] >= 0
    to_cloud, to_ext = policy.after_main(probs, top1_hard)
    ext_cloud = policy.after_extension(out.extension.softmax(1)) & to_ext
    assert (to_cloud | ext_cloud).float().mean().item() <= target + 1e-9


def test_rounds_of_an_experience_share_one_learning_rate_cycle() -> None:
    cfg = FederationConfig(main_rounds=3, rounds_per_experience=2)
    # signed rounds count the main rounds first (1..3), then the edge rounds (4..5)
    assert [cfg.round_cycle("main", r) for r in (1, 2, 3)] == [(0.0, 1 / 3), (1 / 3, 2 / 3), (2 / 3, 1.0)]
    assert [cfg.round_cycle("edge", r) for r in (4, 5)] == [(0.0, 0.5), (0.5, 1.0)]
    # a round outside the run's (an old client's numbering, a test's): the whole cycle, never a bad one
    assert cfg.round_cycle("main", 4) == cfg.round_cycle("edge", 1) == cfg.round_cycle("edge", 9) == (0.0, 1.0)
    assert FederationConfig(main_rounds=0).round_cycle("edge", 1) == (0.0, 0.5)


def test_cloud_model_epochs_default_to_the_cloud_epochs() -> None:
    assert FederationConfig(cloud_epochs=3).cloud_model_stage_epochs == 3
    assert FederationConfig(cloud_epochs=3, cloud_model_epochs=8).cloud_model_stage_epochs == 8
    with pytest.raises(ConfigError, match="cloud-model-epochs"):
        FederationConfig(cloud_model_epochs=-1)


@pytest.mark.parametrize(
    ("setting", "flags", "expected"),
    [
        ("fp32", {"avx512_bf16"}, "fp32"),
        ("bf16", set(), "bf16"),
        ("auto", {"avx512_bf16"}, "bf16"),
        ("auto", set(), "fp32"),
    ],
)
def test_training_precision_reaches_every_stage(monkeypatch, setting: str, flags: set[str], expected: str) -> None:
    """The federation's and ``meanet train``'s stages train at the configured precision; ``auto`` is decided by the
    machine that trains (each edge for itself), from its CPU's bfloat16 support."""
    from meanet_core.config import TrainConfig
    from meanet_core.training import precision

    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset(flags))
    fed = FederationConfig(precision=setting)
    assert fed.stage(2).precision == expected
    assert fed.stage(1, (0.0, 0.5)).precision == expected
    train = TrainConfig(precision=setting)
    assert {train.stage(s).precision for s in ("main", "cloud", "extension")} == {expected}


def test_a_bad_training_precision_is_refused_by_name() -> None:
    from meanet_core.config import TrainConfig

    with pytest.raises(ConfigError, match=r"run config precision: unknown 'fp16'; valid: auto .*fp32, bf16"):
        FederationConfig.from_run_config({"precision": "fp16"})
    with pytest.raises(ConfigError, match=r"TrainConfig.precision: unknown 'half'"):
        TrainConfig(precision="half")
