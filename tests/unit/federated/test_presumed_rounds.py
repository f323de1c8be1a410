"""The server's mirror when a site goes silent mid-round: the round counts at the site's plan
until the site reports its own ledger, which then replaces the presumption."""

from __future__ import annotations

from typing import Any

from common.privacy.ledger import LedgerEvent
from server.ledgers import PRESUMED, UNACCOUNTED, MirroredLedgers

PLAN = {"noise_multiplier": 1.2, "sample_rate": 0.25, "steps_per_round": 8}


def _event(round_number: int, status: str = "settled") -> dict[str, Any]:
    return {
        **LedgerEvent(
            noise_multiplier=1.2, sample_rate=0.25, steps=8, round=round_number, status=status
        ).__dict__
    }


def _status(events: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "site": "site-c",
        "budget": 6.0,
        "ledger": {
            "schema_version": 1,
            "delta": 1e-4,
            "accountant": "rdp",
            "unit": "patch",
            "events": events,
            "non_dp_uses": [],
        },
        "synthetic_guarantee": "not generated",
        "plan": PLAN,
    }


def test_silent_round_is_presumed_then_replaced_by_the_sites_own_ledger() -> None:
    mirror = MirroredLedgers()
    mirror.adopt_status(_status([]))
    mirror.record_round("site-c", _event(1), PLAN)
    one_round = mirror.sites["site-c"].epsilon()
    mirror.presume_round("site-c", 2)
    presumed = mirror.report()["site-c"]
    assert [(e["round"], e["status"], e["label"]) for e in presumed["events"]] == [
        (1, "settled", ""),
        (2, "reserved", PRESUMED),
    ]
    assert presumed["epsilon"] > one_round  # counted until the site says otherwise
    # the site comes back: it had reserved round 2 before it died
    mirror.adopt_status(_status([_event(1), {**_event(2, "reserved"), "label": ""}]))
    site = mirror.sites["site-c"]
    assert site.unconfirmed == [] and not site.excluded
    assert [(e["round"], e["status"]) for e in site.events] == [(1, "settled"), (2, "reserved")]


def test_a_site_that_never_reserved_is_not_taken_for_one_that_lost_history() -> None:
    mirror = MirroredLedgers()
    mirror.adopt_status(_status([]))
    mirror.record_round("site-c", _event(1), PLAN)
    mirror.close_round()
    mirror.presume_round("site-c", 2)
    mirror.close_round()
    presumed = mirror.report()["site-c"]["epsilon_after_round"]
    assert presumed[1] > presumed[0]
    mirror.adopt_status(_status([_event(1)]))  # it died before reserving round 2
    site = mirror.sites["site-c"]
    assert site.unconfirmed == [] and site.excluded == ""
    assert len(site.events) == 1
    # the per-round record (and its plot) agrees with the total: round 2 cost it nothing
    report = mirror.report()["site-c"]
    assert report["epsilon_after_round"] == [report["epsilon"], report["epsilon"]]


def test_a_round_presumed_before_any_plan_is_not_kept_at_the_budget() -> None:
    mirror = MirroredLedgers()
    mirror.adopt_status({**_status([]), "plan": None})
    mirror.presume_round("site-c", 1)  # killed in round 1: nothing to count it at
    mirror.close_round()
    assert mirror.report()["site-c"]["epsilon_after_round"] == [6.0]  # bounded by the budget
    mirror.adopt_status({**_status([]), "plan": None})  # back: it had spent nothing
    assert mirror.report()["site-c"]["epsilon_after_round"] == [0.0]


def test_a_budget_exclusion_from_presumed_rounds_is_lifted_by_the_sites_ledger() -> None:
    mirror = MirroredLedgers()
    status = _status([])
    mirror.adopt_status(status)
    two_rounds = mirror.sites["site-c"].ledger()
    two_rounds.events = [LedgerEvent(**_event(1)), LedgerEvent(**_event(2))]
    status["budget"] = two_rounds.epsilon() * 1.001  # room for exactly two rounds
    mirror.adopt_status(status)
    mirror.record_round("site-c", _event(1), PLAN)
    mirror.presume_round("site-c", 2)
    assert mirror.selectable() == []  # r1 + presumed r2 + r3 would exceed it
    mirror.adopt_status({**status, "ledger": {**status["ledger"], "events": [_event(1)]}})
    assert mirror.selectable() == ["site-c"]  # it never reserved r2: one more round fits


def test_a_site_lost_before_it_reported_a_plan_is_reported_at_its_budget() -> None:
    """Round 1 sent, no reply, no plan known yet (the plan is made inside round 1): the server
    cannot count the round, so it reports the budget (an upper bound, never 0) and does not
    select the site until it reports its ledger."""
    mirror = MirroredLedgers()
    mirror.adopt_status({**_status([]), "plan": None})
    mirror.presume_round("site-c", 1)
    mirror.close_round()
    report = mirror.report()["site-c"]
    assert report["epsilon"] == 6.0 and report["epsilon_after_round"] == [6.0]
    assert report["unplanned_rounds"] == [1] and report["excluded"] == UNACCOUNTED
    assert mirror.selectable() == []
    mirror.adopt_status(_status([_event(1)]))  # back: it had spent round 1
    site = mirror.sites["site-c"]
    assert site.unplanned_rounds == [] and not site.excluded
    assert 0 < site.epsilon() < 6.0 and mirror.selectable() == ["site-c"]
