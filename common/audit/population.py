"""The audited population: which records are canaries, who trains on what, mislabelled canaries.

Canaries are real training records (the paper's "input-space" audit) or, to raise the audit's
power, real records with the wrong label. Every canary is in a model's training set
independently with probability 1/2; every other record of the configured training set
(the rest of the real records when m is smaller, synthetic ones) is always in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from common.data.images import LoadedPatches
from common.data.patch_set import PatchSet

CANARY_KINDS = ("real", "mislabelled")
INCLUSION_STREAM = 0xA0D17  # separates membership draws from every other use of a seed


@dataclass(frozen=True)
class Population:
    """`loaded` holds the records as models train on them (mislabelled canaries flipped);
    `canaries` indexes the records whose membership is random."""

    loaded: LoadedPatches
    canaries: np.ndarray
    kind: str

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.loaded.patch_set.labels, dtype=np.int64)

    @property
    def fixed(self) -> np.ndarray:
        """Records every model trains on."""
        return np.setdiff1d(np.arange(len(self.loaded.patch_set)), self.canaries)

    @property
    def expected_training_size(self) -> int:
        """Fixed records plus half the canaries: the N every model's DP-SGD is planned for, so
        that one mechanism (q, sigma, steps, divisor) serves whichever canaries are in (the
        one-run audit's premise: Steinke et al. 2023, section 3)."""
        return len(self.fixed) + len(self.canaries) // 2

    def training_indices(self, included: np.ndarray) -> np.ndarray:
        """Sorted record indices of one model's training set, given its canary inclusion."""
        return np.sort(np.concatenate([self.fixed, self.canaries[np.asarray(included, bool)]]))

    def subset(self, indices: np.ndarray) -> LoadedPatches:
        chosen = [int(i) for i in indices]
        return LoadedPatches(self.loaded.patch_set.subset(chosen), self.loaded.pixels[chosen])


def build_population(
    train: LoadedPatches, kind: str, count: int | None, seed: int = 0
) -> Population:
    """Choose `count` canaries among the real records (all of them when None) with a seeded
    draw; flip their labels when `kind` is 'mislabelled'."""
    records = train.patch_set.records
    real = np.flatnonzero([r.source == "real" for r in records])
    if count is None:
        canaries = real
    else:
        if not 2 <= count <= len(real):
            raise ValueError(f"canary count {count}: choose 2 to {len(real)} (the real records)")
        rng = np.random.default_rng([INCLUSION_STREAM, seed])
        canaries = np.sort(rng.choice(real, size=count, replace=False))
    if kind == "mislabelled":
        flipped = set(canaries.tolist())
        relabelled = [
            replace(r, label=1 - r.label) if i in flipped else r for i, r in enumerate(records)
        ]
        patch_set = PatchSet(relabelled, list(train.patch_set.skipped), train.patch_set.name)
        train = LoadedPatches(patch_set, train.pixels)
    elif kind != "real":
        raise ValueError(f"canary kind {kind!r}: choose one of {CANARY_KINDS}")
    return Population(train, canaries, kind)


def draw_inclusion(canaries: int, seed: int) -> np.ndarray:
    """Each canary in with probability 1/2, independently (a model's seed fixes the draw)."""
    rng = np.random.default_rng([INCLUSION_STREAM, 1, seed])
    return rng.random(canaries) < 0.5
