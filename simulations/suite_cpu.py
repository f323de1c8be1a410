"""Where the test suite's time goes: wall time and whole-machine CPU time of pytest targets, run
one at a time in one process each (`-n 0`, `CI=true`), machine named.

    .venv/bin/python -m simulations.suite_cpu tests/integration/test_deployment.py [TARGET ...]

The CPU time is the machine's (Linux /proc/stat: user, nice, system, irq and softirq of all
CPUs), not the pytest process's: a test's Flower and Ray processes outlive its process tree or
are never waited for, so rusage misses them. Run it on an otherwise idle machine; anything else
running is counted too. CPU seconds above the wall seconds mean more than one core was busy:
a CPU-bound suite gains nothing from more xdist workers.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

USAGE = "python -m simulations.suite_cpu TARGET [TARGET ...] (pytest node ids or files)"
BUSY_FIELDS = (0, 1, 2, 5, 6)  # user, nice, system, irq, softirq (idle, iowait, steal: not)


def busy_ticks(stat_text: str) -> int:
    """Busy clock ticks of all CPUs from /proc/stat's first (`cpu `) line; ValueError if the
    text has none (not Linux)."""
    for line in stat_text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            return sum(values[i] for i in BUSY_FIELDS)
    raise ValueError("no aggregate 'cpu ' line: /proc/stat is Linux's")


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (clock ticks / SC_CLK_TCK)."""
    return busy_ticks(Path("/proc/stat").read_text()) / os.sysconf("SC_CLK_TCK")


def measure(target: str) -> tuple[int, float, float]:
    """(pytest exit code, wall seconds, machine CPU seconds) of one target in one process."""
    env = {**os.environ, "CI": "true"}
    command = [sys.executable, "-m", "pytest", target, "-n", "0", "-p", "no:randomly", "-q"]
    cpu, wall = machine_cpu_seconds(), time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return done.returncode, time.perf_counter() - wall, machine_cpu_seconds() - cpu


def main(targets: list[str]) -> int:
    if not targets:
        print(f"usage: {USAGE}", file=sys.stderr)
        return 2
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{'wall s':>7} {'CPU s':>7} {'cores':>5}  rc  target")
    failed = 0
    for target in targets:
        code, wall, cpu = measure(target)
        failed |= code != 0
        print(f"{wall:7.0f} {cpu:7.0f} {cpu / wall:5.2f} {code:3d}  {target}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
