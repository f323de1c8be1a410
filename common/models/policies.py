"""Named trainable-parameter policies, resolved to an explicit, logged list of parameter names."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from common.errors import ConfigError, UnsupportedDPModelError
from common.models.backbone_split import split_backbone
from common.models.classifier import CENTRE_BUFFER

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
# attention modules that run on [batch x windows, tokens, channels] (timm, torchvision Swin;
# timm GC ViT): per-sample gradients of their weights would be per window, not per image
WINDOW_ATTENTION_TYPES = (
    "WindowAttention",
    "ShiftedWindowAttention",
    "ShiftedWindowAttentionV2",
    "WindowAttentionGlobal",
)


def trainable_parameter_names(model: nn.Module, policy: str) -> list[str]:
    """`head`: the whole head; `head_last`: its final Linear; `norm_head`: norm layers + head;
    `last_stage`: the backbone's last stage (`backbone_split`) + head; `all`: every parameter."""
    names = [name for name, _ in model.named_parameters()]
    head = [n for n in names if n.startswith("head.")]
    if policy == "all":
        return names
    if policy == "head":
        return head
    if policy == "head_last":
        linears = [
            m
            for m, mod in model.named_modules()
            if m.startswith("head") and isinstance(mod, nn.Linear)
        ]
        last = linears[-1]
        return [n for n in names if n.rsplit(".", 1)[0] == last]
    if policy == "last_stage":
        backbone = getattr(model, "backbone", None)
        if not isinstance(backbone, nn.Module):
            raise ConfigError("model.trainable=last_stage needs a classifier with a backbone")
        tail = tuple(f"backbone.{m}." for m in split_backbone(backbone).tail_modules)
        return [n for n in names if n.startswith(tail) or n in head]
    if policy == "norm_head":
        norms = {m for m, mod in model.named_modules() if isinstance(mod, NORM_TYPES)}
        return [n for n in names if n.rsplit(".", 1)[0] in norms or n in head]
    raise ConfigError(
        f"model.trainable={policy!r}: choose head, head_last, norm_head, last_stage or all"
    )


def apply_trainable_policy(model: nn.Module, policy: str) -> list[str]:
    """Set requires_grad from the policy; return the trainable names (in model order)."""
    chosen = set(trainable_parameter_names(model, policy))
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in chosen)
    return [n for n, _ in model.named_parameters() if n in chosen]


def per_window_parameters(model: nn.Module) -> list[str]:
    """Trainable parameters inside window attention: under DP they would be clipped per window.

    `norm_head` on Swin is not affected: its norm layers see [batch, H, W, C] outside the
    windows (tests/unit/training/test_per_sample_gradients.py: equal to single-image
    gradients).
    """
    windows = [
        name
        for name, module in model.named_modules()
        if type(module).__name__ in WINDOW_ATTENTION_TYPES
    ]
    return [
        name
        for name, parameter in model.named_parameters()
        if parameter.requires_grad and any(name.startswith(f"{w}.") for w in windows)
    ]


def check_no_per_window_gradients(model: nn.Module) -> None:
    """Refuse DP when trainable parameters sit inside window attention (before any budget is
    reserved; the config refuses known families earlier, the engines again at every step)."""
    inside = per_window_parameters(model)
    if inside:
        raise UnsupportedDPModelError(
            f"{len(inside)} trainable parameters sit inside window attention (e.g. {inside[0]}): "
            "under DP they would get per-window, not per-image, gradients. Use "
            "model.trainable=head, head_last or norm_head"
        )


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def frozen_checksum(model: nn.Module) -> str:
    """SHA-256 over every frozen parameter and buffer: proves training left them unchanged.
    The feature centre's buffer is not frozen: the run sets it (FeatureCentre)."""
    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            digest.update(name.encode())
            digest.update(parameter.detach().cpu().contiguous().numpy().tobytes())
    for name, buffer in model.named_buffers():
        if name == CENTRE_BUFFER:
            continue
        digest.update(name.encode())
        digest.update(buffer.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def backbone_has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def state_on_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
