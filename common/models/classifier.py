"""A classifier is `backbone` (image -> pooled features), a fixed per-image feature scaling
(`feature_norm`) and `head` (features -> 2 logits).

Logit index 1 is malignant, 0 benign, everywhere. `flip_averaging`: predictions are the mean
malignancy probability over the 4 flips (see `common.eval.predict`).
"""

from __future__ import annotations

import torch
from torch import nn

from common.config.schema import ModelConfig
from common.errors import ConfigError
from common.models.weights import load_backbone_weights, load_classifier_checkpoint


class L2Normalize(nn.Module):
    """x / ||x|| per row ([B, F] -> [B, F]); no parameters, no data statistics."""

    def __init__(self) -> None:
        super().__init__()
        # a marker in the state dict: a checkpoint says whether its head saw normalised
        # features, so loading it into a model with the other setting fails (strict load)
        self.register_buffer("l2_normalised", torch.ones((), dtype=torch.bool))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(features, dim=-1)


class BlockRMSNormalize(nn.Module):
    """RMS normalisation (Zhang & Sennrich 2019, without gain) of each feature block on its
    own: a block of width w (one pooled stage, or the final features) becomes x / rms(x), so
    every coordinate has mean square 1 and each block's share of ||a|| is sqrt(w) whatever its
    raw scale ([B, F] -> [B, F]). Per image, no statistic of any data set, so nothing private.

    Why: EfficientNet-Lite0's pooled stage outputs are 2x the final features' norm (22-25 vs
    12.5 on the released patches), so without it they take most of each clipped gradient and
    the final features' signal drowns in the DP noise (docs/recipes.md)."""

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        if not widths or min(widths) < 1:
            raise ConfigError(f"feature block widths {widths}: each must be positive")
        self.widths = list(widths)
        # in the state dict: a checkpoint says which blocks its head saw (strict load)
        self.register_buffer("block_widths", torch.tensor(self.widths, dtype=torch.long))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        blocks = torch.split(features, self.widths, dim=-1)
        scaled = [b * torch.rsqrt(b.pow(2).mean(-1, keepdim=True) + 1e-12) for b in blocks]
        return torch.cat(scaled, -1)


