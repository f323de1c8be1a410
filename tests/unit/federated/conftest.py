"""Shared by the federated tests: a Flower task identity (Messages need a run id outside a
running app), a grid of three nodes and a site's status as its ClientApp reports it."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    for key, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, key, value)


class Grid:
    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]


def site_status(site: str = "a", non_dp_uses: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """A valid status of a site that has spent nothing yet (protocol.check_status)."""
    return {
        "site": site,
        "budget": 6.0,
        "delta": 1e-4,
        "unit": "patch",
        "accountant": "rdp",
        "ledger": {
            "schema_version": 1,
            "delta": 1e-4,
            "accountant": "rdp",
            "unit": "patch",
            "events": [],
            "non_dp_uses": list(non_dp_uses or []),
        },
        "epsilon": 0.0,
        "epsilon_dp_sgd": 0.0,
        "gan_epsilon": None,
        "synthetic_guarantee": "not generated",
        "plan": None,
        "noise": "os-entropy",
    }
