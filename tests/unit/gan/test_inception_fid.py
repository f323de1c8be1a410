"""The Inception-FID path with a local weights file (random weights of the FID architecture
stand in for pytorch-fid's file, which cannot be downloaded here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import ConfigError
from common.eval.synthetic_score import inception_features


def _fid_architecture_weights(path: Path) -> None:
    from pytorch_fid import inception as inc

    model = inc._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    model.Mixed_5b = inc.FIDInceptionA(192, pool_features=32)
    model.Mixed_5c = inc.FIDInceptionA(256, pool_features=64)
    model.Mixed_5d = inc.FIDInceptionA(288, pool_features=64)
    model.Mixed_6b = inc.FIDInceptionC(768, channels_7x7=128)
    model.Mixed_6c = inc.FIDInceptionC(768, channels_7x7=160)
    model.Mixed_6d = inc.FIDInceptionC(768, channels_7x7=160)
    model.Mixed_6e = inc.FIDInceptionC(768, channels_7x7=192)
    model.Mixed_7b = inc.FIDInceptionE_1(1280)
    model.Mixed_7c = inc.FIDInceptionE_2(2048)
    torch.save(model.state_dict(), path)


def test_inception_features_from_a_local_file(tmp_path: Path) -> None:
    weights = tmp_path / "pt_inception.pth"
    _fid_architecture_weights(weights)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 64, 64), dtype=np.uint8)
    features = inception_features(pixels, str(weights), torch.device("cpu"))
    assert features.shape == (3, 2048) and np.isfinite(features).all()
    from pytorch_fid import inception as inc

    assert inc.load_state_dict_from_url.__module__ != "common.eval.synthetic_score"  # no leak


def test_missing_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="inception weights"):
        inception_features(
            np.zeros((1, 8, 8), np.uint8), str(tmp_path / "none.pth"), torch.device("cpu")
        )
