"""Orchestration overhead of federated rounds, from the timing records (`timing.py`).

Definitions (`mammofl bench federated` prints them):

- t_i: one site's local compute in an exchange = the seconds its ClientApp spent on the message,
  from reading it to the reply built (DP-SGD or local evaluation, data and model loading when
  that process had not held the site yet, the ledger writes). Measured inside the site.
- An exchange (the round's `train` or `evaluate` message to every chosen site) is a barrier: the
  server waits for all replies. With P ClientApps running at once (the simulation's Ray actors),
  the local compute on the critical path C is the shortest time in which P workers can run the
  sites' jobs t_i, each job on one worker (the best schedule's makespan, computed exactly up to
  12 sites; it is at least max(max_i t_i, sum_i t_i / P) and equals sum_i t_i when P = 1).
- W: the round's wall time at the server, from its start (which sites are online and
  selectable) to its checkpoint written (both exchanges, aggregation, central evaluation).
- Overhead = W - sum over the round's exchanges of C; ratio = overhead / that sum. It holds the
  messaging (Flower's queues and polls, Ray scheduling, (de)serialising weights, idle actors)
  and the server's own work (aggregation, central evaluation, checkpoint), each shown apart.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

EXCHANGES = ("train", "evaluate")  # the messages of a round, in order
SERVER_WORK = ("central_evaluation", "checkpoint")
SLACK = 1e-3  # s: a ClientApp record belongs to an exchange that spans it (clock reads differ)
EXACT_UP_TO = 12  # jobs; beyond, the lower bound max(longest, total / workers)


def critical_path(seconds: Sequence[float], workers: int) -> float:
    """The least time `workers` parallel workers need for jobs of these lengths, each job on
    one worker: the best schedule's makespan (exact up to EXACT_UP_TO jobs, else its lower
    bound max(longest job, total / workers))."""
    if workers < 1:
        raise ValueError(f"workers={workers}: at least one")
    jobs = sorted((float(s) for s in seconds), reverse=True)
    if not jobs:
        return 0.0
    workers = min(workers, len(jobs))
    bound = max(jobs[0], sum(jobs) / workers)
    if len(jobs) > EXACT_UP_TO:
        return bound
    return _best_makespan(jobs, workers, bound)


def _best_makespan(jobs: list[float], workers: int, bound: float) -> float:
    """Branch and bound over assignments (longest jobs first; workers of equal load tried once),
    starting from the greedy schedule and stopping at the lower bound."""
    loads = [0.0] * workers
    for job in jobs:  # greedy: longest job first, to the least loaded worker
        loads[loads.index(min(loads))] += job
    best = max(loads)
    loads = [0.0] * workers

    def place(k: int) -> None:
        nonlocal best
        if k == len(jobs):
            best = min(best, max(loads))
            return
        tried: set[float] = set()
        for w in range(workers):
            if loads[w] in tried or loads[w] + jobs[k] >= best:
                continue
            tried.add(loads[w])
            loads[w] += jobs[k]
            place(k + 1)
            loads[w] -= jobs[k]
            if best <= bound:
                return

    place(0)
    return best


@dataclass(frozen=True)
class ExchangeTiming:
    """One message to every chosen site and the wait for all replies."""

    message: str
    wall: float  # server: from sending to the last reply received
    site_seconds: tuple[float, ...]  # t_i of every site that answered
    dispatch: float  # sending to the first ClientApp starting on it
    collect: float  # the last ClientApp finishing to the server holding every reply

    def critical(self, workers: int) -> float:
        return critical_path(self.site_seconds, workers)

    def scheduling(self, workers: int) -> float:
        """Between the first ClientApp start and the last end, beyond the best schedule: idle
        workers waiting for the next message, and the actual order's longer makespan."""
        return self.wall - self.dispatch - self.collect - self.critical(workers)


class _Timed(Protocol):
    @property
    def wall(self) -> float: ...

    @property
    def critical(self) -> float: ...

    @property
    def overhead(self) -> float: ...


class OverheadRatio:
    """Overhead = wall - critical-path compute, and its share of that compute, for a class
    with `wall` and `critical` (fields or properties)."""

    @property
    def overhead(self: _Timed) -> float:
        return self.wall - self.critical

    @property
    def ratio(self: _Timed) -> float:
        return self.overhead / self.critical if self.critical > 0 else float("inf")


