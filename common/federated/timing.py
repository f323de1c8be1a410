"""Wall-clock timings of a federation, each side in its own file, for `mammofl bench federated`.

A site appends one line per message it handled to `state_dir/timing.jsonl` (which message, when
its ClientApp started and finished it, the process and its memory); the server appends one line
per round to `run_dir/server/timing.jsonl` (when the round and each of its phases began and
ended). Nothing here is sent: a site's file stays in its state dir, where a simulation's
researcher (every party at once) reads it. Timestamps are `time.monotonic()`, which on Linux is
one clock (CLOCK_MONOTONIC) for every process of a machine, so a simulation's server and
ClientApp records share one time line.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TIMING_FILE = "timing.jsonl"
log = logging.getLogger(__name__)


def append_timing(path: Path, record: Mapping[str, Any]) -> None:
    """One JSON line, appended (a short O_APPEND write: processes of one site do not interleave).
    Best effort: a timing that cannot be written is logged, never fails a round or a reply."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(dict(record)) + "\n")
    except OSError as error:
        log.warning("timing not written to %s: %s", path, error)


def read_timings(path: Path) -> list[dict[str, Any]]:
    """Every record of a timing file ([] when there is none)."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def read_run_timings(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(server round records, every simulated site's message records) of a simulation's run
    dir (`server/` and `sites/<name>/state/`, as `mammofl federate` lays it out)."""
    rounds = read_timings(run_dir / "server" / TIMING_FILE)
    sites = sorted((run_dir / "sites").glob(f"*/state/{TIMING_FILE}"))
    return rounds, [record for path in sites for record in read_timings(path)]


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def message_record(
    site: str, message_type: str, start: float, end: float, *, cold: bool
) -> dict[str, Any]:
    """What a site records of one message: its ClientApp's own seconds (`end - start`, from
    reading the message to the reply built) and the process that ran it. `cold`: this process
    built the site's runtime for it (a simulation actor seeing the site for the first time)."""
    return {
        "site": site,
        "message": message_type,
        "start": start,
        "end": end,
        "pid": os.getpid(),
        "peak_rss": peak_rss_bytes(),
        "cold": cold,
    }


class RoundClock:
    """The server's round timer: `start_round`, named (possibly nested) `phase`s, `end_round`
    appends the round's record. Phases outside a round are not recorded."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.current: dict[str, Any] | None = None

    def start_round(self, round_number: int) -> None:
        self.current = {"round": round_number, "start": time.monotonic(), "phases": {}}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            if self.current is not None:
                self.current["phases"][name] = [started, time.monotonic()]

    def end_round(self, **extra: Any) -> None:
        if self.current is None:
            return
        record = {**self.current, "end": time.monotonic(), **extra}
        self.current = None
        append_timing(self.path, record)
