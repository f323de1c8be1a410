"""The one DP-SGD core: Poisson batches, per-record clipping, Gaussian noise, the per-record guard.

Every DP path calls these functions: the naive engine (opacus per-sample gradients), the cached
engine (exact head clipping), the MCGAN discriminator and so the federated site runtime. The
arithmetic is opacus' DPOptimizer's (Abadi et al. 2016, Algorithm 1, with Poisson sampling):

    g = (sum_i g_i * min(1, C / (||g_i|| + 1e-6)) + N(0, sigma^2 C^2 I)) / E[B],  E[B] = int(N q)

so the noisy gradient of a step with an empty Poisson batch is pure noise, and one is taken.

The record i is a patch by default (the paper's guarantee). Under patient-level DP
(`privacy.unit=patient`, see `RecordGroups`) a record is a patient: patients are Poisson-sampled,
all of a sampled patient's patches enter the batch, and g_i is the sum of their gradients,
clipped once; so adding or removing one patient changes one sampled record and one clipped
contribution of norm <= C, whatever the number of its patches.

Augmentation multiplicity (De et al. 2022, "Unlocking high-accuracy differentially private image
classification through scale", sec. 3.1; `augment_records`): each sampled record enters the
batch as K flip variants whose gradients are averaged before the record's one clipping, so the
record still contributes one vector of norm <= C and the privacy analysis is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
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


@dataclass(frozen=True)
class RecordGroups:
    """Which privacy record each row (patch) of a training set belongs to.

    `record_of`: long [N_rows], values 0..records-1. `unit`: 'patch' (each row its own record)
    or 'patient' (rows of one patient id form one record).
    """

    record_of: torch.Tensor
    records: int
    unit: str

    @classmethod
    def per_patch(cls, rows: int) -> RecordGroups:
        return cls(torch.arange(rows), rows, "patch")

    @classmethod
    def per_patient(cls, patients: Sequence[str]) -> RecordGroups:
        """Records = distinct patient ids (a training set is one site's, so an id is a patient)."""
        _, record_of = np.unique(np.asarray(patients, dtype=str), return_inverse=True)
        codes = torch.as_tensor(record_of.reshape(-1), dtype=torch.long)
        return cls(codes, int(codes.max()) + 1 if len(codes) else 0, "patient")

    @classmethod
    def for_unit(cls, unit: str, patients: Sequence[str]) -> RecordGroups:
        if unit == "patch":
            return cls.per_patch(len(patients))
        if unit == "patient":
            return cls.per_patient(patients)
        raise ValueError(f"privacy unit {unit!r}: patch or patient")

    def sample(
        self, sample_rate: float, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One Poisson batch of records: (row indices, record position per row or None).

        The positions (0..k-1 for the k sampled records) say which rows are summed into one
        record's gradient before clipping; None when every row is its own record.
        """
        sampled = poisson_indices(self.records, sample_rate, generator)
        if self.unit == "patch":
            return sampled, None
        rows = torch.nonzero(torch.isin(self.record_of, sampled)).flatten()
        return rows, torch.searchsorted(sampled, self.record_of[rows])


@dataclass(frozen=True)
class AugmentedBatch:
    """A Poisson batch with K augmented rows per sampled record.

    `rows` / `flips` / `groups` / `weights`: long [B K] training-set row, long [B K] flip
    variant, long [B K] record position (rows of one record are clipped together), float [B K]
    loss weight 1/K (so a record's gradient is the mean over its variants; summed over a
    patient's patches under patient-level DP).
    """

    rows: torch.Tensor
    flips: torch.Tensor
    groups: torch.Tensor
    weights: torch.Tensor


def draw_flips(
    indices: torch.Tensor, dataset_size: int, variants: int, generator: torch.Generator
) -> torch.Tensor:
    """One flip variant (long [B]) for each sampled row.

    A variant is drawn for every row of the training set at every step and read at the sampled
    rows. So how much of the (possibly seeded) stream a step uses never depends on which records
    were sampled, and one record's presence cannot change another record's flip. Augmenting
    each record with randomness of its own, before its clipping, leaves the analysis unchanged.
    """
    return torch.randint(0, variants, (dataset_size,), generator=generator)[indices]


def augment_records(
    indices: torch.Tensor,
    groups: torch.Tensor | None,
    multiplicity: int,
    variants: int,
    generator: torch.Generator,
    dataset_size: int,
) -> AugmentedBatch:
    """Expand a sampled batch (`RecordGroups.sample`'s output) to `multiplicity` distinct flip
    variants per row, out of `variants` (4: identity, h, v, hv). As in `draw_flips`, variants
    are drawn for all `dataset_size` rows and read at the sampled ones, so no record's presence
    changes another record's augmentation.

    Raises ValueError when 1 <= multiplicity <= variants does not hold.
    """
    if not 1 <= multiplicity <= variants:
        raise ValueError(f"augmentation multiplicity {multiplicity}: 1..{variants} flip variants")
    count = len(indices)
    positions = groups if groups is not None else torch.arange(count)
    order = torch.rand((dataset_size, variants), generator=generator).argsort(1)
    chosen = order[indices, :multiplicity]
    return AugmentedBatch(
        rows=indices.repeat_interleave(multiplicity),
        flips=chosen.reshape(-1),
        groups=positions.repeat_interleave(multiplicity),
        weights=torch.full((count * multiplicity,), 1.0 / multiplicity),
    )


def clip_factors(per_sample_norms: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
    """min(1, C / (||g_i|| + 1e-6)) per record (opacus' rule)."""
    return (max_grad_norm / (per_sample_norms + CLIP_EPSILON)).clamp(max=1.0)


def expected_batch_size(dataset_size: int, sample_rate: float) -> int:
    """opacus' make_private: int(N * q), the divisor of the noisy clipped sum."""
    return max(1, int(dataset_size * sample_rate))


def per_sample_norms(grad_samples: Sequence[torch.Tensor]) -> torch.Tensor:
    """L2 norm over all parameters of each record's gradient; grad_samples[k]: [B, *shape_k]."""
    return torch.stack([g.flatten(1).norm(dim=1) for g in grad_samples], 1).norm(dim=1)


def clipped_sum(
    grad_samples: Sequence[torch.Tensor],
    max_grad_norm: float,
    groups: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """sum_i clip(g_i) for each parameter, from per-row gradients [B, *shape].

    `groups` (long [B], record position of each row, see `RecordGroups.sample`): rows of one
    record are summed first, and that sum is clipped once (patient-level DP).
    """
    if groups is not None:
        count = int(groups.max()) + 1 if len(groups) else 0
        grad_samples = [
            torch.zeros((count, *g.shape[1:]), dtype=g.dtype, device=g.device).index_add_(
                0, groups.to(g.device), g
            )
            for g in grad_samples
        ]
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
