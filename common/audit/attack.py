"""Attack one target with the other trained models as references, and audit its run.

The membership question is asked only about canaries (the records whose inclusion was random);
each attack gets the target's logits on them, the labels they were trained with, and the
reference models' logits and inclusion masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common.audit.canaries import OneRunAudit, one_run_audit
from common.audit.membership import (
    AttackMetrics,
    attack_metrics,
    fit_gaussians,
    lira_offline,
    lira_online,
    logit_confidence,
    loss_attack,
)

ATTACKS = ("lira_online", "lira_offline", "loss")
AUDIT_ATTACKS = ("lira_online", "lira_offline")  # default scores of the one-run audit


@dataclass(frozen=True)
class TargetAttack:
    scores: dict[str, np.ndarray]  # attack -> score per canary (higher: member)
    members: np.ndarray  # the target's inclusion of each canary
    metrics: dict[str, AttackMetrics]
    audit: OneRunAudit


def attack_target(
    target_logits: np.ndarray,
    target_included: np.ndarray,
    reference_logits: Sequence[np.ndarray],
    reference_included: Sequence[np.ndarray],
    canaries: np.ndarray,
    labels: np.ndarray,
    *,
    ks: Sequence[int],
    confidence: float,
    delta: float,
    fixed_variance: bool = True,
    audit_attacks: Sequence[str] = AUDIT_ATTACKS,
) -> TargetAttack:
    """LiRA (online, offline) and the loss attack against one target, then the one-run audit
    with the scores of `audit_attacks` (Bonferroni over those attacks and k, so no choice is
    made after seeing the data). Logits are [V, N, 2] over the whole population; inclusion
    masks are over the canaries."""
    y = labels[canaries]
    target = target_logits[:, canaries]
    confidence_of = [logit_confidence(r[:, canaries], y) for r in reference_logits]
    fits = fit_gaussians(np.stack(confidence_of), np.stack(reference_included), fixed_variance)
    own = logit_confidence(target, y)
    scores = {
        "lira_online": lira_online(own, fits),
        "lira_offline": lira_offline(own, fits),
        "loss": loss_attack(target, y),
    }
    members = np.asarray(target_included, dtype=bool)
    audited = {name: scores[name] for name in audit_attacks}
    audit = one_run_audit(audited, members, ks, confidence=confidence, delta=delta)
    return TargetAttack(
        scores=scores,
        members=members,
        metrics={name: attack_metrics(s, members) for name, s in scores.items()},
        audit=audit,
    )
