"""The parts of audit.json: the audited config in brief, and one target's figures and verdict.

Figures and settings only: no record paths, manifest hashes or per-record scores.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from common.audit.attack import TargetAttack
from common.audit.options import AuditOptions
from common.audit.population import Population
from common.audit.shadow import ModelOutcome
from common.config.schema import MammoflConfig
from common.privacy.randomness import noise_mode
from common.runs.run_data import RunData

CANARY_NOTES = {
    "real": "real training patches with their true labels (the paper's input-space canaries)",
    "mislabelled": "real training patches with flipped labels (stronger canaries; they cost "
    "utility)",
}


def model_settings(config: MammoflConfig, options: AuditOptions) -> dict[str, Any]:
    """Everything that decides a model of the pool besides its seed (to refuse mixing models
    of different settings in one folder)."""
    composed = dataclasses.asdict(config)
    for key in ("seed", "out_dir"):
        composed.pop(key, None)
    canaries = {"kind": options.canary_kind, "count": options.canary_count}
    return {"config": composed, "canaries": canaries}


def model_summary(
    config: MammoflConfig, options: AuditOptions, population: Population, data: RunData
) -> dict[str, Any]:
    privacy, train, model = config.privacy, config.train, config.model
    return {
        "name": config.name,
        "paper_row": dataclasses.asdict(config.paper_row),
        "model": {
            "library": model.library,
            "name": model.name,
            "head": model.head,
            "hidden": model.hidden,
            "trainable": model.trainable,
            "starts_from_checkpoint": bool(model.init_from),
        },
        "train": {
            key: getattr(train, key)
            for key in (
                "engine",
                "epochs",
                "batch_size",
                "lr",
                "weight_decay",
                "label_smoothing",
                "flips",
                "selection_positive",
            )
        },
        "privacy": {
            "enabled": privacy.enabled,
            "target_epsilon": privacy.target_epsilon if privacy.enabled else None,
            "delta": privacy.delta,
            "accountant": privacy.accountant,
            "max_grad_norm": privacy.max_grad_norm,
            "unit": "patch",
            "noise": noise_mode(0 if privacy.seeded_noise else None) if privacy.enabled else None,
            "plan": "each model plans sigma from its own training-set size (q = 1/ceil(N/B))",
        },
        "data": {
            "train_on": list(config.data.train_on),
            "image_size": config.data.image_size,
            "selection_set_records": len(data.validation.patch_set),
            "test_sets": sorted(data.tests),
        },
        "population": {
            "records": len(population.loaded.patch_set),
            "canaries_m": len(population.canaries),
            "canary_kind": population.kind,
            "canary_note": CANARY_NOTES[population.kind],
            "always_included": len(population.fixed),
            "inclusion": "each canary independently with probability 1/2, per model",
            "membership_unit": "patch",
        },
        "reference_models": {
            "per_target": options.shadows,
            "pool": len(options.pool_seeds()),
            "target_seeds": list(options.seeds),
            "note": "every model of the pool has the target's recipe (fit, engine, DP-SGD, "
            "plan, ledger, selection); each target is attacked with all the other models",
        },
        "one_run_audit": {
            "ks": list(options.ks),
            "confidence": options.confidence,
            "attacks": list(options.audit_attacks),
            "family": "Bonferroni over attacks x k",
        },
        "lira": {
            "statistic": "logit-scaled confidence on the training label",
            "queries": "4 flip variants" if train.flips else "the patch as is",
            "variance": "one per variant, shared by all records"
            if options.fixed_variance
            else "per record",
        },
    }


def target_record(outcome: ModelOutcome, attack: TargetAttack) -> dict[str, Any]:
    """One target: privacy facts of its ledger, attack metrics, one-run audit, verdict."""
    audit = attack.audit.to_dict()
    bound = attack.audit.epsilon_lower_bound
    accounted = outcome.epsilon_spent
    conclusive = accounted is not None and attack.audit.ceiling >= accounted
    if accounted is None:
        passed, note = True, "no DP: no accounted epsilon to check against"
    else:
        passed = bound <= accounted
        note = (
            f"empirical lower bound {bound:.3f} <= accounted epsilon {accounted:.3f}"
            if passed
            else f"empirical lower bound {bound:.3f} EXCEEDS accounted epsilon {accounted:.3f}: "
            "the DP implementation or its accounting is broken"
        )
        if attack.audit.ceiling < accounted:
            note += (
                f"; this audit cannot certify more than epsilon {attack.audit.ceiling:.3f} "
                "(every guess right), so it could not have detected a violation of the "
                "accounted epsilon"
            )
    # passed but not conclusive: no violation found, and none could have been
    verdict = {"passed": passed, "conclusive": conclusive, "note": note}
    return {
        "seed": outcome.seed,
        "training_size": outcome.training_size,
        "accounted_epsilon": accounted,
        "noise_multiplier": outcome.noise_multiplier,
        "sample_rate": outcome.sample_rate,
        "steps": outcome.steps,
        "best_epoch": outcome.best_epoch,
        "test_auroc": outcome.test_auroc,
        "attacks": {name: m.to_dict() for name, m in attack.metrics.items()},
        "one_run_audit": audit,
        "verdict": verdict,
    }
