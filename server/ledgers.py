"""The server's mirror of every site's privacy ledger.

The site's own ledger is authoritative; the server mirrors the events sites report (in status
replies and after each round) to stop selecting a site whose budget is spent and to write
`ledger.json`. A site whose ledger holds fewer events than the mirror has lost history: it is
not selected again (its spending can no longer be trusted to be complete).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from common.federated.protocol import ReplySchemaError
from common.privacy.ledger import LedgerEvent, PrivacyLedger


@dataclass
class SiteMirror:
    site: str
    budget: float
    delta: float
    unit: str
    accountant: str
    events: list[dict[str, Any]] = field(default_factory=list)
    non_dp_uses: list[dict[str, str]] = field(default_factory=list)
    synthetic_guarantee: str = "not generated"
    plan: dict[str, Any] | None = None
    excluded: str = ""  # why the server stopped selecting the site ("" while selectable)
    epsilon_after_round: list[float] = field(default_factory=list)
    # rounds the site was sent but never answered: presumed spent at its plan until the site
    # reports its own ledger again (which then replaces them)
    unconfirmed: list[dict[str, Any]] = field(default_factory=list)
    # rounds the site was sent, never answered, before it had reported a plan: nothing to
    # count them at, so until it reports again its spending is bounded only by its budget
    # (the site checks its budget before it spends)
    unplanned_rounds: list[int] = field(default_factory=list)

    def ledger(self) -> PrivacyLedger:
        return PrivacyLedger(
            delta=self.delta,
            accountant=self.accountant,
            unit=self.unit,
            events=[LedgerEvent(**e) for e in self.events + self.unconfirmed],
        )

    def epsilon(self, kind: str | None = None) -> float:
        """Epsilon spent as the server knows it; with unplanned rounds, the site's budget (an
        upper bound: never understated)."""
        spent = self.ledger().epsilon(kind=kind)
        if self.unplanned_rounds and kind != "dp-gan":
            return max(spent, self.budget)
        return spent

    def next_round_fits(self) -> bool:
        """Whether one more round at the site's reported plan stays within its budget."""
        if self.unplanned_rounds:
            return False  # its spending is unknown until it reports its ledger
        if self.plan is None:
            return True  # unknown until the first round: the site itself checks
        event = LedgerEvent(
            noise_multiplier=float(self.plan["noise_multiplier"]),
            sample_rate=float(self.plan["sample_rate"]),
            steps=int(self.plan["steps_per_round"]),
        )
        return self.ledger().epsilon(extra=event) <= self.budget * (1 + 1e-9)


BASE_MODEL_MISSING = "does not hold the base model"
PRESUMED = "presumed by the server: the round was sent, no reply came"
BUDGET_SPENT = "budget spent: one more round would exceed it"
UNACCOUNTED = (
    "a round was sent before the site reported a plan and no reply came: its spending is "
    "unknown (at most its budget) until it reports its ledger"
)
# cleared when the site reports again (e.g. on resume, or back after a crash: its own ledger
# may show less spent than the rounds the server presumed)
TRANSIENT = (BASE_MODEL_MISSING, BUDGET_SPENT, UNACCOUNTED)


