"""Which federated config a ServerApp or ClientApp runs: composed once per process.

`flwr run .` hands every app the run config of `[tool.flwr.app.config]` (`experiment`,
`overrides`); `mammofl federate` writes the overrides to a spec file and names it in
$MAMMOFL_FEDERATION_SPEC, which simulated ClientApps inherit. Both compose the same hydra preset.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from common.config.compose import compose_federated_config
from common.config.federated_schema import FederatedRunConfig

SPEC_ENV = "MAMMOFL_FEDERATION_SPEC"
DEFAULT_EXPERIMENT = "federated/phantom"


def overrides_from(run_config: Mapping[str, object]) -> tuple[str, ...]:
    spec = os.environ.get(SPEC_ENV)
    if spec:
        return tuple(json.loads(Path(spec).read_text())["overrides"])
    experiment = str(run_config.get("experiment", DEFAULT_EXPERIMENT))
    extra = shlex.split(str(run_config.get("overrides", "")))
    return (f"experiment={experiment}", *extra)


@lru_cache(maxsize=8)
def _compose(overrides: tuple[str, ...]) -> FederatedRunConfig:
    return compose_federated_config(list(overrides))


def federated_config(run_config: Mapping[str, object]) -> FederatedRunConfig:
    return _compose(overrides_from(run_config))


def write_spec(path: Path, overrides: list[str]) -> Path:
    from common.atomic_io import atomic_write_text

    atomic_write_text(path, json.dumps({"overrides": overrides}, indent=2) + "\n")
    return path
