"""Epoch selection: best validation AUPRC (configured positive class), ties to lower loss; or
the last iterate (a federated round: the server never picks a site's epoch).

Under DP only epochs whose spent epsilon lies in (low, high] x target are eligible, so a model
is never picked from an epoch that spent far less (or more) than the reported budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float | None
    val_loss: float | None
    val_auprc: float | None
    epsilon: float | None
    eligible: bool
    seconds: float = 0.0


@dataclass
class EpochSelector:
    target_epsilon: float | None = None
    low: float = 0.75
    high: float = 1.05
    best: EpochRecord | None = None
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)

    def eligible(self, epsilon: float | None) -> bool:
        if self.target_epsilon is None or epsilon is None:
            return True
        return self.low * self.target_epsilon < epsilon <= self.high * self.target_epsilon

    def offer(self, record: EpochRecord, state: Callable[[], dict[str, torch.Tensor]]) -> bool:
        """Keep `state()` if this epoch is eligible and better; return whether it was kept."""
        if not record.eligible or record.val_auprc is None or math.isnan(record.val_auprc):
            return False
        best = self.best
        better = (
            best is None
            or best.val_auprc is None
            or record.val_auprc > best.val_auprc
            or (
                record.val_auprc == best.val_auprc
                and (record.val_loss or 0.0) < (best.val_loss or 0.0)
            )
        )
        if better:
            self.best, self.best_state = record, state()
        return better


@dataclass
class LastIterate:
    """Keep the last epoch, whatever its validation score (federated rounds)."""

    best: EpochRecord | None = None
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)

    def eligible(self, epsilon: float | None) -> bool:
        return True

    def offer(self, record: EpochRecord, state: Callable[[], dict[str, torch.Tensor]]) -> bool:
        """Remember the record only: the model itself already holds the last iterate."""
        self.best = record
        return True
