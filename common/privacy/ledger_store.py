"""A site's ledger on disk: one JSON file in the site's state dir, written atomically.

The file outlives runs: a restarted site (or a resumed federation) reads what it has spent.
Opening a ledger with another delta, accountant or unit than it was written with is refused:
the history would then be composed under different rules.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from common.atomic_io import atomic_write_text
from common.errors import PrivacyError
from common.privacy.ledger import PrivacyLedger


class LedgerStore:
    def __init__(self, path: Path, spending_traces: Sequence[Path] = ()) -> None:
        """`spending_traces`: files or folders that exist only once the ledger was written
        (e.g. a saved privacy plan, MCGAN checkpoints): with one of them present, a missing
        ledger was lost, not never kept."""
        self.path = path
        self.spending_traces = tuple(spending_traces)

    def load(self, *, delta: float, accountant: str, unit: str) -> PrivacyLedger:
        """The stored ledger, or a new empty one when none exists yet. Raises PrivacyError for
        an unreadable ledger, one kept under other rules, or a missing one beside traces of
        spending (an empty ledger would understate what was spent)."""
        if not self.path.is_file():
            traces = [str(t) for t in self.spending_traces if _present(t)]
            if traces:
                raise PrivacyError(
                    f"ledger {self.path} is missing, but {', '.join(traces)} show this state "
                    "dir has trained before: restore the ledger from a backup (a site without "
                    "its ledger cannot know what it spent), or, if nothing was ever trained "
                    "here, remove those and start again"
                )
            return PrivacyLedger(delta=delta, accountant=accountant, unit=unit)
        try:
            state = json.loads(self.path.read_text())
        except json.JSONDecodeError as error:
            raise PrivacyError(
                f"ledger {self.path} is unreadable ({error}); restore it from a backup: a "
                "site without its ledger cannot know what it spent"
            ) from error
        ledger = PrivacyLedger.from_state_dict(state)
        stored = (ledger.delta, ledger.accountant, ledger.unit)
        unused = not ledger.events and not ledger.non_dp_uses
        if unused and not any(_present(t) for t in self.spending_traces):
            # written at the state dir's first use, nothing spent since: no history to compose
            # under other rules, so a run may still choose them (e.g. a lower delta)
            return PrivacyLedger(delta=delta, accountant=accountant, unit=unit)
        if stored != (delta, accountant, unit):
            raise PrivacyError(
                f"ledger {self.path} was kept with (delta, accountant, unit) = {stored}, this run "
                f"asks for {(delta, accountant, unit)}; use the same settings or a new state dir"
            )
        return ledger

    def save(self, ledger: PrivacyLedger) -> None:
        atomic_write_text(self.path, json.dumps(ledger.state_dict(), indent=2) + "\n")


def _present(path: Path) -> bool:
    """A file, or a folder holding at least one file."""
    if path.is_dir():
        return any(p.is_file() for p in path.rglob("*"))
    return path.is_file()
