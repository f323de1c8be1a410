"""Command-line overrides as a shell user writes them, made into what Hydra's grammar reads.

Hydra reads an unquoted value only when it is ASCII letters, digits and a few symbols
(hydra's OverrideLexer.g4), so a hospital's path such as `out_dir=/data/hôpital` or
`out_dir=~/runs` (sh and zsh leave the `~`) stopped with "LexerNoViableAltException".
"""

from __future__ import annotations

import os

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

HYDRA_SYNTAX = "'\"[]{}$,"  # a value holding one of these is Hydra syntax: left as it is


def readable_override(override: str) -> str:
    """`override`, or, when Hydra cannot read it, its value quoted as one string; a leading
    `~/` becomes the home folder, as the shell would have made it. A value that uses Hydra's
    own syntax (quotes, lists, dicts, interpolations) is left for Hydra to explain."""
    key, sep, value = override.partition("=")
    if not sep or key.startswith("~") or any(c in value for c in HYDRA_SYNTAX):
        return override
    try:
        OverridesParser.create().parse_override(override)
        return override
    except HydraException:
        pass
    if value == "~" or value.startswith("~/"):
        value = os.path.expanduser(value)
    return f"{key}='{value}'"
