"""Attack metrics, LiRA and the one-run epsilon bound on inputs with known answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import binom
from sklearn.metrics import roc_auc_score

from common.audit.canaries import (
    correct_guesses,
    epsilon_lower_bound,
    one_run_audit,
    p_value,
)
from common.audit.membership import (
    attack_metrics,
    auc,
    cross_entropy,
    fit_gaussians,
    lira_offline,
    lira_online,
    logit_confidence,
    loss_attack,
    roc,
    tpr_at_fpr,
)


def _labelled(members: list[float], non_members: list[float]) -> tuple[np.ndarray, np.ndarray]:
    scores = np.array(members + non_members)
    return scores, np.array([True] * len(members) + [False] * len(non_members))


def test_auc_by_hand_and_against_sklearn() -> None:
    scores, members = _labelled([0.9, 0.8, 0.4], [0.7, 0.3, 0.2, 0.1])
    assert auc(scores, members) == pytest.approx(11 / 12)
    assert auc(-scores, members) == pytest.approx(1 / 12)
    tied, _ = _labelled([0.5] * 3, [0.5] * 4)
    assert auc(tied, members) == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    noisy = rng.normal(size=500).round(1)  # many ties
    labels = rng.random(500) < 0.4
    assert auc(noisy + labels * 0.3, labels) == pytest.approx(
        roc_auc_score(labels, noisy + labels * 0.3), abs=1e-12
    )


def test_tpr_at_low_fpr_by_hand() -> None:
    # 100 non-members score 0..99; 10 members score 99.5, 98.5, ..., 90.5
    scores, members = _labelled([99.5 - j for j in range(10)], [float(s) for s in range(100)])
    assert tpr_at_fpr(scores, members, 0.001) == pytest.approx(0.1)  # no false positive
    assert tpr_at_fpr(scores, members, 0.01) == pytest.approx(0.2)  # one false positive
    assert tpr_at_fpr(scores, members, 0.05) == pytest.approx(0.6)
    assert auc(scores, members) == pytest.approx(0.955)
    metrics = attack_metrics(scores, members).to_dict()
    assert metrics["tpr_at_0.001_fpr"] == pytest.approx(0.1)
    assert metrics["tpr_at_0.01_fpr"] == pytest.approx(0.2)
    assert (metrics["members"], metrics["non_members"]) == (10, 100)
    fpr, tpr = roc(scores, members)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def test_confidence_and_loss_from_logits() -> None:
    logits = np.array([[2.0, -1.0], [0.0, 0.0], [-30.0, 30.0]])
    labels = np.array([0, 1, 0])
    p_true = np.array([1 / (1 + math.exp(-3.0)), 0.5, 1 / (1 + math.exp(60.0))])
    assert logit_confidence(logits, labels) == pytest.approx(np.log(p_true / (1 - p_true)))
    assert cross_entropy(logits, labels) == pytest.approx(-np.log(p_true))
    # members have lower loss: the loss attack scores them higher
    assert loss_attack(logits[None], labels)[0] > loss_attack(logits[None], labels)[2]


def _gaussian_world(
    shift: float, records: int = 2000, references: int = 16, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-record difficulty d_i ~ N(0, 3^2); a model's confidence is N(d_i, 1) on records it
    did not train on and N(d_i + shift, 1) on those it did (one query variant)."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0, 3, records)
    included = rng.random((references + 1, records)) < 0.5
    confidences = difficulty + shift * included + rng.normal(size=(references + 1, records))
    return confidences[0][None], included[0], confidences[1:, None], included[1:]


def test_lira_separates_separable_gaussians() -> None:
    target, members, references, masks = _gaussian_world(shift=6.0)
    fits = fit_gaussians(references, masks)
    online = attack_metrics(lira_online(target, fits), members)
    assert online.auc > 0.99 and online.tpr_at_fpr[0.01] > 0.9
    assert attack_metrics(lira_offline(target, fits), members).auc > 0.99
    assert fits.std_in.shape == (1, 1) and fits.std_in[0, 0] == pytest.approx(1.0, abs=0.05)
    per_record = fit_gaussians(references, masks, fixed_variance=False)
    assert per_record.std_in.shape == (1, 2000)
    assert attack_metrics(lira_online(target, per_record), members).auc > 0.98


def test_lira_is_at_chance_on_inseparable_gaussians() -> None:
    target, members, references, masks = _gaussian_world(shift=0.0)
    fits = fit_gaussians(references, masks)
    for scores in (lira_online(target, fits), lira_offline(target, fits)):
        metrics = attack_metrics(scores, members)
        assert abs(metrics.auc - 0.5) < 0.04
        assert metrics.tpr_at_fpr[0.01] < 0.05


def test_lira_beats_a_global_threshold_when_records_differ_in_difficulty() -> None:
    target, members, references, masks = _gaussian_world(shift=1.5)
    lira = attack_metrics(lira_online(target, fit_gaussians(references, masks)), members)
    global_threshold = attack_metrics(target[0], members)  # the confidence itself
    assert lira.auc > global_threshold.auc + 0.1
    assert lira.tpr_at_fpr[0.01] > 2 * global_threshold.tpr_at_fpr[0.01]


def test_a_record_no_reference_trained_on_keeps_a_finite_score() -> None:
    target, _, references, masks = _gaussian_world(shift=2.0, records=50, references=4)
    masks[:, 0] = False  # record 0 is out of every reference model
    masks[:, 1] = True  # record 1 is in every one
    fits = fit_gaussians(references, masks)
    assert np.isfinite(lira_online(target, fits)).all()
    assert np.isfinite(lira_offline(target, fits)).all()


# --- the one-run bound (Steinke, Nasr, Jagielski 2023) ---


def _p_value_by_the_papers_loop(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Appendix D of the paper, written as its loop over i."""
    q = 1 / (1 + math.exp(-eps))
    beta = binom.sf(v - 1, r, q)
    alpha, total = 0.0, 0.0
    for i in range(1, v + 1):
        total += binom.pmf(v - i, r, q)
        alpha = max(alpha, total / i)
    return min(beta + alpha * delta * 2 * m, 1.0)


