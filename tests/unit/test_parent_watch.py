"""A SIGKILLed command leaves no pool worker behind: a forked `concurrent.futures` worker
used to wait for work for ever, a spawned `multiprocessing` one to finish its job first."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

_POOL_USER = (
    "import os, sys, time\n"
    "import multiprocessing\n"
    "from concurrent.futures import ProcessPoolExecutor\n"
    "from common.parent_watch import exit_with_parent\n"
    "def work(seconds):\n"
    "    with open(sys.argv[3], 'a') as started:\n"
    "        started.write(f'{os.getpid()}\\n')\n"
    "    time.sleep(seconds)\n"
    "if __name__ == '__main__':\n"
    "    guard = (exit_with_parent, (os.getpid(),)) if sys.argv[2] == 'watched' else (None, ())\n"
    "    if sys.argv[1] == 'fork-executor':\n"
    "        fork = multiprocessing.get_context('fork')\n"
    "        pool = ProcessPoolExecutor(2, fork, initializer=guard[0], initargs=guard[1])\n"
    "    else:\n"
    "        pool = multiprocessing.get_context('spawn').Pool(2, *guard)\n"
    "    list(pool.map(work, [60, 60, 60]))\n"
)


def _orphans_after_kill(folder: Path, kind: str, guard: str, seconds: float) -> list[int]:
    """Start a pool user, SIGKILL it once both workers run a job; the workers alive after."""
    script, started = folder / "pool_user.py", folder / "started"
    script.write_text(_POOL_USER)  # a file: spawned workers import their job from it
    user = subprocess.Popen([sys.executable, str(script), kind, guard, str(started)])
    try:
        deadline = time.monotonic() + 60
        while len(_lines(started)) < 2:
            assert user.poll() is None and time.monotonic() < deadline, "no worker started"
            time.sleep(0.05)
        # Process objects, not pids: is_running() checks the start time, so a reused pid
        # is never taken (or killed) for a worker
        workers = [psutil.Process(int(line)) for line in _lines(started)]
    finally:
        user.kill()
        user.wait()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    alive = [w for w in workers if _alive(w)]
    for worker in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.kill()
    return [w.pid for w in alive]


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


@pytest.mark.parametrize("kind", ["fork-executor", "spawn-pool"])
def test_workers_end_with_their_killed_parent(tmp_path: Path, kind: str) -> None:
    assert _orphans_after_kill(tmp_path, kind, "watched", 10) == []


def test_without_the_watch_a_forked_executors_workers_outlive_it(tmp_path: Path) -> None:
    """Without the watch the same kill leaves both forked workers running: the test above
    passes because of the watch, not because the workers end anyway."""
    assert len(_orphans_after_kill(tmp_path, "fork-executor", "none", 3)) == 2
