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
