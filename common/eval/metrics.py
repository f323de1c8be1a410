"""AUROC, AUPRC (malignant positive, and the paper's benign-positive one), patient-clustered CIs.

Scores are probabilities of malignancy; labels are 1 = malignant. The bootstrap resamples
patients, not patches, because one patient's patches are correlated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

METRICS = ("auroc", "auprc_malignant", "auprc_benign")
# metrics that leave a site are rounded to this many decimals (see `released`)
RELEASE_DECIMALS = 3


def released(value: Any) -> Any:
    """`value` (a number, or dicts and lists of them) with every float rounded to
    RELEASE_DECIMALS, for what leaves a site. AUROC is U / (n_malignant * n_benign) and AUPRC a
    ratio of counts too: at full precision a fraction's denominator gives the site's class
    counts away (DESIGN.md: no exact count leaves a site); at 3 decimals, a set with more than
    about 30 patches per class no longer pins them. NaN stays NaN; other values are kept."""
    if isinstance(value, float | np.floating):  # numpy's float32 is no Python float
        return value if not math.isfinite(value) else round(float(value), RELEASE_DECIMALS)
    if isinstance(value, dict):
        return {k: released(v) for k, v in value.items()}
    if isinstance(value, list):
        return [released(v) for v in value]
    return value


# the fewest patches of each class whose metrics may leave a site unless it consents to less:
# AUROC is U / (n_malignant * n_benign), so with n_malignant * n_benign >= 10**RELEASE_DECIMALS
# its lattice is no coarser than the rounding and the values sent over rounds no longer show
# the denominator; 32 * 32 = 1024. AUPRC's terms are precisions i/k over the n_malignant
# (or n_benign) ranks: each class needs the count, not only their product.
MIN_RELEASED_CLASS_COUNT = math.isqrt(10**RELEASE_DECIMALS - 1) + 1


def counts_hidden_by_rounding(labels: Sequence[int] | np.ndarray) -> bool:
    """Whether metrics of a set with these labels (1 = malignant), rounded by `released`,
    keep its class counts hidden: both classes have MIN_RELEASED_CLASS_COUNT patches or more."""
    malignant = int(np.sum(np.asarray(labels) == 1))
    return min(malignant, len(labels) - malignant) >= MIN_RELEASED_CLASS_COUNT


def auprc(labels: np.ndarray, scores: np.ndarray, positive: str) -> float:
    """AUPRC with the named class as positive (benign: the paper's, on 1 - score)."""
    from sklearn.metrics import average_precision_score  # lazy: a ClientApp process per message

    if positive == "malignant":
        return float(average_precision_score(labels, scores))
    return float(average_precision_score(1 - labels, 1 - scores))


def point_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    if len(np.unique(labels)) < 2:
        return {m: float("nan") for m in METRICS}
    from sklearn.metrics import roc_auc_score  # lazy: a ClientApp process per message

    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "auprc_malignant": auprc(labels, scores, "malignant"),
        "auprc_benign": auprc(labels, scores, "benign"),
    }


MIN_PATIENTS_FOR_CI = 10  # below this a patient bootstrap cannot say much: the record says so


def evaluate_scores(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    patients: Sequence[str],
    *,
    bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Point values and percentile CIs from a patient-clustered bootstrap."""
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    result: dict[str, Any] = {m: {"value": v} for m, v in point_metrics(y, s).items()}
    result["n"] = len(y)
    result["n_patients"] = len(set(patients))
    if bootstrap == 0:
        return result
    groups: dict[str, list[int]] = {}
    for index, patient in enumerate(patients):
        groups.setdefault(patient, []).append(index)
    members = [np.asarray(v) for v in groups.values()]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {m: [] for m in METRICS}
    for _ in range(bootstrap):
        chosen = rng.integers(0, len(members), len(members))
        idx = np.concatenate([members[c] for c in chosen])
        for metric, value in point_metrics(y[idx], s[idx]).items():
            if not np.isnan(value):
                draws[metric].append(value)
    tail = (1 - confidence) / 2 * 100
    for metric in METRICS:
        values = draws[metric]
        low, high = np.percentile(values, [tail, 100 - tail]) if values else (np.nan, np.nan)
        # resamples that drew one class only have no value: the CI is over the rest
        result[metric].update(
            ci_low=float(low), ci_high=float(high), bootstrap_dropped=bootstrap - len(values)
        )
    result["bootstrap"] = bootstrap
    result["confidence"] = confidence
    if len(members) < MIN_PATIENTS_FOR_CI:
        result["ci_note"] = (
            f"fewer than {MIN_PATIENTS_FOR_CI} patients: too few for a meaningful interval "
            "(resampling so few repeats the same handful)"
        )
    return result
