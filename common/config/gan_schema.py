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
    # the fast path (issue #12; `gan_preset=fast`), each option on its own:
    # fast_loop: an epoch's host-side draws made at its start in the baseline's order and sent
    # to the device at once, losses kept on the device (no host sync per step; same numbers)
    fast_loop: bool = False
    channels_last: bool = False  # NHWC convolutions (refused under DP: see check_fast_with_dp)
    precision: str = "fp32"  # fp32 | bf16 (autocast, CUDA only) | auto (bf16 where allowed)
    compile: str = "none"  # none | default | reduce-overhead | max-autotune (torch.compile)

    def __post_init__(self) -> None:
        _device("gan.train.device", self.device)
        _choice("gan.train.precision", self.precision, PRECISIONS)
        _choice("gan.train.compile", self.compile, COMPILE_MODES)
        if self.precision == "bf16" and self.device == "cpu":
            raise ConfigError(
                "gan.train.precision=bf16 autocasts on CUDA only and gan.train.device=cpu: use "
                "precision=fp32 (or auto, which is fp32 on CPU)"
            )
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


PRECISIONS = ("fp32", "bf16", "auto")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


def check_fast_with_dp(train: GanTrainConfig, dp: GanDPConfig) -> None:
    """Refuse the fast options that would not keep the DP discriminator's per-sample gradients
    exact (the fast loop itself draws the same numbers and stays allowed)."""
    if not dp.enabled:
        return
    if train.channels_last:
        raise ConfigError(
            "gan.train.channels_last=true with gan.dp.enabled=true: opacus 1.6 computes wrong "
            "per-sample gradients for channels-last convolutions (tests/unit/gan/"
            "test_gan_fast.py shows it), so the clipping would not bound each patch; set "
            "gan.train.channels_last=false (gan.train.fast_loop=true stays exact)"
        )
    if train.precision == "bf16":
        raise ConfigError(
            "gan.train.precision=bf16 with gan.dp.enabled=true: per-sample gradients and their "
            "norms would be computed in bf16, so the clipping bound is not exact; use "
            "gan.train.precision=fp32 (auto resolves to fp32 under DP)"
        )
    if train.compile != "none":
        raise ConfigError(
            f"gan.train.compile={train.compile} with gan.dp.enabled=true: opacus' per-sample "
            "hooks do not run inside a compiled graph; use gan.train.compile=none under DP"
        )


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

    def __post_init__(self) -> None:
        check_fast_with_dp(self.train, self.dp)
