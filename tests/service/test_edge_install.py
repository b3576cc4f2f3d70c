"""The device's own install, for real: a fresh virtual environment, ``pip install ./edge`` (from PyPI: numpy,
onnxruntime, Pillow, cryptography, httpx), then its ``meanet edge predict`` on an exported package. Neither torch,
Flower nor Avalanche gets installed, and the install is at most a fifth of the full one on disk.

Slow (a minute or two of downloads and installs): in CI's ``-m slow`` run.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .test_edge_package import exported  # noqa: F401 (the module fixture: the run exported three ways)
from .test_edge_predict import FOLDERS, PER_CLASS

ROOT = Path(__file__).resolve().parents[2]


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.mark.slow
def test_the_device_installs_the_runtime_alone_and_predicts(exported, tmp_path: Path) -> None:  # noqa: F811
    venv = tmp_path / "device"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    r = subprocess.run([*pip, str(ROOT / "edge")], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list"], capture_output=True, text=True).stdout
    installed = {line.split()[0].lower() for line in listed.splitlines()[2:] if line.strip()}
    assert "meanet-edge" in installed and "onnxruntime" in installed
    assert not installed & {"torch", "torchvision", "flwr", "avalanche-lib", "ray", "meanet-fl"}, installed
    device_bytes, full_bytes = folder_bytes(venv), folder_bytes(Path(sys.prefix))
    assert device_bytes <= full_bytes / 5, (device_bytes, full_bytes)

    out = tmp_path / "preds.csv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}  # the device sees only its install
    r = subprocess.run(
        [str(venv / "bin" / "meanet"), "edge", "predict", "--model", str(exported["int8"]), "--verify-key",
         str(exported["key"]), "--images", str(exported["inputs"]), "--out", str(out)],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "int8, signed by" in r.stdout
    with out.open() as f:
        assert len(list(csv.DictReader(f))) == len(FOLDERS) * PER_CLASS
    r = subprocess.run([str(venv / "bin" / "meanet"), "train"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 2 and "need the full install" in r.stderr, r.stderr
    print(f"device install {device_bytes / 1e6:.0f} MB, full install {full_bytes / 1e6:.0f} MB")
