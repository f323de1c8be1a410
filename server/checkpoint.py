"""The server's state after each round, saved atomically: round, global weights, strategy
state, mirrored ledgers, metric history. `federation.resume=true` continues from it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.atomic_io import atomic_torch_save
from common.errors import ConfigError

VERSION = 1


@dataclass
class ServerState:
    round: int  # rounds completed (0: after SynPre, before the first DP round)
    base_state: dict[str, torch.Tensor]  # the full model the sites fine-tune
    base_sha: str
    trainable: dict[str, np.ndarray]  # the global trainable parameters
    strategy: dict[str, Any]
    ledgers: dict[str, Any]
    history: dict[str, Any]  # metrics.json content so far
    overrides: list[str]  # the config it was run with
    ended: str = ""  # why the run ended early ("" while rounds remain)


def checkpoint_path(run_dir: Path) -> Path:
    return run_dir / "server" / "checkpoint.pt"


def save_checkpoint(run_dir: Path, state: ServerState) -> None:
    atomic_torch_save(checkpoint_path(run_dir), {"version": VERSION, **state.__dict__})


def load_checkpoint(run_dir: Path, overrides: list[str]) -> ServerState:
    path = checkpoint_path(run_dir)
    if not path.is_file():
        raise ConfigError(f"federation.resume=true but {path} does not exist: nothing to resume")
    stored = torch.load(path, weights_only=False)
    if stored.pop("version") != VERSION:
        raise ConfigError(f"{path}: checkpoint of another mammofl version")
    state = ServerState(**stored)
    # a resumed run may stop elsewhere, ask for more rounds (the sites' ledgers decide) or
    # drop a fault drill's kill point
    ignore = (
        "federation.resume",
        "federation.stop_after_round",
        "federation.rounds",
        "federation.kill_after_round",
    )
    same = [o for o in state.overrides if not o.startswith(ignore)]
    now = [o for o in overrides if not o.startswith(ignore)]
    if same != now:
        raise ConfigError(f"resume with the run's own config: it ran with {same}, now {now}")
    return state
