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


def test_bootstrap_says_how_many_resamples_had_one_class_only() -> None:
    """Resamples that draw one class have no AUROC; the CI is over the rest, and the record
    says how many were left out (here one patient of each class: about half are)."""
    import numpy as np

    from common.eval.metrics import evaluate_scores

    result = evaluate_scores([0, 1], [0.2, 0.9], ["a", "b"], bootstrap=200, seed=0)
    dropped = result["auroc"]["bootstrap_dropped"]
    assert 60 < dropped < 140 and result["auprc_malignant"]["bootstrap_dropped"] > 0
    full = evaluate_scores(
        np.arange(40) % 2, np.linspace(0, 1, 40), [str(k) for k in range(40)], bootstrap=50
    )
    assert full["auroc"]["bootstrap_dropped"] == 0


def test_too_few_patients_for_an_interval_is_said() -> None:
    from common.eval.metrics import evaluate_scores

    few = evaluate_scores([0, 1, 0, 1], [0.9, 0.1, 0.8, 0.2], ["a", "a", "b", "b"], bootstrap=20)
    assert few["ci_note"].startswith("fewer than 10 patients: too few for a meaningful interval")
    from common.runs.shareable import shareable_record

    shared = shareable_record({"tests": {"t": few}}, seeded_noise=False)["tests"]["t"]
    assert "2" not in shared["ci_note"]  # no exact count leaves the site
    assert "bootstrap_dropped" not in shared["auroc"] and "n_patients" not in shared
    many = evaluate_scores(
        [k % 2 for k in range(20)],
        [k / 20 for k in range(20)],
        list("abcdefghijklmnopqrst"),
        bootstrap=20,
    )
    assert "ci_note" not in many


def test_metrics_that_leave_a_site_do_not_give_the_class_counts_away() -> None:
    """AUROC = U / (n_malignant * n_benign): at full precision the smallest denominator that
    gives the value back is the product of the class counts (37 * 52 = 1924 here); what
    leaves a site (result.json, a federated site's scores) is rounded to 3 decimals, which
    many denominators fit."""
    from fractions import Fraction

    from common.eval.metrics import point_metrics, released
    from common.runs.shareable import shareable_record

    rng = np.random.default_rng(0)
    labels = np.array([1] * 37 + [0] * 52)
    scores = rng.random(89) + 0.3 * labels
    exact = point_metrics(labels, scores)
    assert 1924 % Fraction(exact["auroc"]).limit_denominator(5000).denominator == 0
    sent = released(exact)
    assert all(v == round(v, 3) for v in sent.values())
    fits = [d for d in range(100, 5000) if abs(round(sent["auroc"] * d) / d - sent["auroc"]) < 5e-4]
    assert len(fits) > 3000  # most denominators from 100 to 5000 fit the rounded value
    record = {
        "tests": {"t": {"auroc": {"value": exact["auroc"], "ci_low": 0.61234567}, "n": 89}},
        "history": [
            {"epoch": 1, "val_auprc": exact["auroc"], "train_loss": 0.69314718, "epsilon": 1e-4}
        ],
    }
    shared = shareable_record(record, seeded_noise=False)
    assert shared["tests"]["t"]["auroc"] == {"value": sent["auroc"], "ci_low": 0.612}
    assert shared["history"] == [  # the epoch's epsilon is accounting, not data: kept
        {"epoch": 1, "val_auprc": sent["auroc"], "train_loss": 0.693, "epsilon": 1e-4}
    ]
    assert released(float("nan")) != released(float("nan"))  # NaN stays NaN


def test_metrics_leave_a_site_only_when_the_rounding_hides_the_class_counts() -> None:
    """With MIN_RELEASED_CLASS_COUNT (32) patches per class, 32 * 32 >= 1000: every 3-decimal
    AUROC in [0, 1] is some U / 1024, so the values a site sends over rounds do not show the
    lattice; at 31 per class some 3-decimal values can never occur, and those that can show
    the denominator 961."""
    from common.eval.metrics import MIN_RELEASED_CLASS_COUNT, counts_hidden_by_rounding

    def reachable(pairs: int) -> set[float]:
        return {round(u / pairs, 3) for u in range(pairs + 1)}

    grid = {round(k / 1000, 3) for k in range(1001)}
    count = MIN_RELEASED_CLASS_COUNT
    assert count == 32 and reachable(count * count) == grid
    assert reachable((count - 1) ** 2) < grid
    assert counts_hidden_by_rounding([1] * count + [0] * count)
    assert not counts_hidden_by_rounding([1] * (count - 1) + [0] * 500)
    assert not counts_hidden_by_rounding([1] * 500 + [0] * (count - 1))
    assert not counts_hidden_by_rounding([0] * 100)
