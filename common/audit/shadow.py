"""Train one audited model (target or shadow) with the project's own recipe on a random half.

Every model, target or shadow, goes through `fit` exactly as `mammofl train` does: the same
engine, DP-SGD core, privacy plan (from its own training-set size), ledger and epoch selection.
Only the training set differs: the population's fixed records plus the canaries its seed drew.

The cached engine computes frozen-backbone features of whatever set it is given; a random half
would cost a backbone pass per model. The population's features are computed once (and kept in
the feature cache), and each half's features are sliced from them and written to the cache
under the key the engine looks up, so the engine reads them instead of recomputing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from common.audit.population import Population
from common.config.schema import MammoflConfig
from common.data.images import LoadedPatches
from common.eval.metrics import point_metrics
from common.models.classifier import (
    Classifier,
    build_classifier,
    prediction_variants,
    variant_mean_probability,
)
from common.models.policies import apply_trainable_policy
from common.privacy.delta import check_delta
from common.privacy.dp_sgd import expected_batch_size
from common.privacy.ledger import PrivacyLedger
from common.privacy.plan import PrivacyPlan
from common.runs.planning import plan_for
from common.runs.single_node import engine_settings as cell_engine_settings
from common.runs.single_node import seed_everything
from common.training.features import (
    cached_features,
)
from common.training.fit import check_fit_consistency, fit
from common.training.settings import (
    EngineSettings,
    resolve_device,
)


@dataclass(frozen=True)
class ModelOutcome:
    """What the audit keeps of one trained model: its logits on every population record and
    flip variant [V, N, 2], its canary inclusion, the privacy facts of its ledger and its test
    AUROC (utility, for context)."""

    seed: int
    included: np.ndarray
    logits: np.ndarray
    epsilon_spent: float | None
    noise_multiplier: float | None
    sample_rate: float
    steps: int
    training_size: int
    best_epoch: int | None
    test_auroc: dict[str, float]
    seconds: float


def engine_settings(
    config: MammoflConfig, model: Classifier, plan: PrivacyPlan, device: torch.device
) -> EngineSettings:
    """`run_cell`'s engine settings, with the noise divisor fixed by the plan's N (one
    mechanism whichever canaries a model holds)."""
    return cell_engine_settings(
        config,
        model,
        plan,
        device,
        progress=False,
        expected_batch_size=expected_batch_size(plan.dataset_size, plan.sample_rate),
    )


def variants_of(config: MammoflConfig) -> tuple[int, ...]:
    return (0, 1, 2, 3) if config.train.flips else (0,)


@torch.no_grad()
def head_logits(model: Classifier, features: torch.Tensor, device: torch.device) -> np.ndarray:
    model.head.eval()
    return model.head_logits(features.to(device)).double().cpu().numpy()


def train_model(
    config: MammoflConfig,
    population: Population,
    original: LoadedPatches,
    included: np.ndarray,
    validation: LoadedPatches,
    tests: dict[str, LoadedPatches],
) -> ModelOutcome:
    """Train `config` (its seed is this model's) on the population's fixed records plus the
    included canaries; return its logits on every population record. `original` is the
    population with its true labels (the key of its cached features)."""
    started = time.time()
    assert config.train.feature_cache_dir, "the audit always sets a feature cache"
    device = resolve_device(config.train.device)
    seed_everything(config.seed)
    model = build_classifier(config.model)
    apply_trainable_policy(model, config.model.trainable)
    model.to(device)

    def features(loaded: LoadedPatches, variants: tuple[int, ...]) -> torch.Tensor:
        return cached_features(
            model.backbone,
            loaded,
            variants,
            config.train.feature_batch_size,
            device,
            config.train.feature_cache_dir,
        )

    variants = variants_of(config)
    everyone = features(original, variants)
    indices = population.training_indices(included)
    subset = population.subset(indices)  # its features: in the bank since `everyone`
    if config.privacy.enabled:  # the audit's N: every model's expected training size
        check_delta(config.privacy.delta, population.expected_training_size, "patch")
    plan = plan_for(config, population.expected_training_size)  # not len(indices): see there
    ledger = PrivacyLedger(delta=config.privacy.delta, accountant=config.privacy.accountant)
    result = fit(
        model,
        config.train.engine,
        subset,
        validation,
        engine_settings(config, model, plan, device),
        epochs=config.train.epochs,
        ledger=ledger,
        selection_positive=config.train.selection_positive,
        target_epsilon=plan.target_epsilon,
        eligible=(config.privacy.eligible_low, config.privacy.eligible_high),
    )
    check_fit_consistency(result)
    test_auroc = {}
    for name, loaded in tests.items():
        # as every other evaluation: the 4 flips averaged when the model says so
        views = features(loaded, prediction_variants(model))
        scores = variant_mean_probability(torch.from_numpy(head_logits(model, views, device)))
        scores = scores.numpy()
        test_auroc[name] = point_metrics(np.asarray(loaded.patch_set.labels), scores)["auroc"]
    return ModelOutcome(
        seed=config.seed,
        included=np.asarray(included, dtype=bool),
        logits=head_logits(model, everyone, device),
        epsilon_spent=result.epsilon_spent,
        noise_multiplier=plan.noise_multiplier,
        sample_rate=plan.sample_rate,
        steps=result.steps,
        training_size=len(indices),
        best_epoch=result.best_epoch,
        test_auroc=test_auroc,
        seconds=round(time.time() - started, 1),
    )
