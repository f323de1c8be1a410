"""Epsilon of a ledger history by an independent implementation: Google's dp-accounting.

The project accounts with opacus (`ledger.epsilon_of`); these functions recompute the same
history with dp-accounting, written and maintained apart, so that a fault in either shows up as
a disagreement (see tests/unit/privacy/test_independent_accounting.py):

- `pld_epsilon`: privacy loss distributions, near-exact. Its pessimistic discretisation rounds
  every loss up, so it is a valid upper bound, in practice well below the RDP figure of the run.
- `rdp_epsilon`: RDP at given orders (opacus' by default), with the orders dp-accounting could not
  evaluate. dp-accounting 0.6 drops a fractional order whose series does not converge in 1000
  terms (opacus sums on) and, at fractional orders, sums absolute values (a looser, still valid
  bound): at q = 1/9, sigma 0.961, 2700 steps, delta 1e-4 it reports 70.0 where opacus reports
  60.0 and PLD 56.1.

dp-accounting is imported inside the functions: it pulls in scipy.signal (about 1 s), which
nothing that merely imports the planner should pay for.

Each event is one `LedgerEvent`: `steps` steps of the Poisson-subsampled Gaussian mechanism at
noise multiplier sigma (noise std / clipping norm) and sample rate q, add-or-remove-one
neighbours; events with zero steps are skipped and an empty history spends epsilon 0.

>>> from common.privacy.ledger import LedgerEvent
>>> paper_eps6 = LedgerEvent(noise_multiplier=4.336, sample_rate=1 / 9, steps=2700)
>>> round(pld_epsilon([paper_eps6], delta=1e-4), 2)
5.48
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from common.errors import PrivacyError
from common.privacy.ledger import LedgerEvent
from common.privacy.rdp_analysis import DEFAULT_ORDERS

if TYPE_CHECKING:
    from dp_accounting import DpEvent

# PLD discretisation: the pessimistic estimate overshoots epsilon by about the interval (in
# privacy-loss units, nats); an interval of RELATIVE_INTERVAL x epsilon (within the bounds) keeps
# the overshoot under ~0.02 % at any epsilon while a 2700-9900-step Table 1 plan takes ~0.1 s.
COARSE_INTERVAL = 1e-2
RELATIVE_INTERVAL = 5e-5
MIN_INTERVAL = 1e-4


class RdpEpsilon(NamedTuple):
    """dp-accounting's RDP epsilon, the order attaining it, and the orders it dropped."""

    epsilon: float
    order: float
    dropped_orders: tuple[float, ...]  # RDP inf or nan there: left out of the minimum


def to_dp_event(events: Sequence[LedgerEvent]) -> DpEvent:
    """The history as one dp-accounting event: the composition of every event's steps."""
    import dp_accounting

    return dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(
                    e.sample_rate, dp_accounting.GaussianDpEvent(e.noise_multiplier)
                ),
                e.steps,
            )
            for e in events
            if e.steps > 0
        ]
    )


def pld_epsilon(
    events: Sequence[LedgerEvent],
    delta: float,
    *,
    value_discretization_interval: float | None = None,
) -> float:
    """Epsilon of the history by dp-accounting's PLD accountant (pessimistic: an upper bound).

    `value_discretization_interval` (nats): None sizes it from a coarse pass (see
    RELATIVE_INTERVAL); smaller is tighter and slower. Raises PrivacyError for a delta outside
    (0, 1) or an interval <= 0.
    """
    _check_delta(delta)
    if not any(e.steps > 0 for e in events):
        return 0.0
    if value_discretization_interval is None:
        coarse = pld_epsilon(events, delta, value_discretization_interval=COARSE_INTERVAL)
        value_discretization_interval = min(
            COARSE_INTERVAL, max(MIN_INTERVAL, RELATIVE_INTERVAL * coarse)
        )
    if not value_discretization_interval > 0:
        raise PrivacyError(
            f"PLD value_discretization_interval {value_discretization_interval}: must be > 0"
        )
    from dp_accounting.pld import PLDAccountant

    accountant = PLDAccountant(value_discretization_interval=value_discretization_interval)
    accountant.compose(to_dp_event(events))
    return float(accountant.get_epsilon(delta))


def rdp_epsilon(
    events: Sequence[LedgerEvent], delta: float, *, orders: Sequence[float] = DEFAULT_ORDERS
) -> RdpEpsilon:
    """Epsilon of the history by dp-accounting's RDP accountant at `orders` (opacus' default
    orders unless given, so that the two compare like for like).

    An order whose RDP dp-accounting could not compute is listed in `dropped_orders`; when it
    is the one at which opacus attains its minimum, the two epsilons cannot agree. Raises
    PrivacyError for a delta outside (0, 1) or an order <= 1.
    """
    _check_delta(delta)
    if min(orders) <= 1:
        raise PrivacyError(f"RDP orders must exceed 1; got {min(orders)}")
    if not any(e.steps > 0 for e in events):
        return RdpEpsilon(0.0, float(orders[0]), ())
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant(orders=list(orders))
    accountant.compose(to_dp_event(events))
    epsilon, order = accountant.get_epsilon_and_optimal_order(delta)
    rdp = accountant.rdp
    dropped = tuple(float(a) for a, r in zip(orders, rdp, strict=True) if not np.isfinite(r))
    return RdpEpsilon(float(epsilon), float(order), dropped)


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise PrivacyError(f"delta {delta}: must be in (0, 1), e.g. 1e-4 (the paper's)")
