"""One writer at a time in a folder: an exclusive `flock` on a lock file inside it.

The kernel releases a flock when its holder exits, SIGKILL included, so a killed writer
never leaves the folder locked. A forked child (a process pool's worker, a DataLoader's)
would share the lock and could outlive a killed holder: it closes its copies at once.

While held, the holder is the only writer of the files `guarded` names; an `atomic_write`
temporary of one of them found on taking the lock is what a killed writer left (SIGKILL runs
no cleanup), removed then. The lock is advisory: it binds mammofl's own writers, which all
take it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from common.atomic_io import remove_leftover_temporaries


class FolderInUse(Exception):
    """Another process holds the lock; `holder` is what it wrote into the lock file (e.g.
    "mammofl gan train, pid 4242"), empty when it wrote nothing."""

    def __init__(self, lock_file: Path, holder: str) -> None:
        super().__init__(f"{lock_file} is held by another process{f' ({holder})' * bool(holder)}")
        self.holder = holder


# the lock files this process holds: a forked child closes its copies (`_close_in_child`)
_HELD: set[int] = set()


def _close_in_child() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


@contextmanager
def folder_lock(
    lock_file: Path,
    *,
    wait: bool,
    guarded: Mapping[str, re.Pattern[str]],
    holder: str = "",
    remove_if_unused: bool = False,
) -> Iterator[None]:
    """Hold `lock_file` (created with its folder) exclusively for the `with` block.

    wait: block until the lock is free; else raise FolderInUse at once when it is held.
    guarded: glob pattern of folders relative to the lock file's folder ("." for itself) ->
        names of the files only the holder writes there; their leftover temporaries are
        removed once the lock is held.
    holder: written into the lock file while held, for the next process's FolderInUse.
    remove_if_unused: folders this call created that hold nothing but the lock file at the
        end (a command refused before it wrote anything) are removed, lock file included.
    """
    root = lock_file.parent
    created = [folder for folder in (root, *root.parents) if not folder.exists()]
    handle = _locked(lock_file, wait)
    _HELD.add(handle.fileno())
    try:
        if holder:
            handle.truncate(0)
            handle.write(holder + "\n")
            handle.flush()
        for pattern, names in guarded.items():
            for folder in [root] if pattern == "." else root.glob(pattern):
                remove_leftover_temporaries(folder, names.fullmatch)
        yield
    finally:
        try:
            if remove_if_unused and created:
                _remove_if_unused(lock_file, created)
        finally:
            _HELD.discard(handle.fileno())
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


def _remove_if_unused(lock_file: Path, created: list[Path]) -> None:
    """Remove the lock file and `created` (deepest first) when they hold nothing else; while
    the lock is still held: the next holder opens a new file (`_locked`)."""
    try:
        if os.listdir(lock_file.parent) != [lock_file.name]:
            return
        lock_file.unlink()
        for folder in created:
            folder.rmdir()
    except OSError:  # something else was written there, or someone removed the folder
        return


def _locked(lock_file: Path, wait: bool) -> IO[str]:
    """The lock file, open and flocked. A file (or folder) removed by its last holder while
    this process was taking it is no lock any more: the one now at `lock_file` is taken."""
    flags = fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB
    while True:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            handle = lock_file.open("a+")
        except FileNotFoundError:
            continue  # its folder went between the mkdir and the open
        try:
            fcntl.flock(handle, flags)
        except BlockingIOError as error:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise FolderInUse(lock_file, holder) from error
        try:
            if os.stat(lock_file).st_ino == os.fstat(handle.fileno()).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()  # closing releases the flock
