from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from common.config.schema import PatchSourceConfig
from common.data.readers import read_patch_source
from common.eval.fidelity import (
    frechet_distance,
    kernel_inception_distance,
    precision_recall_coverage,
    texture_features,
)
from common.training.gan_generate import generate_patch_set
from tests.unit.gan.helpers import trainer


def test_dp_provenance_charges_the_whole_run(tmp_path: Path) -> None:
    """Picking an early checkpoint after seeing later grids does not lower the reported spend."""
    t = trainer(tmp_path / "run", dp=True, epochs=2)
    t.fit(progress=False)
    early = tmp_path / "run" / "checkpoints" / "epoch_00001.pt"
    generate_patch_set(early, tmp_path / "gen", {1: 1, 0: 1})
    provenance = json.loads((tmp_path / "gen" / "provenance.json").read_text())
    assert provenance["epoch"] == 1
    assert provenance["epsilon_at_checkpoint"] < provenance["epsilon"] == pytest.approx(t.epsilon())


@pytest.mark.parametrize("dp", [False, True])
def test_generate_writes_a_synthetic_patch_set(tmp_path: Path, dp: bool) -> None:
    t = trainer(tmp_path / "run", dp=dp, epochs=1)
    checkpoint = t.fit(progress=False)
    assert checkpoint is not None
    out = tmp_path / "gen"
    generate_patch_set(checkpoint, out, {1: 3, 0: 2}, seed=1)
    patch_set = read_patch_source(PatchSourceConfig(format="patchset", path=str(out)))
    assert patch_set.labels == [1, 1, 1, 0, 0]
    assert all(
        r.source == "synthetic" and r.patient_id.startswith("synthetic:") for r in patch_set.records
    )
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["dp"] is dp and provenance["epoch"] == 1
    if dp:
        assert (
            provenance["epsilon"] == pytest.approx(t.epsilon()) and provenance["formal_guarantee"]
        )
    else:
        assert provenance["epsilon"] is None and "no formal" in provenance["note"]
    manifest = pd.read_csv(out / "manifest.csv")
    assert manifest["provenance_file"].str.contains(provenance["checkpoint_sha256"][:12]).all()
    image = cv2.imread(patch_set.records[0].path, cv2.IMREAD_UNCHANGED)
    assert image.dtype == np.uint8 and image.shape == (32, 32)


def test_frechet_and_kid_see_distribution_shifts() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    shifted = rng.normal(size=(400, 8)) + 1.0
    assert frechet_distance(a, b) < 0.3 < frechet_distance(a, shifted)
    assert frechet_distance(a, shifted) == pytest.approx(8.0, rel=0.2)  # ||mu||^2 = 8
    same = kernel_inception_distance(a, b, seed=0)[0]
    assert abs(same) < 0.05 < kernel_inception_distance(a, shifted, seed=0)[0]


def test_mode_collapse_shows_in_recall_and_coverage() -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 4))
    healthy = rng.normal(size=(300, 4))
    collapsed = real[:5].repeat(60, 0) + rng.normal(scale=0.01, size=(300, 4))
    good, bad = precision_recall_coverage(real, healthy), precision_recall_coverage(real, collapsed)
    assert good["recall"] > 0.8 and good["coverage"] > 0.8
    assert bad["precision"] > 0.9 and bad["recall"] < 0.2 and bad["coverage"] < 0.2


def test_texture_features_shape_and_sensitivity() -> None:
    rng = np.random.default_rng(0)
    smooth = np.full((3, 32, 32), 120, np.uint8) + rng.integers(0, 3, (3, 32, 32)).astype(np.uint8)
    rough = rng.integers(0, 256, (3, 32, 32)).astype(np.uint8)
    f_smooth, f_rough = texture_features(smooth), texture_features(rough)
    assert f_smooth.shape == f_rough.shape == (3, 9 + 6 * 2)  # GLCM props at distances 1, 2
    contrast = 9  # first GLCM property
    assert f_rough[:, contrast].min() > f_smooth[:, contrast].max()
