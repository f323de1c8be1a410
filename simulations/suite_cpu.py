"""Where the test suite's time goes: wall time and whole-machine CPU time of pytest targets, run
one at a time in one process each (`-n 0`, `CI=true`, one PyTorch thread per process as the
suite's xdist workers have unless OMP_NUM_THREADS is set).

    .venv/bin/python -m simulations.suite_cpu tests/integration/test_deployment.py [TARGET ...]

The CPU time is the machine's (psutil.cpu_times(), from Linux's /proc/stat: user, nice, system,
irq and softirq of all CPUs), not the pytest process's: a test's Flower and Ray processes
outlive its process tree or are never waited for, so rusage misses them. Run it on an otherwise
idle machine: anything else running is counted too, and so is what a target leaves running into
the next one. CPU seconds above the wall seconds mean more than one core was busy. Steal (time
the hypervisor gave to other guests) is shown apart: a high one means a slower machine, not
more work.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import psutil

from simulations.machine import cpu_name

USAGE = "python -m simulations.suite_cpu TARGET [TARGET ...] (pytest node ids or files)"
# busy: user, nice, system, irq, softirq (guest is counted in user); not idle, iowait, steal
BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq")
NO_COUNTERS_AFTER_S = 5.0  # a target this long with no CPU counted: /proc/stat does not count


class Measured(NamedTuple):
    exit_code: int
    wall_s: float
    cpu_s: float
    steal_s: float


def busy_and_steal(times: Any) -> tuple[float, float]:
    """(busy, steal) seconds of a `psutil.cpu_times()` reading (proc(5)'s /proc/stat fields on
    Linux; a platform without irq, softirq or steal counts them 0)."""
    busy = sum(getattr(times, field, 0.0) for field in BUSY_FIELDS)
    return busy, getattr(times, "steal", 0.0)


def machine_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine, all CPUs, since boot."""
    return busy_and_steal(psutil.cpu_times())


def measure(target: str, log: Path, threads: str) -> Measured:
    """One target in one pytest process with `threads` PyTorch threads, its output in `log`."""
    env = {**os.environ, "CI": "true", "OMP_NUM_THREADS": threads}
    command = [sys.executable, "-m", "pytest", target, "-n", "0"]
    (cpu, steal), wall = machine_seconds(), time.perf_counter()
    with log.open("wb") as out:
        done = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    cpu_after, steal_after = machine_seconds()
    return Measured(
        done.returncode, time.perf_counter() - wall, cpu_after - cpu, steal_after - steal
    )


def main(targets: list[str]) -> int:
    """Measure each target in turn and print one row each; 1 if any target failed (its
    output's tail is printed), 2 without targets or where /proc/stat counts no CPU."""
    if not targets:
        print(f"usage: {USAGE}", file=sys.stderr)
        return 2
    threads = os.environ.get("OMP_NUM_THREADS", "1")
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs; OMP_NUM_THREADS={threads}")
    print(f"{'wall s':>7} {'CPU s':>7} {'cores':>5} {'steal s':>7}  rc  target")
    failed = False
    with tempfile.TemporaryDirectory() as folder:
        for target in targets:
            log = Path(folder) / "pytest.log"
            row = measure(target, log, threads)
            if row.wall_s > NO_COUNTERS_AFTER_S and row.cpu_s <= 0:
                print(
                    "/proc/stat counted no CPU time: this system does not count it", file=sys.stderr
                )
                return 2
            cores = row.cpu_s / row.wall_s
            print(
                f"{row.wall_s:7.0f} {row.cpu_s:7.0f} {cores:5.2f} {row.steal_s:7.0f} "
                f"{row.exit_code:3d}  {target}",
                flush=True,
            )
            if row.exit_code != 0:
                failed = True
                print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    from simulations.cli import script_main

    script_main("suite_cpu", main)
