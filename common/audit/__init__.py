"""Membership-inference and one-run privacy audits of trained models (`mammofl audit`)."""

from common.audit.canaries import OneRunAudit, epsilon_lower_bound, one_run_audit, p_value
from common.audit.membership import attack_metrics, auc, fit_gaussians, roc, tpr_at_fpr
from common.audit.options import AuditOptions
from common.audit.run import run_audit

__all__ = [
    "AuditOptions",
    "OneRunAudit",
    "attack_metrics",
    "auc",
    "epsilon_lower_bound",
    "fit_gaussians",
    "one_run_audit",
    "p_value",
    "roc",
    "run_audit",
    "tpr_at_fpr",
]