def test_p_value_by_hand_and_against_the_papers_loop() -> None:
    # r = v = 2, eps 0 (q = 1/2): beta = 1/4; alpha = max(P[W'=1] / 1, P[W'<2] / 2) = 1/2
    assert p_value(10, 2, 2, 0.0, 0.0) == pytest.approx(0.25)
    assert p_value(10, 2, 2, 0.0, 0.01) == pytest.approx(0.25 + 2 * 10 * 0.01 * 0.5)
    for m, r, v, eps, delta in [
        (1000, 100, 80, 1.0, 1e-5),
        (944, 200, 130, 0.5, 1e-4),
        (50, 20, 20, 3.0, 1e-3),
        (500, 50, 30, 0.0, 1e-2),
    ]:
        assert p_value(m, r, v, eps, delta) == pytest.approx(
            _p_value_by_the_papers_loop(m, r, v, eps, delta), rel=1e-9
        )


def test_bound_with_all_guesses_right_matches_the_closed_form() -> None:
    # delta = 0, v = r: p = q^r, so eps = -log(p^(-1/r) - 1) at p = 1 - confidence
    for r, confidence in [(100, 0.95), (20, 0.95), (200, 0.99)]:
        exact = -math.log((1 - confidence) ** (-1 / r) - 1)
        bound = epsilon_lower_bound(1000, r, r, delta=0.0, confidence=confidence)
        assert bound == pytest.approx(exact, abs=1e-5)
        assert bound <= exact  # never above the exact value
    assert epsilon_lower_bound(100, 100, 100, delta=0.0, confidence=0.95) == pytest.approx(
        3.49296, abs=1e-4
    )


def test_bound_grows_with_correct_guesses_and_shrinks_with_delta() -> None:
    bounds = [epsilon_lower_bound(1000, 200, v, delta=1e-5, confidence=0.95) for v in range(201)]
    assert all(b2 >= b1 for b1, b2 in itertools.pairwise(bounds))
    assert bounds[100] == 0.0 and bounds[110] == 0.0  # chance and a little above: nothing
    assert bounds[200] > bounds[180] > bounds[150] > 0
    for v in (150, 180, 200):
        assert epsilon_lower_bound(1000, 200, v, delta=1e-3, confidence=0.95) < bounds[v]
        assert epsilon_lower_bound(1000, 200, v, delta=0.0, confidence=0.95) >= bounds[v]


