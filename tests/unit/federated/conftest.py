"""Shared by the strategy tests: a Flower task identity (Messages need a run id outside a
running app) and a grid of three nodes."""

from __future__ import annotations

import pytest


@pytest.fixture
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    for key, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, key, value)


class Grid:
    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]
