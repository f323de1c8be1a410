"""A site's privacy ledger: every (noise multiplier, sample rate, steps) it ever ran.

Epsilon is always computed from the whole history with opacus' accounting (see `epsilon_of`),
never per round. A round is *reserved* before its first step and *settled* after its last, so a
crash mid-round stays charged. Uses of the private data that no accountant covers (an MCGAN trained
without DP) are listed in `non_dp_uses`, so every use of real data is in the ledger. The ledger
round-trips through `state_dict` (with a schema version) so it survives restarts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import Any

import numpy as np

from common.errors import ConfigError, PrivacyError
from common.privacy.rdp_analysis import DEFAULT_ORDERS, largest_order_quiet, opacus_rdp

SCHEMA_VERSION = 1
EVENT_KINDS = ("dp-sgd", "dp-gan", "dp-centring")
STATUSES = ("reserved", "settled")
UNITS = ("patch", "patient")


@dataclass(frozen=True, kw_only=True)
class LedgerEvent:
    """One run of a subsampled Gaussian mechanism: `steps` steps at (sigma, q).

    Keyword-only: noise multiplier and sample rate are both floats and easily swapped.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    kind: str = "dp-sgd"
    round: int | None = None
    status: str = "settled"
    label: str = ""

    def __post_init__(self) -> None:
        if self.noise_multiplier <= 0 or not 0 < self.sample_rate <= 1 or self.steps < 0:
            raise PrivacyError(f"invalid ledger event {self}")
        if self.kind not in EVENT_KINDS or self.status not in STATUSES:
            raise PrivacyError(f"ledger event kind {self.kind!r} / status {self.status!r}")


def make_accountant(name: str) -> Any:
    from opacus.accountants import PRVAccountant, RDPAccountant

    if name == "rdp":
        return RDPAccountant()
    if name == "prv":
        return PRVAccountant()
    raise ConfigError(f"accountant {name!r}: choose rdp or prv")


@lru_cache(maxsize=4096)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> tuple[float, ...]:
    """RDP of one step of the sampled Gaussian mechanism at opacus' default orders (cached:
    a ledger is re-evaluated after every epoch, and each evaluation costs ~0.4 s otherwise)."""
    rdp = opacus_rdp()
    return tuple(
        rdp.compute_rdp(
            q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=DEFAULT_ORDERS
        )
    )


# Past this RDP bound the ledger reports RDP's epsilon without running PRV: no guarantee means
# anything there, and PRV's grid grows with epsilon (opacus 1.6: minutes, then inf, near 5000).
# The planner sizes sigma by the same figure (`plan.noise_multiplier_for`), so a budget past it
# is planned and checked alike.
PRV_ABOVE_RDP_SKIPPED = 100.0


def merged_history(events: list[LedgerEvent]) -> tuple[tuple[float, float, int], ...]:
    """(sigma, q, steps) per distinct mechanism, steps summed, in first-seen order.

    Exact in the mathematics (composition is commutative: k events of one (sigma, q) compose as
    one event of their summed steps); opacus' PRV figures of the two forms differ by ~1e-10,
    far inside the 0.01 it adds to its upper bound. A federated ledger holds one event per round
    at its site's planned (sigma, q); unmerged, PRV convolves each one (36 s at 50 rounds, 96 s
    at 200, on 2 CPU cores) instead of once.
    """
    steps: dict[tuple[float, float], int] = {}
    for e in events:
        if e.steps > 0:
            key = (e.noise_multiplier, e.sample_rate)
            steps[key] = steps.get(key, 0) + e.steps
    return tuple((sigma, q, n) for (sigma, q), n in steps.items())


def epsilon_of(events: list[LedgerEvent], delta: float, accountant: str = "rdp") -> float:
    """Epsilon of the composition of all events (0 when nothing was spent).

    RDP: opacus' RDP accountant's arithmetic (RDP adds over steps and events, then the
    conversion to (epsilon, delta) at the best of its default orders), with per-step values
    cached. PRV: the smaller of opacus' PRV accountant's upper bound and the RDP bound (both
    valid upper bounds at the same delta, so their minimum is one); the RDP bound alone past
    `PRV_ABOVE_RDP_SKIPPED`, or where PRV gives no finite figure (inf, NaN, out of memory).
    """
    history = merged_history(events)
    if not history:
        return 0.0
    rdp_bound = _rdp_epsilon(history, delta)
    if accountant == "rdp" or rdp_bound > PRV_ABOVE_RDP_SKIPPED:
        return rdp_bound
    accounted = _accountant_epsilon(history, delta, accountant)
    return accounted if math.isfinite(accounted) and accounted < rdp_bound else rdp_bound


