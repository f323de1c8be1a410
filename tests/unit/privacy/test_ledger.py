import math

import pytest
from opacus.accountants import RDPAccountant

from common.errors import PrivacyError
from common.privacy.ledger import LedgerEvent, PrivacyLedger


def test_epsilon_composes_whole_history() -> None:
    ledger = PrivacyLedger(delta=1e-4)
    ledger.append(LedgerEvent(noise_multiplier=2.0, sample_rate=0.1, steps=100))
    ledger.append(LedgerEvent(noise_multiplier=2.0, sample_rate=0.1, steps=100))
    one_round = PrivacyLedger(
        delta=1e-4, events=[LedgerEvent(noise_multiplier=2.0, sample_rate=0.1, steps=100)]
    ).epsilon()
    assert ledger.epsilon() > one_round
    acc = RDPAccountant()
    acc.history = [(2.0, 0.1, 200)]
    assert ledger.epsilon() == pytest.approx(acc.get_epsilon(1e-4), rel=1e-12)


def test_state_dict_round_trip() -> None:
    ledger = PrivacyLedger(
        delta=1e-5,
        accountant="rdp",
        events=[LedgerEvent(noise_multiplier=1.3, sample_rate=0.02, steps=50, label="r1")],
    )
    again = PrivacyLedger.from_state_dict(ledger.state_dict())
    assert again == ledger and again.epsilon() == ledger.epsilon()


def test_extra_event_checks_before_spending() -> None:
    ledger = PrivacyLedger(events=[LedgerEvent(noise_multiplier=1.0, sample_rate=0.1, steps=100)])
    assert (
        ledger.epsilon(extra=LedgerEvent(noise_multiplier=1.0, sample_rate=0.1, steps=100))
        > ledger.epsilon()
    )
    assert len(ledger.events) == 1


def test_invalid_event_refused() -> None:
    with pytest.raises(PrivacyError):
        LedgerEvent(noise_multiplier=0.0, sample_rate=0.1, steps=10)


def _event(steps: int = 100, **fields: object) -> LedgerEvent:
    return LedgerEvent(noise_multiplier=1.2, sample_rate=0.1, steps=steps, **fields)  # type: ignore[arg-type]


def test_reservation_is_charged_until_settled() -> None:
    """A crash mid-round leaves the reservation: the full planned steps stay charged."""
    ledger = PrivacyLedger()
    index = ledger.reserve(_event(round=1))
    charged = ledger.epsilon()
    assert ledger.events[index].status == "reserved" and charged == pytest.approx(
        PrivacyLedger(events=[_event()]).epsilon()
    )
    ledger.settle(index, steps=60)
    assert ledger.events[index].status == "settled" and ledger.epsilon() < charged
    with pytest.raises(PrivacyError):
        ledger.settle(index, steps=60)  # settled already


def test_settle_never_exceeds_the_reservation() -> None:
    ledger = PrivacyLedger()
    index = ledger.reserve(_event())
    with pytest.raises(PrivacyError, match="cannot settle"):
        ledger.settle(index, steps=101)


def test_check_within_refuses_without_charging() -> None:
    from common.privacy.ledger import PrivacyBudgetExceeded

    ledger = PrivacyLedger(events=[_event()])
    before = ledger.state_dict()
    with pytest.raises(PrivacyBudgetExceeded, match="nothing charged"):
        ledger.check_within(_event(steps=10_000), cap=ledger.epsilon() + 0.01)
    assert ledger.state_dict() == before


def test_events_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        LedgerEvent(1.0, 0.1, 10)  # type: ignore[misc]


def test_schema_version_is_checked() -> None:
    state = PrivacyLedger(events=[_event()]).state_dict()
    assert state["schema_version"] == 1 and state["unit"] == "patch"
    with pytest.raises(PrivacyError, match="schema version"):
        PrivacyLedger.from_state_dict({**state, "schema_version": 99})


