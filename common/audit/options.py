"""The audit's own options (beside the hydra config of the audited model), validated once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.audit.attack import ATTACKS, AUDIT_ATTACKS
from common.audit.population import CANARY_KINDS
from common.errors import ConfigError

# fixed from the non-DP pilot on the released patches (docs/audit.md): with m ~ 1000 canaries
# and delta 1e-4, each extra test of the Bonferroni family costs much (the 2 m delta term);
# k <= 25 could not give a bound above 0.7 even with every guess right
DEFAULT_KS = (50, 100, 200)
SHADOW_SEED_BASE = 10_000


@dataclass(frozen=True)
class AuditOptions:
    """`shadows`: reference models each target is attacked with (the pool holds shadows + 1
    models: the targets, one per seed, and extra models; every target uses all the others).
    `canary_count`: m (None: every real training record). `ks`: guesses per side tried by the
    one-run audit with the scores of each of `audit_attacks` (Bonferroni over all pairs).
    `confidence`: of the epsilon lower bound."""

    out_dir: Path
    seeds: tuple[int, ...]
    shadows: int = 16
    canary_kind: str = "real"
    canary_count: int | None = None
    ks: tuple[int, ...] = DEFAULT_KS
    confidence: float = 0.95
    fixed_variance: bool = True
    audit_attacks: tuple[str, ...] = AUDIT_ATTACKS

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds={list(self.seeds)}: give one or more distinct seeds")
        if self.shadows < 2:
            raise ConfigError(f"shadows={self.shadows}: LiRA needs at least 2 reference models")
        if self.shadows + 1 < len(self.seeds):
            raise ConfigError(
                f"shadows={self.shadows} < {len(self.seeds)} seeds - 1: every target is a "
                "reference model of the others, so shadows must be at least seeds - 1"
            )
        if self.canary_kind not in CANARY_KINDS:
            raise ConfigError(
                f"canaries={self.canary_kind!r}: choose one of {', '.join(CANARY_KINDS)}"
            )
        if self.canary_kind == "mislabelled" and self.canary_count is None:
            raise ConfigError(
                "canaries=mislabelled flips the labels of its canaries: give canary_count=M "
                "(e.g. 100), or every training label would be flipped"
            )
        if self.canary_count is not None and self.canary_count < 2:
            raise ConfigError(f"canary_count={self.canary_count}: use at least 2")
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"k={list(self.ks)}: guesses per side must be >= 1")
        unknown = sorted(set(self.audit_attacks) - set(ATTACKS))
        if not self.audit_attacks or unknown:
            raise ConfigError(
                f"audit_attacks={list(self.audit_attacks)}: choose among {', '.join(ATTACKS)}"
            )
        if not 0.5 <= self.confidence < 1:
            raise ConfigError(f"confidence={self.confidence}: use a value in [0.5, 1)")

    def pool_seeds(self) -> list[int]:
        """The targets' seeds, then the extra reference models' (never a target's)."""
        extra = [s for s in range(SHADOW_SEED_BASE, SHADOW_SEED_BASE + 10 * self.shadows)]
        extra = [s for s in extra if s not in self.seeds]
        return [*self.seeds, *extra[: self.shadows + 1 - len(self.seeds)]]