class MirroredLedgers:
    def __init__(self) -> None:
        self.sites: dict[str, SiteMirror] = {}

    @staticmethod
    def check_computable(status: dict[str, Any]) -> None:
        """ReplySchemaError when the server could not compute with a (schema-checked) status:
        an epsilon its accountant cannot evaluate (e.g. sigma 1e-300, 10**400 steps) would
        otherwise raise in the middle of the run."""
        mirror = _mirror_of(status)
        try:
            mirror.epsilon()
            mirror.next_round_fits()
        except Exception as error:  # whatever the accountant raises on such numbers
            raise ReplySchemaError(
                f"status: its spending cannot be computed ({type(error).__name__}: {error})"
            ) from error

    def adopt_status(self, status: dict[str, Any]) -> None:
        """Take a site's reported ledger (start or resume); refuse a site that lost history."""
        name = status["site"]
        known = self.sites.get(name)
        mirror = _mirror_of(status)
        if known is not None:
            # the rounds it was presumed to spend, now that its own ledger says what it did:
            # spending only grows, so by any past round it had spent at most what it has now
            # (ledger.json's per-round list and plot said 6.0 where the total said 0.0)
            now = mirror.epsilon()
            mirror.epsilon_after_round = [min(e, now) for e in known.epsilon_after_round]
            mirror.excluded = "" if known.excluded in TRANSIENT else known.excluded
            if known.excluded == BUDGET_SPENT and not mirror.next_round_fits():
                mirror.excluded = BUDGET_SPENT  # still true by the site's own ledger
            if len(mirror.events) < len(known.events):
                mirror.events = known.events  # keep the larger, known spending
                mirror.excluded = "its ledger holds fewer events than the server's mirror"
        self.sites[name] = mirror

    def presume_round(self, site: str, round_number: int) -> None:
        """A site got round `round_number` but never replied: count the round at its plan
        (the conservative view) until it reports its ledger again."""
        mirror = self.sites[site]
        if mirror.plan is None:  # nothing to count it at: bounded by the budget (UNACCOUNTED)
            mirror.unplanned_rounds.append(round_number)
            mirror.excluded = mirror.excluded or UNACCOUNTED
            return
        event = LedgerEvent(
            noise_multiplier=float(mirror.plan["noise_multiplier"]),
            sample_rate=float(mirror.plan["sample_rate"]),
            steps=int(mirror.plan["steps_per_round"]),
            round=round_number,
            status="reserved",
            label=PRESUMED,
        )
        mirror.unconfirmed.append(asdict(event))

    def record_round(self, site: str, event: dict[str, Any], plan: dict[str, Any]) -> None:
        mirror = self.sites[site]
        mirror.events.append(_normal(event))
        mirror.plan = plan

    def exclude(self, site: str, reason: str) -> None:
        self.sites[site].excluded = reason

    def selectable(self) -> list[str]:
        """Sites not excluded whose next round fits their budget."""
        chosen = []
        for name, mirror in self.sites.items():
            if not mirror.excluded and not mirror.next_round_fits():
                mirror.excluded = BUDGET_SPENT
            if not mirror.excluded:
                chosen.append(name)
        return chosen

    def close_round(self) -> None:
        for mirror in self.sites.values():
            mirror.epsilon_after_round.append(mirror.epsilon())

    def state_dict(self) -> dict[str, Any]:
        return {name: asdict(m) for name, m in self.sites.items()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> MirroredLedgers:
        mirrored = cls()
        mirrored.sites = {name: SiteMirror(**m) for name, m in state.items()}
        return mirrored

    def report(self) -> dict[str, Any]:
        """`ledger.json`'s `sites`: budget, delta, unit, events, epsilon after every round,
        the synthetic data's guarantee and the GAN's epsilon."""
        sites = {}
        for name, mirror in sorted(self.sites.items()):
            gan = [e for e in mirror.events if e["kind"] == "dp-gan"]
            sites[name] = {
                "budget": mirror.budget,
                "delta": mirror.delta,
                "unit": mirror.unit,
                "accountant": mirror.accountant,
                "events": mirror.events + mirror.unconfirmed,
                "epsilon": mirror.epsilon(),
                "epsilon_dp_sgd": mirror.epsilon(kind="dp-sgd"),
                "epsilon_after_round": mirror.epsilon_after_round,
                "synthetic_guarantee": mirror.synthetic_guarantee,
                "gan_epsilon": mirror.epsilon(kind="dp-gan") if gan else None,
                "non_dp_uses": mirror.non_dp_uses,
                "excluded": mirror.excluded or None,
                # epsilon above is then the budget, an upper bound (UNACCOUNTED)
                "unplanned_rounds": mirror.unplanned_rounds,
            }
        return sites


def _mirror_of(status: dict[str, Any]) -> SiteMirror:
    ledger = status["ledger"]
    return SiteMirror(
        site=status["site"],
        budget=float(status["budget"]),
        delta=float(ledger["delta"]),
        unit=str(ledger["unit"]),
        accountant=str(ledger["accountant"]),
        events=[_normal(e) for e in ledger["events"]],
        non_dp_uses=[dict(u) for u in ledger["non_dp_uses"]],
        synthetic_guarantee=str(status["synthetic_guarantee"]),
        plan=status["plan"],
    )


def _normal(event: dict[str, Any]) -> dict[str, Any]:
    """One event in the ledger's own field order and types (a reply's order is arbitrary)."""
    return asdict(LedgerEvent(**{k: v for k, v in event.items()}))