@dataclass(frozen=True)
class RoundOverhead(OverheadRatio):
    round: int
    wall: float
    workers: int
    exchanges: tuple[ExchangeTiming, ...]
    server: Mapping[str, float]  # aggregation, central_evaluation, checkpoint (seconds)

    @property
    def compute_sum(self) -> float:
        return sum(sum(e.site_seconds) for e in self.exchanges)

    @property
    def compute_max(self) -> float:
        return sum(max(e.site_seconds, default=0.0) for e in self.exchanges)

    @property
    def critical(self) -> float:
        return sum(e.critical(self.workers) for e in self.exchanges)

    @property
    def messaging(self) -> float:
        """Exchange wall time not explained by the critical-path compute."""
        return sum(e.wall - e.critical(self.workers) for e in self.exchanges)

    @property
    def other(self) -> float:
        """The rest of the overhead: the server's bookkeeping between the timed phases (site
        selection, reply checks, ledger mirror, strategy state)."""
        return self.overhead - self.messaging - sum(self.server.values())


def _exchange(
    message: str, span: Sequence[float], records: Iterable[Mapping[str, Any]]
) -> ExchangeTiming:
    start, end = span
    inside = [
        r
        for r in records
        if r["message"] == message and r["start"] >= start - SLACK and r["end"] <= end + SLACK
    ]
    return ExchangeTiming(
        message=message,
        wall=end - start,
        site_seconds=tuple(r["end"] - r["start"] for r in inside),
        dispatch=min((r["start"] for r in inside), default=end) - start,
        collect=end - max((r["end"] for r in inside), default=end),
    )


def round_overheads(
    rounds: Iterable[Mapping[str, Any]], site_records: Sequence[Mapping[str, Any]], workers: int
) -> list[RoundOverhead]:
    """Each server round record joined with the ClientApp records that fall in its exchanges."""
    result = []
    for record in rounds:
        phases = record["phases"]
        exchanges = tuple(
            _exchange(m, phases[f"exchange:{m}"], site_records)
            for m in EXCHANGES
            if f"exchange:{m}" in phases
        )
        server = {k: phases[k][1] - phases[k][0] for k in SERVER_WORK if k in phases}
        if "train" in phases and "exchange:train" in phases:
            train, sent = phases["train"], phases["exchange:train"]
            server["aggregation"] = (train[1] - train[0]) - (sent[1] - sent[0])
        result.append(
            RoundOverhead(
                round=int(record["round"]),
                wall=record["end"] - record["start"],
                workers=workers,
                exchanges=exchanges,
                server=server,
            )
        )
    return result


@dataclass(frozen=True)
class OverheadTotals(OverheadRatio):
    """Several rounds added up (the ratio of the sums, not the mean of the ratios)."""

    rounds: int
    wall: float
    compute_sum: float
    compute_max: float
    critical: float
    messaging: float
    server: Mapping[str, float]

    @property
    def other(self) -> float:
        return self.overhead - self.messaging - sum(self.server.values())


def totals(rounds: Sequence[RoundOverhead]) -> OverheadTotals:
    server: dict[str, float] = defaultdict(float)
    for r in rounds:
        for key, value in r.server.items():
            server[key] += value
    return OverheadTotals(
        rounds=len(rounds),
        wall=sum(r.wall for r in rounds),
        compute_sum=sum(r.compute_sum for r in rounds),
        compute_max=sum(r.compute_max for r in rounds),
        critical=sum(r.critical for r in rounds),
        messaging=sum(r.messaging for r in rounds),
        server=dict(server),
    )


@dataclass(frozen=True)
class WorkerMemory:
    pid: int
    peak_rss: int  # bytes, the process's peak by the last message it handled
    sites: tuple[str, ...]  # the simulated sites it held


def worker_memory(site_records: Iterable[Mapping[str, Any]]) -> list[WorkerMemory]:
    """Per ClientApp process (a Ray actor in a simulation): its peak resident memory and the
    sites it ran (an actor keeps every site it ran in memory: their runtimes are cached)."""
    peaks: dict[int, int] = defaultdict(int)
    sites: dict[int, set[str]] = defaultdict(set)
    for r in site_records:
        peaks[r["pid"]] = max(peaks[r["pid"]], int(r["peak_rss"]))
        sites[r["pid"]].add(str(r["site"]))
    return [WorkerMemory(pid, peaks[pid], tuple(sorted(sites[pid]))) for pid in sorted(peaks)]
