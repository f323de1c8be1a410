"""Compose `configs/gan.yaml` (+ `gan_preset=`) into a typed GanConfig."""

from __future__ import annotations

from collections.abc import Sequence

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from common.config.compose import config_dir
from common.config.gan_schema import GanConfig
from common.errors import ConfigError


def compose_gan_config(overrides: Sequence[str] = ()) -> GanConfig:
    ConfigStore.instance().store(name="mammofl_gan_schema", node=GanConfig)
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            composed = compose(config_name="gan", overrides=list(overrides))
        obj = OmegaConf.to_object(composed)
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(f"configuration error: {error}") from error
    assert isinstance(obj, GanConfig)
    return obj
