"""What an engine needs to know, derived once from the config and the privacy plan."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from common.config.schema import TrainConfig
from common.errors import ConfigError


@dataclass(frozen=True)
class DPSettings:
    noise_multiplier: float
    sample_rate: float
    max_grad_norm: float
    steps_per_epoch: int
    # the privacy record: 'patch', or 'patient' (a patient's patches sampled and clipped as one)
    unit: str = "patch"
    # the noisy sum's divisor; None: int(N q) of the training set. Fixed by the audit, whose
    # mechanism must not depend on which canaries a model's training set holds
    expected_batch_size: int | None = None


@dataclass(frozen=True)
class CentringSettings:
    """model.feature_centring=train_mean: the head's inputs are centred on the training set's
    mean feature vector, released under DP by the Gaussian mechanism (common.privacy.centring)
    with `noise_multiplier` over records clipped to `max_norm`; None: the exact mean (no DP)."""

    noise_multiplier: float | None
    max_norm: float


@dataclass(frozen=True)
class EngineSettings:
    batch_size: int
    lr: float
    weight_decay: float
    label_smoothing: float
    flips: bool
    seed: int
    device: torch.device
    backbone_train_mode: bool
    feature_batch_size: int = 64
    feature_cache_dir: str | None = None
    dp: DPSettings | None = None
    progress: bool = False
    # None: Poisson sampling and DP noise from OS entropy (common.privacy.randomness); an int
    # is the explicit seeded research mode, marked in every record
    noise_seed: int | None = None
    # the optimisation recipe (see `recipe_options`): optimiser, augmentation multiplicity
    # (DP steps: K flip variants averaged per record before clipping), weight averaging
    optimizer: str = "adamw"
    momentum: float = 0.9
    augmentation_multiplicity: int = 1
    ema_decay: float | None = None
    centring: CentringSettings | None = None

    def per_sample_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits, labels, label_smoothing=self.label_smoothing, reduction="none"
        )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name}: no CUDA device here; use train.device=cpu")
    return torch.device(name)


def resolve_backbone_train_mode(engine: str, mode: str, has_batchnorm: bool) -> bool:
    """Naive engine: train mode (stochastic depth, as the reference) unless BatchNorm is there;
    the cached engine always computes features in eval mode."""
    if engine == "cached":
        return False
    if mode == "auto":
        return not has_batchnorm
    return mode == "train"


def recipe_options(train: TrainConfig) -> dict[str, Any]:
    """The `EngineSettings` fields a recipe sets, from `train.*` (one place for every caller:
    single-node cells, federated sites)."""
    return {
        "optimizer": train.optimizer,
        "momentum": train.momentum,
        "augmentation_multiplicity": train.augmentation_multiplicity,
        "ema_decay": train.ema_decay,
    }


def make_optimizer(
    parameters: Iterable[torch.nn.Parameter], settings: EngineSettings
) -> torch.optim.Optimizer:
    """AdamW (the paper's; Loshchilov & Hutter 2019) or SGD with heavy-ball momentum, both
    applied to the (noisy, under DP) mean gradient: post-processing, no privacy cost."""
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=settings.weight_decay)
    if settings.optimizer == "sgd":
        return torch.optim.SGD(
            parameters,
            lr=settings.lr,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
        )
    raise ConfigError(f"train.optimizer={settings.optimizer!r}: choose adamw or sgd")
