"""DP-SGD arithmetic shared by the engines, written exactly as opacus' DPOptimizer does it."""

from __future__ import annotations

import torch

CLIP_EPSILON = 1e-6  # opacus: max_grad_norm / (per_sample_norm + 1e-6), capped at 1


def clip_factors(per_sample_norms: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
    return (max_grad_norm / (per_sample_norms + CLIP_EPSILON)).clamp(max=1.0)


def expected_batch_size(dataset_size: int, sample_rate: float) -> int:
    """opacus' make_private: int(N * q), the divisor of the noisy clipped sum."""
    return max(1, int(dataset_size * sample_rate))


def add_noise(
    summed: torch.Tensor,
    noise_multiplier: float,
    max_grad_norm: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    noise = torch.normal(
        0.0,
        noise_multiplier * max_grad_norm,
        size=summed.shape,
        device=summed.device,
        dtype=summed.dtype,
        generator=generator,
    )
    return summed + noise
