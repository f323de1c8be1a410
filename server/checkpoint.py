"""The server's state after each round, saved atomically: round, global weights, strategy
state, mirrored ledgers, metric history. `federation.resume=true` continues from it."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.atomic_io import atomic_torch_save, atomic_write_text, remove_leftover_temporaries
from common.config.recorded_diff import changed_leaves
from common.errors import ConfigError

VERSION = 1
log = logging.getLogger("mammofl.server")


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


def sent_round_path(run_dir: Path) -> Path:
    return run_dir / "server" / "round_sent.json"


def save_sent_round(run_dir: Path, round_number: int, ledgers: dict[str, Any]) -> None:
    """Write ahead, before round `round_number`'s train messages go out: the mirrored ledgers
    with that round presumed at every site it is sent to. A site may reserve the round the
    moment its message arrives; should the server die before the round's checkpoint, a
    resumed run still counts it for a site that never reports again."""
    atomic_write_text(
        sent_round_path(run_dir), json.dumps({"round": round_number, "ledgers": ledgers})
    )


def ledgers_to_resume(run_dir: Path, state: ServerState) -> dict[str, Any]:
    """The mirrored ledgers a resumed run starts from: those written ahead of the round after
    the checkpoint's, when its messages were sent (the server died during that round), else
    the checkpoint's. Sites that report their own ledgers on resume replace them."""
    path = sent_round_path(run_dir)
    if path.is_file():
        sent = json.loads(path.read_text())
        if sent["round"] == state.round + 1:
            return dict(sent["ledgers"])
    return state.ledgers


def remove_interrupted_saves(run_dir: Path) -> None:
    """The temporaries a server killed mid-save (SIGKILL runs no `finally`) left beside its
    checkpoint and write-ahead file: a full model each, never read. Called on resume, before
    this server saves anything; nothing else writes those names."""
    own = {checkpoint_path(run_dir).name, sent_round_path(run_dir).name}
    leftovers = remove_leftover_temporaries(checkpoint_path(run_dir).parent, own.__contains__)
    if leftovers:
        log.info("removed %d temporary files a killed server left", len(leftovers))


def load_checkpoint(run_dir: Path, overrides: list[str]) -> ServerState:
    path = checkpoint_path(run_dir)
    if not path.is_file():
        raise ConfigError(f"federation.resume=true but {path} does not exist: nothing to resume")
    stored = torch.load(path, weights_only=False)
    if stored.pop("version") != VERSION:
        raise ConfigError(f"{path}: checkpoint of another mammofl version")
    state = ServerState(**stored)
    check_same_run(state.overrides, overrides)
    return state


def stored_overrides(run_dir: Path) -> list[str] | None:
    """The overrides a run's checkpoint was made with (None: no checkpoint)."""
    path = checkpoint_path(run_dir)
    if not path.is_file():
        return None
    # memory-mapped: the overrides only, not the model's tensors, are read
    return list(torch.load(path, weights_only=False, mmap=True)["overrides"])


# what a resumed run may change: where it stops, more rounds (the sites' ledgers decide), a
# fault drill's kill point, and the comparison arms (run after the main run)
RESUMABLE = (
    "federation.resume",
    "federation.stop_after_round",
    "federation.rounds",
    "federation.kill_after_round",
    "simulation.compare",
)


def check_same_run(recorded: list[str], overrides: list[str]) -> None:
    """Raise ConfigError naming each setting the composed configs differ in (bar RESUMABLE):
    the overrides' order or spelling (3 or 3.0) does not matter, what they compose to does."""
    from common.config.compose import compose_federated_config

    changed = changed_leaves(
        dataclasses.asdict(compose_federated_config(recorded)),
        dataclasses.asdict(compose_federated_config(overrides)),
        skip=RESUMABLE,
    )
    if changed:
        raise ConfigError(
            f"federation.resume=true continues a run with its own settings; these differ: "
            f"{'; '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}. Repeat the first "
            "run's overrides (any order), or start a new run elsewhere (out_dir=)"
        )
