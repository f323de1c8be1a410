"""What a recorded config (a checkpoint's, a finished cell's) has otherwise than the config a
resume composes now: the rules behind "resume only the same run" in `mammofl gan train`,
`mammofl table1` (per section, `changed_sections`) and `mammofl federate` (every setting,
`changed_leaves`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from common.config.option_values import is_path_key


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


def changed_leaves(
    recorded: Mapping[str, Any], now: Mapping[str, Any], *, skip: tuple[str, ...] = ()
) -> list[str]:
    """`key: was -> now` for every setting (dotted to its leaf, list entries of dicts by index:
    `sites.0.epsilon_cap`) that differs, bar keys starting with one of `skip`; a key only one
    side has counts as changed (None on the other)."""
    was, current = _flat(recorded), _flat(now)
    return [
        f"{key}: {was.get(key)!r} -> {current.get(key)!r}"
        for key in sorted(set(was) | set(current))
        if not key.startswith(skip) and not _same(key, was.get(key), current.get(key))
    ]


def _same(key: str, was: Any, now: Any) -> bool:
    """Equal settings; a path (`out_dir=/runs/a/` and `/runs/a`) compared as the folder."""
    if is_path_key(key) and isinstance(was, str) and isinstance(now, str):
        return os.path.normpath(was) == os.path.normpath(now)
    return bool(was == now)


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    items: list[tuple[Any, Any]]
    if isinstance(node, Mapping):
        items = list(node.items())
    elif isinstance(node, list) and node and all(isinstance(v, Mapping) for v in node):
        items = [(str(i), v) for i, v in enumerate(node)]
    else:
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat
