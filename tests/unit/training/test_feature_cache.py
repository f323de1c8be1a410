from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from common.data.images import LoadedPatches
from common.data.patch_set import PatchSet
from common.training.features import cached_features, extract_features
from tests.unit.training.helpers import random_patches, tiny_model


def _mixed(n_real: int, n_syn: int) -> LoadedPatches:
    real, syn = random_patches(n_real, seed=1), random_patches(n_syn, seed=2)
    syn_records = [
        replace(r, source="synthetic", patient_id=f"s{i}")
        for i, r in enumerate(syn.patch_set.records)
    ]
    return LoadedPatches(
        PatchSet(real.patch_set.records + syn_records), np.concatenate([real.pixels, syn.pixels])
    )


def test_cache_equals_fresh_features_and_reuses_parts(tmp_path: Path) -> None:
    model = tiny_model("swin").float()
    cpu = torch.device("cpu")
    mixed = _mixed(5, 3)
    fresh = extract_features(model.backbone, mixed, (0, 1, 2, 3), 4, cpu)
    cached = cached_features(model.backbone, mixed, (0, 1, 2, 3), 4, cpu, str(tmp_path))
    torch.testing.assert_close(cached, fresh, rtol=1e-5, atol=1e-6)
    assert len(list(tmp_path.glob("features-*.pt"))) == 2  # real and synthetic parts
    real_only = random_patches(5, seed=1)
    again = cached_features(model.backbone, real_only, (0, 1, 2, 3), 4, cpu, str(tmp_path))
    assert len(list(tmp_path.glob("features-*.pt"))) == 2  # the real part came from the cache
    torch.testing.assert_close(again, fresh[:, :5], rtol=1e-5, atol=1e-6)


def test_changed_pixels_miss_the_cache(tmp_path: Path) -> None:
    model = tiny_model("swin").float()
    cpu = torch.device("cpu")
    data = random_patches(4)
    cached_features(model.backbone, data, (0,), 4, cpu, str(tmp_path))
    changed = LoadedPatches(data.patch_set, 255 - data.pixels)
    out = cached_features(model.backbone, changed, (0,), 4, cpu, str(tmp_path))
    assert len(list(tmp_path.glob("features-*.pt"))) == 2
    torch.testing.assert_close(out, extract_features(model.backbone, changed, (0,), 4, cpu))
