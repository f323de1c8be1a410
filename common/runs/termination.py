"""SIGTERM as an exception: a long job stops the way Ctrl-C stops it, and says where it left off.

A batch scheduler (SLURM, Kubernetes, systemd) asks a job to stop with SIGTERM and kills it a
grace period later. Python's default is to die at once, skipping every `finally:`; within
`sigterm_raises()` the signal raises `Terminated` in the main thread instead, so cleanups run,
the long jobs save what they can (the GAN its last finished epoch) and every file keeps its
previous complete version (all writes are atomic: common/atomic_io.py).

`Terminated` derives from BaseException, as KeyboardInterrupt does, so no `except Exception`
on the way up (Flower's, a retry loop) can swallow it. A second SIGTERM during the cleanup is
ignored; SIGKILL still ends the process. While the block runs, library code cannot take SIGTERM
away from the job: `ray.init` (inside a Flower simulation) would install `sys.exit` handlers,
so its requests are declined (Ray's processes are still stopped by the simulation's cleanup).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
EXIT_CODE = 128 + signal.SIGTERM  # 143: what a shell reports for a process ended by SIGTERM
_install = signal.signal  # the real one (`signal.signal` is guarded within sigterm_raises)
_saved: list[str] = []
_on_terminate: list[Callable[[], None]] = []


class Terminated(BaseException):
    """The process received SIGTERM; raised from the signal handler in the main thread."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def _raise_stop(signum: int, frame: Any) -> None:
    """SIGTERM raises `Terminated`, SIGINT (Ctrl-C) KeyboardInterrupt, the callbacks first (the
    terminal's SIGINT reaches a simulation's workers at the same moment: they must already be
    quiet when their actors die)."""
    _install(signum, signal.SIG_IGN)  # a second one must not cut the cleanup
    for callback in _on_terminate:
        callback()
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def _guarded_signal(signalnum: Any, handler: Any) -> Any:
    """`signal.signal` within sigterm_raises: SIGTERM and SIGINT stay with the job."""
    if signalnum in (signal.SIGTERM, signal.SIGINT):
        log.debug("%s stays with mammofl's handler (declined %r)", signalnum, handler)
        return signal.getsignal(signalnum)
    return _install(signalnum, handler)


@contextmanager
def sigterm_raises(on_terminate: Callable[[], None] | None = None) -> Iterator[None]:
    """Within the block SIGTERM raises `Terminated` and SIGINT (Ctrl-C) KeyboardInterrupt; the
    previous handlers are restored after.

    `on_terminate` runs first on either (in the handler: keep it short), e.g. to quiet a
    library whose workers would log the intended stop as errors. Outside the main thread
    (where Python cannot install handlers) this does nothing.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.signal is _guarded_signal
    ):
        yield  # not the main thread, or already within sigterm_raises
        return
    _saved.clear()
    _on_terminate[:] = [on_terminate] if on_terminate is not None else []
    previous = _install(signal.SIGTERM, _raise_stop)
    previous_interrupt = _install(signal.SIGINT, _raise_stop)
    signal.signal = _guarded_signal
    try:
        yield
    finally:
        signal.signal = _install
        _install(signal.SIGTERM, previous)
        _install(signal.SIGINT, previous_interrupt)
        _on_terminate.clear()


def note_saved(path: Path | str) -> None:
    """Record where an interrupted job left its state (for the CLI's closing message)."""
    if str(path) not in _saved:
        _saved.append(str(path))


def saved_state() -> list[str]:
    """What `note_saved` recorded since `sigterm_raises` was entered."""
    return list(_saved)
