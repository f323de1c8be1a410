"""Hydra registration and composition: one place turns overrides into a typed MammoflConfig."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from common.config.schema import MammoflConfig
from common.errors import ConfigError

SCHEMA_NAME = "mammofl_schema"


def config_dir() -> Path:
    """`configs/` of the project (or $MAMMOFL_CONFIG_DIR)."""
    override = os.environ.get("MAMMOFL_CONFIG_DIR")
    folder = Path(override) if override else Path(__file__).resolve().parents[2] / "configs"
    if not (folder / "config.yaml").is_file():
        raise ConfigError(
            f"no config.yaml in {folder}; set MAMMOFL_CONFIG_DIR to mammofl's configs/"
        )
    return folder


def register_schema() -> None:
    ConfigStore.instance().store(name=SCHEMA_NAME, node=MammoflConfig)


def compose_config(overrides: Sequence[str] = ()) -> MammoflConfig:
    """Compose `configs/config.yaml` with hydra overrides; convert once to typed dataclasses."""
    register_schema()
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            composed = compose(config_name="config", overrides=list(overrides))
        obj = OmegaConf.to_object(composed)
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(f"configuration error: {error}") from error
    assert isinstance(obj, MammoflConfig)
    return obj


def experiment_names() -> list[str]:
    """Every preset under configs/experiment, as `experiment=` values."""
    root = config_dir() / "experiment"
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))
