"""A site's privacy ledger: every (noise multiplier, sample rate, steps) it ever ran.

Epsilon is always computed from the whole history with a fresh opacus accountant, never per
round. The ledger round-trips through `state_dict` so it survives restarts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from common.errors import ConfigError, PrivacyError


@dataclass(frozen=True)
class LedgerEvent:
    noise_multiplier: float
    sample_rate: float
    steps: int
    label: str = ""

    def __post_init__(self) -> None:
        if self.noise_multiplier <= 0 or not 0 < self.sample_rate <= 1 or self.steps < 0:
            raise PrivacyError(f"invalid ledger event {self}")


def make_accountant(name: str) -> Any:
    from opacus.accountants import PRVAccountant, RDPAccountant

    if name == "rdp":
        return RDPAccountant()
    if name == "prv":
        return PRVAccountant()
    raise ConfigError(f"accountant {name!r}: choose rdp or prv")


def epsilon_of(events: list[LedgerEvent], delta: float, accountant: str = "rdp") -> float:
    """Epsilon of the composition of all events (0 when nothing was spent)."""
    history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in events if e.steps > 0]
    if not history:
        return 0.0
    acc = make_accountant(accountant)
    acc.history = history
    return float(acc.get_epsilon(delta=delta))


@dataclass
class PrivacyLedger:
    delta: float = 1e-4
    accountant: str = "rdp"
    events: list[LedgerEvent] = field(default_factory=list)

    def epsilon(self, extra: LedgerEvent | None = None) -> float:
        """Spent epsilon, optionally as if `extra` had also run (for checks before spending)."""
        events = self.events + ([extra] if extra is not None else [])
        return epsilon_of(events, self.delta, self.accountant)

    def append(self, event: LedgerEvent) -> None:
        self.events.append(event)

    def state_dict(self) -> dict[str, Any]:
        return {
            "delta": self.delta,
            "accountant": self.accountant,
            "events": [asdict(e) for e in self.events],
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PrivacyLedger:
        return cls(
            delta=float(state["delta"]),
            accountant=str(state["accountant"]),
            events=[LedgerEvent(**e) for e in state["events"]],
        )
