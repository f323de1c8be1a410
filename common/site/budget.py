"""A site's DP-SGD plan: sigma from its own budget over all planned rounds x local epochs.

The plan depends on the site's private N, so it is made at the site (with the one planning
function, `plan_privacy`, over what the ledger already holds, e.g. a DP-MCGAN), saved beside the
ledger and reused by every round and restart. What the server sees of it, (sigma, q, steps per
round), reveals ceil(N / B): the site's patch count to within one batch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from common.atomic_io import atomic_write_text
from common.config.federated_schema import FederatedRunConfig
from common.errors import PrivacyError
from common.privacy.delta import check_delta
from common.privacy.ledger import PrivacyLedger
from common.privacy.plan import plan_privacy


@dataclass(frozen=True)
class SitePlan:
    budget: float
    noise_multiplier: float
    sample_rate: float
    steps_per_epoch: int
    local_epochs: int
    rounds: int
    batch_size: int
    dataset_size: int  # private: stays in the site's state dir, never sent

    @property
    def steps_per_round(self) -> int:
        return self.steps_per_epoch * self.local_epochs


def site_budget(config: FederatedRunConfig, epsilon_cap: float | None) -> float:
    """The run's per-site budget, lowered to the site's own cap when that is smaller."""
    target = config.privacy.target_epsilon
    assert target is not None
    return min(target, epsilon_cap) if epsilon_cap is not None else target


def load_or_plan(
    path: Path, config: FederatedRunConfig, ledger: PrivacyLedger, n: int, budget: float
) -> SitePlan:
    """The saved plan of this state dir, or a new one (saved atomically) when there is none."""
    check_delta(ledger.delta, n, ledger.unit)  # n: records of the ledger's unit
    if path.is_file():
        plan = SitePlan(**json.loads(path.read_text()))
        if plan.dataset_size != n or plan.batch_size != config.train.batch_size:
            raise PrivacyError(
                f"{path} was planned for other data or batch size; use a new state dir"
            )
        return plan
    dp_events = ledger.events
    planned = plan_privacy(
        dataset_size=n,
        batch_size=config.train.batch_size,
        epochs=config.federation.rounds * config.federation.local_epochs,
        target_epsilon=budget,
        delta=ledger.delta,
        accountant=ledger.accountant,
        max_grad_norm=config.privacy.max_grad_norm,
        prior_events=dp_events,
    )
    assert planned.noise_multiplier is not None
    plan = SitePlan(
        budget=budget,
        noise_multiplier=planned.noise_multiplier,
        sample_rate=planned.sample_rate,
        steps_per_epoch=planned.steps_per_epoch,
        local_epochs=config.federation.local_epochs,
        rounds=config.federation.rounds,
        batch_size=config.train.batch_size,
        dataset_size=n,
    )
    atomic_write_text(path, json.dumps(asdict(plan), indent=2) + "\n")
    return plan
