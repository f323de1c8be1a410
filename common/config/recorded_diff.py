"""What a recorded config (a checkpoint's, a finished cell's) has otherwise than the config a
resume composes now: the one rule behind "resume only the same run" in `mammofl gan train`
and `mammofl table1`."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any


def changed_sections(
    recorded: Mapping[str, Any],
    now: Mapping[str, Any],
    sections: Sequence[str],
    *,
    skip: Collection[str] = (),
    prefix: str = "",
    normalise: Callable[[Any], Any] = lambda value: value,
) -> list[str]:
    """`<prefix>section.key: was -> now` for each key of `sections` whose recorded value
    differs from `now` (both `dataclasses.asdict`-style dicts), after `normalise`. Keys in
    `skip` (dotted, `section.key`) and keys either side lacks (an older record) are not
    compared."""
    changes = []
    for section in sections:
        current = now.get(section, {})
        for key, was in recorded.get(section, {}).items():
            dotted = f"{section}.{key}"
            if dotted in skip or key not in current:
                continue
            if normalise(current[key]) != normalise(was):
                changes.append(f"{prefix}{dotted}: {was!r} -> {current[key]!r}")
    return changes
