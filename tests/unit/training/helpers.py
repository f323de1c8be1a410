"""Small builders for engine tests: tiny models and random patch sets."""

from __future__ import annotations

import copy

import numpy as np
import torch

from common.config.schema import ModelConfig
from common.data.images import LoadedPatches
from common.data.patch_set import PatchRecord, PatchSet
from common.models.classifier import Classifier, build_classifier
from common.models.policies import apply_trainable_policy
from common.training.settings import DPSettings, EngineSettings

TINY_SWIN = dict(
    img_size=32, patch_size=2, window_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2]
)


def tiny_model(
    kind: str, head: str = "mlp2", policy: str = "head", feature_centring: str = "none"
) -> Classifier:
    if kind == "swin":
        config = ModelConfig(
            name="swin_tiny_patch4_window7_224",
            weights="none",
            head=head,
            hidden=8,
            kwargs=TINY_SWIN,
            drop_path_rate=0.0,
            feature_centring=feature_centring,
        )
    elif kind == "bn_cnn":
        config = ModelConfig(name="resnet10t", weights="none", head=head, hidden=8)
    else:
        raise ValueError(kind)
    torch.manual_seed(0)
    model = build_classifier(config).double()
    # non-trivial, non-zero head weights so every gradient path is exercised
    for p in model.head.parameters():
        torch.nn.init.normal_(p, std=0.3)
    apply_trainable_policy(model, policy)
    return model


def random_patches(n: int, size: int = 32, seed: int = 0) -> LoadedPatches:
    rng = np.random.default_rng(seed)
    records = [PatchRecord(f"/synthetic/{i}.png", i % 2, f"P{i}") for i in range(n)]
    pixels = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    return LoadedPatches(PatchSet(records), pixels)


def settings(
    train_mode: bool, sigma: float = 1.0, clip: float = 1.0, q: float = 0.5
) -> EngineSettings:
    return EngineSettings(
        batch_size=4,
        lr=1e-3,
        weight_decay=0.0,
        label_smoothing=0.1,
        flips=True,
        seed=0,
        device=torch.device("cpu"),
        backbone_train_mode=train_mode,
        feature_batch_size=8,
        dp=DPSettings(noise_multiplier=sigma, sample_rate=q, max_grad_norm=clip, steps_per_epoch=2),
    )


def loop_gradients(
    model: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    train_mode: bool,
    label_smoothing: float = 0.1,
) -> dict[str, torch.Tensor]:
    """Reference: one backward pass per image, on a copy of the model."""
    model = copy.deepcopy(model)
    model.train()
    model.backbone.train(train_mode)
    grads: dict[str, list[torch.Tensor]] = {}
    for i in range(images.shape[0]):
        model.zero_grad(set_to_none=True)
        logits = model(images[i : i + 1])
        torch.nn.functional.cross_entropy(
            logits, labels[i : i + 1], label_smoothing=label_smoothing
        ).backward()
        for name, p in model.named_parameters():
            if p.requires_grad:
                grads.setdefault(name, []).append(p.grad.detach().clone())
    return {k: torch.stack(v) for k, v in grads.items()}
