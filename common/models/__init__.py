"""Classifier factory (timm / torchvision backbones + heads) and trainable-parameter policies."""

from common.models.classifier import Classifier, build_classifier
from common.models.policies import apply_trainable_policy, trainable_parameter_names

__all__ = [
    "Classifier",
    "apply_trainable_policy",
    "build_classifier",
    "trainable_parameter_names",
]
