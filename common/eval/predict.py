"""Malignancy probabilities of a classifier on loaded patches (eval mode, no flips)."""

from __future__ import annotations

import numpy as np
import torch

from common.data.images import LoadedPatches
from common.models.classifier import Classifier
from common.training.features import cached_features


@torch.no_grad()
def predict_probabilities(
    model: Classifier,
    loaded: LoadedPatches,
    device: torch.device,
    batch_size: int = 64,
    cache_dir: str | None = None,
) -> np.ndarray:
    """Backbone features (cached when `cache_dir` is set), then the head, all in eval mode."""
    model.eval().to(device)
    features = cached_features(model.backbone, loaded, (0,), batch_size, device, cache_dir)[0]
    logits = model.head(features.to(device))
    return torch.softmax(logits, 1)[:, 1].cpu().numpy()
