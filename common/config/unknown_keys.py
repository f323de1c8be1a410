"""Overrides that name no setting: refused with the nearest setting's name.

Hydra's own message for a typo'd key advises `+key=value`, which, on a typed (dataclass)
section, adds a key the run then silently ignores. mammofl refuses both forms and names the
setting that was probably meant.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Collection, Sequence
from typing import Any

from common.errors import ConfigError

_HYDRA_UNKNOWN = re.compile(r"Could not override '([^']+)'")


def unwrap_optional(hint: Any) -> Any:
    """`X | None` -> X."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def unknown_key_message(schema: type, key: str) -> str | None:
    """Why `key` is no setting of `schema`, with the nearest names; None if it is one (or
    lies in a free dict such as model.kwargs). A named entry of a typed dict (data.tests.NAME)
    is checked against the entry's dataclass."""
    parts = key.split(".")
    node: Any = schema
    for depth, part in enumerate(parts):
        if typing.get_origin(node) is list and part.isdigit():  # sites.0.<key>
            node = unwrap_optional(typing.get_args(node)[0])
            continue
        if typing.get_origin(node) is dict:  # data.tests.<name>.<key>
            node = unwrap_optional(typing.get_args(node)[1])
            continue
        if not (dataclasses.is_dataclass(node) and isinstance(node, type)):
            return None  # a free dict or a value: not ours to check
        hints = typing.get_type_hints(node)
        if part not in hints:
            names = [f.name for f in dataclasses.fields(node)]
            where = ".".join(parts[:depth])
            close = difflib.get_close_matches(part, names, n=3)
            hint = (
                f"did you mean {' or '.join(f'{where}.{c}' if where else c for c in close)}?"
                if close
                else f"its settings: {', '.join(names)}"
            )
            return f"{key} is not a setting ({where or 'the config'} has no {part!r}); {hint}"
        node = unwrap_optional(hints[part])
    return None


def check_added_keys(schema: type, overrides: Sequence[str], groups: Collection[str] = ()) -> None:
    """Refuse `+key=` / `++key=` where `key` is no field of a typed section (it would be added
    and ignored); adding keys to a free dict (model.kwargs) or choosing a config group
    (`+experiment=...`, one of `groups`) stays allowed."""
    for override in overrides:
        if not override.startswith("+"):
            continue
        key = override.lstrip("+").partition("=")[0].strip()
        if key in groups:
            continue
        message = unknown_key_message(schema, key)
        if message is not None:
            raise ConfigError(f"override {override!r}: {message}")


def explain_hydra_error(schema: type, error: Exception) -> str:
    """Hydra's error text, with its `+key=value` advice replaced where the key is a typo, and
    the reason hydra keeps in its causes ("Error merging override train.epochs=abc" alone does
    not say that the value is no integer)."""
    text = str(error)
    match = _HYDRA_UNKNOWN.search(text)
    if match is not None:
        message = unknown_key_message(schema, match.group(1))
        if message is not None:
            return message
    reasons = []
    cause = error.__cause__
    while cause is not None:
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        if first and first not in text and first not in reasons:
            reasons.append(first)
        cause = cause.__cause__
    return ": ".join([text, *reasons])
