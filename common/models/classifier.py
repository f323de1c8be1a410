"""A classifier is `backbone` (image -> pooled features) plus `head` (features -> 2 logits).

Logit index 1 is malignant, 0 benign, everywhere.
"""

from __future__ import annotations

import torch
from torch import nn

from common.config.schema import ModelConfig
from common.errors import ConfigError
from common.models.weights import load_backbone_weights, load_classifier_checkpoint


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module, num_features: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_features = num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


def build_head(kind: str, num_features: int, hidden: int) -> nn.Module:
    """`linear`: Linear(F, 2). `mlp2`: Linear(F, hidden) -> LeakyReLU(0.2) -> Linear(hidden, 2)."""
    if kind == "linear":
        return nn.Linear(num_features, 2)
    if kind == "mlp2":
        return nn.Sequential(
            nn.Linear(num_features, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 2)
        )
    raise ConfigError(f"model.head={kind!r}: choose linear or mlp2")


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
    model = Classifier(backbone, build_head(config.head, num_features, config.hidden), num_features)
    if config.init_from:
        load_classifier_checkpoint(model, config.init_from)
    return model
