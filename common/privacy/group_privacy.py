"""What a per-record (epsilon, delta) guarantee says about a group of k records.

Group privacy (Dwork & Roth 2014, "The Algorithmic Foundations of Differential Privacy",
Theorem 2.2 and its (epsilon, delta) form; Vadhan 2017, Lemma 2.2): an (epsilon, delta)-DP
mechanism is (k epsilon, k e^{(k-1) epsilon} delta)-DP for groups of k records. With one
patient's k patches as the group, this is what a per-patch guarantee says about a patient; at
the paper's settings its delta exceeds 1, so it says nothing ("vacuous").
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class GroupGuarantee:
    group_size: int
    epsilon: float
    log10_delta: float  # log10 of k e^{(k-1) epsilon} delta (may be far above 0)

    @property
    def vacuous(self) -> bool:
        """delta >= 1: no statement at all about the group."""
        return self.log10_delta >= 0.0

    def delta_text(self) -> str:
        """The delta, or 'vacuous (delta = 10^x > 1)' rather than a number that means nothing.

        >>> group_guarantee(6.0, 1e-4, 14).delta_text()
        'vacuous (delta = 10^31.0 > 1)'
        >>> group_guarantee(0.01, 1e-6, 2).delta_text()
        '2.02e-06'
        """
        if self.vacuous:
            return f"vacuous (delta = 10^{self.log10_delta:.1f} > 1)"
        return f"{10**self.log10_delta:.3g}"


def group_guarantee(epsilon: float, delta: float, group_size: int) -> GroupGuarantee:
    """The (k epsilon, k e^{(k-1) epsilon} delta) guarantee for groups of `group_size` records.

    Raises ValueError for a group size below 1 or a delta outside (0, 1).
    """
    if group_size < 1 or not 0 < delta < 1:
        raise ValueError(f"group_size={group_size} (>= 1), delta={delta} (in (0, 1))")
    k = group_size
    log10_delta = math.log10(k) + (k - 1) * epsilon / math.log(10) + math.log10(delta)
    return GroupGuarantee(group_size=k, epsilon=k * epsilon, log10_delta=log10_delta)