def test_store_round_trip_and_settings_guard(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from common.privacy.ledger_store import LedgerStore

    store = LedgerStore(tmp_path / "state" / "ledger.json")
    ledger = store.load(delta=1e-4, accountant="rdp", unit="patch")
    assert ledger.events == []
    ledger.reserve(_event(round=1))
    ledger.record_non_dp_use("mcgan", "no DP")
    store.save(ledger)
    again = store.load(delta=1e-4, accountant="rdp", unit="patch")
    assert again == ledger
    with pytest.raises(PrivacyError, match="delta, accountant, unit"):
        store.load(delta=1e-5, accountant="rdp", unit="patch")


def test_failed_write_keeps_the_previous_ledger(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import json

    from common.privacy.ledger_store import LedgerStore

    store = LedgerStore(tmp_path / "ledger.json")
    ledger = PrivacyLedger(events=[_event()])
    store.save(ledger)
    ledger.append(_event(steps=5))

    def broken_dumps(*args: object, **kwargs: object) -> str:
        raise OSError("disk full")

    monkeypatch.setattr(json, "dumps", broken_dumps)
    with pytest.raises(OSError):
        store.save(ledger)
    monkeypatch.undo()
    assert len(store.load(delta=1e-4, accountant="rdp", unit="patch").events) == 1


def test_standalone_rdp_analysis_is_opacus_own() -> None:
    """The ledger loads opacus' RDP analysis file alone (fast ClientApp start); same orders,
    same numbers as the opacus package's RDPAccountant."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp

    from common.privacy.rdp_analysis import DEFAULT_ORDERS, opacus_rdp

    assert list(DEFAULT_ORDERS) == list(RDPAccountant.DEFAULT_ALPHAS)
    ours = opacus_rdp().compute_rdp(q=0.1, noise_multiplier=1.1, steps=7, orders=DEFAULT_ORDERS)
    theirs = rdp.compute_rdp(q=0.1, noise_multiplier=1.1, steps=7, orders=DEFAULT_ORDERS)
    assert list(ours) == list(theirs)
    accountant = RDPAccountant()
    accountant.history = [(1.1, 0.1, 7)]
    ledger = PrivacyLedger(delta=1e-5)
    ledger.events = [LedgerEvent(noise_multiplier=1.1, sample_rate=0.1, steps=7)]
    assert ledger.epsilon() == accountant.get_epsilon(delta=1e-5)


def test_a_short_history_is_accounted_without_opacus_warning_every_epoch() -> None:
    """A run's first epoch is tightest past opacus' largest order: the bound stays valid (and
    looser), and the warning no longer repeats once per epoch; other warnings still show."""
    import warnings

    from common.privacy.ledger import epsilon_of
    from common.privacy.rdp_analysis import largest_order_quiet

    first_epoch = [LedgerEvent(noise_multiplier=21.5625, sample_rate=0.125, steps=8)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert 0 < epsilon_of(first_epoch, 1e-4, "rdp") < epsilon_of(first_epoch * 2, 1e-4, "rdp")
        with pytest.warns(UserWarning, match="other"), largest_order_quiet():
            warnings.warn("other", UserWarning, stacklevel=1)


def test_a_prv_epsilon_is_opacus_own_and_computed_once_per_history() -> None:
    """PRV costs 0.15-0.3 s an evaluation and a run evaluates its ledger every epoch: each
    history is computed once, and the value is opacus' PRV accountant's (an upper bound)."""
    from opacus.accountants import PRVAccountant

    from common.privacy.ledger import _accountant_epsilon, epsilon_of

    events = [LedgerEvent(noise_multiplier=4.277, sample_rate=0.125, steps=800)]
    reference = PRVAccountant()
    reference.history = [(4.277, 0.125, 800)]
    before = _accountant_epsilon.cache_info()
    assert epsilon_of(events, 1e-4, "prv") == reference.get_epsilon(delta=1e-4)
    assert epsilon_of(list(events), 1e-4, "prv") == reference.get_epsilon(delta=1e-4)
    after = _accountant_epsilon.cache_info()
    assert after.hits >= before.hits + 1 and after.misses <= before.misses + 1
    longer = [LedgerEvent(noise_multiplier=4.277, sample_rate=0.125, steps=1600)]
    assert epsilon_of(longer, 1e-4, "prv") > epsilon_of(events, 1e-4, "prv")  # not stale


def test_an_unused_ledger_takes_the_rules_of_the_first_run_that_spends(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A state dir's ledger is written at its first use. Until something is spent under it,
    a run may choose other rules (a site's delta cap made the server lower delta); once spent,
    or beside traces of spending, the rules are pinned."""
    from common.privacy.ledger_store import LedgerStore

    plan = tmp_path / "dp_plan.json"
    store = LedgerStore(tmp_path / "ledger.json", spending_traces=[plan])
    store.save(store.load(delta=1e-4, accountant="rdp", unit="patch"))
    assert store.load(delta=1e-5, accountant="prv", unit="patient").delta == 1e-5
    plan.write_text("{}")
    with pytest.raises(PrivacyError, match="delta, accountant, unit"):
        store.load(delta=1e-5, accountant="rdp", unit="patch")
    plan.unlink()
    spent = store.load(delta=1e-4, accountant="rdp", unit="patch")
    spent.reserve(_event(round=1))
    store.save(spent)
    with pytest.raises(PrivacyError, match="delta, accountant, unit"):
        store.load(delta=1e-5, accountant="rdp", unit="patch")


def test_a_federated_ledger_of_many_rounds_is_accounted_as_one_mechanism() -> None:
    """One event per round at the site's planned (sigma, q): composing them is composing their
    summed steps, so PRV convolves once, not once per round (96 s at 200 rounds unmerged on 2
    cores). Checked against opacus' accountants on the raw, interleaved history."""
    from opacus.accountants import PRVAccountant

    from common.privacy.ledger import epsilon_of, merged_history

    rounds = [
        LedgerEvent(noise_multiplier=1.3, sample_rate=0.05, steps=20, round=r) for r in range(5)
    ]
    gan = LedgerEvent(noise_multiplier=2.0, sample_rate=0.05, steps=7, kind="dp-gan")
    reserved = LedgerEvent(noise_multiplier=1.3, sample_rate=0.05, steps=20, status="reserved")
    unused = LedgerEvent(noise_multiplier=0.5, sample_rate=0.5, steps=0)
    interleaved = [rounds[0], gan, *rounds[1:3], unused, reserved, *rounds[3:]]
    assert merged_history(interleaved) == ((1.3, 0.05, 120), (2.0, 0.05, 7))
    raw = [(e.noise_multiplier, e.sample_rate, e.steps) for e in interleaved if e.steps]
    for name, accountant, rel in (("prv", PRVAccountant(), 1e-6), ("rdp", RDPAccountant(), 1e-12)):
        accountant.history = list(raw)
        assert epsilon_of(interleaved, 1e-5, name) == pytest.approx(
            accountant.get_epsilon(delta=1e-5), rel=rel
        )


def test_prv_past_any_meaningful_epsilon_reports_the_rdp_bound_without_running_prv() -> None:
    """sigma 0.3 at q 1 for 1000 steps: opacus' PRV runs minutes and returns inf; the ledger
    reports the RDP bound (a valid upper bound, far past every budget) at once. Just below the
    threshold PRV still runs."""
    from common.privacy.ledger import PRV_ABOVE_RDP_SKIPPED, _accountant_epsilon, epsilon_of

    extreme = [LedgerEvent(noise_multiplier=0.3, sample_rate=1.0, steps=1000)]
    before = _accountant_epsilon.cache_info().misses
    rdp = epsilon_of(extreme, 1e-5, "rdp")
    assert math.isfinite(rdp) and rdp > PRV_ABOVE_RDP_SKIPPED
    assert epsilon_of(extreme, 1e-5, "prv") == rdp
    assert _accountant_epsilon.cache_info().misses == before
    below = [LedgerEvent(noise_multiplier=0.5, sample_rate=0.2, steps=200)]  # RDP 95.3
    assert 90 < epsilon_of(below, 1e-5, "rdp") < PRV_ABOVE_RDP_SKIPPED
    assert epsilon_of(below, 1e-5, "prv") < epsilon_of(below, 1e-5, "rdp")


@pytest.mark.parametrize("prv_gives", ["above", "inf", "nan", "out of memory"])
def test_prv_never_reports_more_than_the_rdp_bound_nor_a_figure_that_is_not_finite(
    monkeypatch: pytest.MonkeyPatch, prv_gives: str
) -> None:
    import common.privacy.ledger as ledger_module

    events = [LedgerEvent(noise_multiplier=1.1, sample_rate=0.1, steps=300)]
    rdp = ledger_module.epsilon_of(events, 1e-5, "rdp")

    class Stand_in_accountant:  # what opacus' PRV gives on a history its grid cannot hold
        history: tuple[tuple[float, float, int], ...] = ()

        def get_epsilon(self, delta: float) -> float:
            if prv_gives == "out of memory":
                raise MemoryError
            return {"above": rdp + 1.0, "inf": math.inf, "nan": math.nan}[prv_gives]

    monkeypatch.setattr(ledger_module, "make_accountant", lambda _: Stand_in_accountant())
    ledger_module._accountant_epsilon.cache_clear()
    try:
        assert ledger_module.epsilon_of(events, 1e-5, "prv") == rdp
    finally:
        ledger_module._accountant_epsilon.cache_clear()


def test_check_within_refuses_a_projection_that_is_not_a_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from common.privacy.ledger import PrivacyBudgetExceeded

    ledger = PrivacyLedger(delta=1e-5)
    monkeypatch.setattr(PrivacyLedger, "epsilon", lambda *_, **__: math.nan)
    with pytest.raises(PrivacyBudgetExceeded, match="nothing charged"):
        ledger.check_within(LedgerEvent(noise_multiplier=1.0, sample_rate=0.1, steps=1), cap=6.0)
    assert ledger.events == []


def test_a_prv_budget_past_the_threshold_is_planned_as_the_ledger_counts_it() -> None:
    """Past `PRV_ABOVE_RDP_SKIPPED` the ledger counts RDP's figure; opacus' PRV-sized sigma
    would spend ~6 % more than the budget by it, and the run would be refused."""
    from common.privacy.plan import plan_privacy

    plan = plan_privacy(
        dataset_size=1104,
        batch_size=128,
        epochs=300,
        target_epsilon=150.0,
        delta=1e-4,
        accountant="prv",
    )
    assert plan.noise_multiplier is not None
    event = LedgerEvent(
        noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate, steps=plan.steps
    )
    ledger = PrivacyLedger(delta=1e-4, accountant="prv")
    assert 149.0 < ledger.check_within(event, cap=150.0) <= 150.0