def test_one_run_audit_at_chance_and_with_a_perfect_attack() -> None:
    rng = np.random.default_rng(3)
    included = rng.random(1000) < 0.5
    chance = one_run_audit(
        rng.normal(size=1000), included, [10, 50, 100], confidence=0.95, delta=1e-5
    )
    assert chance.epsilon_lower_bound < 0.3
    perfect = one_run_audit(
        included + rng.normal(0, 0.01, 1000), included, [100], confidence=0.95, delta=1e-5
    )
    assert perfect.counts[0].correct == 200
    assert perfect.best is not None and perfect.best.k_plus == 100
    assert perfect.epsilon_lower_bound == pytest.approx(
        epsilon_lower_bound(1000, 200, 200, delta=1e-5, confidence=0.95)
    )
    assert perfect.ceiling == perfect.epsilon_lower_bound  # every guess right: the ceiling
    assert chance.ceiling == pytest.approx(
        epsilon_lower_bound(1000, 200, 200, delta=1e-5, confidence=1 - 0.05 / 3)
    )
    record = perfect.to_dict()
    assert record["canaries_m"] == 1000 and record["confidence"] == 0.95
    assert record["attack"] == "score" and record["k"] == 100


def test_bonferroni_over_k_and_guess_counting() -> None:
    included = np.array([True, True, False, False, True, False])
    scores = np.array([6.0, 5.0, 4.0, 1.0, 3.0, 2.0])
    # top 2 (both in) and bottom 2 (scores 1, 2: both out) -> 4 correct
    assert correct_guesses(scores, included, 2, 2) == 4
    assert correct_guesses(-scores, included, 2, 2) == 0
    rng = np.random.default_rng(1)
    members = rng.random(2000) < 0.5
    strong = members * 1.0 + rng.normal(0, 0.3, 2000)
    one = one_run_audit(strong, members, [100], confidence=0.95, delta=0.0)
    many = one_run_audit(strong, members, [100, 200, 300], confidence=0.95, delta=0.0)
    # k=100 alone is tested at 95 %; among three it is tested at 1 - 0.05 / 3
    assert many.counts[0].epsilon_lower_bound < one.epsilon_lower_bound
    with pytest.raises(ValueError):
        one_run_audit(strong, members, [1500], confidence=0.95, delta=0.0)
    # two attacks: four tests; the record names the attack and k of the best bound
    weak = members * 0.2 + rng.normal(0, 1.0, 2000)
    both = one_run_audit(
        {"weak": weak, "strong": strong}, members, [100, 200], confidence=0.95, delta=0.0
    )
    assert len(both.counts) == 4 and both.best is not None and both.best.attack == "strong"
    alone = one_run_audit(strong, members, [100, 200], confidence=0.95, delta=0.0)
    assert both.epsilon_lower_bound < alone.epsilon_lower_bound  # two tests more to pay for


def test_the_delta_term_caps_small_audits() -> None:
    """With m = 944 canaries and delta 1e-4 (2 m delta = 0.19), ten perfect guesses per side
    under a 12-test Bonferroni family certify nothing; the same guesses alone do."""
    assert epsilon_lower_bound(944, 20, 20, delta=1e-4, confidence=1 - 0.05 / 12) == 0.0
    assert epsilon_lower_bound(944, 20, 20, delta=0.0, confidence=1 - 0.05 / 12) > 1.0


def test_settings_of_an_attempt_that_trained_nothing_bind_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An audit refused before its first model (e.g. a batch larger than N) had written its
    settings: the corrected retry in the same folder must not be refused for them."""
    from common.audit.run import _check_resume
    from common.errors import ConfigError

    _check_resume(tmp_path, {"train": {"batch_size": 16}})
    _check_resume(tmp_path, {"train": {"batch_size": 4}})  # nothing trained: a new start
    (tmp_path / "models" / "seed42.npz").write_bytes(b"a model")
    with pytest.raises(ConfigError, match="holds models of other settings"):
        _check_resume(tmp_path, {"train": {"batch_size": 8}})
