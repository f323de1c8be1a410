"""The federation's starting model: the same weights for the server and every comparison arm."""

from __future__ import annotations

import torch

from common.config.federated_schema import FederatedRunConfig
from common.models.classifier import Classifier, build_classifier
from common.models.policies import apply_trainable_policy


def initial_model(config: FederatedRunConfig, device: torch.device) -> Classifier:
    """`config.model` built under `config.seed` (timm/torchvision init, then its weights), with
    the run's trainable policy applied."""
    torch.manual_seed(config.seed)
    model = build_classifier(config.model)
    apply_trainable_policy(model, config.model.trainable)
    return model.to(device)
