"""Grids side by side on threads: how they are split and ordered, results finished in the
caller's thread, a failing grid, and a stop from the caller."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from common.runs.grid_lanes import (
    balance,
    default_lanes,
    intra_op_threads,
    run_lanes,
    usable_cores,
)


def test_a_grid_beyond_its_lanes_share_is_split_and_the_longest_go_first() -> None:
    cost = {"syn": 9300.0, "eps": 2700.0, "real": 1350.0}.__getitem__
    grids = [["real"] * 3, ["eps"] * 6, ["syn"] * 3]  # the release grid's shape
    scheduled = balance(grids, 2, cost)
    # 48,150 in all, 24,075 a lane: Real+Syn's 27,900 is split (2 + 1 cells), nothing else
    assert scheduled == [["syn"] * 2, ["eps"] * 6, ["syn"], ["real"] * 3]
    assert sorted(c for g in scheduled for c in g) == sorted(c for g in grids for c in g)


def test_one_lane_or_single_cells_split_nothing() -> None:
    assert balance([["a", "b"], ["c"]], 1, lambda c: 1.0) == [["a", "b"], ["c"]]
    assert balance([["a"], ["b"]], 8, lambda c: 1.0) == [["a"], ["b"]]


def test_lanes_follow_the_cores_and_stay_one_on_an_accelerator() -> None:
    cpu = torch.device("cpu")
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the tests' workers run one thread (tests/conftest.py)
    try:
        assert (
            default_lanes(5, [cpu])
            == min(5, usable_cores())
            == min(2, len(os.sched_getaffinity(0)))
        )
        assert default_lanes(1, [cpu]) == 1
        assert default_lanes(5, [cpu, torch.device("cuda")]) == 1
    finally:
        torch.set_num_threads(before)


def test_every_grid_is_finished_in_the_callers_thread() -> None:
    caller = threading.current_thread()
    seen: dict[str, tuple[list[int], bool]] = {}
    threads: set[str] = set()

    def train(grid: list[int], stop: threading.Event) -> list[int]:
        threads.add(threading.current_thread().name)
        return [2 * c for c in grid]

    def finish(grid: list[int], results: list[int]) -> None:
        seen[str(grid)] = (results, threading.current_thread() is caller)

    before = torch.get_num_threads()
    run_lanes([[1, 2], [3], [4, 5, 6]], 2, train, finish)
    assert seen == {"[1, 2]": ([2, 4], True), "[3]": ([6], True), "[4, 5, 6]": ([8, 10, 12], True)}
    assert all(name.startswith("grid-lane") for name in threads)
    assert torch.get_num_threads() == before  # intra-op threads restored


def test_a_failing_grid_lets_the_running_one_finish_and_starts_no_other() -> None:
    started: list[str] = []
    finished: list[str] = []
    running = threading.Event()

    def train(grid: list[str], stop: threading.Event) -> list[str]:
        started.append(grid[0])
        if grid[0] == "long":
            running.set()
            time.sleep(0.3)
            return grid
        running.wait(5)
        raise ValueError(f"{grid[0]} refused")

    with pytest.raises(ValueError, match="bad refused"):
        run_lanes([["long"], ["bad"], ["never"]], 2, train, lambda g, r: finished.append(g[0]))
    assert finished == ["long"] and "never" not in started


def test_a_stop_in_the_callers_thread_stops_every_lane() -> None:
    stopped: list[str] = []

    def train(grid: list[str], stop: threading.Event) -> list[str]:
        if grid[0] == "quick":
            return grid
        while not stop.wait(0.01):  # a grid checks at each epoch
            pass
        stopped.append(grid[0])
        raise RuntimeError("stopped")

    def finish(grid: list[str], results: list[str]) -> None:
        raise KeyboardInterrupt  # as SIGTERM's Terminated would, in the caller's thread

    with pytest.raises(KeyboardInterrupt):
        run_lanes([["slow"], ["quick"]], 2, train, finish)
    assert stopped == ["slow"]


def test_intra_op_threads_are_at_least_one_and_restored() -> None:
    before = torch.get_num_threads()
    with intra_op_threads(0):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_the_failing_lane_itself_starts_no_other_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lane whose grid failed must not take the next queued grid in the moment before the
    caller's thread sees the failure (here the caller is made slow to see it)."""
    import common.runs.grid_lanes as grid_lanes

    real_wait = grid_lanes.wait

    def slow_wait(*args, **kwargs):  # type: ignore[no-untyped-def]
        done = real_wait(*args, **kwargs)
        time.sleep(0.5)  # a busy caller: the free lane would take the next grid meanwhile
        return done

    monkeypatch.setattr(grid_lanes, "wait", slow_wait)
    started: list[str] = []

    def train(grid: list[str], stop: threading.Event) -> list[str]:
        started.append(grid[0])
        if grid[0] == "long":
            time.sleep(1.0)
            return grid
        raise ValueError(f"{grid[0]} refused")

    with pytest.raises(ValueError, match="bad refused"):
        run_lanes([["long"], ["bad"], ["never"], ["nor"]], 2, train, lambda g, r: None)
    assert sorted(started) == ["bad", "long"]
