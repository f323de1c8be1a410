"""Backbone weights: ImageNet (downloaded when online), none, or a local file; checkpoints.

A local file may be a raw backbone state dict (timm/torchvision keys, classifier keys dropped
with a log line because the head is replaced), a mammofl classifier checkpoint (`backbone.*`,
`head.*`), or an opacus-wrapped one (`_module.` prefix). Loading is strict.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.config.schema import ModelConfig
from common.errors import WeightsError

log = logging.getLogger(__name__)
CLASSIFIER_PREFIXES = ("head.", "fc.", "classifier.", "heads.", "last_linear.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors or torch file into a flat state dict with opacus prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found; pass model.weights=/path/to/file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: not a state dict")
    return {
        k.replace("_module.", "", 1) if k.startswith("_module.") else k: v for k, v in state.items()
    }


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "") or os.environ.get(
        "MAMMOFL_OFFLINE", "0"
    ) not in ("0", "")


def _imagenet_state(config: ModelConfig) -> dict[str, torch.Tensor]:
    hint = (
        f"ImageNet weights for {config.library} {config.name} need a download; offline, pass a "
        "local file: model.weights=/path/to/weights.safetensors (or model.weights=none)"
    )
    if _offline():
        raise WeightsError(f"offline (HF_HUB_OFFLINE=1): {hint}")
    try:
        if config.library == "timm":
            import timm

            model = timm.create_model(config.name, pretrained=True, num_classes=0, **config.kwargs)
            return dict(model.state_dict())
        import torchvision

        builder = torchvision.models.get_model_builder(config.name)
        weights = torchvision.models.get_model_weights(builder).DEFAULT
        return dict(weights.get_state_dict(progress=False))
    except Exception as error:  # network, hub and cache errors all end here
        raise WeightsError(f"{hint} ({type(error).__name__}: {error})") from error


def load_backbone_weights(backbone: nn.Module, config: ModelConfig) -> None:
    if config.weights == "none":
        return
    if config.weights == "imagenet":
        state = _imagenet_state(config)
        source = "imagenet"
    else:
        state = read_state_dict(config.weights)
        source = config.weights
        if any(k.startswith("backbone.") for k in state):
            state = {
                k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")
            }
    expected = set(backbone.state_dict())
    dropped = sorted(k for k in state if k not in expected and k.startswith(CLASSIFIER_PREFIXES))
    if dropped:
        log.info(
            "weights %s: dropped %d classifier keys (head replaced): %s",
            source,
            len(dropped),
            ", ".join(dropped[:4]),
        )
        state = {k: v for k, v in state.items() if k not in dropped}
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise WeightsError(
            f"weights {source} do not fit {config.library} {config.name}: {error}"
        ) from error


def load_classifier_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Strictly load a whole mammofl classifier (backbone + head), e.g. SynPre for RealFT."""
    state = read_state_dict(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise WeightsError(
            f"{path} is not a checkpoint of this classifier (model.name, head, feature_stages, "
            f"feature_norm and feature_centring must match the run that saved it): {error}"
        ) from error
