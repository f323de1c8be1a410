"""The Frechet distance's trace term without a matrix square root: equal to scipy's `sqrtm`
where that is well conditioned, exact where the sets are smaller than the feature width."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from common.eval import fidelity
from common.eval.fidelity import frechet_distance


def _with_sqrtm(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula (pytorch-fid's), for full-rank covariances only."""
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = np.real(linalg.sqrtm(cov_a @ cov_b))
    mean_gap = ((a.mean(0) - b.mean(0)) ** 2).sum()
    return float(mean_gap + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


def _sets(rows: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scales = rng.uniform(0.5, 2.0, size=width)
    return rng.normal(size=(rows, width)) * scales, rng.normal(size=(rows, width)) + 0.3


@pytest.mark.parametrize(("rows", "width"), [(400, 8), (3000, 64)])
def test_equals_scipy_sqrtm_for_full_rank_covariances(rows: int, width: int) -> None:
    a, b = _sets(rows, width)
    assert frechet_distance(a, b) == pytest.approx(_with_sqrtm(a, b), rel=1e-9)


@pytest.mark.parametrize(("rows", "width"), [(400, 8), (20, 256), (60, 1280)])
def test_both_exact_forms_of_the_trace_agree(rows: int, width: int) -> None:
    a, b = _sets(rows, width)
    centred_a, centred_b = a - a.mean(0), b - b.mean(0)
    by_sets = fidelity._trace_of_root_by_sets(centred_a, centred_b)
    by_features = fidelity._trace_of_root_by_features(centred_a, centred_b)
    # rank-deficient covariances leave the features' side with roots of round-off noise
    assert by_sets == pytest.approx(by_features, rel=1e-9 if rows > width else 1e-6)


def test_sets_smaller_than_the_width_are_exact() -> None:
    """Fig. 2's subsets: 20 patches of 1280 features. sqrtm of the singular product gave
    FD(a, a) = -8e-4 and seconds a call; the distance of a set to itself is 0."""
    a, b = _sets(20, 1280)
    total = np.trace(np.cov(a, rowvar=False))
    assert abs(frechet_distance(a, a)) <= 1e-12 * total
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-12)
    shifted = a + 1.0  # only the means move: the distance is ||shift||^2 = D
    assert frechet_distance(a, shifted) == pytest.approx(1280.0, rel=1e-9)


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        (np.zeros((5, 3)), np.zeros((5, 4)), "one D"),
        (np.zeros((1, 3)), np.zeros((5, 3)), "2 rows or more"),
        (np.zeros(5), np.zeros(5), "one D"),
    ],
)
def test_malformed_sets_are_refused(a: np.ndarray, b: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        frechet_distance(a, b)
