import numpy as np
import pytest

from common.eval.metrics import auprc, evaluate_scores


def test_auprc_positive_classes() -> None:
    labels = np.array([1, 1, 0, 0, 0])
    scores = np.array([0.9, 0.2, 0.8, 0.1, 0.3])
    assert auprc(labels, scores, "malignant") == pytest.approx((1 + 2 / 4) / 2)
    # benign positive: ranks by 1 - score
    assert auprc(labels, scores, "benign") == pytest.approx(
        auprc(1 - labels, 1 - scores, "malignant")
    )


def test_bootstrap_is_patient_clustered_and_seeded() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1] * 20, 2)
    scores = labels * 0.3 + rng.random(80)
    patients = [f"p{i // 2}" for i in range(80)]
    a = evaluate_scores(labels, scores, patients, bootstrap=200, seed=1)
    b = evaluate_scores(labels, scores, patients, bootstrap=200, seed=1)
    assert a == b and a["n_patients"] == 40
    assert a["auroc"]["ci_low"] < a["auroc"]["value"] < a["auroc"]["ci_high"]
    # treating each patch as its own patient narrows the interval (correlated pairs)
    flat = evaluate_scores(labels, scores, [str(i) for i in range(80)], bootstrap=200, seed=1)
    width = lambda r: r["auroc"]["ci_high"] - r["auroc"]["ci_low"]  # noqa: E731
    assert width(flat) < width(a)
