"""Structured config of `mammofl gan`: the MCGAN's shape, training, DP option and data."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from common.config.schema import (
    ACCOUNTANTS,
    PatchSourceConfig,
    _choice,
    _device,
    _positive_epsilon,
)
from common.errors import ConfigError


@dataclass
class GanModelConfig:
    image_size: int = 128
    latent_dim: int = 100
    embedding_dim: int = 50
    label_channels: int = 100
    generator_width: int = 64
    discriminator_width: int = 64


@dataclass
class GanDPConfig:
    """DP-SGD on the discriminator (the only network that sees real images)."""

    enabled: bool = False
    target_epsilon: float = 10.0
    delta: float = 1e-4
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    # Poisson batches and noise from the config seed: reproducible research only, marked
    seeded_noise: bool = False

    def __post_init__(self) -> None:
        _choice("gan.dp.accountant", self.accountant, ACCOUNTANTS)
        _positive_epsilon("gan.dp.target_epsilon", self.target_epsilon)
        if not 0 < self.delta < 1:
            raise ConfigError(f"gan.dp.delta={self.delta} must be in (0, 1), e.g. 1e-4")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ConfigError(f"gan.dp.max_grad_norm={self.max_grad_norm} must be > 0, e.g. 1.0")


@dataclass
class GanTrainConfig:
    epochs: int = 1500
    batch_size: int = 16
    lr_generator: float = 1e-4
    lr_discriminator: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    discriminator_steps: int = 1
    real_target_low: float = 0.7
    real_target_high: float = 1.2
    flip_probability: float = 0.5
    zoom_low: float = 0.9
    zoom_high: float = 1.1
    checkpoint_every: int = 50
    samples_per_class: int = 8
    device: str = "auto"

    def __post_init__(self) -> None:
        _device("gan.train.device", self.device)
        if self.epochs < 1 or self.batch_size < 1 or self.discriminator_steps < 1:
            raise ConfigError("gan.train: epochs, batch_size, discriminator_steps >= 1")
        for key in ("lr_generator", "lr_discriminator"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"gan.train.{key}={value} must be a finite number > 0, e.g. 1e-4")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError("gan.train.beta1 and beta2 (Adam) must be in [0, 1)")
        if not 0 <= self.flip_probability <= 1:
            raise ConfigError(f"gan.train.flip_probability={self.flip_probability}: use [0, 1]")
        if self.samples_per_class < 1:
            raise ConfigError("gan.train.samples_per_class >= 1")
        if not 0 < self.real_target_low <= self.real_target_high:
            raise ConfigError("gan.train: 0 < real_target_low <= real_target_high")
        if not 0 < self.zoom_low <= self.zoom_high:
            raise ConfigError("gan.train: 0 < zoom_low <= zoom_high")
        if self.checkpoint_every < 1:
            raise ConfigError("gan.train.checkpoint_every >= 1")


@dataclass
class GanConfig:
    model: GanModelConfig = field(default_factory=GanModelConfig)
    train: GanTrainConfig = field(default_factory=GanTrainConfig)
    dp: GanDPConfig = field(default_factory=GanDPConfig)
    data: PatchSourceConfig = field(default_factory=PatchSourceConfig)
    site: str = "site"
    seed: int = 42
    out_dir: str | None = None
    shared_dir: str = "../shared"
