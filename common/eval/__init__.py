"""Metrics with patient-clustered bootstrap CIs, predictions files and result records."""

from common.eval.metrics import auprc, evaluate_scores

__all__ = ["auprc", "evaluate_scores"]
