"""The malignancy-conditioned DCGAN (MCGAN) of the paper, sizes configurable for tiny tests.

Generator: Embedding(2, 50) -> Linear(50, 100) -> LeakyReLU(0.1) as 100 extra input channels
beside z; ConvTranspose k4 (s1 p0 to 4x4, then s2 p1 doubling) with BatchNorm + ReLU; no biases;
Tanh output in [-1, 1]. Discriminator: the label as a second image channel through
Linear(50, H*W); Conv k6 s2 p2 halving down to 4x4 (no norm on the first), LeakyReLU(0.1); a
final Conv k6 s1 p1 to 1x1. The discriminator returns logits: the sigmoid lives in the loss.
Label 1 = malignant, 0 = benign (as everywhere in mammofl).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from common.errors import ConfigError


@dataclass(frozen=True)
class MCGANShape:
    image_size: int = 128
    latent_dim: int = 100
    embedding_dim: int = 50
    label_channels: int = 100
    generator_width: int = 64
    discriminator_width: int = 64
    discriminator_norm: str = "batch"  # "group" for DP (opacus cannot clip BatchNorm)

    def __post_init__(self) -> None:
        if self.image_size < 8 or 2 ** int(math.log2(self.image_size)) != self.image_size:
            raise ConfigError(
                f"MCGAN image_size={self.image_size} (`model.image_size` of mammofl gan, "
                "`gan.model.image_size` of federate): use a power of two >= 8"
            )
        if self.discriminator_norm not in ("batch", "group"):
            raise ConfigError("MCGAN discriminator_norm (model.discriminator_norm): batch or group")

    @property
    def doublings(self) -> int:
        return int(math.log2(self.image_size)) - 2


def init_weights(module: nn.Module) -> None:
    """DCGAN init: conv weights N(0, 0.02); norm weights N(1, 0.02), biases 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    def __init__(self, shape: MCGANShape) -> None:
        super().__init__()
        self.shape = shape
        self.label = nn.Sequential(
            nn.Embedding(2, shape.embedding_dim),
            nn.Linear(shape.embedding_dim, shape.label_channels),
            nn.LeakyReLU(0.1),
        )
        width = shape.generator_width * 2 ** (shape.doublings - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(shape.latent_dim + shape.label_channels, width, 4, 1, 0, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(True),
        ]
        for _ in range(shape.doublings - 1):
            layers += [
                nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width // 2),
                nn.ReLU(True),
            ]
            width //= 2
        layers += [nn.ConvTranspose2d(width, 1, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        condition = self.label(labels)[:, :, None, None]
        return self.net(torch.cat([z[:, :, None, None], condition], 1))


def _norm(kind: str, channels: int) -> nn.Module:
    return (
        nn.BatchNorm2d(channels)
        if kind == "batch"
        else nn.GroupNorm(min(32, channels // 2), channels)
    )


class Discriminator(nn.Module):
    def __init__(self, shape: MCGANShape) -> None:
        super().__init__()
        self.shape = shape
        size = shape.image_size
        self.label = nn.Sequential(
            nn.Embedding(2, shape.embedding_dim),
            nn.Linear(shape.embedding_dim, size * size),
            nn.LeakyReLU(0.1),
        )
        width = shape.discriminator_width
        layers: list[nn.Module] = [nn.Conv2d(2, width, 6, 2, 2, bias=False), nn.LeakyReLU(0.1)]
        for _ in range(shape.doublings - 1):
            layers += [
                nn.Conv2d(width, width * 2, 6, 2, 2, bias=False),
                _norm(shape.discriminator_norm, width * 2),
                nn.LeakyReLU(0.1),
            ]
            width *= 2
        layers += [nn.Conv2d(width, 1, 6, 1, 1, bias=False)]
        self.net = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        size = self.shape.image_size
        condition = self.label(labels).view(-1, 1, size, size)
        return self.net(torch.cat([images, condition], 1)).flatten()
