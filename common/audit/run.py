"""`run_audit`: train the model pool, attack every target, audit its run, write the outputs.

A pool of shadows + 1 models of one config, each on the population's fixed records plus the
canaries its seed drew (each with probability 1/2). The models named by `seeds` are the
targets; each is attacked with all the others as reference models, and its own run is the
one-run audit (Steinke et al. 2023) with its canaries. Trained models are kept in
`models/seed<s>.npz` (logits and inclusion), so a stopped audit resumes where it stopped and a
new analysis (more shadows, other seeds, k or confidence) trains only the models it lacks.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from common.atomic_io import atomic_write, atomic_write_text
from common.audit.attack import ATTACKS, TargetAttack, attack_target
from common.audit.options import AuditOptions
from common.audit.population import Population, build_population, draw_inclusion
from common.audit.record import model_settings, model_summary, target_record
from common.audit.report import (
    plot_rocs,
    save_target_scores,
    summarise_targets,
    write_audit_json,
)
from common.audit.shadow import ModelOutcome, train_model
from common.config.schema import MammoflConfig
from common.errors import ConfigError, DataError
from common.runs.run_data import RunData, load_run_data

log = logging.getLogger(__name__)


def check_auditable(config: MammoflConfig) -> None:
    if config.train.engine != "cached":
        raise ConfigError(
            "mammofl audit trains many models on cached frozen-backbone features: pass "
            "train.engine=cached (and a frozen backbone, model.trainable=head or head_last)"
        )
    if getattr(config.privacy, "unit", "patch") != "patch":
        raise ConfigError(
            "mammofl audit includes single patches as canaries; privacy.unit=patient runs "
            "are not audited yet: use privacy.unit=patch"
        )
    if config.data.real is None or "real" not in config.data.train_on:
        raise ConfigError("mammofl audit needs real training records (data.train_on with real)")


def _with_cache(config: MammoflConfig, out_dir: Path) -> MammoflConfig:
    if config.train.feature_cache_dir:
        return config
    train = dataclasses.replace(config.train, feature_cache_dir=str(out_dir / "_features"))
    return dataclasses.replace(config, train=train)


def _check_resume(out_dir: Path, settings: dict[str, Any]) -> None:
    """The saved models must come from the same config and canaries (the analysis options:
    seeds, shadows, k, confidence, may change: models are trained only when missing)."""
    path = out_dir / "models" / "settings.json"
    text = json.dumps(settings, indent=2, sort_keys=True) + "\n"
    # settings without a model (an earlier attempt refused before training) bind nothing
    trained = any(path.parent.glob("*.npz"))
    if path.is_file() and path.read_text() != text and trained:
        raise ConfigError(
            f"{out_dir} holds models of other settings ({path}); use a new out_dir=, "
            "or the same overrides and canary options to resume or re-analyse it"
        )
    atomic_write_text(path, text)


def _save_model(path: Path, outcome: ModelOutcome) -> None:
    facts = {
        k: v for k, v in dataclasses.asdict(outcome).items() if k not in ("logits", "included")
    }

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.savez(
                handle, logits=outcome.logits, included=outcome.included, facts=json.dumps(facts)
            )

    atomic_write(path, write)


def _load_model(path: Path) -> ModelOutcome:
    with np.load(path) as data:
        facts = json.loads(str(data["facts"]))
        return ModelOutcome(logits=data["logits"], included=data["included"], **facts)


def train_pool(
    config: MammoflConfig, options: AuditOptions, data: RunData, population: Population
) -> dict[int, ModelOutcome]:
    """Train (or load, when already done) every model of the pool."""
    pool = options.pool_seeds()
    outcomes = {}
    for number, seed in enumerate(pool, 1):
        path = options.out_dir / "models" / f"seed{seed}.npz"
        role = "target" if seed in options.seeds else "shadow"
        if path.is_file():
            outcomes[seed] = _load_model(path)
            continue
        included = draw_inclusion(len(population.canaries), seed)
        outcome = train_model(
            dataclasses.replace(config, seed=seed),
            population,
            data.train,
            included,
            data.validation,
            data.tests,
        )
        _save_model(path, outcome)
        outcomes[seed] = outcome
        log.info(
            "model %d/%d (%s, seed %d): %.0f s, epsilon %s, test AUROC %s",
            number,
            len(pool),
            role,
            seed,
            outcome.seconds,
            outcome.epsilon_spent,
            {k: round(v, 3) for k, v in outcome.test_auroc.items()},
        )
    return outcomes


def attack_all(
    config: MammoflConfig,
    options: AuditOptions,
    population: Population,
    outcomes: dict[int, ModelOutcome],
) -> dict[int, TargetAttack]:
    attacks = {}
    for seed in options.seeds:
        others = [o for s, o in outcomes.items() if s != seed]
        attacks[seed] = attack_target(
            outcomes[seed].logits,
            outcomes[seed].included,
            [o.logits for o in others],
            [o.included for o in others],
            population.canaries,
            population.labels,
            ks=options.ks,
            confidence=options.confidence,
            delta=config.privacy.delta,
            fixed_variance=options.fixed_variance,
            audit_attacks=options.audit_attacks,
        )
        save_target_scores(
            options.out_dir / "targets" / f"seed{seed}.npz",
            attacks[seed].scores,
            attacks[seed].members,
        )
    return attacks


def run_audit(config: MammoflConfig, options: AuditOptions) -> dict[str, Any]:
    """Run (or resume) the audit; write audit.json and roc.png into `options.out_dir` and
    return the audit record (its `verdict.passed` is False when a DP run's empirical epsilon
    lower bound exceeds the epsilon its ledger accounts)."""
    started = time.time()
    check_auditable(config)
    config = _with_cache(config, options.out_dir)
    options.out_dir.mkdir(parents=True, exist_ok=True)
    _check_resume(options.out_dir, model_settings(config, options))
    data = load_run_data(config.data)
    try:
        population = build_population(data.train, options.canary_kind, options.canary_count)
    except ValueError as error:
        raise DataError(f"mammofl audit: {error}") from error
    if 2 * min(options.ks) > len(population.canaries):
        raise ConfigError(
            f"k={list(options.ks)}: with {len(population.canaries)} canaries the smallest k "
            f"must be at most {len(population.canaries) // 2}"
        )
    outcomes = train_pool(config, options, data, population)
    attacks = attack_all(config, options, population, outcomes)
    targets = [target_record(outcomes[s], attacks[s]) for s in options.seeds]
    failed = [t for t in targets if not t["verdict"]["passed"]]
    dp_targets = [t for t in targets if t["accounted_epsilon"] is not None]
    conclusive = bool(dp_targets) and all(t["verdict"]["conclusive"] for t in dp_targets)
    record = {
        **model_summary(config, options, population, data),
        "attacks": list(ATTACKS),
        "targets": targets,
        "summary": summarise_targets(targets),
        "verdict": {
            "passed": not failed,
            "failed_seeds": [t["seed"] for t in failed],
            "rule": "each DP target's empirical epsilon lower bound must not exceed the "
            "epsilon its ledger accounts",
            # could the audit have failed? Only where its ceiling (every guess right) reaches
            # the accounted epsilon; otherwise "passed" means no violation found, not tested
            "conclusive": conclusive,
            "note": ""
            if conclusive or not dp_targets
            else "inconclusive: the audit cannot certify epsilon as high as the accounted one "
            "(see each target's epsilon_ceiling), so it could not have detected a violation; "
            "use more canaries (or a smaller epsilon) for a test that can fail",
        },
        "seconds": round(time.time() - started, 1),
        "model_training_seconds": round(sum(o.seconds for o in outcomes.values()), 1),
    }
    write_audit_json(options.out_dir / "audit.json", record)
    curves = {
        config.name: [(f"seed {s}", attacks[s].scores, attacks[s].members) for s in options.seeds]
    }
    plot_rocs(options.out_dir / "roc.png", curves, f"membership inference against {config.name}")
    return record
