"""Atomic writes: a temporary file in the target folder, then a rename; never half-written.

Whatever fails midway (a full disk, an exception in the writer, SIGTERM turned into
`Terminated`), the target keeps its previous complete version and the temporary file is
removed. Ledgers, checkpoints and results are also flushed to disk (fsync) before the rename,
so a power cut cannot leave an empty file under the old name.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# read once, at import: os.umask sets the mask process-wide, so reading it later (while a
# Flower thread creates files) could give those files mode 0666 for a moment
UMASK = _read_umask()


def _fsync(path: Path | str, folder: bool = False) -> None:
    """Flush a file (or a folder's entries) to disk; folders that cannot be synced are skipped."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if folder:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not folder:
            raise
    finally:
        os.close(fd)


# atomic_write's temporaries: ".<target name>.<mkstemp's 8 characters>.tmp"
TEMPORARY_NAME = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp")


def temporary_target(path: Path) -> str | None:
    """The name of the file `path` was written for, if `path` is an `atomic_write`
    temporary (one a killed process left behind: SIGKILL runs no `finally`), else None."""
    match = TEMPORARY_NAME.fullmatch(path.name)
    return match["target"] if match else None


def leftover_temporaries(folder: Path, owned: Callable[[str], object]) -> list[Path]:
    """The `atomic_write` temporaries in `folder` written for a target name that `owned`
    accepts. Only the one process that writes those targets may remove them, and only while
    no write of its own is in flight: another's temporary is its next version."""
    return [
        path
        for path in folder.glob(".*.tmp")
        if (target := temporary_target(path)) is not None and owned(target)
    ]


def remove_leftover_temporaries(folder: Path, owned: Callable[[str], object]) -> list[Path]:
    """Remove `leftover_temporaries(folder, owned)`, under the same rule (only their one
    writer, with no write of its own in flight); returns what was removed."""
    leftovers = leftover_temporaries(folder, owned)
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def atomic_write(
    target: Path, write: Callable[[str], Any], mode: int | None = None, durable: bool = True
) -> None:
    """Call `write(tmp_path)`, then move the temporary file onto `target`; `mode` (e.g. 0o600
    for a private key) replaces the usual permissions, set before the file gets its name.
    `durable`: fsync the file before and its folder after the rename (off for bulk images)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes 0600; keep the target's mode (a 0600 ledger stays 0600), else the usual
        if mode is None:
            mode = target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~UMASK
        os.chmod(tmp, mode)
        if durable:
            _fsync(tmp)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    if durable:
        _fsync(target.parent, folder=True)


def atomic_write_text(target: Path, text: str) -> None:
    atomic_write(target, lambda tmp: Path(tmp).write_text(text))


def atomic_torch_save(target: Path, obj: Any) -> None:
    import torch

    atomic_write(target, lambda tmp: torch.save(obj, tmp))


def atomic_write_bytes(
    target: Path, data: bytes, mode: int | None = None, durable: bool = True
) -> None:
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(data), mode, durable)


def atomic_write_png(target: Path, image: Any) -> None:
    """Encode an 8-bit image as PNG in memory, then write it atomically."""
    import cv2

    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"cannot encode {target} as PNG")
    atomic_write_bytes(target, encoded.tobytes(), durable=False)


def atomic_savefig(target: Path, figure: Any, dpi: int) -> None:
    """Save a matplotlib figure atomically, in the format its suffix names (e.g. ".png")."""
    atomic_write(target, lambda tmp: figure.savefig(tmp, dpi=dpi, format=target.suffix[1:]))


def check_writable_dir(path: Path, key: str = "out_dir") -> None:
    """OutputError unless `path` is (or can be made) a folder this process can write in,
    checked without creating it: before a job's work, not after (a bad out_dir found once a
    DP run has trained would lose the run and the epsilon it spent). The test is a real
    temporary file in `path`, or else in its nearest existing ancestor (permission bits say
    nothing to root)."""
    from common.errors import OutputError

    probe_dir = Path(path)
    # os.path.exists: False, not PermissionError, below a folder that cannot be searched
    while not os.path.exists(probe_dir) and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    problem = ""
    if not probe_dir.is_dir():
        problem = f"{probe_dir} is a file, not a folder"
    else:
        try:
            with tempfile.NamedTemporaryFile(dir=probe_dir, prefix=".write-check-", suffix=".tmp"):
                pass
        except OSError as error:
            problem = f"{probe_dir}: {error.strerror or error}"
    if problem:
        raise OutputError(
            f"{key}={path} cannot be written ({problem}): choose a folder you can write to"
        )
