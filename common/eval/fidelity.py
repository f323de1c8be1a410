"""Synthetic-data fidelity: Frechet distance, KID, precision/recall/density/coverage, textures.

All distances take feature matrices [N, D]. The texture features are radiomics-*style* (first
order + GLCM from scikit-image) and their Frechet distance is named for what it is: it is not
the paper's FRD (package frd-score, which needs pyradiomics).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets, as FID computes it
    (Heusel et al. 2017): ||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^1/2).

    `a` [N_a, D] and `b` [N_b, D], N >= 2 each, finite; covariances with N - 1 (numpy's
    `cov`). The trace of the root comes from the sets without a matrix square root
    (`_trace_of_root`). Raises ValueError for sets that are not 2-D, differ in D, have fewer
    than 2 rows or hold NaN or inf (e.g. a diverged generator's samples).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be [N, D] with one D, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"each set needs 2 rows or more for a covariance: {len(a)}, {len(b)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("feature sets hold NaN or inf: no distance can be computed")
    mean_a, mean_b = a.mean(0), b.mean(0)
    centred_a, centred_b = a - mean_a, b - mean_b
    trace_a = float((centred_a**2).sum()) / (len(a) - 1)
    trace_b = float((centred_b**2).sum()) / (len(b) - 1)
    root = _trace_of_root(centred_a, centred_b)
    return float(((mean_a - mean_b) ** 2).sum() + trace_a + trace_b - 2 * root)


def _trace_of_root(centred_a: np.ndarray, centred_b: np.ndarray) -> float:
    """Tr((S_a S_b)^1/2) for S = X^T X / (N - 1), X a centred set [N, D].

    The non-zero eigenvalues of S_a S_b are those of M M^T with M = X_a X_b^T / sqrt((N_a-1)
    (N_b-1)), i.e. M's squared singular values, so the trace is M's nuclear norm. With X = Q R
    (QR, Q orthonormal columns), M's singular values are those of R_a R_b^T / sqrt(...), a
    matrix of at most [min(N_a, D), min(N_b, D)]: small whatever the sizes, and no root of a
    round-off eigenvalue enters (scipy's `sqrtm` of the [D, D] product took seconds at D = 1280
    and was off for singular covariances: sets smaller than D, or features of lower rank)."""
    # mode "r": R alone (numpy's stubs type every mode as the (Q, R) pair)
    r_a = np.asarray(np.linalg.qr(centred_a, mode="r"))
    r_b = np.asarray(np.linalg.qr(centred_b, mode="r"))
    scale = np.sqrt((len(centred_a) - 1) * (len(centred_b) - 1))
    return float(np.linalg.svdvals(r_a @ r_b.T).sum() / scale)


def kernel_inception_distance(
    a: np.ndarray, b: np.ndarray, subsets: int = 10, subset_size: int = 100, seed: int = 0
) -> tuple[float, float]:
    """Unbiased MMD^2, cubic polynomial kernel (Binkowski et al.): mean, std over subsets."""
    rng = np.random.default_rng(seed)
    size = min(subset_size, len(a), len(b))
    dim = a.shape[1]
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), size, replace=False)]
        y = b[rng.choice(len(b), size, replace=False)]
        kxx = (x @ x.T / dim + 1) ** 3
        kyy = (y @ y.T / dim + 1) ** 3
        kxy = (x @ y.T / dim + 1) ** 3
        off = ~np.eye(size, dtype=bool)
        values.append(kxx[off].mean() + kyy[off].mean() - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances [len(a), len(b)] without a [A, B, D] intermediate."""
    squared = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(squared, 0.0))


def _kth_neighbour_radius(x: np.ndarray, k: int) -> np.ndarray:
    d = pairwise_distances(x, x)
    np.fill_diagonal(d, 0.0)
    return np.sort(d, axis=1)[:, k]  # column 0 is the point itself


def precision_recall_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """Precision/recall (Kynkaanniemi 2019) and density/coverage (Naeem 2020) on k-NN balls.

    Low recall or coverage with fine precision is the signature of mode collapse.
    """
    real_r = _kth_neighbour_radius(real, k)
    fake_r = _kth_neighbour_radius(fake, k)
    d = pairwise_distances(real, fake)  # [R, F]
    inside_real = d < real_r[:, None]
    return {
        "precision": float(inside_real.any(0).mean()),
        "recall": float((d < fake_r[None, :]).any(1).mean()),
        "density": float(inside_real.sum(0).mean() / k),
        "coverage": float((d.min(1) < real_r).mean()),
    }


def texture_features(pixels: np.ndarray, levels: int = 32) -> np.ndarray:
    """Per image: first-order statistics + GLCM properties (distances 1, 2; 4 angles, averaged)."""
    from skimage.feature import graycomatrix, graycoprops

    rows = []
    for image in pixels:
        values = image.astype(np.float64).ravel()
        histogram = np.bincount(image.ravel(), minlength=256) / values.size
        nonzero = histogram[histogram > 0]
        first = [
            values.mean(),
            values.std(),
            stats.skew(values),
            stats.kurtosis(values),
            -(nonzero * np.log2(nonzero)).sum(),
            *np.percentile(values, [10, 50, 90]),
            (values**2).mean(),
        ]
        quantised = (image.astype(np.int32) * levels // 256).astype(np.uint8)
        glcm = graycomatrix(
            quantised,
            [1, 2],
            [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4],
            levels=levels,
            symmetric=True,
            normed=True,
        )
        second = [graycoprops(glcm, prop).mean(1) for prop in GLCM_PROPS]
        rows.append(np.concatenate([np.nan_to_num(first), np.concatenate(second)]))
    return np.asarray(rows)


def standardise_pair(
    a: np.ndarray, b: np.ndarray, reference: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Z-score both sets with the reference set's statistics (texture features have mixed units)."""
    mean, std = reference.mean(0), reference.std(0) + 1e-12
    return (a - mean) / std, (b - mean) / std
