"""Is the cloud worth calling? A federation's edge beside cloud models given more training, side by side.

    python benchmarks/cloud_worth.py --run runs/federation --epochs 2,6,12 --json cloud_worth.json

Takes a finished ``meanet federate`` run (its ``state.pt``: the MEANet as broadcast, the cloud model, the settings)
and its last experience:

* the edge: the run's MEANet (main + adaptive + extension), unchanged;
* ``run``: the run's own cloud model, as the run trained it (``cloud-model-epochs`` per experience);
* one row per ``--epochs`` value E (and ``--arch``): a fresh cloud model trained on everything the cloud holds (its
  share of every experience so far) for one one-cycle schedule of E epochs, as the federation's cloud-model stage
  trains it (same batch size, learning rate, augmentation, seed);

each evaluated on the test images of the classes seen so far, with the calibrated policy fitted on the cloud's
validation images to offload at most each ``--fractions`` value (the run's ``target-cloud-fraction`` by default):
cloud-only accuracy, the edge's (main + extension, nothing offloaded), MEANet + cloud, the share offloaded, and on
the offloaded inputs the accuracy of the edge's own answer against the cloud's. The cloud pays for itself when
MEANet + cloud beats both the edge and cloud-only; since MEANet + cloud - edge = offloaded share x (cloud - edge on
the offloaded inputs), and cloud-only - MEANet + cloud = the same difference on the inputs kept, that needs a cloud
that is much better than the edge on the inputs the edge is unsure of, and no better on the others.

Compute: the cloud's training cost in image passes (epochs x images) and seconds, and the MACs of one inference of
the cloud model against the edge's main block. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from meanet_core.config import FederationConfig
from meanet_core.data.streams import concat, stream_for
from meanet_core.inference.engine import AdaptiveEngine, LocalCloud
from meanet_core.inference.evaluation import calibrate_for_cloud_fraction, evaluate_routing
from meanet_core.inference.policies import PaperPolicy
from meanet_core.models import CloudModel, MEANet, build_cloud, build_meanet
from meanet_core.training.checkpoint import CheckpointError, safe_load
from meanet_core.training.stages import train_cloud


def load_run(run: Path, data_dir: str | None = None) -> tuple[FederationConfig, dict[str, Any], int]:
    """The run's settings, its saved state, and the experience its models belong to (its last)."""
    path = run / "state.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass --run the report folder of a finished `meanet federate` run")
    state = safe_load(path)
    position = state.get("position", {})
    done = int(position.get("experience", 0))
    if position.get("phase") != "cloud-start" or done < 1:
        raise CheckpointError(
            f"{path}: the run stopped at {position} (inside an experience); run it to the end first (its models must "
            "be those of an evaluated experience)"
        )
    config = dict(state["config"])
    if data_dir:
        config["data-dir"] = data_dir
    return FederationConfig.from_run_config(config), state, done - 1


def evaluate_cloud(
    model: MEANet, cloud: CloudModel, val: Any, test: Any, fractions: list[float]
) -> list[dict[str, Any]]:
    """MEANet + ``cloud`` at each target cloud fraction (policy fitted on ``val``), on ``test``."""
    rows = []
    for f in fractions:
        policy = calibrate_for_cloud_fraction(model, cloud, val, f)
        summary = evaluate_routing(model, cloud, test, policy)
        ref = summary["reference_accuracy"]
        rows.append(
            {
                "target_cloud_fraction": f,
                "cloud_fraction": summary["exits"]["cloud"]["fraction"],
                "meanet_with_cloud": summary["accuracy"],
                "edge": ref["edge_main_plus_extension"],
                "cloud_only": ref["cloud_only"],
                "offloaded_edge": ref["offloaded_edge"],
                "offloaded_cloud": ref["offloaded_cloud"],
            }
        )
    return rows


