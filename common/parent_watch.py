"""Pool workers that end with the process that started them.

A forked `concurrent.futures` worker whose parent is SIGKILLed waits for work for ever (it
holds the write end of its own task queue, so it never sees end-of-file); a `multiprocessing`
pool worker finishes its job, then fails on the broken result pipe with a traceback on the
terminal. Either way a killed command leaves processes behind. Passed as a pool's
`initializer`, `exit_with_parent` ends the worker within `POLL_S` of its parent's death.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

POLL_S = 0.5


def watched_by_this_process() -> dict[str, Any]:
    """A pool's `initializer` and `initargs` that end each worker with this process, e.g.
    `ProcessPoolExecutor(2, mp_context=fork, **watched_by_this_process())` (fork or spawn
    only: see exit_with_parent)."""
    return {"initializer": exit_with_parent, "initargs": (os.getpid(),)}


def exit_with_parent(parent_pid: int) -> None:
    """Start a daemon thread that ends this process (exit status 1, no cleanup: its parent,
    which owned the work, is gone) once its parent is no longer `parent_pid` (Linux and macOS
    re-parent an orphan). Use as `initializer=exit_with_parent, initargs=(os.getpid(),)` of a
    pool started by fork or spawn, whose workers are the caller's children; never with
    forkserver (its workers' parent is the fork server: each would exit at once)."""
    watcher = threading.Thread(
        target=_watch, args=(parent_pid,), name="exit-with-parent", daemon=True
    )
    watcher.start()


def _watch(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_S)
    os._exit(1)
