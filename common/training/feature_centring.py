"""A run's feature centre (model.feature_centring=train_mean): set once before the first step
from the training set's cached features, under DP by the Gaussian mechanism of
`common.privacy.centring` with its ledger event reserved and settled around the release."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

from common.errors import ConfigError, PrivacyError
from common.models.classifier import Classifier, FeatureCentre
from common.privacy.centring import exact_centre, private_centre, record_means
from common.privacy.dp_sgd import RecordGroups
from common.privacy.ledger import LedgerEvent, PrivacyLedger
from common.privacy.randomness import private_generator
from common.training.cached_engine import CachedEngine
from common.training.engine import TrainingEngine
from common.training.settings import CentringSettings, EngineSettings

log = logging.getLogger(__name__)


def check_centring_setup(model: Classifier, settings: EngineSettings) -> None:
    """A model with a FeatureCentre is trained with centring settings and the reverse (else its
    centre stays zero, or the settings do nothing); under DP the centre must have its noise (an
    exact mean is a release no ledger covers). Raises ConfigError / PrivacyError."""
    centred = isinstance(model.feature_centre, FeatureCentre)
    if centred != (settings.centring is not None):
        raise ConfigError(
            "the model has a feature centre but the run sets no centring, or the reverse: build "
            "both from one config (model.feature_centring)"
        )
    centring = settings.centring
    if settings.dp is not None and centring is not None and centring.noise_multiplier is None:
        raise PrivacyError(
            "a DP run's feature centre needs a noise multiplier (the exact mean would be "
            "released uncounted): set privacy.centring_noise_multiplier"
        )


def centre_features(
    engine: TrainingEngine,
    model: Classifier,
    settings: EngineSettings,
    ledger: PrivacyLedger,
    release: list[LedgerEvent],
    persist: Callable[[PrivacyLedger], None] | None,
) -> None:
    """Set the model's feature centre from the training set and centre the engine's cached
    features on it. Under DP (`release`: the centre's ledger event) it is reserved before the
    noisy sum is drawn and settled after, as a run's steps are."""
    assert settings.centring is not None
    if not isinstance(engine, CachedEngine) or not isinstance(model.feature_centre, FeatureCentre):
        raise ConfigError("model.feature_centring needs train.engine=cached and a FeatureCentre")
    # under DP the engine's own records (the privacy unit's); without DP each patch is one
    records = (
        engine.records if settings.dp is not None else RecordGroups.per_patch(engine.dataset_size)
    )
    vectors = record_means(engine.train_features, records)
    if not release:
        centre = exact_centre(vectors)
    else:
        index = ledger.reserve(release[0])
        if persist is not None:
            persist(ledger)
        generator = private_generator(settings.device, settings.noise_seed, stream="centring")
        assert settings.centring.noise_multiplier is not None
        _warn_if_noise_dominates(vectors, settings.centring)
        centre = private_centre(
            vectors, settings.centring.max_norm, settings.centring.noise_multiplier, generator
        )
        ledger.settle(index, steps=1)
        if persist is not None:
            persist(ledger)
    model.feature_centre.centre.copy_(centre.to(model.feature_centre.centre))
    engine.centre_features(centre)


def _warn_if_noise_dominates(vectors: torch.Tensor, centring: CentringSettings) -> None:
    """The centre's expected error norm, sigma_c R sqrt(2 F) / N, against the feature norm bound
    R: past R / 2 (a small training set) the centre is mostly noise and centring likely costs
    more budget than it saves. A local log line only (it holds N)."""
    records, width = vectors.shape
    assert centring.noise_multiplier is not None
    error = centring.noise_multiplier * centring.max_norm * math.sqrt(2 * width) / max(records, 1)
    if error > centring.max_norm / 2:
        log.warning(
            "feature centre: its expected noise norm %.3g is over half the feature norm bound "
            "%.3g at %d training records; centring likely costs more than it saves here "
            "(model.feature_centring=none turns it off)",
            error,
            centring.max_norm,
            records,
        )
