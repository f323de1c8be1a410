"""One Table 1 cell in one process: data, model, privacy plan, fit, evaluate, result record."""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.config.schema import DataConfig, MammoflConfig
from common.errors import ConfigError
from common.eval.metrics import evaluate_scores
from common.eval.predict import predict_probabilities
from common.eval.records import save_model, write_json, write_predictions
from common.models.classifier import Classifier, build_classifier
from common.models.policies import apply_trainable_policy, backbone_has_batchnorm, count_trainable
from common.privacy.delta import check_delta
from common.privacy.dp_sgd import RecordGroups
from common.privacy.ledger import PrivacyLedger
from common.privacy.plan import PrivacyPlan
from common.privacy.randomness import noise_mode, seeded_stream
from common.runs.planning import plan_for
from common.runs.provenance import file_sha256, git_commit, package_versions
from common.runs.run_data import RunData, load_run_data
from common.runs.shareable import shareable_record
from common.training.fit import FitResult, check_fit_consistency, fit
from common.training.settings import (
    CentringSettings,
    DPSettings,
    EngineSettings,
    recipe_options,
    resolve_backbone_train_mode,
    resolve_device,
)

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def guarantee_caveats(config: MammoflConfig) -> list[str]:
    """Why a DP run's epsilon is not the whole story (empty when it is)."""
    caveats = []
    if "synthetic" in config.data.train_on:
        caveats.append(
            "synthetic patches come from a GAN trained on real data without DP: "
            "no formal guarantee covers them"
        )
    if config.model.init_from or config.start_from_row:
        caveats.append(
            "starts from a model (model.init_from) trained without a formal guarantee "
            "(e.g. on non-DP synthetic data)"
        )
    return caveats


def tuning_note(config: MammoflConfig) -> str:
    """What the epsilon leaves out when the preset's hyperparameters were tuned on records
    (`privacy.tuned_on`): the search itself (Papernot & Steinke, ICLR 2022)."""
    tuned_on = config.privacy.tuned_on
    if not tuned_on:
        return ""
    return (
        f"hyperparameters tuned on {tuned_on}: on those records epsilon covers this run, "
        "not the search (docs/recipes.md)"
    )


def engine_settings(
    config: MammoflConfig,
    model: Classifier,
    plan: PrivacyPlan,
    device: torch.device,
    *,
    progress: bool,
    expected_batch_size: int | None = None,
) -> EngineSettings:
    """What an engine needs for one cell of `config` under `plan` (DP when the plan has a
    noise multiplier; seeded noise only in the marked research mode). `expected_batch_size`
    fixes the noise divisor (the audit); None: int(N q) of the training set."""
    dp = None
    if plan.noise_multiplier is not None:
        dp = DPSettings(
            plan.noise_multiplier,
            plan.sample_rate,
            plan.max_grad_norm,
            plan.steps_per_epoch,
            unit=config.privacy.unit,
            expected_batch_size=expected_batch_size,
        )
    return EngineSettings(
        batch_size=config.train.batch_size,
        lr=config.train.lr,
        weight_decay=config.train.weight_decay,
        label_smoothing=config.train.label_smoothing,
        flips=config.train.flips,
        seed=config.seed,
        device=device,
        backbone_train_mode=resolve_backbone_train_mode(
            config.train.engine,
            config.train.backbone_mode,
            backbone_has_batchnorm(model.backbone),
        ),
        feature_batch_size=config.train.feature_batch_size,
        feature_cache_dir=config.train.feature_cache_dir,
        dp=dp,
        progress=progress,
        noise_seed=seeded_stream(config.seed, "dp-sgd") if config.privacy.seeded_noise else None,
        centring=centring_settings(config, dp is not None),
        **recipe_options(config.train),
    )


def centring_settings(config: MammoflConfig, dp: bool) -> CentringSettings | None:
    """model.feature_centring=train_mean: the centre's mechanism (exact without DP)."""
    if config.model.feature_centring == "none":
        return None
    privacy = config.privacy
    noise = privacy.centring_noise_multiplier if dp else None
    return CentringSettings(noise_multiplier=noise, max_norm=privacy.centring_max_norm)


@dataclass
class PreparedCell:
    """One cell ready to train: its data, plan, model (policy applied), engine settings and a
    fresh ledger; `fit_cell` trains it, `finish_cell` evaluates and writes its records."""

    config: MammoflConfig
    out_dir: Path
    data: RunData
    plan: PrivacyPlan
    model: Classifier
    trainable: list[str]
    device: torch.device
    settings: EngineSettings
    ledger: PrivacyLedger
    delta_warning: str | None
    started: float


