"""The tables of `mammofl bench federated`: one run's timings, printed side by side."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from common.federated.overhead import OverheadTotals, RoundOverhead, WorkerMemory, totals

GIB = 2**30


@dataclass
class RunTiming:
    sites: int
    mode: str  # bench_federated.MODES
    workers: int
    rounds: list[RoundOverhead]
    total: OverheadTotals
    memory: list[WorkerMemory]
    tree_peak: int  # bytes
    startup: float  # launch to the first ClientApp message
    setup: float  # first ClientApp message to round 1
    end: float  # last round to the simulation returned


def print_table(title: str, head: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print(f"\n{title}")
    for cells in (head, *rows):
        print("  ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))


SERVER_COLUMNS = ("central_evaluation", "aggregation", "checkpoint")
TOTALS_HEAD = (
    *("sites", "mode", "P", "rounds", "wall", "local sum", "local max", "critical"),
    *("overhead", "overhead %", "% rounds 2+", "messaging", "central eval", "aggregation"),
    *("checkpoint", "other"),
)
ROUND_HEAD = (
    *("sites", "mode", "round", "wall", "critical", "overhead %"),
    *("train: dispatch", "sched", "collect", "evaluate: dispatch", "sched", "collect"),
)
OUTSIDE_HEAD = (
    *("sites", "mode", "start-up", "set-up", "end", "workers", "sites/worker"),
    *("peak RSS/worker GiB", "tree peak GiB"),
)


def totals_row(run: RunTiming) -> list[str]:
    t = run.total
    # round 1 also holds each ClientApp process's one-off warm-up and the sites' feature pass
    warm = f"{100 * totals(run.rounds[1:]).ratio:.0f}" if len(run.rounds) > 1 else "-"
    return [
        *(str(run.sites), run.mode, str(run.workers), str(t.rounds), f"{t.wall:.2f}"),
        *(f"{t.compute_sum:.2f}", f"{t.compute_max:.2f}", f"{t.critical:.2f}"),
        *(f"{t.overhead:.2f}", f"{100 * t.ratio:.0f}", warm, f"{t.messaging:.2f}"),
        *(f"{t.server.get(k, 0.0):.3f}" for k in SERVER_COLUMNS),
        f"{t.other:.3f}",
    ]


def round_row(run: RunTiming, r: RoundOverhead) -> list[str]:
    cells = [str(run.sites), run.mode, str(r.round), f"{r.wall:.2f}"]
    cells += [f"{r.critical:.2f}", f"{100 * r.ratio:.0f}"]
    for e in r.exchanges:
        cells += [f"{e.dispatch:.3f}", f"{e.scheduling(r.workers):.3f}", f"{e.collect:.3f}"]
    return cells + [""] * (len(ROUND_HEAD) - len(cells))


def outside_row(run: RunTiming) -> list[str]:
    peak = max(m.peak_rss for m in run.memory) / GIB
    return [
        *(str(run.sites), run.mode, f"{run.startup:.1f}", f"{run.setup:.1f}"),
        *(f"{run.end:.1f}", str(len(run.memory))),
        *("/".join(str(len(m.sites)) for m in run.memory), f"{peak:.2f}"),
        f"{run.tree_peak / GIB:.2f}",
    ]


def print_tables(runs: Sequence[RunTiming]) -> None:
    print_table(
        "DP rounds added up, seconds (overhead = wall - critical; % of critical: all rounds, and "
        "rounds 2+, without round 1's one-off warm-ups)",
        TOTALS_HEAD,
        [totals_row(run) for run in runs],
    )
    print_table(
        "per round, each exchange's messaging in s (dispatch: sent to the first ClientApp "
        "started;\nsched: beyond the best schedule while sites ran; collect: the last one "
        "finished to every reply at the server)",
        ROUND_HEAD,
        [round_row(run, r) for run in runs for r in run.rounds],
    )
    print_table(
        "outside the rounds (s), and memory (a worker: one ClientApp process, a Ray actor)",
        OUTSIDE_HEAD,
        [outside_row(run) for run in runs],
    )
