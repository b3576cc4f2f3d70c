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


def test_node_config_arg_writes_toml_values_and_refuses_odd_keys() -> None:
    arg = launch.node_config_arg({"partition-id": 1, "data-dir": "/data/edge 1", "cloud-timeout": 2.5, "x": True})
    assert arg == 'partition-id=1 data-dir="/data/edge 1" cloud-timeout=2.5 x=true'
    with pytest.raises(ValueError, match="plain name"):
        launch.node_config_arg({"bad key": 1})


def test_loopback_federation_wants_one_node_config_per_supernode(tmp_path: Path) -> None:
    with (
        pytest.raises(ValueError, match="one each"),
        launch.loopback_federation(
            simulation=False, num_supernodes=2, home=tmp_path, node_configs=[{"data-dir": "/d"}]
        ),
    ):
        pass


def test_a_loopback_run_refuses_a_quorum_it_cannot_reach() -> None:
    launch.check_quorum({"min-edges": 3}, 3)
    launch.check_quorum({}, 2)  # the app's default quorum, 2
    with pytest.raises(ValueError, match="min-edges=3 is more than the 2 edge"):
        launch.check_quorum({"min-edges": 3}, 2)
    with pytest.raises(ValueError, match="min-edges=2 is more than the 1 edge"):
        launch.run_simulation({}, 1)  # before anything starts
