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
    assert len(list(tmp_path.glob("bank-*/shard-*.json"))) == 1
    real_only = random_patches(5, seed=1)
    again = cached_features(model.backbone, real_only, (0, 1, 2, 3), 4, cpu, str(tmp_path))
    assert len(list(tmp_path.glob("bank-*/shard-*.json"))) == 1  # every image from the bank
    torch.testing.assert_close(again, fresh[:, :5], rtol=1e-5, atol=1e-6)


def test_known_images_never_run_through_the_backbone_again(tmp_path: Path) -> None:
    """Another manifest, subset or order of known images (a hold-out, a random half, Real vs
    Real+Syn) reads the bank only; new images alone are computed and added."""
    model = tiny_model("swin").float()
    cpu = torch.device("cpu")
    data = random_patches(8, seed=3)
    fresh = extract_features(model.backbone, data, (0, 1), 4, cpu)
    cached_features(model.backbone, data, (0, 1), 4, cpu, str(tmp_path))
    order = [6, 1, 3, 1]  # a subset, reordered, one image twice
    subset = LoadedPatches(data.patch_set.subset(order), data.pixels[order])
    forward = model.backbone.forward

    def no_backbone_pass(*args: object) -> None:
        raise AssertionError("the backbone ran for images already in the bank")

    model.backbone.forward = no_backbone_pass  # type: ignore[method-assign]
    read = cached_features(model.backbone, subset, (0, 1), 4, cpu, str(tmp_path))
    torch.testing.assert_close(read, fresh[:, order])
    model.backbone.forward = forward  # type: ignore[method-assign]
    more = random_patches(3, seed=9)
    both = LoadedPatches(
        PatchSet(data.patch_set.records[:2] + more.patch_set.records),
        np.concatenate([data.pixels[:2], more.pixels]),
    )
    out = cached_features(model.backbone, both, (0, 1), 4, cpu, str(tmp_path))
    torch.testing.assert_close(out, extract_features(model.backbone, both, (0, 1), 4, cpu))
    assert len(list(tmp_path.glob("bank-*/shard-*.json"))) == 2  # only the 3 new images added


def test_changed_pixels_miss_the_cache(tmp_path: Path) -> None:
    model = tiny_model("swin").float()
    cpu = torch.device("cpu")
    data = random_patches(4)
    cached_features(model.backbone, data, (0,), 4, cpu, str(tmp_path))
    changed = LoadedPatches(data.patch_set, 255 - data.pixels)
    out = cached_features(model.backbone, changed, (0,), 4, cpu, str(tmp_path))
    assert len(list(tmp_path.glob("bank-*/shard-*.json"))) == 2
    torch.testing.assert_close(out, extract_features(model.backbone, changed, (0,), 4, cpu))


def test_frozen_graph_features_equal_eager_ones() -> None:
    """On CPU a large enough pass runs a frozen TorchScript graph (BatchNorm folded): its
    features must equal eager ones (1e-4 of the largest), or eager is used."""
    from common.data.images import apply_flips, to_model_input
    from common.training.features import FROZEN_GRAPH_MIN_IMAGES, frozen_graph

    model = tiny_model("bn_cnn").float()
    backbone = model.backbone.eval()
    data = random_patches(FROZEN_GRAPH_MIN_IMAGES // 4, seed=4)
    images = to_model_input(data.pixels)
    assert frozen_graph(backbone, images) is not None  # a BatchNorm CNN traces and folds
    assert frozen_graph(backbone.double(), images.double()) is None  # float32 only
    backbone.float()
    features = extract_features(backbone, data, (0, 1, 2, 3), 16, torch.device("cpu"))
    with torch.no_grad():
        for variant in range(4):
            flips = torch.full((len(images),), variant)
            eager = backbone(apply_flips(images, flips))
            scale = float(eager.abs().max())
            assert float((features[variant] - eager).abs().max()) <= 1e-4 * scale
