"""The privacy plan of a configured run: counts the configured data, else the paper's sizes."""

from __future__ import annotations

from typing import Any

from common.config.schema import MammoflConfig
from common.errors import DataError
from common.privacy.plan import PrivacyPlan, plan_privacy
from common.runs.run_data import read_run_patch_sets


def training_set_size(config: MammoflConfig) -> tuple[int, str]:
    """(N, 'configured data' | 'paper sizes (...)'): the data when readable, else the preset's."""
    try:
        return len(read_run_patch_sets(config.data, include_tests=False).train), "configured data"
    except DataError as error:
        sizes = config.data.paper_sizes
        total = sum(getattr(sizes, part) for part in config.data.train_on)
        return total, f"paper sizes recorded in the preset (data not readable: {error})"


def plan_for(config: MammoflConfig, dataset_size: int) -> PrivacyPlan:
    privacy = config.privacy
    return plan_privacy(
        dataset_size=dataset_size,
        batch_size=config.train.batch_size,
        epochs=config.train.epochs,
        target_epsilon=privacy.target_epsilon if privacy.enabled else None,
        delta=privacy.delta,
        accountant=privacy.accountant,
        max_grad_norm=privacy.max_grad_norm,
    )


def plan_report(config: MammoflConfig) -> dict[str, Any]:
    """What `mammofl plan` prints: the plan's numbers and which sizes it used."""
    size, source = training_set_size(config)
    plan = plan_for(config, size)
    return {
        "dataset_size": plan.dataset_size,
        "dataset_size_source": source,
        "batch_size": plan.batch_size,
        "sample_rate": plan.sample_rate,
        "epochs": plan.epochs,
        "steps": plan.steps,
        "noise_multiplier": plan.noise_multiplier,
        "target_epsilon": plan.target_epsilon,
        "delta": plan.delta,
        "accountant": plan.accountant,
        "max_grad_norm": plan.max_grad_norm,
    }
