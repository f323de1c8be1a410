"""The privacy plan of a configured run: counts the configured data, else the paper's sizes."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from common.config.schema import MammoflConfig
from common.errors import ConfigError, DataError, PrivacyError
from common.privacy.centring import centring_event
from common.privacy.delta import check_delta, delta_note
from common.privacy.group_privacy import group_guarantee
from common.privacy.independent_accounting import pld_epsilon
from common.privacy.ledger import LedgerEvent, epsilon_of
from common.privacy.plan import PrivacyPlan, plan_privacy
from common.runs.run_data import read_run_patch_sets

EPSILON_NOTE = (
    "epsilon_accounted: the planned run by the configured accountant (what the ledger charges "
    "and budgets use); epsilon_pld: the same run by dp-accounting's PLD accountant, a tighter "
    "and still valid bound for the same delta"
)


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingRecords:
    """Who is in a training set, for planning: patches, patients, the largest patient."""

    patches: int
    patients: int
    largest_patient: int
    source: str

    def records(self, unit: str) -> int:
        """N for the privacy plan: patches, or patients under patient-level DP."""
        return self.patients if unit == "patient" else self.patches


def training_records(config: MammoflConfig) -> TrainingRecords:
    """Counts of the configured data when readable, else the sizes recorded in the preset."""
    try:
        train = read_run_patch_sets(config.data, include_tests=False).train
    except DataError as error:
        # loud: a mistyped data path would otherwise plan (and check delta) on another N
        log.warning(
            "the configured training data is not readable (%s): planning with the preset's "
            "paper sizes instead; fix the data paths for a plan of your own data",
            error,
        )
        sizes = config.data.paper_sizes
        real = "real" in config.data.train_on
        synthetic = sizes.synthetic if "synthetic" in config.data.train_on else 0
        return TrainingRecords(
            patches=(sizes.real if real else 0) + synthetic,
            patients=(sizes.real_patients if real else 0) + synthetic,  # one per synthetic patch
            largest_patient=sizes.largest_patient if real else 1,
            source=f"paper sizes recorded in the preset (data not readable: {error})",
        )
    per_patient = Counter(train.patient_keys)
    return TrainingRecords(
        patches=len(train),
        patients=len(per_patient),
        largest_patient=max(per_patient.values(), default=0),
        source="configured data",
    )


def training_set_size(config: MammoflConfig) -> tuple[int, str]:
    """(N, 'configured data' | 'paper sizes (...)'): records of the configured privacy unit."""
    records = training_records(config)
    return records.records(config.privacy.unit), records.source


def planned_prior_events(config: MammoflConfig) -> list[LedgerEvent]:
    """What a run of `config` releases before its DP-SGD steps: the feature centre's Gaussian
    mechanism under DP with model.feature_centring=train_mean, else nothing."""
    privacy = config.privacy
    if privacy.enabled and config.model.feature_centring != "none":
        return [centring_event(privacy.centring_noise_multiplier)]
    return []


def plan_for(config: MammoflConfig, dataset_size: int) -> PrivacyPlan:
    """The run's plan: sigma such that its prior releases (`planned_prior_events`) and all its
    DP-SGD steps together spend at most the target epsilon."""
    privacy = config.privacy
    return plan_privacy(
        dataset_size=dataset_size,
        batch_size=config.train.batch_size,
        epochs=config.train.epochs,
        target_epsilon=privacy.target_epsilon if privacy.enabled else None,
        delta=privacy.delta,
        accountant=privacy.accountant,
        max_grad_norm=privacy.max_grad_norm,
        prior_events=planned_prior_events(config),
    )


def plan_report(config: MammoflConfig) -> dict[str, Any]:
    """What `mammofl plan` prints: the plan's numbers, which sizes it used and, under DP, the
    epsilon of the planned run by the project's accountant and by dp-accounting's PLD.

    Under DP, delta >= 1/N (N: records of privacy.unit) is refused before any epsilon is
    computed, as `mammofl train` refuses it; above 1/(10 N) the report carries a `delta_note`."""
    records = training_records(config)
    privacy = config.privacy
    note = None
    if privacy.enabled:
        try:
            note = check_delta(privacy.delta, records.records(privacy.unit), privacy.unit)
        except PrivacyError as error:
            raise PrivacyError(f"{error}; N counted from {records.source}") from error
    plan = plan_for(config, records.records(privacy.unit))
    source = records.source
    accounted = pld = None
    if plan.noise_multiplier is not None:
        run = [
            *planned_prior_events(config),
            LedgerEvent(
                noise_multiplier=plan.noise_multiplier,
                sample_rate=plan.sample_rate,
                steps=plan.steps,
            ),
        ]
        accounted = epsilon_of(run, plan.delta, plan.accountant)
        pld = pld_epsilon(run, plan.delta)
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
        # model.feature_centring=train_mean under DP: the centre's release, composed with the
        # DP-SGD steps in the plan's sigma and epsilons; None otherwise
        "centring_noise_multiplier": privacy.centring_noise_multiplier
        if planned_prior_events(config)
        else None,
        "delta_note": note,  # delta above 1/(10 N): why that is loose; None otherwise
        # under DP: what the ledger will charge for the planned run (just below the target), and
        # the same run by PLD (RDP's conversion to (epsilon, delta) is loose); None without DP
        "epsilon_accounted": accounted,
        "epsilon_pld": pld,
        "epsilon_note": EPSILON_NOTE if pld is not None else None,
        "unit": config.privacy.unit,
        "units": unit_comparison(config, records) if plan.noise_multiplier is not None else None,
    }


def unit_comparison(config: MammoflConfig, records: TrainingRecords) -> dict[str, Any]:
    """Side by side for one DP preset: the per-patch guarantee (DP per patch), the per-patient
    guarantee of patient-level DP (same target, patients sampled and clipped as one), and what
    group privacy makes of the per-patch guarantee for the largest patient."""
    rows: dict[str, Any] = {}
    for unit in ("patch", "patient"):
        try:
            note = delta_note(config.privacy.delta, records.records(unit), unit)
            plan = plan_for(config, records.records(unit))
        except (ConfigError, PrivacyError) as error:  # fewer patients than B, delta >= 1/N
            rows[f"per_{unit}"] = {
                "unit": unit,
                "records": records.records(unit),
                "error": str(error),
            }
            continue
        assert plan.noise_multiplier is not None
        run = LedgerEvent(
            noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate, steps=plan.steps
        )
        released = [*planned_prior_events(config), run]
        rows[f"per_{unit}"] = {
            "unit": unit,
            "records": plan.dataset_size,
            "sample_rate": plan.sample_rate,
            "steps": plan.steps,
            "noise_multiplier": plan.noise_multiplier,
            "epsilon": epsilon_of(released, plan.delta, plan.accountant),
            "delta": plan.delta,
            "delta_note": note,
        }
    rows["per_patch"]["guarantee"] = "DP per patch (privacy.unit=patch)"
    rows["per_patient"]["guarantee"] = "patient-level DP (privacy.unit=patient)"
    patch = rows["per_patch"]
    if "epsilon" not in patch:
        return rows
    group = group_guarantee(patch["epsilon"], patch["delta"], records.largest_patient)
    rows["per_patient_by_group_privacy"] = {
        "guarantee": "the per-patch run's guarantee for a whole patient, by group privacy "
        "(k eps, k e^((k-1) eps) delta) with k = the largest patient's patches",
        "group_size": group.group_size,
        "epsilon": group.epsilon,
        "delta": group.delta_text(),
        "vacuous": group.vacuous,
    }
    return rows
