"""Ranges every composed config shares by field name, checked once after composing, before
any work: a seed numpy and torch take, an image size a model can take. Hydra's types stop
`seed=abc` but not `seed=-1`, which crashed `federate` after its rounds had spent the sites'
budgets, nor `image_size=0`, which failed deep in OpenCV or inside a site."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from common.config.option_values import SEED_MAX
from common.errors import ConfigError

MIN_IMAGE_SIZE = 8  # px: the smallest patch the models and the MCGAN's generator take


def check_value_ranges(config: object) -> None:
    """ConfigError naming the dotted key: a field `seed`/`*_seed` (or each of `seeds`) outside
    [0, 2**32 - 1], or an `image_size` below MIN_IMAGE_SIZE."""
    for key, value in _leaves(config, ""):
        name = key.rsplit(".", 1)[-1]
        if name == "seed" or name.endswith("_seed"):
            _check_seed(key, value)
        elif name == "seeds" and isinstance(value, list):
            for seed in value:
                _check_seed(key, seed)
        elif name == "image_size" and isinstance(value, int) and value < MIN_IMAGE_SIZE:
            raise ConfigError(f"{key}={value}: an image size is at least {MIN_IMAGE_SIZE} px")


def _check_seed(key: str, value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= SEED_MAX:
        raise ConfigError(f"{key}={value}: a seed is a whole number in [0, {SEED_MAX}]")


def _leaves(node: object, prefix: str) -> Iterator[tuple[str, Any]]:
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        items: Any = ((f.name, getattr(node, f.name)) for f in dataclasses.fields(node))
    elif isinstance(node, dict):
        items = ((str(k), v) for k, v in node.items())
    elif isinstance(node, list) and any(dataclasses.is_dataclass(v) for v in node):
        items = ((str(i), v) for i, v in enumerate(node))
    else:
        yield prefix, node
        return
    for name, value in items:
        yield from _leaves(value, f"{prefix}.{name}" if prefix else name)
