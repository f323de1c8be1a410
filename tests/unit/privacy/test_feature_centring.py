"""Feature centring (model.feature_centring=train_mean): the centre's Gaussian mechanism (one
clipped contribution per record, the stated noise), its place in the plan and the ledger (one
event composed with the DP-SGD steps, checked before either runs), and a centred model that
predicts from images as its head was trained on cached features."""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings

import dp_accounting
import numpy as np
import pytest
import torch

from common.config.compose import compose_config, compose_federated_config
from common.data.images import LoadedPatches
from common.data.patch_set import PatchRecord, PatchSet
from common.errors import ConfigError, PrivacyError
from common.eval.metrics import auprc
from common.eval.predict import predict_probabilities
from common.models.classifier import Classifier, FeatureCentre
from common.models.policies import frozen_checksum
from common.privacy.centring import (
    CENTRING_KIND,
    centring_event,
    clipped_record_sum,
    private_centre,
    record_means,
)
from common.privacy.dp_sgd import RecordGroups
from common.privacy.ledger import LedgerEvent, PrivacyBudgetExceeded, PrivacyLedger, epsilon_of
from common.privacy.plan import plan_privacy
from common.privacy.randomness import private_generator
from common.runs.planning import plan_report
from common.training.cached_engine import CachedEngine
from common.training.fit import FitResult, fit
from common.training.settings import CentringSettings, EngineSettings
from tests.unit.training.helpers import random_patches, settings, tiny_model


def test_one_record_changes_the_clipped_sum_by_at_most_r_sqrt2() -> None:
    radius = 2.0
    base = torch.randn(20, 6, dtype=torch.float64)
    for extra in (torch.full((1, 6), 1e6), torch.zeros(1, 6), torch.randn(1, 6) * 0.1):
        bigger = torch.cat([base, extra.double()])
        change = clipped_record_sum(bigger, radius) - clipped_record_sum(base, radius)
        assert float(change.norm()) <= radius * math.sqrt(2) * (1 + 1e-9)
    # a record within the radius enters unchanged, one beyond it at norm R
    inside = clipped_record_sum(torch.tensor([[0.6, 0.8]]), 2.0)
    torch.testing.assert_close(inside, torch.tensor([0.6, 0.8, 2.0]))
    outside = clipped_record_sum(torch.tensor([[30.0, 40.0]]), 2.0)
    torch.testing.assert_close(outside[:2].norm(), torch.tensor(2.0), rtol=1e-5, atol=0)


