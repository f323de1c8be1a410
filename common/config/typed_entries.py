"""`+data.tests.NAME.path=DIR`: a new named entry of a typed dict, from the command line.

OmegaConf types the values of a `dict[str, PatchSourceConfig]` node; hydra creates a new
entry as a plain dict, which that node refuses ("dict is not a subclass of
PatchSourceConfig"). So mammofl takes `+` overrides into such a dict out of hydra's hands
and, after composing, applies them to an entry made from the dataclass (its defaults, then
the keys given), where OmegaConf checks each key and value against the dataclass.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from common.config.unknown_keys import unwrap_optional


@dataclass(frozen=True)
class EntryOverride:
    """One `+<dict>.<name>[.<key>]=<value>` override, its value parsed by hydra's grammar."""

    entry: str  # e.g. data.tests.mine
    entry_type: type  # e.g. PatchSourceConfig
    key: str | None  # e.g. path; None when the whole entry is given as {path: DIR, ...}
    value: Any


def typed_entry(schema: type, key: str) -> tuple[str, type, str | None] | None:
    """(entry path, entry dataclass, key inside it) when `key` reaches into a named entry of a
    `dict[str, <dataclass>]` field of `schema`; None otherwise."""
    parts = key.split(".")
    node: Any = schema
    for depth, part in enumerate(parts):
        if not (dataclasses.is_dataclass(node) and isinstance(node, type)):
            return None
        hint = typing.get_type_hints(node).get(part)
        if hint is None:
            return None
        node = unwrap_optional(hint)
        if typing.get_origin(node) is dict and depth + 1 < len(parts):
            value_type = typing.get_args(node)[1]
            if dataclasses.is_dataclass(value_type) and isinstance(value_type, type):
                inner = ".".join(parts[depth + 2 :]) or None
                return ".".join(parts[: depth + 2]), value_type, inner
            return None
    return None


def split_entry_overrides(
    schema: type, overrides: Sequence[str]
) -> tuple[list[str], list[EntryOverride]]:
    """(overrides for hydra, `+` overrides into a named entry of a typed dict). Only the `+`
    form is taken: a plain `data.tests.bcdr.path=` edits an entry the preset has, as before."""
    kept: list[str] = []
    entries: list[EntryOverride] = []
    for override in overrides:
        if not override.startswith("+"):
            kept.append(override)
            continue
        found = typed_entry(schema, override.lstrip("+").partition("=")[0].strip())
        if found is None:
            kept.append(override)
            continue
        value = OverridesParser.create().parse_override(override).value()  # rare: built here
        entries.append(EntryOverride(*found, value))
    return kept, entries


def apply_entry_overrides(composed: DictConfig, entries: Sequence[EntryOverride]) -> None:
    """Create each named entry that is missing from its dataclass, then set the given keys;
    raises OmegaConf's errors (unknown key, wrong type), which name the full key."""
    for override in entries:
        if OmegaConf.select(composed, override.entry, default=None) is None:
            parent_key, _, name = override.entry.rpartition(".")
            parent = OmegaConf.select(composed, parent_key) if parent_key else composed
            with open_dict(parent):  # a new name in the dict; its keys stay the dataclass's
                parent[name] = OmegaConf.structured(override.entry_type)
        if override.key is None:
            OmegaConf.update(composed, override.entry, override.value, merge=True)
        else:
            OmegaConf.update(composed, f"{override.entry}.{override.key}", override.value)
