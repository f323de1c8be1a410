"""The Frechet distance's trace term without a matrix square root: equal to scipy's `sqrtm`
where that is well conditioned, exact where the covariances are singular (sets smaller than
the feature width, or features of lower rank)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from common.eval.fidelity import frechet_distance


def _with_sqrtm(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula (pytorch-fid's), for full-rank covariances only."""
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = np.real(linalg.sqrtm(cov_a @ cov_b))
    mean_gap = ((a.mean(0) - b.mean(0)) ** 2).sum()
    return float(mean_gap + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


def _with_eigenvalues(a: np.ndarray, b: np.ndarray) -> float:
    """Tr((S_a S_b)^1/2) as the sum of the roots of S_a S_b's eigenvalues (torchmetrics' FID):
    another route, good to round-off for singular covariances too."""
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values = np.linalg.eigvals(cov_a @ cov_b).real
    root = np.sqrt(np.clip(values, 0.0, None)).sum()
    mean_gap = ((a.mean(0) - b.mean(0)) ** 2).sum()
    return float(mean_gap + np.trace(cov_a) + np.trace(cov_b) - 2 * root)


def _sets(rows_a: int, rows_b: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scales = rng.uniform(0.5, 2.0, size=width)
    return rng.normal(size=(rows_a, width)) * scales, rng.normal(size=(rows_b, width)) + 0.3


@pytest.mark.parametrize(
    ("rows_a", "rows_b", "width"), [(400, 400, 8), (400, 700, 8), (3000, 2000, 64)]
)
def test_equals_scipy_sqrtm_for_full_rank_covariances(rows_a: int, rows_b: int, width: int) -> None:
    a, b = _sets(rows_a, rows_b, width)
    assert frechet_distance(a, b) == pytest.approx(_with_sqrtm(a, b), rel=1e-9)


@pytest.mark.parametrize(
    ("rows_a", "rows_b", "width"), [(30, 45, 256), (353, 383, 1280), (2, 3, 16)]
)
def test_sets_smaller_than_the_width_equal_the_eigenvalue_route(
    rows_a: int, rows_b: int, width: int
) -> None:
    """Fig. 2's subsets (353-383 patches of 1280 features) have singular covariances; the
    sizes differ, as the patient-wise subsets do."""
    a, b = _sets(rows_a, rows_b, width)
    assert frechet_distance(a, b) == pytest.approx(_with_eigenvalues(a, b), rel=1e-6)


@pytest.mark.parametrize(("rows", "width", "rank"), [(20, 1280, 20), (2000, 64, 4)])
def test_a_set_is_at_distance_zero_from_itself(rows: int, width: int, rank: int) -> None:
    """Singular covariances, from few rows or from features of lower rank: sqrtm gave
    FD(a, a) = -8e-4 at 20 x 1280; round-off is all that is left now."""
    rng = np.random.default_rng(1)
    a = 1000 * rng.normal(size=(rows, rank)) @ rng.normal(size=(rank, width))
    total = np.trace(np.cov(a, rowvar=False))
    assert abs(frechet_distance(a, a)) <= 1e-10 * total
    b = a[::-1] + rng.normal(size=a.shape)  # symmetric in its arguments
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    shifted = a + 1.0  # only the means move: the distance is ||shift||^2 = D
    assert frechet_distance(a, shifted) == pytest.approx(width, rel=1e-6)


def test_float32_features_are_taken_in_float64() -> None:
    a, b = (x.astype(np.float32) for x in _sets(300, 500, 32))
    widened = _with_sqrtm(a.astype(np.float64), b.astype(np.float64))
    assert frechet_distance(a, b) == pytest.approx(widened, rel=1e-9)


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        (np.zeros((5, 3)), np.zeros((5, 4)), "one D"),
        (np.zeros((1, 3)), np.zeros((5, 3)), "2 rows or more"),
        (np.zeros(5), np.zeros(5), "one D"),
        (np.full((5, 3), np.nan), np.zeros((5, 3)), "NaN or inf"),
        (np.zeros((5, 3)), np.full((5, 3), np.inf), "NaN or inf"),
    ],
)
def test_malformed_sets_are_refused(a: np.ndarray, b: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        frechet_distance(a, b)
