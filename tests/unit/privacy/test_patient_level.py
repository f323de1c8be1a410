"""Patient-level DP: a patient's patches are sampled together and clipped as one record.

The guarantee's neighbouring relation is "one patient added or removed", so that change must
touch at most one sampled record and one clipped contribution (norm <= C), however many patches
the patient has. The per-patch mechanism gives no such bound (a contrast each test checks).
"""

from __future__ import annotations

import copy
import zlib

import pytest
import torch
from torch import nn

from common.privacy.dp_sgd import RecordGroups, clip_factors, clipped_sum
from common.training.head_gradients import clipped_gradient_sum

CLIP = 1.0
# patient "ZZ" (sorted last, so the other patients' Poisson draws are the same in both data
# sets) has 6 patches with large gradients; the others have 1-3 patches each
OTHERS = [f"P{i:02d}" for i in range(12) for _ in range(1 + i % 3)]
WITH_ZZ = OTHERS + ["ZZ"] * 6


def head() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.LeakyReLU(0.2), nn.Linear(4, 2)).double()


def features_for(patients: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic features per (patient, patch number): the same patch in both data sets.

    ZZ's patches are near-copies with the label the head finds least likely: six large
    gradients in one direction (the worst case for per-patch clipping).
    """
    zz = 40.0 * torch.randn(5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    with torch.no_grad():
        zz_label = int(head()(zz[None]).argmin())
    rows, labels, seen = [], [], {}
    for patient in patients:
        k = seen.get(patient, 0)
        seen[patient] = k + 1
        g = torch.Generator().manual_seed(zlib.crc32(f"{patient}/{k}".encode()))
        noise = torch.randn(5, generator=g, dtype=torch.float64)
        rows.append(zz + 0.1 * noise if patient == "ZZ" else noise)
        labels.append(zz_label if patient == "ZZ" else (k + len(patient)) % 2)
    return torch.stack(rows), torch.tensor(labels)


def loss_of(labels: torch.Tensor):
    return lambda logits: nn.functional.cross_entropy(logits, labels, reduction="none")


def reference_clipped_sum(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, groups: torch.Tensor
) -> list[torch.Tensor]:
    """One backward pass per record (sum of its rows' losses), clipped, summed."""
    model = copy.deepcopy(model)
    total = [torch.zeros_like(p) for p in model.parameters()]
    for record in groups.unique():
        rows = groups == record
        model.zero_grad()
        nn.functional.cross_entropy(model(x[rows]), y[rows], reduction="sum").backward()
        grads = [p.grad.detach().clone() for p in model.parameters()]
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        factor = clip_factors(norm[None], CLIP)[0]
        total = [t + factor * g for t, g in zip(total, grads, strict=True)]
    return total


def test_records_are_patients_and_a_sample_holds_all_their_patches() -> None:
    groups = RecordGroups.per_patient(WITH_ZZ)
    assert groups.records == 13 and groups.unit == "patient"
    generator = torch.Generator().manual_seed(3)
    for _ in range(50):
        rows, positions = groups.sample(0.3, generator)
        assert positions is not None
        sampled = {WITH_ZZ[i] for i in rows.tolist()}
        # every patch of every sampled patient is in, and one position per patient
        assert sorted(rows.tolist()) == [i for i, p in enumerate(WITH_ZZ) if p in sampled]
        by_position = {}
        for row, position in zip(rows.tolist(), positions.tolist(), strict=True):
            by_position.setdefault(position, set()).add(WITH_ZZ[row])
        assert all(len(v) == 1 for v in by_position.values())
        assert sorted(by_position) == list(range(len(sampled)))


def test_per_patch_unit_keeps_each_row_a_record() -> None:
    groups = RecordGroups.for_unit("patch", WITH_ZZ)
    assert groups.records == len(WITH_ZZ)
    rows, positions = groups.sample(0.5, torch.Generator().manual_seed(0))
    assert positions is None and len(rows) <= len(WITH_ZZ)


def test_head_record_norms_equal_a_loop_over_records() -> None:
    """The Gram-matrix rule equals per-record backward passes (records of 1 to 6 rows)."""
    model = head()
    x, y = features_for(WITH_ZZ)
    groups = RecordGroups.per_patient(WITH_ZZ).record_of
    sums, norms, _ = clipped_gradient_sum(
        model, x, loss_of(y), lambda n: clip_factors(n, CLIP), groups
    )
    assert norms.shape == (13,)
    expected = reference_clipped_sum(model, x, y, groups)
    for parameter, want in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(sums[parameter], want, rtol=1e-9, atol=1e-9)


def test_generic_clipped_sum_clips_a_record_once() -> None:
    """The naive engine's path: per-row gradients summed per record, then clipped once."""
    grads = [torch.tensor([[3.0, 0.0], [0.0, 4.0], [0.3, 0.4]])]
    groups = torch.tensor([0, 0, 1])
    (total,) = clipped_sum(grads, CLIP, groups)
    # record 0: (3, 4) -> norm 5 -> scaled to norm 1; record 1: norm 0.5, untouched
    torch.testing.assert_close(total, torch.tensor([0.6 + 0.3, 0.8 + 0.4]), atol=1e-5, rtol=0)
    (per_row,) = clipped_sum(grads, CLIP)  # per patch: (1, 0) + (0, 1) + (0.3, 0.4)
    torch.testing.assert_close(per_row, torch.tensor([1.3, 1.4]), atol=1e-5, rtol=0)


def _clipped_batch_sum(patients: list[str], seed: int, unit: str) -> tuple[set, torch.Tensor]:
    model = head()
    x, y = features_for(patients)
    records = RecordGroups.for_unit(unit, patients)
    rows, positions = records.sample(0.4, torch.Generator().manual_seed(seed))
    sums, _, _ = clipped_gradient_sum(
        model, x[rows], loss_of(y[rows]), lambda n: clip_factors(n, CLIP), positions
    )
    flat = torch.cat([sums[p].flatten() for p in model.parameters()])
    return {patients[i] for i in rows.tolist()}, flat


@pytest.mark.parametrize("seed", range(40))
def test_removing_one_patient_changes_one_record_and_one_clipped_contribution(seed: int) -> None:
    draws = torch.rand(13, generator=torch.Generator().manual_seed(seed))
    shorter = torch.rand(12, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(draws[:12], shorter)  # the coupling the test relies on
    with_patient, sum_with = _clipped_batch_sum(WITH_ZZ, seed, "patient")
    without, sum_without = _clipped_batch_sum(OTHERS, seed, "patient")
    assert with_patient - without <= {"ZZ"} and without <= with_patient
    assert (sum_with - sum_without).norm() <= CLIP * (1 + 1e-9)


def test_per_patch_clipping_gives_no_such_bound() -> None:
    """The contrast: per patch, removing ZZ can move the clipped sum by up to 6 C."""
    gaps = []
    for seed in range(40):
        with_patient, sum_with = _clipped_batch_sum(WITH_ZZ, seed, "patch")
        _, sum_without = _clipped_batch_sum(OTHERS, seed, "patch")
        if "ZZ" in with_patient:
            gaps.append(float((sum_with - sum_without).norm()))
    assert max(gaps) > 4 * CLIP  # several of ZZ's patches, each clipped to C


def test_naive_and_cached_engines_clip_a_patient_once_alike() -> None:
    """Both engines, same rows and flips, rows grouped by patient: the same clipped sums, and
    each equals a loop over patients of (sum of their patches' gradients) clipped once."""
    from common.training.cached_engine import CachedEngine
    from common.training.naive_engine import NaiveEngine
    from tests.unit.training.helpers import loop_gradients, random_patches, settings, tiny_model

    model = tiny_model("swin", policy="head")
    data = random_patches(8)
    dp = settings(train_mode=False, clip=0.05)
    indices = torch.tensor([0, 1, 3, 4, 7])
    flips = torch.tensor([0, 1, 2, 3, 1])
    groups = torch.tensor([0, 0, 1, 1, 2])  # two patients of two patches, one of one
    naive = NaiveEngine(copy.deepcopy(model), data, {}, dp)
    cached = CachedEngine(copy.deepcopy(model), data, {}, dp)
    features, labels = cached.batch(indices, flips)
    sums, norms, _ = cached.dp_clipped_sum(features, labels, groups)
    names = {id(p): n for n, p in cached.model.named_parameters()}
    got_cached = {names[id(p)]: s for p, s in sums.items()}
    got_naive = naive.dp_clipped_sum(indices, flips, groups)

    images, _ = naive.batch(indices, flips)
    per_row = loop_gradients(copy.deepcopy(model), images, labels, train_mode=False)
    per_record = {n: torch.zeros((3, *g.shape[1:]), dtype=g.dtype) for n, g in per_row.items()}
    for name, g in per_row.items():
        per_record[name].index_add_(0, groups, g)
    record_norms = torch.cat([g.flatten(1) for g in per_record.values()], 1).norm(dim=1)
    torch.testing.assert_close(norms, record_norms, rtol=1e-6, atol=1e-12)
    factors = clip_factors(record_norms, 0.05)
    want = {n: torch.einsum("i,i...->...", factors, g) for n, g in per_record.items()}
    for name in want:
        torch.testing.assert_close(got_cached[name], want[name], rtol=1e-6, atol=1e-12)
        torch.testing.assert_close(got_naive[name], want[name], rtol=1e-6, atol=1e-12)


def test_plan_shows_the_three_figures_for_a_table1_preset() -> None:
    """`mammofl plan experiment=table1/real_eps6`: per-patch epsilon, per-patient epsilon of
    patient-level DP, and the per-patch guarantee by group privacy (vacuous: delta > 1)."""
    from common.config.compose import compose_config
    from common.runs.planning import plan_report

    units = plan_report(compose_config(["experiment=table1/real_eps6"]))["units"]
    patch, patient = units["per_patch"], units["per_patient"]
    assert (patch["records"], patient["records"]) == (1104, 578)  # released CBIS-DDSM train
    assert 5.9 < patch["epsilon"] <= 6.0 and 5.9 < patient["epsilon"] <= 6.0
    assert patient["noise_multiplier"] > patch["noise_multiplier"]  # fewer, larger records
    group = units["per_patient_by_group_privacy"]
    assert group["group_size"] == 14 and group["vacuous"]
    assert group["epsilon"] == pytest.approx(14 * patch["epsilon"])
    assert group["delta"].startswith("vacuous")


def test_plan_reports_an_impossible_patient_plan_instead_of_failing() -> None:
    """Fewer patients than the batch size: the patch plan stands, the patient row says why."""
    from common.config.compose import compose_config
    from common.runs.planning import plan_report

    config = compose_config(["experiment=table1/real_eps6", "train.batch_size=1000"])
    units = plan_report(config)["units"]
    assert units["per_patch"]["records"] == 1104 and "epsilon" in units["per_patch"]
    assert "train.batch_size=1000" in units["per_patient"]["error"]
    assert units["per_patient_by_group_privacy"]["vacuous"]


def test_run_cell_refuses_delta_at_or_above_one_over_n(tmp_path, phantom_env) -> None:  # type: ignore[no-untyped-def]
    """delta >= 1/N (N = the unit's records) is refused before any data use."""
    from common.config.compose import compose_config
    from common.errors import PrivacyError
    from common.runs.single_node import run_cell

    config = compose_config(
        ["experiment=tiny", "privacy.unit=patient", "train.batch_size=4", "privacy.delta=0.1"]
    )
    with pytest.raises(PrivacyError, match="1/N with N=12"):
        run_cell(config, tmp_path / "cell", progress=False)
    assert not (tmp_path / "cell").exists()
