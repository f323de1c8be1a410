"""One mammofl command at a time writes an output folder (out_dir, run_dir, work_dir).

Without it two commands on one folder interleave: two `mammofl train` both pass the
finished-run check and the second result.json replaces the first, losing the record of the
epsilon the first spent; two `gan train` write one numbering of checkpoints from two models
(and a DP GAN's epsilon counts one lineage's steps only); two `federate fresh=true` delete
each other's state. The second command is refused before it reads any data.

Under the lock the command is the only writer of its own outputs, so the `atomic_write`
temporaries a killed run of it left (a SIGKILLed `gan train` leaves a checkpoint-sized one) are
removed when it next starts there.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

from common.atomic_io import check_writable_dir
from common.errors import OutputError
from common.folder_lock import FolderInUse, folder_lock

LOCK_NAME = ".mammofl.lock"
# the ServerApp's own, apart from its launcher's (`mammofl federate` runs it in its own
# process, where a second flock of `LOCK_NAME` would refuse): a ServerApp that outlives its
# launcher (a SIGKILLed `mammofl loopback` leaves its SuperLink running) still holds it
SERVER_LOCK_NAME = ".mammofl.server.lock"
LOCK_FILES = (LOCK_NAME, SERVER_LOCK_NAME)  # in a folder, not its contents: kept when emptied

_CELL = re.compile(r"result\.json|site_only\.json|model\.pt|predictions_.+\.csv")
_GAN = {
    "checkpoints": re.compile(r"epoch_\d+\.pt"),
    "samples": re.compile(r"epoch_\d+\.png"),
}

# by command: folder glob (relative to the locked folder) -> the files the command alone writes
# there (its outputs' names in single_node, table1_report, tuning, gan_trainer)
OWN_OUTPUTS: dict[str, Mapping[str, re.Pattern[str]]] = {
    "train": {".": _CELL},
    "table1": {
        ".": re.compile(r"table1\.(csv|md)|privacy_utility\.png|synpre_selection_curves\.png"),
        "cells/*/seed*": _CELL,
    },
    "tune": {
        ".": re.compile(r"search\.json|tune\.(csv|json)"),
        "trials/*": re.compile(r"seed\d+\.json"),
    },
    "gan train": {**_GAN, **{f"seed*/{folder}": names for folder, names in _GAN.items()}},
}


@contextmanager
def output_lock(command: str, *, lock_name: str = LOCK_NAME, **folders: Path) -> Iterator[None]:
    """Hold `<folder>/<lock_name>` of each folder for `mammofl <command>`, creating them;
    each keyword is the command-line option that names its folder (out_dir=, run_dir=), for
    the message. One folder named twice is locked once.

    Raises OutputError at once, naming the holder, when another mammofl command writes one of
    them. Once held, removes what `OWN_OUTPUTS[command]` says a killed run of it left; a
    folder created here that holds nothing else at the end is removed.
    """
    with ExitStack() as held:
        locked: set[Path] = set()
        for option, folder in folders.items():
            if folder.resolve() in locked:
                continue  # a second flock of one file, even by this process, would refuse
            locked.add(folder.resolve())
            held.enter_context(_lock(command, option, folder, lock_name))
        yield


def empty_held_folder(folder: Path, keep: tuple[str, ...] = ()) -> None:
    """Remove everything in `folder` but its lock files and the names in `keep`: for a command
    that starts over in a folder whose `output_lock` it holds (deleting a lock file would let a
    second command take a lock of its own while this one still writes). A ServerApp writing
    the folder (its own lock held) is checked first: nothing is removed under it.

    Raises OutputError when a ServerApp writes the folder, or when an entry cannot be removed
    (naming it; what was removed before stays removed, `keep` stays).
    """
    check_no_server_app(folder)
    for entry in sorted(folder.iterdir()):
        if entry.name in (*LOCK_FILES, *keep):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError as error:
            raise OutputError(
                f"cannot remove {entry} ({error.strerror or error}): fix its permissions, or "
                f"remove it yourself, then run again"
            ) from error


def check_no_server_app(run_dir: Path) -> None:
    """OutputError when a ServerApp writes `run_dir` (a `flwr run`, a deployed run, or one a
    killed `mammofl loopback` left running with its SuperLink): a launcher checks it, under
    its own lock, before it resets or resumes the run's state."""
    with output_lock("launcher", lock_name=SERVER_LOCK_NAME, run_dir=run_dir):
        pass


def _lock(command: str, option: str, folder: Path, lock_name: str) -> ExitStack:
    held = ExitStack()
    try:
        held.enter_context(
            folder_lock(
                folder / lock_name,
                wait=False,
                guarded=OWN_OUTPUTS.get(command, {}),
                holder=f"mammofl {command}, pid {os.getpid()}",
                remove_if_unused=True,
            )
        )
    except FolderInUse as error:
        by = f" ({error.holder})" if error.holder else ""
        raise OutputError(
            f"{folder} is being written by another mammofl command{by}: wait for it to "
            f"end, or pass another {option}="
        ) from error
    except OSError as error:
        check_writable_dir(folder, option)  # a file in the way, no write permission: the fix
        raise OutputError(f"cannot lock {folder / lock_name}: {error}") from error
    return held
