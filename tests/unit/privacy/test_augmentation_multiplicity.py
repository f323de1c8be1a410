"""Augmentation multiplicity (De et al. 2022): K flip variants of one record are averaged
before the record's one clipping, so the record still adds one contribution of norm <= C.

Both engines (opacus per-sample gradients, the cached head's exact rule) are checked against a
per-record loop: one backward pass per image, the record's mean over its variants, clipped.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from common.privacy.dp_sgd import augment_records, clip_factors, draw_flips
from common.training.cached_engine import CachedEngine
from common.training.naive_engine import NaiveEngine
from tests.unit.training.helpers import loop_gradients, random_patches, settings, tiny_model

CLIP = 0.05  # small enough that every record here is clipped


def test_each_record_gets_k_distinct_variants_weighted_one_over_k() -> None:
    indices = torch.tensor([3, 5, 9])
    batch = augment_records(indices, None, 3, 4, torch.Generator().manual_seed(0), 10)
    assert batch.rows.tolist() == [3, 3, 3, 5, 5, 5, 9, 9, 9]
    assert batch.groups.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert torch.allclose(batch.weights, torch.full((9,), 1 / 3))
    for record in range(3):
        variants = batch.flips[batch.groups == record].tolist()
        assert len(set(variants)) == 3 and set(variants) <= {0, 1, 2, 3}
    # patient-level records keep their patient positions: rows of one patient share one group
    patients = augment_records(
        torch.tensor([0, 1, 4]), torch.tensor([0, 0, 1]), 4, 4, torch.Generator(), 10
    )
    assert patients.groups.tolist() == [0] * 8 + [1] * 4
    assert sorted(patients.flips[:4].tolist()) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"1\.\.4"):
        augment_records(indices, None, 5, 4, torch.Generator(), 10)


def test_a_records_flips_do_not_depend_on_which_others_were_sampled() -> None:
    """With a seeded flip stream, a step that sampled one more record must not shift the flips
    of the others (that would change many clipped terms, not one)."""
    with_record, without = torch.tensor([1, 2, 5, 7]), torch.tensor([1, 5, 7])
    for seed in range(20):
        a = draw_flips(with_record, 9, 4, torch.Generator().manual_seed(seed))
        b = draw_flips(without, 9, 4, torch.Generator().manual_seed(seed))
        assert a[[0, 2, 3]].tolist() == b.tolist()
        k_a = augment_records(with_record, None, 2, 4, torch.Generator().manual_seed(seed), 9)
        k_b = augment_records(without, None, 2, 4, torch.Generator().manual_seed(seed), 9)
        kept = torch.isin(k_a.rows, without)
        assert k_a.flips[kept].tolist() == k_b.flips.tolist()


def _reference(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, k: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-record loop: each image's own backward pass, a record's gradient = the sum over its
    rows of (1/K) x gradient, clipped once; returns (clipped sums, per-record norms)."""
    per_row = loop_gradients(copy.deepcopy(model), images, labels, train_mode=False)
    records = int(groups.max()) + 1
    per_record = {
        n: torch.zeros((records, *g.shape[1:]), dtype=g.dtype).index_add_(0, groups, g / k)
        for n, g in per_row.items()
    }
    norms = torch.cat([g.flatten(1) for g in per_record.values()], 1).norm(dim=1)
    factors = clip_factors(norms, CLIP)
    clipped = {n: torch.einsum("i,i...->...", factors, g) for n, g in per_record.items()}
    # the guarantee itself: every record's clipped contribution has norm <= C
    contributions = torch.cat(
        [(factors.view(-1, *[1] * (g.dim() - 1)) * g).flatten(1) for g in per_record.values()], 1
    )
    assert bool((contributions.norm(dim=1) <= CLIP * (1 + 1e-9)).all())
    return clipped, norms


@pytest.mark.parametrize("unit", ["patch", "patient"])
def test_both_engines_average_variants_then_clip_once_per_record(unit: str) -> None:
    model = tiny_model("swin", policy="head")
    data = random_patches(8)
    dp = settings(train_mode=False, clip=CLIP)
    dp = dataclasses.replace(dp, augmentation_multiplicity=4)
    indices = torch.tensor([0, 1, 3, 4, 7])
    groups = torch.tensor([0, 0, 1, 1, 2]) if unit == "patient" else None
    batch = augment_records(indices, groups, 4, 4, torch.Generator().manual_seed(1), 8)
    naive = NaiveEngine(copy.deepcopy(model), data, {}, dp)
    cached = CachedEngine(copy.deepcopy(model), data, {}, dp)
    features, labels = cached.batch(batch.rows, batch.flips)
    sums, norms, _ = cached.dp_clipped_sum(features, labels, batch.groups, batch.weights)
    names = {id(p): n for n, p in cached.model.named_parameters()}
    got_cached = {names[id(p)]: s for p, s in sums.items()}
    got_naive = naive.dp_clipped_sum(batch.rows, batch.flips, batch.groups, batch.weights)

    images, _ = naive.batch(batch.rows, batch.flips)
    want, want_norms = _reference(model, images, labels, batch.groups, 4)
    assert len(want_norms) == (3 if unit == "patient" else 5)  # one norm per record, not per row
    torch.testing.assert_close(norms, want_norms, rtol=1e-6, atol=1e-12)
    for name in want:
        torch.testing.assert_close(got_cached[name], want[name], rtol=1e-6, atol=1e-12)
        torch.testing.assert_close(got_naive[name], want[name], rtol=1e-6, atol=1e-12)
    # clipping was active: summing the K rows as separate records would give another sum
    separate, _ = _reference(model, images, labels, torch.arange(len(batch.rows)), 4)
    assert any(not torch.allclose(separate[n], want[n]) for n in want)


@pytest.mark.parametrize("engine_class", [NaiveEngine, CachedEngine])
def test_training_with_multiplicity_takes_one_noisy_step_per_planned_step(
    engine_class: type,
) -> None:
    dp = dataclasses.replace(settings(train_mode=False), augmentation_multiplicity=2)
    engine = engine_class(tiny_model("swin"), random_patches(8), {}, dp)
    for _ in range(3):
        engine.train_epoch()
    assert engine.steps_done == 6 and engine.mechanism.invocations == 6
