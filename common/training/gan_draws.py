"""An MCGAN epoch's host-side randomness, drawn at its start in the baseline's order.

The baseline trainer draws, step by step from its one generator: the real batch's augmentation
(`augment`: rand(n, 3), nothing for an empty batch), the smoothed real targets (rand(n)), the
fake batch's z (randn(count, latent)) and conditions (randint(0, 2, (count,))). Drawing them for
the whole epoch first, in that order, gives the same numbers; sending them to the device in one
pinned, non-blocking copy leaves no host sync inside the step loop (the fast loop's point).

Under DP (`population` given) the per-record draws are made for every record and indexed at the
Poisson batch, and the fake batch has a fixed size, so each step takes the same count of numbers
from the stream: whether one record is sampled then changes no other record's augmentation or
target, nor the fakes (the subsampled Gaussian's analysis assumes neighbouring datasets differ
in one clipped term; the stream's seed is the run's, known to the server).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from common.config.gan_schema import GanTrainConfig


@dataclass(frozen=True)
class StepDraws:
    """One step's draws (a leading GAN dimension when stacked by `stack_draws`)."""

    indices: torch.Tensor  # [b] real records
    augment: torch.Tensor  # [b, 3] flip-x, flip-y and zoom draws, as `augment` draws them
    targets: torch.Tensor  # [b] smoothed real targets
    z: torch.Tensor  # [f, latent]
    fake_labels: torch.Tensor  # [f]


def draw_step(
    indices: torch.Tensor,
    generator: torch.Generator,
    train: GanTrainConfig,
    latent_dim: int,
    fake_count: int,
    population: int | None = None,
) -> StepDraws:
    """One step's draws: the real batch's augmentation and smoothed targets, then the fakes' z
    and conditions. `population` (the record count N, under DP): per-record draws for all N
    rows, indexed at `indices`, so the stream's use does not depend on the batch."""
    low, high = train.real_target_low, train.real_target_high
    if population is None:
        n = len(indices)
        augment = torch.rand(n, 3, generator=generator) if n else torch.empty(0, 3)
        targets = low + (high - low) * torch.rand(n, generator=generator)
    else:
        augment = torch.rand(population, 3, generator=generator)[indices]
        targets = (low + (high - low) * torch.rand(population, generator=generator))[indices]
    z = torch.randn(fake_count, latent_dim, generator=generator)
    fake_labels = torch.randint(0, 2, (fake_count,), generator=generator)
    return StepDraws(indices, augment, targets, z, fake_labels)


def draw_epoch(
    batches: Sequence[torch.Tensor],
    generator: torch.Generator,
    train: GanTrainConfig,
    latent_dim: int,
    fake_count: Callable[[torch.Tensor], int],
    population: int | None = None,
) -> list[StepDraws]:
    return [draw_step(b, generator, train, latent_dim, fake_count(b), population) for b in batches]


def stack_draws(per_gan: Sequence[StepDraws]) -> StepDraws:
    """G GANs' draws for one step, stacked on a leading GAN dimension (equal batch sizes)."""
    fields = [f.name for f in dataclasses.fields(StepDraws)]
    return StepDraws(**{k: torch.stack([getattr(d, k) for d in per_gan]) for k in fields})


def to_device(steps: Sequence[StepDraws], device: torch.device) -> list[StepDraws]:
    """All steps' draws in one pinned non-blocking copy per field (views on the device)."""
    if device.type == "cpu":
        return list(steps)
    moved: dict[str, list[torch.Tensor]] = {}
    for field in dataclasses.fields(StepDraws):
        parts = [getattr(s, field.name) for s in steps]
        flat = torch.cat([p.reshape(-1) for p in parts]) if parts else torch.empty(0)
        if device.type == "cuda":
            flat = flat.pin_memory()
        on_device = flat.to(device, non_blocking=True)
        sizes = [p.numel() for p in parts]
        moved[field.name] = [
            chunk.view(p.shape) for chunk, p in zip(on_device.split(sizes), parts, strict=True)
        ]
    return [StepDraws(**{k: v[i] for k, v in moved.items()}) for i in range(len(steps))]