class FeatureCentre(nn.Module):
    """x - c ([B, F] -> [B, F]) with c the training set's mean feature vector (after
    `feature_norm`), set once by the run that trains the head (under DP a Gaussian-mechanism
    estimate: common.privacy.centring). A buffer, so a saved model predicts as it trained."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("centre", torch.zeros(num_features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features - self.centre


# set by training, not frozen: excluded from the frozen-weights checksum (models.policies)
CENTRE_BUFFER = "feature_centre.centre"


def build_feature_norm(kind: str, widths: list[int] | None = None) -> nn.Module:
    """`widths`: the feature blocks (pooled stages, then final), needed by `rms_blocks`."""
    if kind == "none":
        return nn.Identity()
    if kind == "l2":
        return L2Normalize()
    if kind == "rms_blocks":
        if widths is None:
            raise ConfigError("model.feature_norm=rms_blocks: the feature block widths are unknown")
        return BlockRMSNormalize(widths)
    raise ConfigError(f"model.feature_norm={kind!r}: choose none, l2 or rms_blocks")


class Classifier(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        num_features: int,
        feature_norm: nn.Module | None = None,
        flip_averaging: bool = False,
        feature_centre: FeatureCentre | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_norm = feature_norm if feature_norm is not None else nn.Identity()
        self.feature_centre: nn.Module = (
            feature_centre if feature_centre is not None else nn.Identity()
        )
        self.head = head
        self.num_features = num_features
        self.flip_averaging = flip_averaging

    def head_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Logits [B, 2] from backbone features [B, F]."""
        return self.head(self.feature_centre(self.feature_norm(features)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head_logits(self.backbone(images))


def prediction_variants(model: Classifier) -> tuple[int, ...]:
    """The flip variants a prediction averages: all 4 with `flip_averaging`, else identity."""
    return (0, 1, 2, 3) if model.flip_averaging else (0,)


def variant_mean_probability(logits: torch.Tensor) -> torch.Tensor:
    """Malignancy probability [N] from logits [V, N, 2]: the mean over the V flip variants
    (test-time augmentation averages probabilities, not logits)."""
    return torch.softmax(logits, -1)[..., 1].mean(0)


def build_head(kind: str, num_features: int, hidden: int) -> nn.Module:
    """`linear`: Linear(F, 2). `mlp2`: Linear(F, hidden) -> LeakyReLU(0.2) -> Linear(hidden, 2)."""
    if kind == "linear":
        return nn.Linear(num_features, 2)
    if kind == "mlp2":
        return nn.Sequential(
            nn.Linear(num_features, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 2)
        )
    raise ConfigError(f"model.head={kind!r}: choose linear or mlp2")


class MultiStagePooling(nn.Module):
    """A timm backbone's pooled output concatenated with the global-average-pooled outputs of
    some of its stages ([B, 3, H, W] -> [B, sum of channels + F]): mid-level texture and
    margin features beside the last stage's (a frozen-feature probe; see docs/recipes.md)."""

    def __init__(self, backbone: nn.Module, stages: list[int]) -> None:
        super().__init__()
        self.model = backbone
        self.stages = list(stages)
        # in the state dict, so the feature cache's backbone checksum tells stage sets apart
        self.register_buffer("stage_indices", torch.tensor(self.stages, dtype=torch.long))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        final, maps = self.model.forward_intermediates(images, indices=self.stages)
        pooled = [m.mean((2, 3)) for m in maps]
        return torch.cat([*pooled, self.model.forward_head(final, pre_logits=True)], 1)


def _with_stages(
    backbone: nn.Module, num_features: int, config: ModelConfig
) -> tuple[nn.Module, list[int]]:
    """The backbone giving the configured feature blocks, and their widths (stages, final)."""
    if not config.feature_stages:
        return backbone, [num_features]
    if not hasattr(backbone, "forward_intermediates"):
        raise ConfigError(f"model.feature_stages: timm {config.name} has no forward_intermediates")
    channels = [int(info["num_chs"]) for info in getattr(backbone, "feature_info", [])]
    stages = list(config.feature_stages)
    resolved = [i + len(channels) if i < 0 else i for i in stages]
    if not all(0 <= i < len(channels) for i in resolved) or len(set(resolved)) != len(resolved):
        raise ConfigError(
            f"model.feature_stages={stages}: {config.name} cannot give them (distinct stages "
            f"0..{len(channels) - 1}, or negative from the end)"
        )
    widths = [channels[i] for i in sorted(resolved)]  # forward_intermediates: network order
    wrapped = MultiStagePooling(backbone, config.feature_stages)
    return wrapped, [*widths, num_features]


def _timm_backbone(config: ModelConfig) -> tuple[nn.Module, int]:
    import timm

    kwargs = dict(config.kwargs)
    if config.drop_path_rate is not None:
        kwargs["drop_path_rate"] = config.drop_path_rate
    try:
        backbone = timm.create_model(config.name, pretrained=False, num_classes=0, **kwargs)
    except RuntimeError as error:
        raise ConfigError(f"model.name={config.name!r}: timm cannot build it ({error})") from error
    return backbone, int(backbone.num_features)


def _torchvision_backbone(config: ModelConfig) -> tuple[nn.Module, int]:
    import torchvision

    try:
        factory = torchvision.models.get_model_builder(config.name)
    except ValueError as error:
        raise ConfigError(f"model.name={config.name!r}: unknown torchvision model") from error
    backbone = factory(weights=None, **dict(config.kwargs))
    if config.drop_path_rate is not None:
        _rescale_stochastic_depth(backbone, config.drop_path_rate)
    head_name = _torchvision_head_attribute(backbone)
    head = getattr(backbone, head_name)
    last = head[-1] if isinstance(head, nn.Sequential) else head
    if not isinstance(last, nn.Linear):
        raise ConfigError(f"torchvision {config.name}: cannot find its final Linear layer")
    setattr(backbone, head_name, nn.Identity())
    return backbone, int(last.in_features)


def _rescale_stochastic_depth(model: nn.Module, rate: float) -> None:
    """Scale torchvision's linear stochastic-depth schedule so its deepest block has `rate`."""
    from torchvision.ops import StochasticDepth

    layers = [m for m in model.modules() if isinstance(m, StochasticDepth)]
    deepest = max((m.p for m in layers), default=0.0)
    for layer in layers:
        layer.p = layer.p * rate / deepest if deepest > 0 else rate


def _torchvision_head_attribute(model: nn.Module) -> str:
    for name in ("head", "fc", "classifier", "heads"):
        if hasattr(model, name):
            return name
    raise ConfigError(f"{type(model).__name__}: no head/fc/classifier attribute to replace")


def build_classifier(config: ModelConfig) -> Classifier:
    """Build backbone + head, then load weights: ImageNet/none/a file, or a mammofl checkpoint."""
    if config.library == "timm":
        backbone, num_features = _timm_backbone(config)
    else:
        backbone, num_features = _torchvision_backbone(config)
    load_backbone_weights(backbone, config)
    backbone, widths = _with_stages(backbone, num_features, config)
    num_features = sum(widths)
    model = Classifier(
        backbone,
        build_head(config.head, num_features, config.hidden),
        num_features,
        build_feature_norm(config.feature_norm, widths),
        config.flip_averaging,
        FeatureCentre(num_features) if config.feature_centring != "none" else None,
    )
    if config.init_from:
        load_classifier_checkpoint(model, config.init_from)
    return model
