"""The project's epsilon (opacus, via the ledger and the planner) against Google's dp-accounting.

Over 20 random histories (fixed seed: test data, not private randomness), mixed schedules
included: dp-accounting's PLD never exceeds the claimed epsilon; its RDP at opacus' orders agrees
within 1 % where epsilon <= 20 and never drops the order that gives opacus' minimum; opacus' PRV
is within 0.05 of PLD. Where the two RDP implementations disagree (fractional orders), numerical
integration of the Renyi divergence decides.
"""

from __future__ import annotations

import doctest
import itertools
import logging
from collections.abc import Iterator
from functools import cache
from typing import NamedTuple

import numpy as np
import pytest
from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS
from scipy import integrate
from scipy.stats import norm

import common.privacy.independent_accounting as independent
from common.config.compose import compose_config
from common.errors import PrivacyError
from common.privacy.independent_accounting import pld_epsilon, rdp_epsilon
from common.privacy.ledger import LedgerEvent, epsilon_of
from common.privacy.plan import noise_multiplier_for, plan_privacy
from common.privacy.rdp_analysis import DEFAULT_ORDERS, opacus_rdp
from common.runs.planning import plan_report

DELTA = 1e-4  # PAPER.md: delta = 1e-4 throughout
HISTORIES = 20
RDP_AGREEMENT_UP_TO = 20.0  # epsilon up to which the two RDP implementations must agree


# opacus' PRV accountant sizes its domain with an RDP bound at a tiny delta and warns that the
# largest order was optimal there; that bound only sizes the domain
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning")


