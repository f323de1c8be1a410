"""Memorisation check: is any synthetic patch a near-copy of a real training patch?

For each synthetic patch: candidates from a cheap search (32 px normalised pixels, 4 flips of
each real patch; plus backbone features when given), then the exact best normalised
cross-correlation over flips and shifts of up to `max_shift` px. The same is done for every real
patch against the other patients' patches: that is the scale of "similar but not copied". A
synthetic patch is flagged when its best correlation exceeds both `min_ncc` and the real-vs-real
`reference_quantile`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from common.data.images import resized

FLIPS = ((False, False), (True, False), (False, True), (True, True))


def _flip(image: np.ndarray, variant: int) -> np.ndarray:
    horizontal, vertical = FLIPS[variant]
    if horizontal:
        image = image[:, ::-1]
    if vertical:
        image = image[::-1, :]
    return np.ascontiguousarray(image)


def _small_vectors(pixels: np.ndarray, size: int = 32) -> np.ndarray:
    small = resized(pixels, size)
    flat = small.reshape(len(pixels), -1).astype(np.float32)
    flat -= flat.mean(1, keepdims=True)
    return flat / (np.linalg.norm(flat, axis=1, keepdims=True) + 1e-6)


def best_ncc(
    query: np.ndarray, reference: np.ndarray, max_shift: int
) -> tuple[float, int, tuple[int, int]]:
    """Best normalised cross-correlation of `query` with `reference` over 4 flips and shifts."""
    template = query[max_shift:-max_shift, max_shift:-max_shift].astype(np.float32)
    best = (-1.0, 0, (0, 0))
    for variant in range(4):
        image = _flip(reference, variant).astype(np.float32)
        scores = cv2.matchTemplate(image, template, cv2.TM_CCOEFF_NORMED)
        _, value, _, location = cv2.minMaxLoc(scores)
        if value > best[0]:
            best = (float(value), variant, (location[0] - max_shift, location[1] - max_shift))
    return best


@dataclass
class Match:
    """Best match: correlation, index of the real patch, its flip variant, shift (dx, dy) px."""

    ncc: float
    real_index: int
    flip: int
    shift: tuple[int, int]


def flip_vectors(real: np.ndarray) -> np.ndarray:
    """[4, N, 32*32] normalised small vectors of every flip variant of the real patches."""
    return np.stack([_small_vectors(np.stack([_flip(r, v) for r in real])) for v in range(4)])


def nearest_real(
    queries: np.ndarray,
    real: np.ndarray,
    *,
    candidates: int = 5,
    max_shift: int = 4,
    query_features: np.ndarray | None = None,
    real_features: np.ndarray | None = None,
    exclude: list[set[int]] | None = None,
    real_vectors: np.ndarray | None = None,
) -> list[Match]:
    """Best pixel match in `real` for every query (indices in `exclude[i]` are not allowed)."""
    if real_vectors is None:
        real_vectors = flip_vectors(real)
    query_vectors = _small_vectors(queries)
    pixel_similarity = query_vectors @ real_vectors.reshape(-1, real_vectors.shape[-1]).T
    pixel_similarity = pixel_similarity.reshape(len(queries), 4, len(real)).max(1)
    feature_similarity = None
    if query_features is not None and real_features is not None:
        q = query_features / (np.linalg.norm(query_features, axis=1, keepdims=True) + 1e-12)
        r = real_features / (np.linalg.norm(real_features, axis=1, keepdims=True) + 1e-12)
        feature_similarity = q @ r.T
    matches = []
    for i, query in enumerate(queries):
        banned = exclude[i] if exclude else set()
        pool: list[int] = []
        for similarity in (pixel_similarity, feature_similarity):
            if similarity is None:
                continue
            order = [j for j in np.argsort(-similarity[i]) if j not in banned][:candidates]
            pool.extend(order)
        best = Match(-1.0, -1, 0, (0, 0))
        for j in dict.fromkeys(pool):
            ncc, flip, shift = best_ncc(query, real[j], max_shift)
            if ncc > best.ncc:
                best = Match(ncc, int(j), flip, shift)
        matches.append(best)
    return matches


def _quantiles(values: np.ndarray, quantiles: tuple[float, ...]) -> dict[str, float]:
    return {
        str(q): float(v) for q, v in zip(quantiles, np.quantile(values, quantiles), strict=True)
    }


@dataclass
class MemorisationReport:
    synthetic: list[Match]
    reference: list[Match]
    threshold: float
    flagged: list[int]

    def summary(self) -> dict[str, object]:
        syn = np.array([m.ncc for m in self.synthetic])
        ref = np.array([m.ncc for m in self.reference])
        quantiles = (0.5, 0.9, 0.99, 1.0)
        return {
            "synthetic": len(syn),
            "flagged": len(self.flagged),
            "threshold_ncc": self.threshold,
            "synthetic_best_ncc_quantiles": _quantiles(syn, quantiles),
            "real_vs_real_best_ncc_quantiles": _quantiles(ref, quantiles),
        }


def memorisation_check(
    synthetic: np.ndarray,
    real: np.ndarray,
    real_patients: list[str],
    *,
    min_ncc: float = 0.9,
    reference_quantile: float = 0.99,
    max_shift: int = 4,
    synthetic_features: np.ndarray | None = None,
    real_features: np.ndarray | None = None,
) -> MemorisationReport:
    by_patient: dict[str, set[int]] = {}
    for index, patient in enumerate(real_patients):
        by_patient.setdefault(patient, set()).add(index)
    same_patient = [by_patient[p] for p in real_patients]
    vectors = flip_vectors(real)  # shared by both searches
    reference = nearest_real(
        real,
        real,
        max_shift=max_shift,
        query_features=real_features,
        real_features=real_features,
        exclude=same_patient,
        real_vectors=vectors,
    )
    threshold = max(min_ncc, float(np.quantile([m.ncc for m in reference], reference_quantile)))
    matches = nearest_real(
        synthetic,
        real,
        max_shift=max_shift,
        query_features=synthetic_features,
        real_features=real_features,
        real_vectors=vectors,
    )
    flagged = [i for i, m in enumerate(matches) if m.ncc >= threshold]
    return MemorisationReport(matches, reference, threshold, flagged)
