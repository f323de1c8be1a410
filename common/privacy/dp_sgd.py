"""The one DP-SGD core: Poisson batches, per-record clipping, Gaussian noise, the per-record guard.

Every DP path calls these functions: the naive engine (opacus per-sample gradients), the cached
engine (exact head clipping), the MCGAN discriminator and so the federated site runtime. The
arithmetic is opacus' DPOptimizer's (Abadi et al. 2016, Algorithm 1, with Poisson sampling):

    g = (sum_i g_i * min(1, C / (||g_i|| + 1e-6)) + N(0, sigma^2 C^2 I)) / E[B],  E[B] = int(N q)

so the noisy gradient of a step with an empty Poisson batch is pure noise, and one is taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from common.errors import UnsupportedDPModelError

CLIP_EPSILON = 1e-6  # opacus: max_grad_norm / (per_sample_norm + 1e-6), capped at 1


def poisson_indices(
    dataset_size: int, sample_rate: float, generator: torch.Generator
) -> torch.Tensor:
    """Indices of one Poisson batch: each record in independently with probability q.

    The batch size is Binomial(N, q) and may be 0. `generator` must be private (see
    `common.privacy.randomness`): the sampled set is part of the mechanism.
    """
    mask = torch.rand(dataset_size, generator=generator, device=generator.device) < sample_rate
    return torch.nonzero(mask).flatten().cpu()


def clip_factors(per_sample_norms: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
    """min(1, C / (||g_i|| + 1e-6)) per record (opacus' rule)."""
    return (max_grad_norm / (per_sample_norms + CLIP_EPSILON)).clamp(max=1.0)


def expected_batch_size(dataset_size: int, sample_rate: float) -> int:
    """opacus' make_private: int(N * q), the divisor of the noisy clipped sum."""
    return max(1, int(dataset_size * sample_rate))


def per_sample_norms(grad_samples: Sequence[torch.Tensor]) -> torch.Tensor:
    """L2 norm over all parameters of each record's gradient; grad_samples[k]: [B, *shape_k]."""
    return torch.stack([g.flatten(1).norm(dim=1) for g in grad_samples], 1).norm(dim=1)


def clipped_sum(grad_samples: Sequence[torch.Tensor], max_grad_norm: float) -> list[torch.Tensor]:
    """sum_i clip(g_i) for each parameter, from per-record gradients [B, *shape]."""
    factors = clip_factors(per_sample_norms(grad_samples), max_grad_norm)
    return [torch.einsum("i,i...->...", factors.to(g.dtype), g) for g in grad_samples]


def check_per_record_rows(grad_samples: Sequence[torch.Tensor], records: int) -> None:
    """The per-record guard: every per-sample gradient has exactly one row per record.

    A layer that folds windows or tokens into the batch dimension (Swin's window attention)
    would otherwise be clipped per window, silently voiding the guarantee.
    """
    for grad in grad_samples:
        if grad.shape[0] != records:
            raise UnsupportedDPModelError(
                f"per-sample gradients with {grad.shape[0]} rows for a batch of {records} "
                "records: a trainable layer sees windows or tokens as samples; freeze it "
                "(model.trainable=head|head_last)"
            )


@dataclass
class GaussianMechanism:
    """Adds N(0, (sigma C)^2) to clipped sums and divides by the expected batch size.

    `invocations` counts noisy steps: an independent tally of what the ledger charges.
    """

    noise_multiplier: float
    max_grad_norm: float
    expected_batch_size: int
    generator: torch.Generator
    invocations: int = 0

    def privatize(self, clipped_sums: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Noisy mean gradients, one per parameter (same shapes as `clipped_sums`)."""
        self.invocations += 1
        std = self.noise_multiplier * self.max_grad_norm
        noisy = []
        for summed in clipped_sums:
            noise = torch.normal(
                0.0,
                std,
                size=summed.shape,
                device=summed.device,
                dtype=summed.dtype,
                generator=self.generator,
            )
            noisy.append((summed + noise) / self.expected_batch_size)
        return noisy
