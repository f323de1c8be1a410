"""Typed configuration: dataclass schemas, hydra registration, compose helpers."""

from common.config.schema import (
    DataConfig,
    EvalConfig,
    MammoflConfig,
    ModelConfig,
    PatchSourceConfig,
    PrivacyConfig,
    TrainConfig,
    ValidationConfig,
)

__all__ = [
    "DataConfig",
    "EvalConfig",
    "MammoflConfig",
    "ModelConfig",
    "PatchSourceConfig",
    "PrivacyConfig",
    "TrainConfig",
    "ValidationConfig",
]