def _rdp_epsilon(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    total = sum(steps * np.array(_rdp_per_step(sigma, q)) for sigma, q, steps in history)
    with largest_order_quiet():
        epsilon, _ = opacus_rdp().get_privacy_spent(
            orders=list(DEFAULT_ORDERS), rdp=total, delta=delta
        )
    return float(epsilon)


@lru_cache(maxsize=4096)
def _accountant_epsilon(
    history: tuple[tuple[float, float, int], ...], delta: float, accountant: str
) -> float:
    """An opacus accountant's epsilon of a whole history (cached: PRV takes 0.15-0.3 s, and a
    run evaluates the same prefixes of its history after every epoch, every seed alike)."""
    acc = make_accountant(accountant)
    acc.history = list(history)
    # errstate: opacus' PRV takes log(1 - q), -inf for a mechanism on the whole set (q = 1, a
    # feature centre); its figure is then the Gaussian mechanism's (checked against PLD in
    # tests/unit/privacy/test_feature_centring.py), only numpy warns
    with largest_order_quiet(), np.errstate(divide="ignore"):
        try:
            return float(acc.get_epsilon(delta=delta))
        except MemoryError:  # PRV's grid for a huge epsilon; cached, so not retried each epoch
            return math.inf


@dataclass
class PrivacyLedger:
    delta: float = 1e-4
    accountant: str = "rdp"
    unit: str = "patch"
    events: list[LedgerEvent] = field(default_factory=list)
    non_dp_uses: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ConfigError(f"privacy unit {self.unit!r}: choose one of {UNITS}")

    def epsilon(
        self, extra: LedgerEvent | list[LedgerEvent] | None = None, kind: str | None = None
    ) -> float:
        """Spent epsilon of all events (or of one `kind`), optionally as if `extra` (one event
        or several) had also run: the check before spending."""
        more = [] if extra is None else [extra] if isinstance(extra, LedgerEvent) else extra
        events = self.events + more
        if kind is not None:
            events = [e for e in events if e.kind == kind]
        return epsilon_of(events, self.delta, self.accountant)

    def check_within(self, event: LedgerEvent, cap: float) -> float:
        """Epsilon after `event`; raises PrivacyBudgetExceeded (nothing charged) above `cap`."""
        return self.check_all_within([event], cap)

    def check_all_within(self, planned: list[LedgerEvent], cap: float) -> float:
        """Epsilon after every `planned` event (a run's releases, e.g. a feature centre and its
        DP-SGD steps); raises PrivacyBudgetExceeded (nothing charged) above `cap`."""
        projected = self.epsilon(extra=planned)
        if not projected <= cap * (1 + 1e-9):  # NaN is refused too
            what = "; ".join(
                f"{e.steps} steps at sigma {e.noise_multiplier:.4g}, q {e.sample_rate:.4g}"
                + ("" if e.kind == "dp-sgd" else f" ({e.kind})")
                for e in planned
            )
            raise PrivacyBudgetExceeded(
                f"{what} would bring epsilon from {self.epsilon():.4f} to {projected:.4f} > "
                f"cap {cap}; refused, nothing charged"
            )
        return projected

    def append(self, event: LedgerEvent) -> None:
        self.events.append(event)

    def reserve(self, event: LedgerEvent) -> int:
        """Charge `event` as reserved before its first step; returns its index for `settle`."""
        self.events.append(replace(event, status="reserved"))
        return len(self.events) - 1

    def settle(self, index: int, steps: int) -> None:
        """Replace a reservation by the steps actually taken (never more than reserved)."""
        reserved = self.events[index]
        if reserved.status != "reserved" or steps > reserved.steps:
            raise PrivacyError(
                f"cannot settle event {index} ({reserved.status}, {reserved.steps} steps) "
                f"with {steps} steps"
            )
        self.events[index] = replace(reserved, steps=steps, status="settled")

    def record_non_dp_use(self, kind: str, note: str) -> bool:
        """A use of the private data with no formal guarantee (e.g. an MCGAN without DP);
        returns whether it is new (each kind is listed once)."""
        entry = {"kind": kind, "note": note}
        if entry in self.non_dp_uses:
            return False
        self.non_dp_uses.append(entry)
        return True

    def state_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "delta": self.delta,
            "accountant": self.accountant,
            "unit": self.unit,
            "events": [asdict(e) for e in self.events],
            "non_dp_uses": [dict(u) for u in self.non_dp_uses],
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PrivacyLedger:
        version = state.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise PrivacyError(
                f"ledger schema version {version}; this mammofl reads version {SCHEMA_VERSION}"
            )
        return cls(
            delta=float(state["delta"]),
            accountant=str(state["accountant"]),
            unit=str(state.get("unit", "patch")),
            events=[LedgerEvent(**e) for e in state["events"]],
            non_dp_uses=[dict(u) for u in state.get("non_dp_uses", [])],
        )


class PrivacyBudgetExceeded(PrivacyError):
    """A DP run would take a ledger past its cap; nothing was charged."""
