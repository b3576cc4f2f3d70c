"""The configuration reference (docs/configuration.md) is generated from the config dataclasses: it must be current."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "dev" / "config_reference.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_configuration_reference_is_current(capsys: pytest.CaptureFixture[str]) -> None:
    code = _generator().main(["--check"])
    assert code == 0, capsys.readouterr().err


def test_the_reference_reads_every_field_and_its_comments() -> None:
    gen = _generator()
    source = (ROOT / "meanet_core" / "config.py").read_text()
    comments = gen.field_comments(source, "FederationConfig")
    assert "grown from the main block at every experience" in comments["cloud_init"]  # a continuation line
    text = gen.render()
    from meanet_core.config import FederationConfig, TrainConfig

    for cls, prefix in ((FederationConfig, "`"), (TrainConfig, "`--")):
        for name in cls.__dataclass_fields__:
            key = name.replace("_", "-")
            assert f"| {prefix}{key}`" in text or f"| `{key}`" in text, f"{cls.__name__}.{name} missing"


def test_a_stale_reference_fails_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = _generator()
    stale = tmp_path / "configuration.md"
    stale.write_text("# Configuration reference\n")
    monkeypatch.setattr(gen, "OUTPUT", stale)
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0
