"""The one planning function: sigma from (target epsilon, delta, q, all planned steps).

Used by `mammofl plan` and by training alike; sigma is never rounded (a rounded sigma can
overshoot the target).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from common.errors import ConfigError, PrivacyError
from common.privacy.ledger import PRV_ABOVE_RDP_SKIPPED, LedgerEvent, epsilon_of
from common.privacy.rdp_analysis import largest_order_quiet


def sample_rate_for(dataset_size: int, batch_size: int) -> float:
    """q = 1 / ceil(N / B): the reference code's Poisson rate (one 'batch' per expected step)."""
    if dataset_size < 1:
        raise ConfigError("cannot plan privacy for an empty training set")
    return 1.0 / math.ceil(dataset_size / batch_size)


def check_batch_fits(dataset_size: int, batch_size: int, key: str = "train.batch_size") -> None:
    """Under DP, a batch larger than the N training records is a config error: q would be 1
    (every record in every step, no amplification by sampling), far from what B asked for."""
    if dataset_size < 1:
        raise ConfigError("cannot plan privacy for an empty training set")
    if batch_size > dataset_size:
        raise ConfigError(
            f"{key}={batch_size} is larger than the training set (N={dataset_size} records): "
            f"under DP every step would then sample all records (q = 1). Set {key} to at "
            f"most {dataset_size} (the paper: 128 of 1104)"
        )


@dataclass(frozen=True)
class PrivacyPlan:
    dataset_size: int
    batch_size: int
    sample_rate: float
    epochs: int
    steps_per_epoch: int
    steps: int
    noise_multiplier: float | None
    target_epsilon: float | None
    delta: float
    accountant: str
    max_grad_norm: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_privacy(
    *,
    dataset_size: int,
    batch_size: int,
    epochs: int,
    target_epsilon: float | None,
    delta: float,
    accountant: str = "rdp",
    max_grad_norm: float = 1.0,
    prior_events: Sequence[LedgerEvent] = (),
) -> PrivacyPlan:
    """Plan steps and, under DP (target_epsilon given), the noise multiplier for all of them.

    `prior_events`: what the ledger already holds (e.g. a DP-MCGAN's run at a federated site);
    sigma is then the smallest for which prior + all planned steps stay within the target.
    """
    if target_epsilon is not None:
        check_batch_fits(dataset_size, batch_size)
    sample_rate = sample_rate_for(dataset_size, batch_size)
    steps_per_epoch = math.ceil(dataset_size / batch_size)
    steps = steps_per_epoch * epochs
    sigma = None
    if target_epsilon is not None:
        sigma = noise_multiplier_for(
            target_epsilon=target_epsilon,
            delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
            prior_events=prior_events,
        )
    return PrivacyPlan(
        dataset_size=dataset_size,
        batch_size=batch_size,
        sample_rate=sample_rate,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        steps=steps,
        noise_multiplier=sigma,
        target_epsilon=target_epsilon,
        delta=delta,
        accountant=accountant,
        max_grad_norm=max_grad_norm,
    )


@lru_cache(maxsize=256)
def _opacus_noise_multiplier(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str,
    tolerance: float,
) -> float:
    """opacus' `get_noise_multiplier` (a pure function of its numbers, several seconds per
    call for thousands of steps: cached)."""
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with largest_order_quiet():
            return float(
                get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant=accountant,
                    epsilon_tolerance=tolerance,
                )
            )
    except ValueError as error:  # opacus: "The privacy budget is too low."
        raise PrivacyError(
            f"target epsilon {target_epsilon} cannot be reached in {steps} steps at sample rate "
            f"{sample_rate:.4g} with delta {delta:g} (opacus: {error}); raise the target "
            "epsilon, or train fewer epochs or with a smaller batch"
        ) from error


def noise_multiplier_for(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str,
    prior_events: Sequence[LedgerEvent] = (),
    tolerance: float = 0.01,
) -> float:
    """Smallest sigma (within `tolerance` in epsilon) such that prior + (sigma, q, steps) spends
    at most `target_epsilon` by the ledger's own accounting (`epsilon_of`). Without prior events
    this is opacus' `get_noise_multiplier` where the ledger agrees with it (not under `prv` past
    `PRV_ABOVE_RDP_SKIPPED`, where the ledger counts RDP's figure: sigma is then sized by it)."""
    prior = [e for e in prior_events if e.steps > 0]
    if not prior:
        # past the threshold the ledger's figure under prv is RDP's: size sigma by RDP (PRV's
        # search there visits sigmas whose grid takes minutes)
        searched = "rdp" if target_epsilon > PRV_ABOVE_RDP_SKIPPED else accountant
        sigma = _opacus_noise_multiplier(
            target_epsilon, delta, sample_rate, steps, searched, tolerance
        )
        planned = LedgerEvent(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps)
        if epsilon_of([planned], delta, accountant) <= target_epsilon * (1 + 1e-9):
            return sigma
    already = epsilon_of(list(prior), delta, accountant)
    if already >= target_epsilon:
        raise PrivacyError(
            f"the ledger already spent epsilon {already:.4f} >= target {target_epsilon}; "
            "no budget left to plan for"
        )

    def spent(sigma: float) -> float:
        event = LedgerEvent(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps)
        return epsilon_of([*prior, event], delta, accountant)

    low, high = 0.0, 10.0
    while spent(high) > target_epsilon:
        low, high = high, 2 * high
        if high > 1e6:
            raise PrivacyError("no noise multiplier reaches the target (steps too many?)")
    while spent(high) < target_epsilon - tolerance:  # bisection keeps spent(high) <= target
        middle = (low + high) / 2
        if spent(middle) > target_epsilon:
            low = middle
        else:
            high = middle
        if high - low < 1e-9:
            break
    return high
