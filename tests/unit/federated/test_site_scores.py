"""Which sites score which round's global model when the scores ride on the next round's train
message (`federation.evaluate_with_train`): the planned last round scores itself, and every
site that trained a round scores its model, in the next train exchange or, if it was not in
it, in an evaluate exchange of its own."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from common.config.compose import compose_federated_config
from server.federation import Federation

SITES = {1: "site-a", 2: "site-b", 3: "site-c"}


class Recorder(Federation):
    """The server's bookkeeping without a grid: `site_metrics` records whom it asks."""

    def __init__(self, *overrides: str) -> None:  # no grid, no run dir
        self.config = compose_federated_config(["experiment=federated/tiny", *overrides])
        self.sites, self.stale = dict(SITES), set()
        self.asked: list[list[int]] = []

    def site_metrics(self, nodes: list[int], state: Any) -> dict[str, dict[str, float]]:
        self.asked.append(nodes)
        return {self.sites[n]: {"auroc": 0.5} for n in nodes}


def test_only_the_planned_last_round_scores_itself() -> None:
    server = Recorder("federation.rounds=3")
    assert [server.evaluates_now(r) for r in (1, 2, 3)] == [False, False, True]
    stopped = Recorder("federation.rounds=3", "federation.stop_after_round=2")
    assert [stopped.evaluates_now(r) for r in (1, 2, 3)] == [False, True, True]
    separate = Recorder("federation.evaluate_with_train=false")
    assert all(separate.evaluates_now(r) for r in (1, 2, 3))
    off = Recorder("federation.site_evaluation=false")
    assert not any(off.evaluates_now(r) for r in (1, 2, 3))


def test_a_round_awaits_scores_until_its_sites_sent_them() -> None:
    server = Recorder()

    state = SimpleNamespace(history={"rounds": []})
    assert server.pending_site_evaluation(state) is None  # round 1 scores nothing received
    state.history["rounds"].append({"round": 1, "sites": {}, "trained": ["site-a"]})
    assert server.pending_site_evaluation(state) is state.history["rounds"][-1]
    state.history["rounds"][-1]["sites"] = {"site-a": {"auroc": 0.5}}
    assert server.pending_site_evaluation(state) is None


def test_sites_that_trained_but_are_not_in_the_next_round_score_apart() -> None:
    server = Recorder()
    # site-a scored on its train message; site-b (budget spent: not chosen) and site-c (its
    # train failed: stale now) did not; site-c is left alone, it may be down
    server.stale = {3}
    pending = {"trained": ["site-a", "site-b", "site-c"], "sites": {"site-a": {"auroc": 0.7}}}
    server.evaluate_the_rest(pending, [1, 2, 3], online={1, 2, 3}, state=None)  # type: ignore[arg-type]
    assert server.asked == [[2]]
    assert set(pending["sites"]) == {"site-a", "site-b"}
    server.asked.clear()
    server.evaluate_the_rest(pending, [1, 2, 3], online={1}, state=None)  # type: ignore[arg-type]
    assert server.asked == []  # nobody left who is online and not stale
