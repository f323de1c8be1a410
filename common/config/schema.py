"""Structured-config schemas: the single typed shape of every mammofl run.

Hydra merges the YAML groups in `configs/` into these dataclasses, and entry points turn the
result into instances with `OmegaConf.to_object`, so `__post_init__` validation runs once and
nothing below the entry point sees a `DictConfig`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from common.errors import ConfigError

PATCH_FORMATS = ("released", "released_synthetic", "patchset")
PATCHSET_SPLITS = ("train", "val", "test", "all")
TRAIN_ON_CHOICES = ("real", "synthetic")
ENGINES = ("naive", "cached")
HEADS = ("linear", "mlp2")
OPTIMIZERS = ("adamw", "sgd")
FEATURE_NORMS = ("none", "l2", "rms_blocks")
FEATURE_CENTRINGS = ("none", "train_mean")
POLICIES = ("head", "head_last", "norm_head", "last_stage", "all")
ACCOUNTANTS = ("rdp", "prv")
PRIVACY_UNITS = ("patch", "patient")
POSITIVE_CLASSES = ("benign", "malignant")
BACKBONE_MODES = ("auto", "train", "eval")
PAPER_SETTINGS = ("", "Real", "Syn", "SynPre", "Real+Syn", "SynPre+RealFT")
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
# timm / torchvision families whose attention folds windows (or grid cells) into the batch
# dimension: per-sample gradients of their attention weights would be per window, not per image
WINDOW_ATTENTION_MODELS = ("swin", "davit", "gcvit", "maxvit", "maxxvit", "sam2_hiera", "samvit")
# policies that train attention weights (`norm_head` trains only norm layers, which sit outside
# the windows, and the head: tests/unit/training/test_per_sample_gradients.py; `last_stage`
# trains Swin's last stage, attention included)
POLICIES_TRAINING_ATTENTION = ("last_stage", "all")


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        shown = ", ".join(repr(c) if c == "" else c for c in choices)
        raise ConfigError(f"{key}={value!r} is not valid; choose one of {shown}")


# an epsilon above this bounds nothing a reader could use, and the accountants' searches and
# the PLD cross-check take minutes to hours there (1e9 hung `mammofl plan`)
MAX_EPSILON = 1e5


def _positive_epsilon(key: str, value: float | None) -> None:
    """An epsilon (target or cap) must be a finite number in (0, MAX_EPSILON] when given."""
    if value is not None and not (math.isfinite(value) and 0 < value <= MAX_EPSILON):
        raise ConfigError(
            f"{key}={value} is not a privacy budget: use a finite number > 0 and at most "
            f"{MAX_EPSILON:g} (e.g. {key}=6; privacy.enabled=false for a run without DP)"
        )


def _finite(key: str, value: float, *, low: float, strict: bool, example: str) -> None:
    """ConfigError unless `value` is a finite number > `low` (strict) or >= `low`: NaN passes
    every comparison test such as `value <= 0` and would reach training unnoticed."""
    above = value > low if strict else value >= low
    if not (math.isfinite(value) and above):
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise ConfigError(f"{key}={value}: expected a finite number {bound}, e.g. {key}={example}")


def _device(key: str, value: str) -> None:
    if not DEVICE_PATTERN.fullmatch(value):
        raise ConfigError(f"{key}={value!r} is not valid; use auto, cpu, cuda, cuda:<index> or mps")


def check_feature_centring(model: ModelConfig, train: TrainConfig) -> None:
    """model.feature_centring=train_mean centres cached features of a frozen backbone once per
    run: refuse it, before any data is read, where the features are not cached and fixed."""
    if model.feature_centring == "none":
        return
    if train.engine != "cached" or model.trainable != "head":
        raise ConfigError(
            f"model.feature_centring={model.feature_centring} centres a frozen backbone's cached "
            f"features: needs train.engine=cached and model.trainable=head (now "
            f"train.engine={train.engine}, model.trainable={model.trainable}); or set "
            "model.feature_centring=none"
        )


def check_dp_trainable(model: ModelConfig, dp: bool) -> None:
    """Refuse, before any data is read, DP on a policy that trains window attention, and DP
    on `last_stage` (whose engine has no per-sample clipping).

    Swin-style window attention runs on [batch x windows, tokens, channels]: hooks there give
    one "per-sample" gradient per window, so clipping would bound each window, not each image.
    The engines refuse it again on the built model (naive_engine.check_per_image_gradients)
    and at every step (dp_sgd.check_per_record_rows).
    """
    name = model.name.lower()
    family = next((f for f in WINDOW_ATTENTION_MODELS if name.startswith(f)), None)
    if dp and family is not None and model.trainable in POLICIES_TRAINING_ATTENTION:
        raise ConfigError(
            f"model.trainable={model.trainable} with DP on {model.name}: its window attention "
            "folds windows into the batch dimension, so per-sample gradients would be per "
            "window, not per image, and the guarantee would not hold. Use model.trainable="
            "head, head_last or norm_head, or train without DP (privacy.enabled=false)"
        )
    if dp and model.trainable == "last_stage":
        raise ConfigError(
            "model.trainable=last_stage under DP: the last-stage engine (SynPre's CPU variant) "
            "has no per-sample clipping. Use model.trainable=head (or head_last) for DP, or "
            "train without DP (privacy.enabled=false)"
        )


@dataclass
class PatchSourceConfig:
    """Where one patch set lives and how it is laid out on disk.

    `split`: for `released`, the folder (train, val); for a `patchset` made by `mammofl
    prepare`, which rows of its manifest (train, val, test or all; unset = what the reader
    needs: train to train, val to select, test to test).
    """

    format: str = "patchset"
    path: str = ""
    split: str | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        _choice("format", self.format, PATCH_FORMATS)
        if self.format == "released" and not self.split:
            raise ConfigError("a 'released' patch source needs split= (e.g. train or val)")
        if self.format == "patchset" and self.split is not None:
            _choice("split", self.split, PATCHSET_SPLITS)
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
    # patients of the released CBIS-DDSM train split and the most patches one of them has
    # (counted from ../shared/data: 1104 patches of 578 patients, at most 14 per patient)
    real_patients: int = 578
    largest_patient: int = 14


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
    # a (site, patient) in two of train / validation / tests stops the run unless this is set
    # (deliberate use only: the overlap is then recorded in the run's data report)
    allow_patient_overlap: bool = False

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
    # per-image feature scaling before the head: 'l2' divides each pooled feature vector by its
    # own norm (no statistic of any data set, so nothing private; bounds ||a|| for clipping);
    # 'rms_blocks' divides each feature block (every pooled stage, and the final features) by
    # its own root mean square, so no block dominates the clipped gradient by its raw scale
    feature_norm: str = "none"
    # predict with the mean probability over the 4 flips (test-time augmentation); in
    # validation, test and federated evaluation alike (post-processing)
    flip_averaging: bool = False
    # timm stage indices (negative: from the end) whose global-average-pooled outputs join the
    # final pooled features ([-2, -1] for EfficientNet-Lite0: 112 + 320 channels beside 1280;
    # for Swin-T: 384 + 768 beside 768); a frozen backbone only
    feature_stages: list[int] = field(default_factory=list)
    # 'train_mean': the head's inputs are centred on the training set's mean feature vector
    # (after feature_norm); under DP a Gaussian-mechanism estimate charged to the ledger
    # (privacy.centring_*; DPSGD-F, Sun et al. 2024). Frozen backbone, cached engine, one node
    feature_centring: str = "none"

    def __post_init__(self) -> None:
        if self.trainable == "last_stage" and self.library != "timm":
            raise ConfigError(
                f"model.trainable=last_stage needs a timm EfficientNet, ResNet or Swin backbone "
                f"(model.library={self.library}); use model=efficientnet_lite0 or "
                "model=swin_t_timm"
            )
        if self.feature_stages and (self.library != "timm" or self.trainable != "head"):
            raise ConfigError(
                f"model.feature_stages={list(self.feature_stages)} needs a timm backbone and "
                "model.trainable=head (a frozen backbone)"
            )
        _choice("model.library", self.library, ("timm", "torchvision"))
        _choice("model.head", self.head, HEADS)
        _choice("model.feature_norm", self.feature_norm, FEATURE_NORMS)
        _choice("model.feature_centring", self.feature_centring, FEATURE_CENTRINGS)
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
    # recipe knobs (docs/recipes.md); the defaults are the paper's
    optimizer: str = "adamw"
    momentum: float = 0.9
    # DP steps: each sampled record's gradient is the mean over this many distinct flip
    # variants, clipped once (De et al. 2022); 1 = one random flip, as the paper
    augmentation_multiplicity: int = 1
    # exponential moving average of the iterates, used for selection, evaluation and the
    # saved model (post-processing of the DP iterates); null = off
    ema_decay: float | None = None

    def __post_init__(self) -> None:
        _choice("train.engine", self.engine, ENGINES)
        _choice("train.optimizer", self.optimizer, OPTIMIZERS)
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"train.momentum={self.momentum} must be in [0, 1)")
        if not 1 <= self.augmentation_multiplicity <= 4:
            raise ConfigError(
                f"train.augmentation_multiplicity={self.augmentation_multiplicity}: 1 to 4 "
                "flip variants per record"
            )
        if self.augmentation_multiplicity > 1 and not self.flips:
            raise ConfigError(
                "train.augmentation_multiplicity > 1 averages flip variants: needs train.flips=true"
            )
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(
                f"train.ema_decay={self.ema_decay} must be in (0, 1) (e.g. 0.999), or null"
            )
        _choice("train.selection_positive", self.selection_positive, POSITIVE_CLASSES)
        _choice("train.backbone_mode", self.backbone_mode, BACKBONE_MODES)
        _device("train.device", self.device)
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("train.epochs and train.batch_size must be >= 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"train.lr={self.lr} must be a finite number > 0 (e.g. 1e-3)")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"train.label_smoothing={self.label_smoothing} must be in [0, 1)")
        _finite("train.weight_decay", self.weight_decay, low=0, strict=False, example="1e-8")
        if self.feature_batch_size < 1 or self.num_workers < 0:
            raise ConfigError("train.feature_batch_size >= 1 and train.num_workers >= 0")


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
    # the record DP protects: one patch (the paper's guarantee), or one patient (all of a
    # patient's patches sampled together and their summed gradient clipped once)
    unit: str = "patch"
    # the records a preset's hyperparameters were tuned on (recipe presets): a run's epsilon
    # covers that run, not the search, so records on that data say so (`tuning_note`)
    tuned_on: str = ""
    # model.feature_centring=train_mean under DP: the centre's Gaussian mechanism. Each record's
    # mean feature vector is clipped to centring_max_norm (the feature scale: EfficientNet-Lite0's
    # pooled features have norm ~12.5); its noise multiplier trades the centre's error against
    # the DP-SGD noise the rest of the budget allows (docs/recipes.md)
    centring_noise_multiplier: float = 4.0
    centring_max_norm: float = 16.0

    def __post_init__(self) -> None:
        for key, value, example in (
            ("privacy.centring_noise_multiplier", self.centring_noise_multiplier, "4"),
            ("privacy.centring_max_norm", self.centring_max_norm, "16"),
        ):
            _finite(key, value, low=0, strict=True, example=example)
        _choice("privacy.accountant", self.accountant, ACCOUNTANTS)
        _choice("privacy.unit", self.unit, PRIVACY_UNITS)
        _positive_epsilon("privacy.target_epsilon", self.target_epsilon)
        if self.enabled and self.target_epsilon is None:
            raise ConfigError(
                "privacy.enabled=true needs privacy.target_epsilon > 0 (e.g. "
                "privacy.target_epsilon=6)"
            )
        if not self.enabled and self.target_epsilon is not None:
            raise ConfigError(
                f"privacy.target_epsilon={self.target_epsilon} is set but privacy.enabled=false: "
                "the run would train without DP. Add privacy.enabled=true (or privacy=dp), or "
                "set privacy.target_epsilon=null for a run without DP"
            )
        if not 0 < self.delta < 1:
            raise ConfigError(f"privacy.delta={self.delta} must be in (0, 1)")
        if not self.max_grad_norm > 0 or self.max_grad_norm == float("inf"):
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

    def __post_init__(self) -> None:
        _choice("paper_row.setting", self.setting, PAPER_SETTINGS)


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
    # a preset that fine-tunes another row's model (e.g. recipe/dp_synhead_eps6 starts from
    # recipe/syn_head): `mammofl table1` trains that row first for the same seed and passes its
    # model.pt as model.init_from; a run without model.init_from is refused
    start_from_row: str | None = None

    def __post_init__(self) -> None:
        check_dp_trainable(self.model, self.privacy.enabled)
        check_feature_centring(self.model, self.train)
