"""No site's epsilon ever exceeds its budget, whatever the schedule (property test).

A site plans sigma from its budget over rounds x local epochs (after any DP-MCGAN charge), then
the server asks for rounds, possibly more than planned; each round goes through `fit` with the
site's cap. Every round either stays within the budget or is refused before any step, and a
refusal charges nothing.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from common.config.federated_schema import (
    FederatedRunConfig,
    FederationConfig,
    SiteEntry,
    SynPreConfig,
)
from common.config.schema import PrivacyConfig
from common.data.images import LoadedPatches
from common.data.patch_set import PatchRecord, PatchSet
from common.models.classifier import Classifier
from common.privacy.ledger import LedgerEvent, PrivacyBudgetExceeded, PrivacyLedger
from common.site.budget import load_or_plan
from common.training.fit import fit
from common.training.settings import DPSettings, EngineSettings


def _tiny_site(n: int) -> tuple[Classifier, LoadedPatches]:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    for p in backbone.parameters():
        p.requires_grad_(False)
    model = Classifier(backbone, nn.Linear(4, 2), 4)
    records = [PatchRecord(f"/x/{i}.png", i % 2, f"P{i}") for i in range(n)]
    pixels = np.random.default_rng(0).integers(0, 255, (n, 8, 8), dtype=np.uint8)
    return model, LoadedPatches(PatchSet(records), pixels)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(8, 60),
    batch=st.integers(2, 16),
    rounds=st.integers(1, 4),
    local_epochs=st.integers(1, 3),
    budget=st.floats(0.5, 12.0),
    cap_factor=st.floats(0.3, 1.5),
    extra_rounds=st.integers(0, 3),
    gan_steps=st.sampled_from([0, 20]),
)
def test_no_schedule_exceeds_the_budget(
    tmp_path_factory, n, batch, rounds, local_epochs, budget, cap_factor, extra_rounds, gan_steps
) -> None:  # type: ignore[no-untyped-def]
    assume(batch <= n)  # a DP batch larger than N is a config error (tested apart)
    refused = _run_schedule(
        tmp_path_factory,
        n,
        batch,
        rounds,
        local_epochs,
        budget,
        cap_factor,
        extra_rounds,
        gan_steps,
    )
    assert refused <= extra_rounds


def test_a_round_beyond_the_plan_is_refused(tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    """Planned for 2 rounds: the 3rd would pass the budget, so it is refused (uncharged)."""
    assert _run_schedule(tmp_path_factory, 30, 8, 2, 2, 3.0, 1.0, 1, 0) == 1


def _run_schedule(
    tmp_path_factory, n, batch, rounds, local_epochs, budget, cap_factor, extra_rounds, gan_steps
) -> int:  # type: ignore[no-untyped-def]
    config = FederatedRunConfig(
        privacy=PrivacyConfig(enabled=True, target_epsilon=budget, delta=1e-3),
        sites=[SiteEntry(name="s", raw="/nowhere")],
        federation=FederationConfig(rounds=rounds, local_epochs=local_epochs, min_sites=1),
        synpre=SynPreConfig(enabled=False),
    )
    config.train.batch_size = batch
    cap = budget * cap_factor  # the site's own cap may be below the run's budget
    site_budget = min(budget, cap)
    ledger = PrivacyLedger(delta=1e-3)
    if gan_steps:
        gan = LedgerEvent(noise_multiplier=2.0, sample_rate=0.2, steps=gan_steps, kind="dp-gan")
        if ledger.epsilon(extra=gan) >= site_budget:
            return 0  # the GAN itself would be refused before training
        ledger.append(gan)
    plan = load_or_plan(tmp_path_factory.mktemp("s") / "plan.json", config, ledger, n, site_budget)
    model, data = _tiny_site(n)
    engine = EngineSettings(
        batch_size=batch,
        lr=0.01,
        weight_decay=0.0,
        label_smoothing=0.0,
        flips=False,
        seed=0,
        device=torch.device("cpu"),
        backbone_train_mode=False,
        dp=DPSettings(plan.noise_multiplier, plan.sample_rate, 1.0, plan.steps_per_epoch),
    )
    refused = 0
    for round_number in range(1, rounds + extra_rounds + 1):
        before = ledger.state_dict()
        try:
            fit(
                model,
                "cached",
                data,
                None,
                engine,
                epochs=plan.local_epochs,
                ledger=ledger,
                selection="last",
                epsilon_cap=site_budget,
                round_number=round_number,
            )
        except PrivacyBudgetExceeded:
            assert ledger.state_dict() == before  # refused: nothing charged
            assert round_number > rounds  # planned rounds always fit
            refused += 1
            continue
        assert ledger.epsilon() <= site_budget * (1 + 1e-9)
    return refused
