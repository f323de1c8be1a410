"""One-run privacy audit: an empirical lower bound on epsilon from a single training run.

Steinke, Nasr and Jagielski 2023, "Privacy Auditing with One (1) Training Run" (NeurIPS 2023,
arXiv:2305.08846). m canaries are each included in the training set independently with
probability 1/2 (everything else fixed); after one run an auditor scores every canary, guesses
"in" for the k+ highest scores and "out" for the k- lowest, and abstains on the rest. Their
Theorem 3.1 (approximate DP; Appendix D gives the algorithm) bounds the number W of correct
guesses out of r = k+ + k- for any (epsilon, delta)-DP training algorithm:

    P[W >= v] <= P[W' >= v] + 2 m delta * max_{i >= 1} P[v > W' >= v - i] / i,
    W' ~ Binomial(r, e^eps / (1 + e^eps)).

The right-hand side is the p-value of v correct guesses under the hypothesis "(eps, delta)-DP";
the lower bound is the largest eps whose p-value is still below 1 - confidence. It holds for
any scoring rule that uses no information about which canaries were included (reference models
trained on independent random halves are such information-free inputs).

The bound cannot exceed its value for v = r (every guess right): with m ~ 1000 canaries that
ceiling is a few units of epsilon, and the delta term 2 m delta costs most at small r and under
a Bonferroni correction. `OneRunAudit.ceiling` reports it, so a reader can tell "no leak found"
from "this audit could not have found one".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import expit
from scipy.stats import binom


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P-value of `v` correct guesses out of `r` (m canaries) under (epsilon, delta)-DP."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"epsilon {epsilon} must be >= 0 and delta {delta} in [0, 1]")
    q = float(expit(epsilon))  # accuracy of epsilon-DP randomized response
    beta = float(binom.sf(v - 1, r, q))  # P[W' >= v]
    if delta == 0 or v == 0:
        return min(beta, 1.0)
    i = np.arange(1, v + 1)
    window = binom.sf(v - i - 1, r, q) - beta  # P[v > W' >= v - i]
    alpha = float(np.max(window / i))
    return min(beta + 2 * m * delta * alpha, 1.0)


def epsilon_lower_bound(
    m: int, r: int, v: int, *, delta: float, confidence: float, tolerance: float = 1e-6
) -> float:
    """The largest epsilon that `v` correct guesses of `r` reject at `confidence`; 0 when even
    epsilon 0 is not rejected. Bisection on the p-value, which grows with epsilon; the value
    returned is one at which the test still rejects (never above the exact bound)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence} must be in (0, 1)")
    significance = 1 - confidence
    if p_value(m, r, v, 0.0, delta) >= significance:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < significance:
        low, high = high, 2 * high
        if high > 1e4:  # every guess right and m huge: no finite epsilon is accepted
            return float("inf")
    while high - low > tolerance:
        middle = (low + high) / 2
        if p_value(m, r, v, middle, delta) < significance:
            low = middle
        else:
            high = middle
    return low


def correct_guesses(
    scores: np.ndarray, included: np.ndarray, k_plus: int, k_minus: int, seed: int = 0
) -> int:
    """Correct guesses of "in" for the k+ highest scores and "out" for the k- lowest (ties
    broken by a seeded random order, which knows nothing of `included`)."""
    s = np.asarray(scores, dtype=np.float64)
    inside = np.asarray(included, dtype=bool)
    if k_plus + k_minus > len(s):
        raise ValueError(f"k+ {k_plus} + k- {k_minus} guesses > {len(s)} canaries")
    shuffle = np.random.default_rng(seed).permutation(len(s))
    order = shuffle[np.argsort(-s[shuffle], kind="stable")]
    high, low = order[:k_plus], order[len(s) - k_minus :]
    return int(inside[high].sum() + (~inside[low]).sum())


@dataclass(frozen=True)
class GuessCount:
    attack: str
    k_plus: int
    k_minus: int
    correct: int
    epsilon_lower_bound: float


@dataclass(frozen=True)
class OneRunAudit:
    """The audit's result: the best bound over the tried (attack, k) pairs, each tested at the
    Bonferroni-corrected confidence 1 - (1 - confidence) / len(counts), so that the reported
    maximum holds at `confidence`."""

    canaries: int
    included: int
    confidence: float
    delta: float
    counts: tuple[GuessCount, ...]
    epsilon_lower_bound: float
    best: GuessCount | None
    ceiling: float  # the largest bound these tests can give: every guess right

    def to_dict(self) -> dict[str, object]:
        return {
            "canaries_m": self.canaries,
            "canaries_included": self.included,
            "confidence": self.confidence,
            "bonferroni_tests": len(self.counts),
            "delta": self.delta,
            "epsilon_lower_bound": self.epsilon_lower_bound,
            "epsilon_ceiling": self.ceiling,
            "k": self.best.k_plus if self.best else None,
            "attack": self.best.attack if self.best else None,
            "guesses": [asdict(c) for c in self.counts],
        }


def one_run_audit(
    scores: np.ndarray | Mapping[str, np.ndarray],
    included: np.ndarray,
    ks: Sequence[int],
    *,
    confidence: float,
    delta: float,
    seed: int = 0,
) -> OneRunAudit:
    """Guess k in and k out (k+ = k- = k) with each score (one array, or one per attack) and
    each usable k; bound epsilon for each at the Bonferroni-corrected confidence and keep the
    largest bound (`best` names its attack and k; None when every bound is 0)."""
    inside = np.asarray(included, dtype=bool)
    by_attack = {"score": scores} if isinstance(scores, np.ndarray) else dict(scores)
    m = len(inside)
    usable = sorted({k for k in ks if 0 < 2 * k <= m})
    if not usable:
        raise ValueError(f"no k in {list(ks)} fits {m} canaries (need 2k <= m)")
    corrected = 1 - (1 - confidence) / (len(usable) * len(by_attack))
    counts = []
    for attack, values in by_attack.items():
        for k in usable:
            v = correct_guesses(values, inside, k, k, seed)
            bound = epsilon_lower_bound(m, 2 * k, v, delta=delta, confidence=corrected)
            counts.append(GuessCount(attack, k, k, v, bound))
    best = max(counts, key=lambda c: c.epsilon_lower_bound)
    ceiling = max(
        epsilon_lower_bound(m, 2 * k, 2 * k, delta=delta, confidence=corrected) for k in usable
    )
    return OneRunAudit(
        canaries=m,
        included=int(inside.sum()),
        confidence=confidence,
        delta=delta,
        counts=tuple(counts),
        epsilon_lower_bound=best.epsilon_lower_bound,
        best=best if best.epsilon_lower_bound > 0 else None,
        ceiling=ceiling,
    )
