"""A timm backbone cut before its last stage: a frozen *trunk* (image -> feature maps) and a
trainable *tail* (maps -> pooled features), sharing the backbone's own modules.

Why: training the last stage and the head on cached trunk maps is the CPU variant of the
paper's SynPre (all parameters trained on synthetic patches; docs/results.md). The trunk runs
once per image and flip, as the cached engine's features do, and only the tail trains: for
EfficientNet-Lite0 at 224 px, 1.02 M of the backbone's 3.37 M parameters, at about 380 images
per second (batch 32, forward and backward) on the 2-core development CPU.

`tail(trunk(x))` equals `backbone(x)` for the families below (tests/unit/models); the
engine checks it again on its first images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from common.errors import ConfigError


class BackboneTail(nn.Module):
    """The last stage (and the final conv / norm after it), then the backbone's own global
    pooling: maps [B, C, h, w] (NHWC [B, h, w, C] for Swin) -> pooled features [B, F]."""

    def __init__(self, stage: nn.Sequential, pool: nn.Module, pool_kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.stage = stage
        self.pool = pool
        self._pool_kwargs = dict(pool_kwargs)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stage(maps), **self._pool_kwargs)


@dataclass(frozen=True)
class BackboneSplit:
    """`trunk` and `tail` hold the backbone's modules (no copies): training the tail trains the
    backbone in place. `tail_modules`: the tail's module names inside the backbone.
    `channels_first`: the trunk's maps are [B, C, h, w] (False: Swin's [B, h, w, C])."""

    trunk: nn.Sequential
    tail: BackboneTail
    tail_modules: tuple[str, ...]
    channels_first: bool = True


def _last_stage(stages: nn.Module, what: str) -> tuple[list[nn.Module], nn.Module]:
    children = list(stages.children())
    if len(children) < 2:
        raise ConfigError(f"{what} has fewer than 2 stages: nothing to cut before the last")
    return children[:-1], children[-1]


def split_backbone(backbone: nn.Module) -> BackboneSplit:
    """Cut a timm EfficientNet (`blocks`, `conv_head`), ResNet (`layer4`) or Swin (`layers`)
    backbone built with num_classes=0 before its last stage.

    Raises ConfigError for any other architecture (use model.trainable=all with
    train.engine=naive there).
    """
    has = lambda *names: all(hasattr(backbone, n) for n in names)  # noqa: E731
    kwargs: dict[str, Any] = {}
    channels_first = True
    if has("conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool"):  # EfficientNet
        early, last = _last_stage(backbone.blocks, "blocks")
        trunk = [backbone.conv_stem, backbone.bn1, *early]
        tail_stage = [last, backbone.conv_head, backbone.bn2]
        pool = backbone.global_pool
    elif has("conv1", "bn1", "layer1", "layer4", "global_pool"):  # ResNet
        trunk = [
            backbone.conv1,
            backbone.bn1,
            getattr(backbone, "act1", nn.Identity()),
            getattr(backbone, "maxpool", nn.Identity()),
            backbone.layer1,
            backbone.layer2,
            backbone.layer3,
        ]
        tail_stage, pool = [backbone.layer4], backbone.global_pool
    elif has("patch_embed", "layers", "norm", "head"):  # Swin (NHWC stages)
        early, last = _last_stage(backbone.layers, "layers")
        trunk = [backbone.patch_embed, *early]
        tail_stage = [last, backbone.norm]
        pool, kwargs, channels_first = backbone.head, {"pre_logits": True}, False
    else:
        raise ConfigError(
            f"model.trainable=last_stage: cannot cut {type(backbone).__name__} before its last "
            "stage (timm EfficientNet, ResNet and Swin are supported); use "
            "model.trainable=all with train.engine=naive"
        )
    names = {id(module): name for name, module in backbone.named_modules()}
    tail_modules = tuple(names[id(module)] for module in tail_stage)
    tail = BackboneTail(nn.Sequential(*tail_stage), pool, kwargs)
    return BackboneSplit(nn.Sequential(*trunk), tail, tail_modules, channels_first)


SPLIT_TOLERANCE = 1e-4  # relative to the largest feature


@torch.no_grad()
def check_split(backbone: nn.Module, split: BackboneSplit, images: torch.Tensor) -> None:
    """Raise ConfigError unless tail(trunk(images)) reproduces backbone(images) in eval mode:
    `split_backbone` recognises architectures by attribute names, so a look-alike class with
    another forward would otherwise train a wrong model silently."""
    was_training = backbone.training
    backbone.eval()
    try:
        expected = backbone(images)
        got = split.tail(split.trunk(images))
    finally:
        backbone.train(was_training)
    scale = float(expected.abs().max()) or 1.0
    if got.shape != expected.shape or float((got - expected).abs().max()) > SPLIT_TOLERANCE * scale:
        raise ConfigError(
            f"model.trainable=last_stage: cutting {type(backbone).__name__} before its last stage "
            "does not reproduce its features; use model.trainable=all with train.engine=naive"
        )
