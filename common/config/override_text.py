"""Command-line overrides as a shell user writes them, made into what Hydra's grammar reads.

Hydra reads an unquoted value only when it is ASCII letters, digits and a few symbols
(hydra's OverrideLexer.g4), so a hospital's path such as `out_dir=/data/hôpital` or
`out_dir=~/runs` (sh and zsh leave the `~`) stopped with "LexerNoViableAltException".
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from common.config.option_values import expand_home, is_path_key, shell_value
from common.errors import ConfigError

HYDRA_SYNTAX = "[]{}$,"  # a value holding one of these is Hydra syntax: left as it is


def readable_override(override: str) -> str:
    """`override`, or, when Hydra cannot read it, its value quoted as one string; a leading
    `~/` becomes the home folder, as the shell would have made it. A value that uses Hydra's
    own syntax (quotes, lists, dicts, interpolations) is left for Hydra to explain."""
    key, sep, value = override.partition("=")
    quoted = value.startswith(("'", '"'))
    if not sep or key.startswith("~") or quoted or any(c in value for c in HYDRA_SYNTAX):
        return override
    try:
        OverridesParser.create().parse_override(override)
        return override
    except HydraException:
        pass
    quote = '"' if "'" in value else "'"  # `l'hôpital` goes in double quotes
    if quote in value:
        return override  # both kinds of quote: Hydra's to explain
    return f"{key}={quote}{expand_home(value)}{quote}"


def check_command_line(args: Sequence[str]) -> None:
    """ConfigError for what the user typed that would otherwise be silently resolved: a key
    given twice (the last one won: `gan_preset=dp gan_preset=tiny` trained without DP), or an
    empty path (`out_dir=` wrote into the current folder)."""
    seen: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            continue
        key = key.strip().lstrip("+~")
        if key in seen:
            raise ConfigError(f"{key} is given twice ({seen[key]} and {arg}): give each key once")
        seen[key] = arg
        if is_path_key(key) and not shell_value(value.strip()).strip():
            raise ConfigError(
                f"{key}= is empty: give a path (an empty one would be the current folder)"
            )
