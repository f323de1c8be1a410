"""Canary populations, inclusion draws, and the feature cache the audit fills for each half."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from common.audit.population import build_population, draw_inclusion
from common.data.images import LoadedPatches
from common.data.patch_set import PatchSet
from common.training.features import cached_features
from tests.unit.training.helpers import random_patches, tiny_model


def _with_synthetic(n_real: int, n_syn: int) -> LoadedPatches:
    real, syn = random_patches(n_real, seed=1), random_patches(n_syn, seed=2)
    records = [
        replace(r, source="synthetic", patient_id=f"s{i}")
        for i, r in enumerate(syn.patch_set.records)
    ]
    return LoadedPatches(
        PatchSet(real.patch_set.records + records), np.concatenate([real.pixels, syn.pixels])
    )


def test_canaries_are_real_records_and_the_rest_is_always_in() -> None:
    data = _with_synthetic(10, 4)
    every = build_population(data, "real", None)
    assert every.canaries.tolist() == list(range(10)) and every.fixed.tolist() == [10, 11, 12, 13]
    some = build_population(data, "real", 4, seed=3)
    assert len(some.canaries) == 4 and set(some.canaries) <= set(range(10))
    assert some.canaries.tolist() == build_population(data, "real", 4, seed=3).canaries.tolist()
    included = np.array([True, False, True, False])
    chosen = some.training_indices(included)
    assert set(chosen) == set(some.fixed) | set(some.canaries[[0, 2]])
    assert np.all(np.diff(chosen) > 0)
    with pytest.raises(ValueError):
        build_population(data, "real", 11)


def test_mislabelled_canaries_flip_only_their_labels() -> None:
    data = random_patches(12)
    population = build_population(data, "mislabelled", 5, seed=0)
    flipped = np.asarray(data.patch_set.labels) != population.labels
    assert np.flatnonzero(flipped).tolist() == population.canaries.tolist()
    assert population.loaded.pixels is data.pixels


def test_inclusion_is_a_fair_coin_per_canary_fixed_by_the_seed() -> None:
    draws = np.stack([draw_inclusion(1000, seed) for seed in range(20)])
    assert abs(draws.mean() - 0.5) < 0.01
    assert np.array_equal(draw_inclusion(1000, 7), draw_inclusion(1000, 7))
    assert not np.array_equal(draw_inclusion(1000, 7), draw_inclusion(1000, 8))


def test_a_random_half_reads_the_population_features_from_the_bank(tmp_path: Path) -> None:
    model = tiny_model("swin").float()
    cpu = torch.device("cpu")
    data = _with_synthetic(6, 3)
    everyone = cached_features(model.backbone, data, (0, 1, 2, 3), 4, cpu, str(tmp_path))
    population = build_population(data, "real", None)
    indices = population.training_indices(np.array([True, False, True, True, False, False]))
    half = population.subset(indices)

    def no_backbone_pass(*args: object) -> None:
        raise AssertionError("the backbone ran although the bank holds every image")

    model.backbone.forward = no_backbone_pass  # type: ignore[method-assign]
    read = cached_features(model.backbone, half, (0, 1, 2, 3), 4, cpu, str(tmp_path))
    torch.testing.assert_close(read, everyone[:, indices])


def test_one_mechanism_whatever_canaries_are_in() -> None:
    """The one-run bound assumes one (epsilon, delta)-DP mechanism over the canaries' inclusion
    bits: q, sigma, steps and the noise divisor must not depend on how many are in."""
    from common.audit.shadow import engine_settings
    from common.config.compose import compose_config
    from common.runs.planning import plan_for

    data = _with_synthetic(10, 4)
    population = build_population(data, "real", None)
    assert population.expected_training_size == 4 + 10 // 2
    config = compose_config(["experiment=tiny", "train.batch_size=3"])
    plan = plan_for(config, population.expected_training_size)
    settings = engine_settings(config, tiny_model("swin"), plan, torch.device("cpu"))
    assert settings.dp is not None
    assert settings.dp.expected_batch_size == int(9 * plan.sample_rate)
    assert settings.dp.sample_rate == plan.sample_rate == 1 / 3


def test_engines_use_a_fixed_noise_divisor_when_given() -> None:
    import dataclasses

    from common.training.cached_engine import CachedEngine
    from common.training.naive_engine import NaiveEngine
    from tests.unit.training.helpers import settings

    base = settings(False)
    assert base.dp is not None
    fixed = dataclasses.replace(base, dp=dataclasses.replace(base.dp, expected_batch_size=7))
    for engine_class in (CachedEngine, NaiveEngine):
        default = engine_class(tiny_model("swin"), random_patches(8), {}, base)
        assert default.mechanism.expected_batch_size == int(8 * 0.5)
        engine = engine_class(tiny_model("swin"), random_patches(8), {}, fixed)
        assert engine.mechanism.expected_batch_size == 7
        engine.close()
        default.close()
