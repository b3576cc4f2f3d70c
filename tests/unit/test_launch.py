"""The loopback launcher finds the Flower app's folder, or says what to do when it runs from an installed copy."""

from __future__ import annotations

from pathlib import Path

import pytest

from fl_server import launch


def test_the_app_folder_is_the_checkout_with_its_pyproject() -> None:
    folder = launch.app_dir()
    assert (folder / "pyproject.toml").is_file() and (folder / "fl_server" / "launch.py").is_file()


def test_an_installed_copy_without_the_pyproject_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(launch, "APP_DIR", tmp_path / "site-packages")  # what `pip install .` leaves
    with pytest.raises(ValueError, match=r"pip install -e \.") as info:
        launch.app_dir()
    assert "site-packages" in str(info.value) and "flwr run PATH-TO-CLONE" in str(info.value)
