"""summary.md lists the sites that could not start: a site missing from the ledger table was
unexplained (its status failed on a data error, say, and the run went on without it)."""

from __future__ import annotations

from common.config.compose import compose_federated_config
from server.checkpoint import ServerState
from server.outputs import summary_table


def _state(history: dict[str, object]) -> ServerState:
    return ServerState(
        round=3,
        base_state={},
        base_sha="",
        trainable={},
        strategy={},
        ledgers={},
        history=history,
        overrides=[],
    )


def test_sites_that_could_not_start_are_listed_with_their_reason() -> None:
    config = compose_federated_config(["experiment=federated/tiny"])
    reason = "site site-c: data error: see the site's log"
    text = summary_table(config, _state({"rounds": [], "not_started": {"node 7": reason}}), {}, {})
    assert f"- node 7: {reason}" in text.splitlines()
    assert "Could not start" not in summary_table(config, _state({"rounds": []}), {}, {})