def run_comparison(
    run: Path,
    epochs: list[int],
    fractions: list[float] | None = None,
    arch: str | None = None,
    data_dir: str | None = None,
    device: str = "cpu",
    log: Any = print,
) -> dict[str, Any]:
    cfg, state, e = load_run(run, data_dir)
    splits, stream = stream_for(cfg)
    k, mean, std = splits.num_classes, splits.mean, splits.std
    model = build_meanet(cfg.model, k, mean=mean, std=std)
    model.set_hard_classes([int(c) for c in state["hard_classes"]])
    model.load_state_dict(state["meanet"])
    model.eval()
    arch = arch or cfg.cloud_model
    fractions = fractions or [cfg.target_cloud_fraction]
    data = concat([stream[i].cloud for i in range(e + 1)])  # everything the cloud holds
    val, test = stream[e].val, stream[e].test
    main_macs = AdaptiveEngine(model, PaperPolicy(1.0)).main_macs
    report = json.loads(state["report"])
    log(f"experience {e}: {len(splits.class_names)} classes, {len(data)} cloud images, {len(test)} test images")

    rows: list[dict[str, Any]] = []

    def add(name: str, cloud: CloudModel, arch_name: str, passes: int, seconds: float) -> None:
        macs = LocalCloud(cloud).macs_per_image
        for r in evaluate_cloud(model, cloud, val, test, fractions):
            rows.append(
                {
                    "cloud": name,
                    "arch": arch_name,
                    "training_image_passes": passes,
                    "training_seconds": seconds,
                    "cloud_macs_per_image": macs,
                    "cloud_to_main_macs": macs / main_macs,
                    **r,
                }
            )
            log(_row(rows[-1]))

    own = build_cloud(cfg.cloud_model, k, mean=mean, std=std)
    own.load_state_dict(state["cloud"])
    passes = cfg.cloud_model_stage_epochs * sum(len(stream[i].cloud) * (e - i + 1) for i in range(e + 1))
    seconds = sum(x.get("cloud_training_stage_seconds", {}).get("cloud_model", 0.0) for x in report["experiences"])
    add("run", own, cfg.cloud_model, passes, seconds)
    for n in epochs:
        torch.manual_seed(cfg.seed)
        cloud = build_cloud(arch, k, mean=mean, std=std).to(device)
        t0 = time.perf_counter()
        train_cloud(cloud, data, cfg.stage(n), seed=cfg.seed + e, progress=True, channels_last=True, device=device)
        seconds = time.perf_counter() - t0
        add(f"{n} epochs", cloud.cpu().eval(), arch, n * len(data), seconds)
    return {
        "run": str(run),
        "experience": e,
        "seen_classes": len(stream[e].seen_classes),
        "cloud_images": len(data),
        "test_images": len(test),
        "main_macs_per_image": main_macs,
        "rows": rows,
    }


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


HEADER = (
    "| cloud model | arch | training image passes | training s | MACs vs main block | target / offloaded "
    "| cloud only | edge | MEANet + cloud | offloaded: edge / cloud |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def _row(r: dict[str, Any]) -> str:
    return (
        f"| {r['cloud']} | {r['arch']} | {r['training_image_passes']:,} | {r['training_seconds']:.0f} "
        f"| {r['cloud_to_main_macs']:.2f}x "
        f"| {r['target_cloud_fraction']:.2f} / {r['cloud_fraction']:.3f} | {r['cloud_only']:.4f} | {r['edge']:.4f} "
        f"| {r['meanet_with_cloud']:.4f} | {_fmt(r['offloaded_edge'])} / {_fmt(r['offloaded_cloud'])} |"
    )


def table(result: dict[str, Any]) -> str:
    return "\n".join([HEADER, *(_row(r) for r in result["rows"])])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="report folder of a finished `meanet federate` run")
    p.add_argument("--epochs", default="2,6,12", help="comma list: one fresh cloud model per value")
    p.add_argument("--fractions", default="", help="comma list of target cloud fractions (default: the run's)")
    p.add_argument("--arch", default=None, help="cloud architecture of the fresh models (default: the run's)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: the run's data-dir / $MEANET_DATA_DIR)")
    p.add_argument("--device", default="cpu", help="where the fresh cloud models train: cpu, cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", type=Path, default=None, help="write the result here")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        epochs = [int(x) for x in a.epochs.split(",") if x.strip()]
        fractions = [float(x) for x in a.fractions.split(",") if x.strip()]
    except ValueError:
        p.error(f"--epochs takes integers and --fractions numbers, comma-separated; got {a.epochs!r}, {a.fractions!r}")
    if any(n < 1 for n in epochs) or any(not 0 <= f <= 1 for f in fractions):
        p.error("--epochs must be >= 1 and --fractions in [0, 1]")
    print(HEADER)
    result = run_comparison(a.run, epochs, fractions or None, a.arch, a.data_dir, a.device, log=print)
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
