"""Values of command options (`fresh=true`, `seeds=[42,43]`) and SuperNode node-config keys,
read strictly: a value that is not what the option takes is a ConfigError that names the
option and shows a valid value, never a traceback and never read as the default (`fresh=ture`
is refused, not taken as false)."""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Sequence

from common.errors import ConfigError

# keys whose value names a file or folder (`out_dir`, `data.real.path`): an empty one would be
# the current folder; `a/b/` and `a/b` are one folder
PATH_KEYS = frozenset({"out_dir", "work_dir", "run_dir", "root", "path", "checkpoint", "csv"})
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


def flag(name: str, value: object) -> bool:
    """true/1/yes or false/0/no, any case (or a bool, as TOML gives a node config one)."""
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{name}={value}: expected true or false")


SEED_MAX = 2**32 - 1  # numpy's and torch's seeds: a negative or larger one is a traceback


def whole_number(
    name: str, value: object, minimum: int | None = None, maximum: int | None = None
) -> int:
    """An integer (`7`, not `7.5` or `seven`), at least `minimum` and at most `maximum` when
    given."""
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{name}={value}: expected a whole number, e.g. {name}=3") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{name}={value}: expected a whole number >= {minimum}")
    if maximum is not None and number > maximum:
        raise ConfigError(f"{name}={value}: expected a whole number <= {maximum}")
    return number


def seed_number(name: str, value: object) -> int:
    """A seed numpy and torch take: a whole number in [0, 2**32 - 1]."""
    return whole_number(name, value, minimum=0, maximum=SEED_MAX)


def seed_numbers(name: str, value: str, *, distinct: bool = True) -> list[int]:
    """`seeds=[42,43]`: each a seed (`seed_number`'s range), each once when `distinct`."""
    return whole_numbers(name, value, minimum=0, maximum=SEED_MAX, distinct=distinct)


def is_path_key(key: str) -> bool:
    """Whether the (dotted) key names a file or folder (its last part is one of PATH_KEYS)."""
    return key.rsplit(".", 1)[-1] in PATH_KEYS


def shell_value(value: str) -> str:
    """A command option's value as the shell user meant it, the way Hydra reads an override:
    one pair of surrounding quotes removed, a leading `~` the home folder (sh and zsh leave
    it). Without this, `out_dir='~/certs'` wrote a folder named `~` here."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return expand_home(value)


def expand_home(value: str) -> str:
    """A leading `~` (alone or `~/...`) as the home folder, as the shell would have made it."""
    return os.path.expanduser(value) if value == "~" or value.startswith("~/") else value


def key_values(args: Sequence[str], known: Collection[str]) -> dict[str, str]:
    """`key=value` arguments, each key one of `known` (an argument without `=` or with an
    unknown key is refused, not dropped)."""
    options = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in known:
            raise ConfigError(f"{arg!r}: expected key=value, key one of {', '.join(known)}")
        options[key] = shell_value(value)
    return options


def number(name: str, value: object, *, positive: bool = False, example: str = "0.5") -> float:
    """A finite number (NaN and infinity are no setting), > 0 when `positive`."""
    try:
        result = float(str(value).strip())
    except ValueError:
        result = math.nan
    if not math.isfinite(result):
        raise ConfigError(f"{name}={value}: expected a finite number, e.g. {name}={example}")
    if positive and result <= 0:
        raise ConfigError(f"{name}={value}: expected a number > 0")
    return result


def whole_numbers(
    name: str,
    value: str,
    minimum: int | None = None,
    *,
    maximum: int | None = None,
    distinct: bool = False,
) -> list[int]:
    """`[42,43,44]` or `42,43` -> [42, 43, 44]: at least one, each a whole number, each once
    when `distinct` (seeds: a repeated one would train the same cell twice)."""
    items = [v.strip() for v in value.strip().strip("[]").split(",") if v.strip()]
    if not items:
        raise ConfigError(f"{name}={value}: give at least one, e.g. {name}=[1,2,3]")
    try:
        numbers = [int(v) for v in items]
    except ValueError:
        example = f"{name}=[1,2,3]"
        raise ConfigError(f"{name}={value}: expected whole numbers, e.g. {example}") from None
    if minimum is not None and min(numbers) < minimum:
        raise ConfigError(f"{name}={value}: each must be >= {minimum}")
    if maximum is not None and max(numbers) > maximum:
        raise ConfigError(f"{name}={value}: each must be <= {maximum}")
    if distinct and len(set(numbers)) != len(numbers):
        raise ConfigError(f"{name}={value}: each once")
    return numbers


def is_folder_name(name: str) -> bool:
    """Whether `name` can name one folder of its own (a site's state, archive or key files):
    non-empty, no / or \\, not . or .. (which would put them beside or above the others)."""
    return bool(name.strip()) and not any(c in name for c in "/\\") and name not in (".", "..")
