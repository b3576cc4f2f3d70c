"""Fixtures shared by every test tier."""

from collections.abc import Iterator

import pytest
from flwr.supercore.task_identity import TaskIdentity


@pytest.fixture
def task_identity(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Flower stamps instructions with the running task's identity: a ServerApp runtime sets it, a test fakes it."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    yield
