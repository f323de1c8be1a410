"""Grids trained side by side on CPU threads ("lanes").

A grid's step is a few small matrix products and one serial Gaussian draw per cell and
parameter: on a 2-core CPU one grid uses its two intra-op threads poorly, while two grids, each
on one thread, take about 1.5x the steps per second in all (docs/benchmarks.md; PyTorch
releases the GIL inside its kernels). So on CPU `run_cells` first computes every grid's
features one grid after another, with all threads (the feature pass parallelises well), then
trains the grids in `lanes` threads with `threads // lanes` intra-op threads each.

Scheduling: a grid that would hold more than its lane's share of the work is split into grids
of fewer cells (`balance`), then the longest goes first to the next free lane (LPT list
scheduling). Splitting changes no cell: each keeps its own sampling, noise stream, selection and
ledger, and only the float rounding of the products changes with the thread count.

Stopping: a failing grid lets the running ones finish (their cells are written), starts no
other and raises its error; SIGTERM or Ctrl-C in the main thread stops every lane at its next
epoch (as a single grid stops: the reservation stays in each ledger), then propagates.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import TypeVar

import torch

log = logging.getLogger(__name__)
Cell = TypeVar("Cell")
Result = TypeVar("Result")
NON_DP_STEP_COST = 0.5  # a plain step against a DP step (no per-record norms, no noise draws)


def default_lanes(cells: int, devices: Sequence[torch.device]) -> int:
    """One lane per CPU core, at most one per cell of the grids (`balance` splits a grid over
    lanes); one lane when any grid runs on an accelerator (its kernels already run in parallel
    there)."""
    if any(device.type != "cpu" for device in devices):
        return 1
    return max(1, min(cells, usable_cores()))


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity (a cgroup's cpuset, `taskset`) and
    PyTorch's thread count (`OMP_NUM_THREADS`, `torch.set_num_threads`), not the host's count."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return max(1, min(torch.get_num_threads(), affinity or os.cpu_count() or 1))


def balance(
    grids: Sequence[Sequence[Cell]], lanes: int, cost: Callable[[Cell], float]
) -> list[list[Cell]]:
    """Split the grids until none holds more than 1/lanes of the total cost (a grid of one
    cell is not split), longest first (the LPT order). `cost`: one cell's work, any unit."""
    pending = [list(g) for g in grids if g]
    total = sum(cost(c) for g in pending for c in g)
    share = total / max(1, lanes)
    done: list[list[Cell]] = []
    while pending:
        grid = pending.pop(0)  # in order: equal costs keep the grids' order
        if len(grid) > 1 and sum(cost(c) for c in grid) > share * (1 + 1e-9):
            half = math.ceil(len(grid) / 2)
            pending += [grid[:half], grid[half:]]
        else:
            done.append(grid)
    return sorted(done, key=lambda g: -sum(cost(c) for c in g))


@contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """PyTorch's intra-op thread count in this block (process-wide), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, count))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _NotStarted:
    """What a lane returns for a grid it did not start (another grid failed, or a stop)."""


_NOT_STARTED = _NotStarted()


def run_lanes(
    grids: Sequence[list[Cell]],
    lanes: int,
    train: Callable[[list[Cell], threading.Event], list[Result]],
    finish: Callable[[list[Cell], list[Result]], None],
) -> None:
    """`train(grid, stop)` each grid on `lanes` threads, in the given order; `finish(grid,
    results)` in this thread as each grid ends. `train` must return soon after `stop` is set
    (at its next epoch). A grid's error cancels the grids not started, lets the running ones
    end (and finishes them), then is raised; an exception in this thread (SIGTERM's
    `Terminated`, Ctrl-C) sets `stop` and propagates once the lanes have stopped."""
    stop = threading.Event()
    # set by the failing lane itself, before its thread can take the next grid (this thread
    # only sees the failure at its next poll)
    failed = threading.Event()
    error: BaseException | None = None

    def guarded(grid: list[Cell]) -> list[Result] | _NotStarted:
        if failed.is_set() or stop.is_set():
            return _NOT_STARTED
        try:
            return train(grid, stop)
        except BaseException:
            failed.set()
            raise

    with (
        intra_op_threads(torch.get_num_threads() // lanes),
        ThreadPoolExecutor(lanes, thread_name_prefix="grid-lane") as pool,
    ):
        futures = {pool.submit(guarded, grid): grid for grid in grids}
        remaining: set[Future[list[Result] | _NotStarted]] = set(futures)
        try:
            while remaining:
                # a timeout keeps this thread taking signals (SIGTERM raises here)
                finished, remaining = wait(remaining, timeout=1.0, return_when=FIRST_COMPLETED)
                for future in finished:
                    if future.cancelled():
                        continue
                    failure = future.exception()
                    if failure is None:
                        result = future.result()
                        if not isinstance(result, _NotStarted):
                            finish(futures[future], result)
                        continue
                    log.error("a grid failed: %s", failure)
                    if error is None:
                        error = failure
                        for other in remaining:
                            other.cancel()  # not started: never will; running: let it end
        except BaseException:
            stop.set()
            for future in futures:
                future.cancel()
            raise
    if error is not None:
        raise error
