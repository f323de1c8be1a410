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


def configured(seed: int = 3, epochs: int = 2, dp: bool = False, **train: object) -> GanConfig:
    """`tiny_config` with another seed and train fields replaced (fast options)."""
    import dataclasses

    config = tiny_config(dp, epochs)
    return dataclasses.replace(config, seed=seed, train=dataclasses.replace(config.train, **train))


def gan(
    tmp: Path,
    *,
    n: int = 24,
    data_seed: int = 0,
    float64: bool = False,
    **settings: object,
) -> GanTrainer:
    """A tiny trainer on `tiny_data(n, data_seed)`; `float64` runs its networks and data in
    double precision, where two paths with the same arithmetic agree to about 1e-15."""
    pixels, labels = tiny_data(n, data_seed)
    t = GanTrainer(configured(**settings), pixels, labels, tmp, torch.device("cpu"))  # type: ignore[arg-type]
    if float64:
        t.generator_net.double()
        t.discriminator.double()
        t.real = t.real.double()
    return t


def max_difference(a: GanTrainer, b: GanTrainer) -> float:
    """Largest elementwise difference over both networks' weights and running statistics."""
    worst = 0.0
    for net in ("generator_net", "discriminator"):
        first, second = getattr(a, net).state_dict(), getattr(b, net).state_dict()
        for key, value in first.items():
            if value.is_floating_point():
                worst = max(worst, float((value.double() - second[key].double()).abs().max()))
    return worst
