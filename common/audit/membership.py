"""Membership-inference attacks and their metrics.

Scores are "higher = more likely a member". Attacks read what a black-box attacker gets from a
model: its two logits on a record (here on each flip variant of it), and the record's label.

- `loss_attack`: Yeom et al. 2018 ("Privacy risk in machine learning: analyzing the connection
  to overfitting"): a member has lower loss; thresholding the loss, swept over all thresholds.
- `lira_online` / `lira_offline`: Carlini et al. 2022 ("Membership inference attacks from first
  principles"): the logit-scaled confidence on the true label, log(p / (1 - p)), is close to
  Gaussian over training runs; Gaussians fitted on reference (shadow) models that did (in) or
  did not (out) train on the record give a likelihood ratio (online) or a one-sided test
  against the out distribution alone (offline). With few reference models a variance shared by
  all records ("fixed variance", the paper's advice below 64 models) is the better estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

FPR_POINTS = (0.001, 0.01)


def logit_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """log(p_y / (1 - p_y)) of the true label, computed stably from logits [..., N, C].

    For two classes it is z_y - z_other; in general z_y - logsumexp of the other logits.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    true = np.take_along_axis(z, np.broadcast_to(y[..., None], (*z.shape[:-1], 1)), -1)[..., 0]
    others = np.where(np.arange(z.shape[-1]) == y[..., None], -np.inf, z)
    peak = others.max(-1)
    rest = peak + np.log(np.exp(others - peak[..., None]).sum(-1))
    return true - rest


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-record cross-entropy loss (no label smoothing), logits [..., N, C]."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    peak = z.max(-1, keepdims=True)
    log_norm = peak[..., 0] + np.log(np.exp(z - peak).sum(-1))
    true = np.take_along_axis(z, np.broadcast_to(y[..., None], (*z.shape[:-1], 1)), -1)[..., 0]
    return log_norm - true


def loss_attack(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Yeom et al.'s score: minus the loss, averaged over the queried variants [V, N, C]."""
    return -cross_entropy(logits, labels).mean(0)


@dataclass(frozen=True)
class GaussianFits:
    """Per-record, per-variant means [V, N] and standard deviations ([V, N] or [V, 1])."""

    mean_in: np.ndarray
    std_in: np.ndarray
    mean_out: np.ndarray
    std_out: np.ndarray


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    counts = mask.sum(0)
    sums = np.where(mask[:, None, :], values, 0.0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts, counts


def _residual_std(
    values: np.ndarray, mask: np.ndarray, mean: np.ndarray, fixed_variance: bool
) -> np.ndarray:
    residual = np.where(mask[:, None, :], values - mean[None], 0.0)
    if fixed_variance:  # pooled over records, ddof 1 per record
        dof = max(int((mask.sum(0) - 1).clip(min=0).sum()), 1)
        pooled = np.sqrt((residual**2).sum((0, 2)) / dof)
        return np.maximum(pooled, 1e-6)[:, None]
    counts = mask.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        own = np.sqrt((residual**2).sum(0) / (counts - 1))
    pooled = _residual_std(values, mask, mean, True)
    return np.where(counts[None] >= 2, np.maximum(own, 1e-6), pooled)


def fit_gaussians(
    confidences: np.ndarray, included: np.ndarray, fixed_variance: bool = True
) -> GaussianFits:
    """Fit in/out Gaussians from reference models' confidences [R, V, N] and their membership
    masks [R, N]. A record that no reference model trained on (or every one did) gets the other
    side's mean shifted by the average in-out gap, so every record keeps a finite score."""
    values = np.asarray(confidences, dtype=np.float64)
    inside = np.asarray(included, dtype=bool)
    mean_in, n_in = _masked_mean(values, inside)
    mean_out, n_out = _masked_mean(values, ~inside)
    both = (n_in > 0) & (n_out > 0)
    if not both.any():
        raise ValueError("no record was both in and out of some reference model: more shadows")
    gap = (mean_in[:, both] - mean_out[:, both]).mean(1, keepdims=True)
    mean_in = np.where(n_in[None] > 0, mean_in, mean_out + gap)
    mean_out = np.where(n_out[None] > 0, mean_out, mean_in - gap)
    return GaussianFits(
        mean_in,
        _residual_std(values, inside, mean_in, fixed_variance),
        mean_out,
        _residual_std(values, ~inside, mean_out, fixed_variance),
    )


def lira_online(target: np.ndarray, fits: GaussianFits) -> np.ndarray:
    """Sum over variants of log N(c; in) - log N(c; out) for the target's confidences [V, N]."""
    c = np.asarray(target, dtype=np.float64)
    log_in = norm.logpdf(c, fits.mean_in, fits.std_in)
    log_out = norm.logpdf(c, fits.mean_out, fits.std_out)
    return (log_in - log_out).sum(0)


def lira_offline(target: np.ndarray, fits: GaussianFits) -> np.ndarray:
    """One-sided offline test: sum over variants of log P[Z <= c], Z ~ N(out)."""
    c = np.asarray(target, dtype=np.float64)
    return norm.logcdf(c, fits.mean_out, fits.std_out).sum(0)


@dataclass(frozen=True)
class AttackMetrics:
    auc: float
    tpr_at_fpr: dict[float, float]
    members: int
    non_members: int

    def to_dict(self) -> dict[str, object]:
        return {
            "auc": self.auc,
            **{f"tpr_at_{fpr:g}_fpr": v for fpr, v in self.tpr_at_fpr.items()},
            "members": self.members,
            "non_members": self.non_members,
        }


def roc(scores: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct threshold, from (0, 0) to (1, 1); ties share a point."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(members, dtype=bool)
    if y.all() or not y.any():
        raise ValueError("ROC needs members and non-members")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(y)[last_of_tie]
    fp = np.cumsum(~y)[last_of_tie]
    return np.r_[0.0, fp / (~y).sum()], np.r_[0.0, tp / y.sum()]


def auc(scores: np.ndarray, members: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids, so ties count one half)."""
    fpr, tpr = roc(scores, members)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def tpr_at_fpr(scores: np.ndarray, members: np.ndarray, fpr: float) -> float:
    """The highest TPR of a threshold whose FPR is at most `fpr` (no interpolation: with fewer
    than 1/fpr non-members this is the TPR at zero false positives)."""
    rates, tprs = roc(scores, members)
    return float(tprs[rates <= fpr + 1e-12].max())


def attack_metrics(
    scores: np.ndarray, members: np.ndarray, fprs: tuple[float, ...] = FPR_POINTS
) -> AttackMetrics:
    y = np.asarray(members, dtype=bool)
    return AttackMetrics(
        auc=auc(scores, y),
        tpr_at_fpr={f: tpr_at_fpr(scores, y, f) for f in fprs},
        members=int(y.sum()),
        non_members=int((~y).sum()),
    )
