"""Malignancy probabilities of a classifier on loaded patches (eval mode; the 4 flips averaged
when the model says `flip_averaging`)."""

from __future__ import annotations

import numpy as np
import torch

from common.data.images import LoadedPatches
from common.models.classifier import Classifier, prediction_variants, variant_mean_probability
from common.training.features import cached_features


@torch.no_grad()
def predict_probabilities(
    model: Classifier,
    loaded: LoadedPatches,
    device: torch.device,
    batch_size: int = 64,
    cache_dir: str | None = None,
) -> np.ndarray:
    """Backbone features (cached when `cache_dir` is set), then the head, all in eval mode;
    returns float [N] (mean over flip variants [V, N] with flip averaging)."""
    model.eval().to(device)
    variants = prediction_variants(model)
    features = cached_features(model.backbone, loaded, variants, batch_size, device, cache_dir)
    return variant_mean_probability(model.head_logits(features.to(device))).cpu().numpy()
