"""Structured-config schemas: the single typed shape of every mammofl run.

Hydra merges the YAML groups in `configs/` into these dataclasses, and entry points turn the
result into instances with `OmegaConf.to_object`, so `__post_init__` validation runs once and
nothing below the entry point sees a `DictConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.errors import ConfigError

PATCH_FORMATS = ("released", "released_synthetic", "patchset")
TRAIN_ON_CHOICES = ("real", "synthetic")
ENGINES = ("naive", "cached")
HEADS = ("linear", "mlp2")
POLICIES = ("head", "head_last", "norm_head", "all")
ACCOUNTANTS = ("rdp", "prv")
POSITIVE_CLASSES = ("benign", "malignant")
BACKBONE_MODES = ("auto", "train", "eval")


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of {', '.join(choices)}")


@dataclass
class PatchSourceConfig:
    """Where one patch set lives and how it is laid out on disk."""

    format: str = "patchset"
    path: str = ""
    split: str | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        _choice("format", self.format, PATCH_FORMATS)
        if self.format == "released" and not self.split:
            raise ConfigError("a 'released' patch source needs split= (e.g. train or val)")
        if self.limit is not None and self.limit < 2:
            raise ConfigError(f"limit={self.limit}: keep at least 2 patches (one per class)")


@dataclass
class ValidationConfig:
    """Selection data: a named source, or a seeded per-patient hold-out of the real train set."""

    source: PatchSourceConfig | None = None
    holdout_fraction: float | None = None
    holdout_seed: int = 42

    def __post_init__(self) -> None:
        if (self.source is None) == (self.holdout_fraction is None):
            raise ConfigError(
                "data.validation: set exactly one of source= or holdout_fraction= "
                "(a per-patient hold-out of the real training set)"
            )
        if self.holdout_fraction is not None and not 0.0 < self.holdout_fraction < 1.0:
            raise ConfigError(
                f"data.validation.holdout_fraction={self.holdout_fraction}: use (0,1)"
            )


@dataclass
class PaperSizes:
    """Dataset sizes of the paper, used by `plan` when the configured data is absent."""

    real: int = 1104
    synthetic: int = 3000


@dataclass
class DataConfig:
    real: PatchSourceConfig | None = field(default_factory=PatchSourceConfig)
    synthetic: PatchSourceConfig | None = None
    train_on: list[str] = field(default_factory=lambda: ["real"])
    validation: ValidationConfig = field(
        default_factory=lambda: ValidationConfig(holdout_fraction=0.15)
    )
    tests: dict[str, PatchSourceConfig] = field(default_factory=dict)
    image_size: int = 224
    paper_sizes: PaperSizes = field(default_factory=PaperSizes)

    def __post_init__(self) -> None:
        if not self.train_on:
            raise ConfigError("data.train_on is empty; use [real], [synthetic] or both")
        for name in self.train_on:
            _choice("data.train_on", name, TRAIN_ON_CHOICES)
            if getattr(self, name) is None:
                raise ConfigError(f"data.train_on names {name!r} but data.{name} is not set")
        if self.validation.holdout_fraction is not None and self.real is None:
            raise ConfigError("a validation hold-out is taken from data.real, which is not set")
        if self.image_size < 16:
            raise ConfigError(f"data.image_size={self.image_size} is too small (>= 16)")


@dataclass
class ModelConfig:
    library: str = "timm"
    name: str = "swin_tiny_patch4_window7_224"
    weights: str = "imagenet"
    head: str = "mlp2"
    hidden: int = 384
    trainable: str = "head"
    init_from: str | None = None
    drop_path_rate: float | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _choice("model.library", self.library, ("timm", "torchvision"))
        _choice("model.head", self.head, HEADS)
        _choice("model.trainable", self.trainable, POLICIES)
        if self.hidden < 1:
            raise ConfigError(f"model.hidden={self.hidden} must be positive")


@dataclass
class TrainConfig:
    engine: str = "naive"
    epochs: int = 300
    batch_size: int = 128
    lr: float = 1e-5
    weight_decay: float = 1e-8
    label_smoothing: float = 0.1
    selection_positive: str = "benign"
    flips: bool = True
    backbone_mode: str = "auto"
    device: str = "auto"
    feature_batch_size: int = 16
    feature_cache_dir: str | None = None
    num_workers: int = 0

    def __post_init__(self) -> None:
        _choice("train.engine", self.engine, ENGINES)
        _choice("train.selection_positive", self.selection_positive, POSITIVE_CLASSES)
        _choice("train.backbone_mode", self.backbone_mode, BACKBONE_MODES)
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("train.epochs and train.batch_size must be >= 1")


@dataclass
class PrivacyConfig:
    enabled: bool = False
    target_epsilon: float | None = None
    delta: float = 1e-4
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    eligible_low: float = 0.75
    eligible_high: float = 1.05
    # Poisson sampling and noise from the config seed: reproducible research only; every record
    # then says "seeded noise: reproducible; no guarantee against anyone who knows the seed"
    seeded_noise: bool = False

    def __post_init__(self) -> None:
        _choice("privacy.accountant", self.accountant, ACCOUNTANTS)
        if self.enabled and (self.target_epsilon is None or self.target_epsilon <= 0):
            raise ConfigError("privacy.enabled=true needs privacy.target_epsilon > 0")
        if not 0 < self.delta < 1:
            raise ConfigError(f"privacy.delta={self.delta} must be in (0, 1)")
        if self.max_grad_norm <= 0:
            raise ConfigError("privacy.max_grad_norm must be > 0")
        if not 0 <= self.eligible_low < self.eligible_high:
            raise ConfigError("privacy.eligible_low must be below privacy.eligible_high")


@dataclass
class EvalConfig:
    bootstrap: int = 1000
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if self.bootstrap < 0 or not 0 < self.confidence < 1:
            raise ConfigError("eval.bootstrap >= 0 and eval.confidence in (0, 1)")


@dataclass
class PaperRowConfig:
    """Which Table 1 row a preset reproduces (for the paper columns of the report)."""

    setting: str = ""
    epsilon: float | None = None


@dataclass
class MammoflConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    paper_row: PaperRowConfig = field(default_factory=PaperRowConfig)
    name: str = "run"
    seed: int = 42
    out_dir: str | None = None
    shared_dir: str = "../shared"