def test_the_centre_carries_the_stated_noise() -> None:
    """Centre x N = noisy sum: its spread is sigma R sqrt(2) per coordinate (N large enough for
    the noisy count to be exact to 1e-3)."""
    records, width, sigma, radius = 20_000, 3, 2.0, 1.5
    vectors = torch.zeros(records, width, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack(
        [private_centre(vectors, radius, sigma, generator) * records for _ in range(4000)]
    )
    expected = sigma * radius * math.sqrt(2)
    assert float(draws.std(0).min()) > 0.95 * expected
    assert float(draws.std(0).max()) < 1.05 * expected
    assert float(draws.mean(0).abs().max()) < 4 * expected / math.sqrt(4000)


def test_the_centre_estimates_the_mean_of_records() -> None:
    vectors = torch.randn(5000, 4, dtype=torch.float64) + torch.tensor([3.0, -2.0, 0.0, 1.0])
    centre = private_centre(vectors, 10.0, 1.0, torch.Generator().manual_seed(1))
    torch.testing.assert_close(centre, vectors.mean(0), atol=0.02, rtol=0)


def test_the_centre_is_the_noisy_sum_over_the_noisy_count() -> None:
    """Every coordinate, the count's too, carries its noise: the same draws recomputed by hand
    (an exact count in the divisor would be an uncounted release)."""
    vectors, radius, sigma = torch.randn(7, 3, dtype=torch.float64) * 4, 2.0, 0.7
    centre = private_centre(vectors, radius, sigma, torch.Generator().manual_seed(5))
    noise = torch.normal(
        0.0, sigma * radius * math.sqrt(2), (4,), generator=torch.Generator().manual_seed(5)
    ).double()
    noisy = clipped_record_sum(vectors, radius) + noise
    torch.testing.assert_close(centre, noisy[:3] / (noisy[3] / radius))
    assert not torch.allclose(centre, noisy[:3] / 7)


def test_record_means_average_a_patients_patches_and_flips() -> None:
    features = torch.arange(2 * 3 * 2, dtype=torch.float64).reshape(2, 3, 2)  # [V, N, F]
    groups = RecordGroups.per_patient(["p1", "p2", "p1"])
    expected_p1 = features[:, [0, 2]].reshape(-1, 2).mean(0)
    expected_p2 = features[:, 1].mean(0)
    torch.testing.assert_close(
        record_means(features, groups), torch.stack([expected_p1, expected_p2])
    )
    with pytest.raises(ValueError, match="expected"):
        record_means(features[0], groups)


def test_plan_composes_the_centre_with_the_steps() -> None:
    """sigma is sized so that the centre and every step together meet the target; by an
    independent accountant (dp-accounting's RDP) the composition stays within it."""
    target, delta, q, steps, centre_sigma = 3.0, 1e-4, 1 / 8, 400, 3.0
    alone = plan_privacy(
        dataset_size=800, batch_size=100, epochs=50, target_epsilon=target, delta=delta
    )
    centred = plan_privacy(
        dataset_size=800,
        batch_size=100,
        epochs=50,
        target_epsilon=target,
        delta=delta,
        prior_events=[centring_event(centre_sigma)],
    )
    assert (alone.sample_rate, alone.steps) == (q, steps)
    assert centred.noise_multiplier is not None and alone.noise_multiplier is not None
    assert centred.noise_multiplier > alone.noise_multiplier  # the centre takes a share
    independent = dp_accounting.rdp.RdpAccountant()
    independent.compose(dp_accounting.GaussianDpEvent(centre_sigma))
    independent.compose(
        dp_accounting.PoissonSampledDpEvent(
            q, dp_accounting.GaussianDpEvent(centred.noise_multiplier)
        ),
        steps,
    )
    assert target - 0.05 <= independent.get_epsilon(delta) <= target * 1.001


def _centred_model() -> Classifier:
    """The tiny Swin of the engine tests, built with model.feature_centring=train_mean."""
    model = tiny_model("swin", head="linear", feature_centring="train_mean")
    assert isinstance(model.feature_centre, FeatureCentre)
    assert not isinstance(tiny_model("swin").feature_centre, FeatureCentre)  # none by default
    return model


def _fit(
    model: Classifier,
    data: LoadedPatches,
    run: EngineSettings,
    *,
    validation: LoadedPatches | None = None,
    epochs: int = 1,
    ledger: PrivacyLedger | None = None,
    cap: float = 1e6,
) -> FitResult:
    """fit on the cached engine, last iterate, a cap that never binds unless a test sets one."""
    return fit(
        model,
        "cached",
        data,
        validation,
        run,
        epochs=epochs,
        ledger=ledger if ledger is not None else PrivacyLedger(delta=1e-3),
        selection="last",
        epsilon_cap=cap,
    )


def _centring_settings(noise: float | None, sigma: float = 1.0) -> EngineSettings:
    base = settings(train_mode=False, sigma=sigma, q=0.25)
    return dataclasses.replace(
        base,
        dp=base.dp if noise is not None else None,
        centring=CentringSettings(noise_multiplier=noise, max_norm=5.0),
        noise_seed=7,
    )


def test_a_dp_run_charges_the_centre_once_before_its_steps() -> None:
    model, data = _centred_model(), random_patches(16)
    checksum = frozen_checksum(model)
    ledger = PrivacyLedger(delta=1e-3)
    result = _fit(model, data, _centring_settings(noise=2.0), epochs=2, ledger=ledger)
    kinds = [(e.kind, e.status, e.steps) for e in ledger.events]
    assert kinds == [(CENTRING_KIND, "settled", 1), ("dp-sgd", "settled", result.steps)]
    assert ledger.events[0].noise_multiplier == 2.0 and ledger.events[0].sample_rate == 1.0
    assert result.epsilon_spent is not None
    assert result.epsilon_spent == pytest.approx(epsilon_of(ledger.events, 1e-3))
    assert result.epsilon_spent > epsilon_of(ledger.events[1:], 1e-3)
    # each epoch's epsilon counts the centre too
    assert result.history[-1].epsilon == pytest.approx(result.epsilon_spent)
    assert float(model.feature_centre.centre.abs().sum()) > 0
    assert frozen_checksum(model) == checksum  # the backbone is untouched; the centre is not frozen


def test_patient_level_dp_centres_on_one_clipped_vector_per_patient() -> None:
    """Under privacy.unit=patient a patient's patches are one record of the centre's mechanism
    (seeded research mode, so the centre can be recomputed from the same stream)."""
    model, pixels = _centred_model(), random_patches(16).pixels
    base = _centring_settings(noise=2.0)
    assert base.dp is not None
    run = dataclasses.replace(base, dp=dataclasses.replace(base.dp, unit="patient"))
    patients = [f"P{i % 5}" for i in range(16)]  # 5 patients of 3-4 patches
    records = [PatchRecord(f"/synthetic/{i}.png", i % 2, p) for i, p in enumerate(patients)]
    data = LoadedPatches(PatchSet(records), pixels)
    engine = CachedEngine(copy.deepcopy(model), data, {}, run)
    expected = private_centre(
        record_means(engine.train_features, RecordGroups.per_patient(patients)),
        5.0,
        2.0,
        private_generator("cpu", run.noise_seed, stream="centring"),
    )
    _fit(model, data, run, ledger=PrivacyLedger(delta=1e-3, unit="patient"))
    torch.testing.assert_close(model.feature_centre.centre, expected)


def test_the_engine_trains_and_scores_on_the_centred_features() -> None:
    """The validation loss fit records (the engine's cached features) is the loss of the
    returned model predicting from images (the model's FeatureCentre). The loss, not AUPRC: an
    uncentred engine shifts every logit by the same w.c, which leaves any ranking unchanged."""
    model, train, validation = _centred_model(), random_patches(16), random_patches(12, seed=2)
    run = _centring_settings(noise=2.0)
    result = _fit(model, train, run, validation=validation, epochs=2)
    malignant = predict_probabilities(model, validation, torch.device("cpu"), 4)
    labels = validation.labels.numpy()
    p_true = np.where(labels == 1, malignant, 1 - malignant)
    smooth = run.label_smoothing / 2  # label smoothing over 2 classes
    by_model = -((1 - smooth) * np.log(p_true) + smooth * np.log(1 - p_true)).mean()
    assert result.history[-1].val_loss == pytest.approx(by_model, rel=1e-9)
    scores = auprc(labels, malignant, "benign")
    assert result.history[-1].val_auprc == pytest.approx(scores, abs=1e-9)


def test_a_centre_must_match_its_settings_and_have_noise_under_dp() -> None:
    data = random_patches(8)
    with pytest.raises(ConfigError, match="feature centre"):  # a centre nobody sets
        _fit(_centred_model(), data, settings(train_mode=False), ledger=PrivacyLedger())
    exact = _centring_settings(noise=None)
    under_dp = dataclasses.replace(exact, dp=settings(train_mode=False).dp)
    ledger = PrivacyLedger()
    with pytest.raises(PrivacyError, match="noise multiplier"):
        _fit(_centred_model(), data, under_dp, ledger=ledger)
    assert ledger.events == []


def test_the_budget_check_counts_the_centre_before_anything_runs() -> None:
    model, data = _centred_model(), random_patches(16)
    run = _centring_settings(noise=0.5)
    assert run.dp is not None
    steps_only = PrivacyLedger(delta=1e-3).check_within(
        LedgerEvent(noise_multiplier=1.0, sample_rate=0.25, steps=4), 1e6
    )
    ledger = PrivacyLedger(delta=1e-3)
    with pytest.raises(PrivacyBudgetExceeded, match="dp-centring"):
        # the steps alone would fit under this cap
        _fit(model, data, run, epochs=2, ledger=ledger, cap=steps_only * 1.01)
    assert ledger.events == [] and float(model.feature_centre.centre.abs().sum()) == 0


def test_without_dp_the_centre_is_the_exact_mean_and_predictions_agree_across_paths() -> None:
    model, train, test = _centred_model(), random_patches(12), random_patches(5, seed=1)
    ledger = PrivacyLedger()
    _fit(model, train, _centring_settings(noise=None), epochs=2, ledger=ledger)
    assert ledger.events == []
    engine = CachedEngine(copy.deepcopy(model), train, {"test": test}, _centring_settings(None))
    raw_mean = engine.train_features.mean((0, 1))  # before centring: 4 flips of every patch
    torch.testing.assert_close(model.feature_centre.centre, raw_mean)
    engine.centre_features(model.feature_centre.centre)
    by_engine, _ = engine.predict("test")
    by_images = predict_probabilities(model, test, torch.device("cpu"), 4)
    torch.testing.assert_close(torch.from_numpy(by_images), torch.from_numpy(by_engine))


def test_centring_is_refused_where_features_are_not_cached_and_fixed() -> None:
    with pytest.raises(ConfigError, match=r"train\.engine=cached"):
        compose_config(["model.feature_centring=train_mean", "train.engine=naive"])
    with pytest.raises(ConfigError, match="single-node only"):
        compose_federated_config(["experiment=federated/tiny", "model.feature_centring=train_mean"])


def test_plan_report_counts_the_centre() -> None:
    base = ["experiment=recipe/dp_eps6", "privacy.accountant=rdp", "model.feature_centring=none"]
    plain = plan_report(compose_config(base))
    centred = plan_report(
        compose_config(
            [*base[:2], "model.feature_centring=train_mean", "privacy.centring_noise_multiplier=3"]
        )
    )
    assert plain["centring_noise_multiplier"] is None
    assert centred["centring_noise_multiplier"] == 3
    assert centred["noise_multiplier"] > plain["noise_multiplier"]
    assert centred["epsilon_accounted"] <= 6 * (1 + 1e-9)
    assert centred["epsilon_accounted"] == pytest.approx(6, abs=0.02)
    run = LedgerEvent(
        noise_multiplier=centred["noise_multiplier"],
        sample_rate=centred["sample_rate"],
        steps=centred["steps"],
    )
    assert epsilon_of([run], 1e-4) < centred["epsilon_accounted"]  # the centre is in it


@pytest.mark.parametrize("sigma", [2.0, 6.0])
def test_prv_accounts_a_whole_set_release_as_the_gaussian_mechanism(sigma: float) -> None:
    """q = 1 (the centre) through opacus' PRV: no warning, and at most 2 % above dp-accounting's
    PLD of the same Gaussian mechanism, plus the 0.01 PRV adds to its upper bound (alone and
    composed with DP-SGD steps)."""
    from common.privacy.independent_accounting import pld_epsilon

    steps = LedgerEvent(noise_multiplier=4.4, sample_rate=1 / 8, steps=2400)
    for events in ([centring_event(sigma)], [centring_event(sigma), steps]):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            by_prv = epsilon_of(events, 1e-4, "prv")
        by_pld = pld_epsilon(events, 1e-4)
        assert by_pld * 0.999 <= by_prv <= by_pld * 1.02 + 0.01


def test_a_centre_that_is_mostly_noise_is_named(caplog: pytest.LogCaptureFixture) -> None:
    """16 records of the tiny Swin's 32 features, R = 5: the expected error sigma_c R sqrt(2 F)
    / N is 2 x 5 x 8 / 16 = 5 > R / 2 at sigma_c 2 (named), 1.25 at sigma_c 0.5 (quiet)."""
    for noise, named in ((2.0, True), (0.5, False)):
        caplog.clear()
        with caplog.at_level("WARNING"):
            _fit(_centred_model(), random_patches(16), _centring_settings(noise=noise))
        assert ("centring likely costs more than it saves" in caplog.text) == named, noise
