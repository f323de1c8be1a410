"""The ledger composes *different* events exactly as opacus' accountants do with both entries.

Two events with different noise multipliers, sample rates and steps (a DP-MCGAN then DP-SGD, or
two federated rounds at different settings): the ledger's epsilon must equal opacus'
RDPAccountant (and PRVAccountant) fed both history entries. Equal events, the only case tested
before, cannot tell composition from "steps of the first event times its per-step cost".
"""

from __future__ import annotations

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from common.privacy.ledger import LedgerEvent, PrivacyLedger

FIRST = LedgerEvent(noise_multiplier=1.1, sample_rate=0.05, steps=300, kind="dp-gan")
SECOND = LedgerEvent(noise_multiplier=2.0, sample_rate=0.2, steps=50, round=1)
DELTA = 1e-4


def _opacus(accountant: RDPAccountant | PRVAccountant, events: list[LedgerEvent]) -> float:
    accountant.history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in events]
    return float(accountant.get_epsilon(delta=DELTA))


def test_two_different_events_compose_as_opacus_rdp() -> None:
    ledger = PrivacyLedger(delta=DELTA, events=[FIRST, SECOND])
    both = ledger.epsilon()
    assert both == pytest.approx(_opacus(RDPAccountant(), [FIRST, SECOND]), rel=1e-9)
    # each event on its own, and the wrong compositions a buggy ledger could compute, differ
    alone = [PrivacyLedger(delta=DELTA, events=[e]).epsilon() for e in (FIRST, SECOND)]
    assert both > max(alone) and both < sum(alone)
    steps = FIRST.steps + SECOND.steps
    for sigma, q in ((FIRST.noise_multiplier, FIRST.sample_rate), (2.0, 0.2), (1.1, 0.2)):
        wrong = _opacus(
            RDPAccountant(), [LedgerEvent(noise_multiplier=sigma, sample_rate=q, steps=steps)]
        )
        assert abs(wrong - both) > 0.05 * both
    # order does not matter; a reservation counts like a settled event; zero steps count nothing
    assert PrivacyLedger(delta=DELTA, events=[SECOND, FIRST]).epsilon() == pytest.approx(both)
    reserved = PrivacyLedger(delta=DELTA, events=[FIRST])
    reserved.reserve(SECOND)
    assert reserved.epsilon() == pytest.approx(both, rel=1e-12)
    empty = LedgerEvent(noise_multiplier=0.5, sample_rate=0.9, steps=0)
    assert PrivacyLedger(delta=DELTA, events=[FIRST, empty, SECOND]).epsilon() == both


def test_kind_filter_and_extra_event_compose_the_same_way() -> None:
    ledger = PrivacyLedger(delta=DELTA, events=[FIRST])
    assert ledger.epsilon(extra=SECOND) == pytest.approx(
        _opacus(RDPAccountant(), [FIRST, SECOND]), rel=1e-9
    )
    assert ledger.events == [FIRST]  # the projection charged nothing
    both = PrivacyLedger(delta=DELTA, events=[FIRST, SECOND])
    assert both.epsilon(kind="dp-gan") == pytest.approx(_opacus(RDPAccountant(), [FIRST]), rel=1e-9)


def test_two_different_events_compose_as_opacus_prv() -> None:
    ledger = PrivacyLedger(delta=DELTA, accountant="prv", events=[FIRST, SECOND])
    got = ledger.epsilon()
    assert got == pytest.approx(_opacus(PRVAccountant(), [FIRST, SECOND]), rel=1e-6)
    first_only = _opacus(PRVAccountant(), [FIRST])
    assert got > first_only + 0.05
    # PRV is the tighter accountant for the same history
    assert got < PrivacyLedger(delta=DELTA, events=[FIRST, SECOND]).epsilon()
