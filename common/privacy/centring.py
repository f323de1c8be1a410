"""The training set's mean feature vector, released by the Gaussian mechanism, to centre a
frozen backbone's features before DP-SGD of the head (DPSGD-F: Sun, Suresh & Menon, "The
importance of feature preprocessing for differentially private linear optimization", ICLR 2024,
arXiv:2307.11106).

Why: a linear head's per-record gradient is (p - y) x. When every feature vector x shares a
large common part (EfficientNet-Lite0's pooled features of the released patches: norm 12.5, of
which about 5.2 varies between images; docs/recipes.md), clipping to C spends most of each
record's norm budget on that shared part, so what separates the classes is small against the
noise. Centring removes the shared part; the estimate's own noise is a constant offset, which
the head's bias absorbs.

The mechanism (add/remove adjacency): each record r (a patch, or a patient) contributes
v_r = [clip_R(m_r), R], where m_r is the mean of its rows' feature vectors (every flip variant)
and clip_R scales a vector to norm <= R (opacus' rule). ||v_r|| <= R sqrt(2), so
sum_r v_r + N(0, (sigma R sqrt(2))^2 I) is one Gaussian mechanism of noise multiplier sigma: one
ledger event at sample rate 1, one step. The centre is the noisy feature sum over the noisy
count (at least 1); no exact count is used or released.
"""

from __future__ import annotations

import math

import torch

from common.errors import PrivacyError
from common.privacy.dp_sgd import RecordGroups, clip_factors
from common.privacy.ledger import LedgerEvent

CENTRING_KIND = "dp-centring"


def centring_event(noise_multiplier: float) -> LedgerEvent:
    """The ledger event of one centre release (a Gaussian mechanism on the whole set)."""
    return LedgerEvent(
        noise_multiplier=noise_multiplier,
        sample_rate=1.0,
        steps=1,
        kind=CENTRING_KIND,
        label="feature centre (Gaussian mechanism on the training set's mean feature vector)",
    )


def record_means(features: torch.Tensor, records: RecordGroups) -> torch.Tensor:
    """Each record's mean feature vector: features [V, N, F] (V flip variants of N rows) ->
    [records, F] (a patient's patches and all variants averaged into one vector)."""
    if features.dim() != 3 or features.shape[1] != len(records.record_of):
        raise ValueError(
            f"features {tuple(features.shape)}: expected [variants, {len(records.record_of)}, F]"
        )
    per_row = features.mean(0)
    record_of = records.record_of.to(per_row.device)
    sums = torch.zeros(
        records.records, per_row.shape[1], dtype=per_row.dtype, device=per_row.device
    )
    sums.index_add_(0, record_of, per_row)
    counts = torch.bincount(record_of, minlength=records.records).to(per_row.dtype)
    return sums / counts.clamp(min=1).unsqueeze(1)


def clipped_record_sum(vectors: torch.Tensor, max_norm: float) -> torch.Tensor:
    """sum_r [clip_R(v_r), R] ([records, F] -> [F + 1]): the noiseless sum; one record changes
    it by a vector of norm <= R sqrt(2) (the Gaussian mechanism's L2 sensitivity)."""
    clipped = vectors * clip_factors(vectors.norm(dim=1), max_norm).unsqueeze(1)
    return torch.cat([clipped.sum(0), vectors.new_tensor([max_norm * len(vectors)])])


def private_centre(
    vectors: torch.Tensor, max_norm: float, noise_multiplier: float, generator: torch.Generator
) -> torch.Tensor:
    """The Gaussian mechanism's estimate [F] of the mean of `vectors` [records, F] (see the
    module docstring). `generator`: private (common.privacy.randomness). Raises PrivacyError for
    a max_norm or noise multiplier that is not a finite number > 0."""
    for name, value in (("max_norm", max_norm), ("noise_multiplier", noise_multiplier)):
        if not (math.isfinite(value) and value > 0):
            raise PrivacyError(f"feature centring {name}={value}: must be a finite number > 0")
    total = clipped_record_sum(vectors, max_norm)
    std = noise_multiplier * max_norm * math.sqrt(2.0)
    noise = torch.normal(0.0, std, total.shape, generator=generator, device=generator.device)
    noisy = total + noise.to(total)
    count = (noisy[-1] / max_norm).clamp(min=1.0)
    return noisy[:-1] / count


def exact_centre(vectors: torch.Tensor) -> torch.Tensor:
    """The mean [F] of `vectors` [records, F]: the centre of a run without DP."""
    if len(vectors) == 0:
        raise ValueError("no training records to centre on")
    return vectors.mean(0)
