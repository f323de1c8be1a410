"""The one planning function: sigma from (target epsilon, delta, q, all planned steps).

Used by `mammofl plan` and by training alike; sigma is never rounded (a rounded sigma can
overshoot the target).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from common.errors import ConfigError


def sample_rate_for(dataset_size: int, batch_size: int) -> float:
    """q = 1 / ceil(N / B): the reference code's Poisson rate (one 'batch' per expected step)."""
    if dataset_size < 1:
        raise ConfigError("cannot plan privacy for an empty training set")
    return 1.0 / math.ceil(dataset_size / batch_size)


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
) -> PrivacyPlan:
    """Plan steps and, under DP (target_epsilon given), the noise multiplier for all of them."""
    sample_rate = sample_rate_for(dataset_size, batch_size)
    steps_per_epoch = math.ceil(dataset_size / batch_size)
    steps = steps_per_epoch * epochs
    sigma = None
    if target_epsilon is not None:
        from opacus.accountants.utils import get_noise_multiplier

        sigma = float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
            )
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
