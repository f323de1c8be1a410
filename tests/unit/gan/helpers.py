from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common.config.gan_schema import GanConfig, GanDPConfig, GanModelConfig, GanTrainConfig
from common.training.gan_trainer import GanTrainer

TINY = GanModelConfig(
    image_size=32,
    latent_dim=16,
    embedding_dim=8,
    label_channels=8,
    generator_width=8,
    discriminator_width=8,
)


def tiny_config(
    dp: bool = False, epochs: int = 2, seeded: bool = True, **train: object
) -> GanConfig:
    return GanConfig(
        model=TINY,
        train=GanTrainConfig(
            epochs=epochs, batch_size=8, checkpoint_every=1, samples_per_class=4, **train
        ),  # type: ignore[arg-type]
        dp=GanDPConfig(enabled=dp, target_epsilon=10.0, seeded_noise=seeded),
        seed=3,
    )


def tiny_data(n: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32), dtype=np.uint8), np.arange(n) % 2


def trainer(tmp: Path, dp: bool = False, epochs: int = 2, **train: object) -> GanTrainer:
    pixels, labels = tiny_data()
    return GanTrainer(tiny_config(dp, epochs, **train), pixels, labels, tmp, torch.device("cpu"))