def prepare_cell(
    config: MammoflConfig,
    out_dir: Path,
    progress: bool = True,
    load: Callable[[DataConfig, bool], RunData] = load_run_data,
) -> PreparedCell:
    """Everything before training: refusals (SynPre+RealFT without a start model, delta >= 1/N
    of the unit), data, plan, model. `load` lets a grid share one loaded copy of equal data."""
    started = time.time()
    if config.paper_row.setting == "SynPre+RealFT" and not config.model.init_from:
        raise ConfigError(
            "SynPre+RealFT fine-tunes the SynPre model: pass model.init_from=<SynPre model.pt> "
            "(mammofl table1 does this for you)"
        )
    if config.start_from_row and not config.model.init_from:
        raise ConfigError(
            f"{config.name} starts from the model of the {config.start_from_row} row (same "
            f"seed): run it with mammofl table1, which trains that row first, or pass "
            f"model.init_from=<that row's model.pt>"
        )
    seed_everything(config.seed)
    data = load(config.data, progress)
    records = RecordGroups.for_unit(config.privacy.unit, data.train.patch_set.patient_keys)
    delta_warning = None
    if config.privacy.enabled:  # before any data use
        delta_warning = check_delta(config.privacy.delta, records.records, records.unit)
    plan = plan_for(config, records.records)
    model = build_classifier(config.model)
    trainable = apply_trainable_policy(model, config.model.trainable)
    device = resolve_device(config.train.device)
    settings = engine_settings(config, model, plan, device, progress=progress)
    ledger = PrivacyLedger(
        delta=config.privacy.delta, accountant=config.privacy.accountant, unit=config.privacy.unit
    )
    return PreparedCell(
        config,
        out_dir,
        data,
        plan,
        model,
        trainable,
        device,
        settings,
        ledger,
        delta_warning,
        started,
    )


def fit_cell(cell: PreparedCell) -> FitResult:
    config = cell.config
    return fit(
        cell.model,
        config.train.engine,
        cell.data.train,
        cell.data.validation,
        cell.settings,
        epochs=config.train.epochs,
        ledger=cell.ledger,
        selection_positive=config.train.selection_positive,
        target_epsilon=cell.plan.target_epsilon,
        eligible=(config.privacy.eligible_low, config.privacy.eligible_high),
    )


def run_cell(config: MammoflConfig, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Train one cell and write to out_dir: result.json (shareable: no path, hash or exact
    count of private data), site_only.json (the whole record), model.pt, predictions_<test>.csv.
    Returns the whole record."""
    cell = prepare_cell(config, out_dir, progress)
    return finish_cell(cell, fit_cell(cell))


def finish_cell(cell: PreparedCell, result: FitResult) -> dict[str, Any]:
    """After training: the consistency checks, test scores, model and records (see run_cell)."""
    config, out_dir, data, plan, model = cell.config, cell.out_dir, cell.data, cell.plan, cell.model
    trainable, device, ledger, delta_warning = (
        cell.trainable,
        cell.device,
        cell.ledger,
        cell.delta_warning,
    )
    dp, noise_seed, started = cell.settings.dp, cell.settings.noise_seed, cell.started
    check_fit_consistency(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    tests: dict[str, Any] = {}
    for name, loaded in data.tests.items():
        scores = predict_probabilities(
            model, loaded, device, config.train.feature_batch_size, config.train.feature_cache_dir
        )
        write_predictions(out_dir / f"predictions_{name}.csv", loaded, scores)
        tests[name] = evaluate_scores(
            loaded.patch_set.labels,
            scores,
            loaded.patch_set.patient_keys,
            bootstrap=config.eval.bootstrap,
            confidence=config.eval.confidence,
            seed=config.seed,
        )
    save_model(out_dir / "model.pt", {k: v.cpu() for k, v in model.state_dict().items()})
    selected = next((h for h in result.history if h.epoch == result.best_epoch), None)
    caveats = guarantee_caveats(config)
    record = {
        "name": config.name,
        "seed": config.seed,
        "engine": config.train.engine,
        "config": dataclasses.asdict(config),
        "trainable_policy": config.model.trainable,
        "trainable_count": count_trainable(model),
        "trainable_parameters": trainable,
        "frozen_checksum": result.frozen_checksum_after,
        # what it started from, by content: a retrained start row leaves this cell stale
        "start_model_sha256": file_sha256(Path(config.model.init_from))
        if config.model.init_from
        else None,
        "best_epoch": result.best_epoch,
        "selection": result.selection_note,
        "privacy": {
            "enabled": dp is not None,
            "formal_guarantee": dp is not None and not caveats,
            "note": "; ".join(caveats),
            "selection_data_note": "validation patients used to select the epoch are not "
            "covered by DP (as in the paper)",
            "tuning_note": tuning_note(config) if dp is not None else "",
            "noise_multiplier": plan.noise_multiplier,
            "sample_rate": plan.sample_rate,
            "steps": result.steps,
            "planned_steps": plan.steps,
            "epsilon_spent": result.epsilon_spent,
            "epsilon_at_selected_epoch": selected.epsilon if selected else None,
            "target_epsilon": plan.target_epsilon,
            "delta": plan.delta,
            "delta_note": delta_warning,
            "max_grad_norm": plan.max_grad_norm,
            "accountant": plan.accountant,
            "unit": ledger.unit,
            "noise": noise_mode(noise_seed) if dp is not None else None,
            "ledger": result.ledger.state_dict(),
        },
        "tests": tests,
        "data": data.report(),
        "history": [dataclasses.asdict(h) for h in result.history],
        "versions": package_versions(),
        "git_commit": git_commit(),
        "seconds": round(time.time() - started, 1),
    }
    write_json(out_dir / "site_only.json", record)
    write_json(
        out_dir / "result.json",
        shareable_record(record, seeded_noise=config.privacy.seeded_noise),
    )
    return record
