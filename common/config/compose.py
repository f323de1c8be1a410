"""Hydra registration and composition: one place turns overrides into a typed MammoflConfig."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TypeVar

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from common.config.federated_schema import FederatedRunConfig
from common.config.gan_schema import GanConfig
from common.config.override_text import readable_override
from common.config.schema import MammoflConfig
from common.config.typed_entries import apply_entry_overrides, split_entry_overrides
from common.config.unknown_keys import check_added_keys, explain_hydra_error
from common.config.value_ranges import check_value_ranges
from common.errors import ConfigError

T = TypeVar("T")
_MISSING = object()
SCHEMA_NAMES: dict[type, str] = {
    MammoflConfig: "mammofl_schema",
    GanConfig: "mammofl_gan_schema",
    FederatedRunConfig: "mammofl_federated_schema",
}


def config_dir() -> Path:
    """`configs/` of the project (or $MAMMOFL_CONFIG_DIR)."""
    override = os.environ.get("MAMMOFL_CONFIG_DIR")
    folder = Path(override) if override else Path(__file__).resolve().parents[2] / "configs"
    if not (folder / "config.yaml").is_file():
        raise ConfigError(
            f"no config.yaml in {folder}; set MAMMOFL_CONFIG_DIR to mammofl's configs/"
        )
    return folder


def config_groups() -> frozenset[str]:
    """The config groups (configs/<group>/), which `+group=` may choose."""
    return _groups_in(config_dir())


@cache
def _groups_in(folder: Path) -> frozenset[str]:
    return frozenset(path.name for path in folder.iterdir() if path.is_dir())


def check_presets(overrides: Sequence[str], schema: type) -> None:
    """A mistyped preset must never compose as no preset at all (the defaults list makes
    `experiment` and `gan_preset` optional, so hydra would silently drop it, and with it DP:
    `gan_preset=dpp` trained the non-DP MCGAN). Raises ConfigError naming the known presets
    of this kind (federated/* for `mammofl federate`/`loopback`)."""
    group = "gan_preset" if schema is GanConfig else "experiment"
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        value = value.strip().strip("'\"")
        if key != group or not sep or value in ("", "null"):
            continue
        known = preset_names(group)
        if group == "experiment":
            federated = schema is FederatedRunConfig
            known = [n for n in known if n.startswith("federated/") == federated]
        if value not in known:
            raise ConfigError(
                f"{group}={value}: no such preset here. Known presets: {', '.join(known)}"
            )


def split_emptying(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """(overrides for hydra, keys to empty). Hydra merges a dict value into the node, so
    `data.tests={}` would change nothing and keep every test set; an empty dict can only
    mean "none", so mammofl sets those nodes to {} after composing instead."""
    kept: list[str] = []
    emptied: list[str] = []
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and "".join(value.split()) == "{}" and not key.startswith("~"):
            emptied.append(key.strip().lstrip("+"))
        else:
            kept.append(override)
    for key in emptied:
        inside = [o for o in kept if o.lstrip("+~").startswith(f"{key}.")]
        if inside:
            raise ConfigError(
                f"{key}={{}} empties {key}, so {inside[0]} would be lost: drop one of the two"
            )
    return kept, emptied


def compose_typed(config_name: str, schema: type[T], overrides: Sequence[str]) -> T:
    """Compose `configs/<config_name>.yaml` (whose defaults start with the schema registered
    here) with hydra overrides, and convert it once to the typed dataclass. `key={}` empties
    the dict at `key` (hydra alone would merge nothing into it); `+data.tests.NAME.path=DIR`
    adds a test set (after any emptying: `data.tests={} +data.tests.mine.path=DIR` keeps
    only that one)."""
    overrides = [readable_override(o) for o in overrides]
    check_presets(overrides, schema)
    ConfigStore.instance().store(name=SCHEMA_NAMES[schema], node=schema)
    check_added_keys(schema, overrides, config_groups())
    try:
        rest, entries = split_entry_overrides(schema, overrides)
        kept, emptied = split_emptying(rest)
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            composed = compose(config_name=config_name, overrides=kept)
        for key in emptied:
            if OmegaConf.select(composed, key, default=_MISSING) is _MISSING:
                raise ConfigError(f"override {key}={{}}: there is no {key} in this config")
            OmegaConf.update(composed, key, {}, merge=False)
        apply_entry_overrides(composed, entries)
        obj = OmegaConf.to_object(composed)
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(f"configuration error: {explain_hydra_error(schema, error)}") from error
    except (AttributeError, AssertionError) as error:
        # omegaconf's own failure when an override reaches into a node that is null
        raise ConfigError(
            f"configuration error: an override sets a key inside a config node that is null "
            f"in this preset ({type(error).__name__}: {error}). Choose a data/model group "
            "that has the node (e.g. data=paper gives data.validation.source), then override "
            "its keys one by one"
        ) from error
    assert isinstance(obj, schema)
    check_value_ranges(obj)
    return obj


def compose_config(overrides: Sequence[str] = ()) -> MammoflConfig:
    """The run config: `configs/config.yaml` + overrides."""
    return compose_typed("config", MammoflConfig, overrides)


def compose_gan_config(overrides: Sequence[str] = ()) -> GanConfig:
    """The GAN config: `configs/gan.yaml` + overrides (`gan_preset=...`)."""
    return compose_typed("gan", GanConfig, overrides)


def compose_federated_config(overrides: Sequence[str] = ()) -> FederatedRunConfig:
    """The federated run config: `configs/federate.yaml` + overrides
    (`experiment=federated/<preset>`, default federated/phantom)."""
    return compose_typed("federate", FederatedRunConfig, overrides)


def experiment_names() -> list[str]:
    """Every preset under configs/experiment, as `experiment=` values."""
    return preset_names("experiment")


def preset_names(group: str) -> list[str]:
    """Every preset under configs/<group> (experiment, gan_preset), as `<group>=` values."""
    root = config_dir() / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))
