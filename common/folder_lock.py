"""One writer at a time in a folder: an exclusive `flock` on a lock file inside it.

The kernel releases a flock when its holder exits, SIGKILL included, so a killed writer
never leaves the folder locked. While held, the holder is the only writer of the files
`guarded` names; an `atomic_write` temporary of one of them found on taking the lock is what
a killed writer left (SIGKILL runs no cleanup), removed then. The lock is advisory: it binds
mammofl's own writers, which all take it.
"""

from __future__ import annotations

import fcntl
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from common.atomic_io import remove_leftover_temporaries


class FolderInUse(Exception):
    """Another process holds the lock; `holder` is what it wrote into the lock file (e.g.
    "mammofl gan train, pid 4242"), empty when it wrote nothing."""

    def __init__(self, lock_file: Path, holder: str) -> None:
        super().__init__(f"{lock_file} is held by another process{f' ({holder})' * bool(holder)}")
        self.holder = holder


@contextmanager
def folder_lock(
    lock_file: Path,
    *,
    wait: bool,
    guarded: Mapping[str, re.Pattern[str]],
    holder: str = "",
) -> Iterator[None]:
    """Hold `lock_file` (created with its folder) exclusively for the `with` block.

    wait: block until the lock is free; else raise FolderInUse at once when it is held.
    guarded: glob pattern of folders relative to the lock file's folder ("." for itself) ->
        names of the files only the holder writes there; their leftover temporaries are
        removed once the lock is held.
    holder: written into the lock file while held, for the next process's FolderInUse.
    """
    root = lock_file.parent
    root.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a+") as handle:
        flags = fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB
        try:
            fcntl.flock(handle, flags)
        except BlockingIOError as error:
            handle.seek(0)
            raise FolderInUse(lock_file, handle.read().strip()) from error
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
            fcntl.flock(handle, fcntl.LOCK_UN)
