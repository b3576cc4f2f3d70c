"""The memory estimate of a training step (``meanet_core.training.memory``) against the measured peak.

    python -m benchmarks.perf_memory --json perf_memory.json          # ~1 min on 2 cores

Each case runs in a fresh ``python`` subprocess: it builds the MEANet (channels-last, as every training path does),
holds ``2 x batch`` random uint8 images at the case's size, asks :func:`~meanet_core.training.memory.step_memory`
for the estimate of a main-block step (what ``fit`` checks before its first batch), then trains one epoch of
``train_main`` (2 steps, the probe included). The measured peak is the process's peak resident memory
(``VmHWM``, reset just before training; ``ru_maxrss`` would also hold the parent's resident size at fork time, so a
case started from a large process, a test run, read 2-3x high) minus its resident memory just before training:
what the step added beyond the interpreter, torch, the model and the data, the same scope as the estimate.
``ratio`` is estimate / measured; the target is 1/1.5..1.5.

What the check costs: ``probe s`` is the estimate's own time (a forward and backward of a few images, once per
``fit``), ``step s`` one training step of ``batch`` images after warm-up, and ``probe / epoch`` the probe against one
epoch of an edge's share in the main job (6,000 images: the smallest ``fit`` it runs).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

EDGE_EPOCH_IMAGES = 6000  # the main job: 45,000 training images / 2 experiences x 0.8 (not the cloud's) / 3 edges
CASES = (
    ("resnet20_cifar", 32, 32),  # the main job's edges and cloud
    ("resnet20_cifar", 32, 64),
    ("resnet20_cifar", 32, 128),
    ("resnet56_cifar", 32, 64),
    ("resnet56_cifar", 32, 128),
    ("mobilenetv2", 96, 32),
    ("mobilenetv2", 96, 64),
)

CHILD = r"""
import json, resource, sys, time
import psutil, torch
from meanet_core.data import ImageTensors
from meanet_core.models import build_meanet
from meanet_core.training.memory import step_memory
from meanet_core.training.stages import StageConfig, train_main
import torch.nn.functional as F
arch, size, batch, precision, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
torch.set_num_threads(threads)
torch.manual_seed(0)
model = build_meanet(arch, 10, input_size=size).to(memory_format=torch.channels_last)
data = ImageTensors(torch.randint(0, 256, (2 * batch, 3, size, size), dtype=torch.uint8), torch.arange(2 * batch) % 10)
cfg = StageConfig(epochs=1, batch_size=batch, precision=precision)
def step(x, y):
    logits = model.forward_main(x).logits
    return F.cross_entropy(logits, y), logits
t0 = time.perf_counter()
estimate = step_memory(step, model, list(model.main.parameters()), data, batch, precision=precision,
                       desc="the main block", channels_last=True)
probe_s = time.perf_counter() - t0
def hwm():  # this process's own peak (VmHWM); ru_maxrss also keeps the parent's RSS at fork time
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
try:
    open("/proc/self/clear_refs", "w").write("5")  # the peak starts again from here
except OSError:
    pass
before = psutil.Process().memory_info().rss
train_main(model, data, cfg, progress=False, channels_last=True)
peak = hwm() - before
t0 = time.perf_counter()
train_main(model, data, cfg, progress=False, channels_last=True)  # warm: what a step costs (2 steps, one probe)
epoch_s = time.perf_counter() - t0
print(json.dumps({"estimate": estimate.total, "activations": estimate.activations, "measured": peak,
                  "probe_s": probe_s, "step_s": (epoch_s - probe_s) / 2}))
"""


def measure(arch: str, size: int, batch: int, precision: str = "fp32", threads: int = 2) -> dict[str, Any]:
    """One case in a fresh interpreter: the estimate and the measured peak of a main-block step, in bytes."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, arch, str(size), str(batch), precision, str(threads)],
        capture_output=True,
        text=True,
        cwd=root,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the case {arch} {size}px batch {batch} failed:\n{done.stderr[-2000:]}")
    row: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    row.update(model=arch, image_size=size, batch_size=batch, precision=precision)
    row["ratio"] = row["estimate"] / max(row["measured"], 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="fp32", help="fp32 | bf16 (needs a CPU that computes it natively)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per case")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    rows = []
    print(
        f"{'model':<16} {'px':>4} {'batch':>5} {'estimate MiB':>13} {'measured MiB':>13} {'ratio':>6} "
        f"{'probe s':>8} {'step s':>7} {'probe / epoch':>14}"
    )
    for arch, size, batch in CASES:
        row = measure(arch, size, batch, args.precision, args.threads)
        row["probe_share_of_edge_epoch"] = row["probe_s"] / (row["step_s"] * -(-EDGE_EPOCH_IMAGES // batch))
        rows.append(row)
        print(
            f"{arch:<16} {size:>4} {batch:>5} {row['estimate'] / 2**20:>13.0f} {row['measured'] / 2**20:>13.0f} "
            f"{row['ratio']:>6.2f} {row['probe_s']:>8.3f} {row['step_s']:>7.3f} "
            f"{row['probe_share_of_edge_epoch']:>13.2%}",
            flush=True,
        )
    worst = max(max(r["ratio"], 1 / r["ratio"]) for r in rows)
    print(f"worst factor {worst:.2f} (target 1.5)")
    if args.json:
        args.json.write_text(json.dumps({"precision": args.precision, "rows": rows}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