@pytest.fixture(autouse=True)
def _quiet_absl() -> Iterator[None]:
    """dp-accounting logs every order it drops; the tests check `dropped_orders` instead."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    yield
    absl.setLevel(level)


def random_history(index: int) -> list[LedgerEvent]:
    """History `index`: 1-2 events (a third would double the PRV time), each with sigma
    log-uniform in [1, 12], q = 1/k for k in 8..40 (the presets' 9 and 33 among them) and
    50-2999 steps."""
    rng = np.random.default_rng([8, index])
    return [
        LedgerEvent(
            noise_multiplier=float(np.exp(rng.uniform(0.0, np.log(12.0)))),
            sample_rate=1.0 / int(rng.integers(8, 41)),
            steps=int(rng.integers(50, 3000)),
        )
        for _ in range(int(rng.integers(1, 3)))
    ]


class Figures(NamedTuple):
    ours: float  # the ledger's epsilon (opacus RDP)
    ours_order: float
    rdp: independent.RdpEpsilon  # dp-accounting RDP at opacus' orders
    pld: float
    prv: float  # opacus PRV, through the ledger


def opacus_order(events: list[LedgerEvent]) -> float:
    """The order at which opacus' RDP attains the ledger's epsilon."""
    rdp = opacus_rdp()
    total = sum(
        e.steps
        * np.asarray(
            rdp.compute_rdp(
                q=e.sample_rate, noise_multiplier=e.noise_multiplier, steps=1, orders=DEFAULT_ORDERS
            )
        )
        for e in events
    )
    return float(rdp.get_privacy_spent(orders=list(DEFAULT_ORDERS), rdp=total, delta=DELTA)[1])


@cache
def figures(index: int) -> Figures:
    events = random_history(index)
    return Figures(
        ours=epsilon_of(events, DELTA),
        ours_order=opacus_order(events),
        rdp=rdp_epsilon(events, DELTA),
        pld=pld_epsilon(events, DELTA),
        prv=epsilon_of(events, DELTA, accountant="prv"),
    )


def rdp_by_quadrature(sample_rate: float, sigma: float, order: float) -> float:
    """RDP of one step of the sampled Gaussian at `order`, by integrating
    E_{z ~ N(0, sigma^2)}[((1 - q) + q exp((2z - 1) / (2 sigma^2)))^order] numerically: an
    implementation independent of both libraries' series."""

    def log_integrand(z: np.ndarray | float) -> np.ndarray:
        ratio = np.logaddexp(
            np.log1p(-sample_rate), np.log(sample_rate) + (2 * z - 1) / 2 / sigma**2
        )
        return np.asarray(norm.logpdf(z, scale=sigma) + order * ratio)

    peak = float(log_integrand(np.linspace(-10 * sigma, order + 10 * sigma, 2001)).max())
    edges = [-np.inf, -10 * sigma, 0.0, order, order + 10 * sigma, np.inf]
    total = sum(
        integrate.quad(
            lambda z: float(np.exp(log_integrand(z) - peak)), lo, hi, epsabs=0, epsrel=1e-13
        )[0]
        for lo, hi in itertools.pairwise(edges)
    )
    return (peak + float(np.log(total))) / (order - 1)


def test_histories_mix_schedules() -> None:
    histories = [random_history(i) for i in range(HISTORIES)]
    assert sum(len(h) > 1 for h in histories) >= HISTORIES // 3
    assert len({e.sample_rate for h in histories for e in h}) >= 10
    epsilons = [figures(i).ours for i in range(HISTORIES)]
    assert sum(e <= RDP_AGREEMENT_UP_TO for e in epsilons) >= HISTORIES - 2


@pytest.mark.parametrize("index", range(HISTORIES))
def test_pld_never_exceeds_the_claimed_epsilon(index: int) -> None:
    f = figures(index)
    assert 0 < f.pld <= f.ours


@pytest.mark.parametrize("index", range(HISTORIES))
def test_rdp_agrees_with_dp_accounting_at_the_same_orders(index: int) -> None:
    f = figures(index)
    if f.ours > RDP_AGREEMENT_UP_TO:
        pytest.skip(f"epsilon {f.ours:.1f} > {RDP_AGREEMENT_UP_TO}: only PLD and PRV checked")
    assert f.ours_order not in f.rdp.dropped_orders  # the order that decides was evaluated
    assert f.rdp.epsilon == pytest.approx(f.ours, rel=0.01)
    # dp-accounting's fractional orders are a looser bound (see the trap), never a tighter one
    assert f.rdp.epsilon >= f.ours * (1 - 1e-9)


@pytest.mark.parametrize("index", range(HISTORIES))
def test_prv_within_0_05_of_pld(index: int) -> None:
    f = figures(index)
    assert abs(f.prv - f.pld) <= 0.05


@pytest.mark.parametrize("index", range(0, HISTORIES, 4))
def test_opacus_rdp_at_the_deciding_order_is_the_integral(index: int) -> None:
    events, order = random_history(index), figures(index).ours_order
    for e in events:
        claimed = opacus_rdp().compute_rdp(
            q=e.sample_rate, noise_multiplier=e.noise_multiplier, steps=1, orders=[order]
        )[0]
        assert claimed == pytest.approx(
            rdp_by_quadrature(e.sample_rate, e.noise_multiplier, order), rel=1e-6
        )


def test_the_trap_at_the_papers_epsilon_60() -> None:
    """Real, epsilon 60 (q = 1/9, sigma 0.961, 2700 steps, delta 1e-4). dp-accounting's RDP says
    70.0 with its own orders and with opacus' alike: it drops orders 1.1-1.5 (its fractional
    series stops at 1000 terms; opacus' minimum is at 1.5) and bounds the others by a series of
    absolute values (at 1.6-1.9 up to 20 % above the true RDP). opacus' 60.0 is the exact RDP
    bound (numerical integration agrees) and PLD's 56.1 is tighter still: hence opacus' RDP
    arithmetic for the ledger, and the PLD figure printed beside it."""
    trap = [LedgerEvent(noise_multiplier=0.961, sample_rate=1 / 9, steps=2700)]
    own_orders = rdp_epsilon(trap, DELTA, orders=DEFAULT_RDP_ORDERS)
    assert own_orders.epsilon == pytest.approx(70.0, abs=0.1)
    assert own_orders.dropped_orders == (1.1, 1.2, 1.3, 1.4, 1.5)
    assert rdp_epsilon(trap, DELTA).epsilon == pytest.approx(70.0, abs=0.1)  # not the order set
    assert pld_epsilon(trap, DELTA) == pytest.approx(56.1, abs=0.05)
    assert epsilon_of(trap, DELTA) == pytest.approx(60.0, abs=0.1)
    assert opacus_order(trap) == 1.5
    # dropping the orders alone would cost 0.9 (opacus without them: 60.9); the rest of the 10
    # is the absolute-value series (dp-accounting's optimum, 1.7, is ~14 % above the true RDP)
    kept = [a for a in DEFAULT_ORDERS if a > 1.5]
    per_step_kept = opacus_rdp().compute_rdp(q=1 / 9, noise_multiplier=0.961, steps=1, orders=kept)
    with pytest.warns(UserWarning, match="smallest alpha"):  # 1.6: the minimum wants lower
        without_dropped = opacus_rdp().get_privacy_spent(
            orders=kept, rdp=2700 * np.asarray(per_step_kept), delta=DELTA
        )[0]
    assert without_dropped == pytest.approx(60.9, abs=0.1)
    per_step = opacus_rdp().compute_rdp(q=1 / 9, noise_multiplier=0.961, steps=1, orders=[1.5])
    assert per_step[0] == pytest.approx(rdp_by_quadrature(1 / 9, 0.961, 1.5), rel=1e-6)


@pytest.mark.parametrize(("dataset_size", "target"), [(1104, 1.0), (1104, 20.0), (4104, 6.0)])
def test_planned_sigma_checked_independently(dataset_size: int, target: float) -> None:
    plan = plan_privacy(
        dataset_size=dataset_size, batch_size=128, epochs=300, target_epsilon=target, delta=DELTA
    )
    assert plan.noise_multiplier is not None
    run = [
        LedgerEvent(
            noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate, steps=plan.steps
        )
    ]
    claimed = epsilon_of(run, DELTA)
    assert target - 0.011 <= claimed <= target
    assert rdp_epsilon(run, DELTA).epsilon == pytest.approx(claimed, rel=0.01)
    assert pld_epsilon(run, DELTA) <= claimed


def test_sigma_planned_after_a_prior_event_checked_independently() -> None:
    """The planner's bisection (a DP-GAN already in the ledger): a mixed history."""
    prior = [LedgerEvent(noise_multiplier=1.5, sample_rate=1 / 20, steps=600, kind="dp-gan")]
    sigma = noise_multiplier_for(
        target_epsilon=6.0,
        delta=DELTA,
        sample_rate=1 / 9,
        steps=2700,
        accountant="rdp",
        prior_events=prior,
    )
    history = [*prior, LedgerEvent(noise_multiplier=sigma, sample_rate=1 / 9, steps=2700)]
    claimed = epsilon_of(history, DELTA)
    assert 6.0 - 0.011 <= claimed <= 6.0
    assert rdp_epsilon(history, DELTA).epsilon == pytest.approx(claimed, rel=0.01)
    assert pld_epsilon(history, DELTA) <= claimed


def test_plan_report_prints_pld_beside_the_accounted_epsilon() -> None:
    report = plan_report(compose_config(["experiment=table1/real_eps6"]))
    assert report["noise_multiplier"] == pytest.approx(4.336, rel=0.005)
    assert 6.0 - 0.011 <= report["epsilon_accounted"] <= 6.0
    assert report["epsilon_pld"] == pytest.approx(5.478, abs=0.005)
    assert report["epsilon_pld"] < report["epsilon_accounted"] and report["epsilon_note"]
    no_dp = plan_report(compose_config(["experiment=table1/real"]))
    assert no_dp["noise_multiplier"] is None
    assert no_dp["epsilon_accounted"] is no_dp["epsilon_pld"] is no_dp["epsilon_note"] is None


def test_pld_discretisation_is_tight_and_pessimistic() -> None:
    run = [LedgerEvent(noise_multiplier=4.336, sample_rate=1 / 9, steps=2700)]
    fine = pld_epsilon(run, DELTA, value_discretization_interval=1e-4)
    default = pld_epsilon(run, DELTA)
    assert fine <= default <= fine * 1.0005


def test_empty_history_and_bad_arguments() -> None:
    assert pld_epsilon([], DELTA) == 0.0
    assert (
        rdp_epsilon([LedgerEvent(noise_multiplier=1.0, sample_rate=0.1, steps=0)], DELTA).epsilon
        == 0.0
    )
    run = [LedgerEvent(noise_multiplier=1.0, sample_rate=0.1, steps=10)]
    with pytest.raises(PrivacyError, match="delta"):
        pld_epsilon(run, 0.0)
    with pytest.raises(PrivacyError, match="interval"):
        pld_epsilon(run, DELTA, value_discretization_interval=0.0)
    with pytest.raises(PrivacyError, match="orders"):
        rdp_epsilon(run, DELTA, orders=[1.0, 2.0])


def test_doctest_pins_an_epsilon() -> None:
    result = doctest.testmod(independent, verbose=False)
    assert result.attempted >= 1 and result.failed == 0
