"""A site's ledger on disk: one JSON file in the site's state dir, written atomically.

The file outlives runs: a restarted site (or a resumed federation) reads what it has spent.
Opening a ledger with another delta, accountant or unit than it was written with is refused:
the history would then be composed under different rules.
"""

from __future__ import annotations

import json
from pathlib import Path

from common.atomic_io import atomic_write_text
from common.errors import PrivacyError
from common.privacy.ledger import PrivacyLedger


class LedgerStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self, *, delta: float, accountant: str, unit: str) -> PrivacyLedger:
        """The stored ledger, or a new empty one when none exists yet."""
        if not self.path.is_file():
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
        if stored != (delta, accountant, unit):
            raise PrivacyError(
                f"ledger {self.path} was kept with (delta, accountant, unit) = {stored}, this run "
                f"asks for {(delta, accountant, unit)}; use the same settings or a new state dir"
            )
        return ledger

    def save(self, ledger: PrivacyLedger) -> None:
        atomic_write_text(self.path, json.dumps(ledger.state_dict(), indent=2) + "\n")
