"""The README's first command, timed: wall time and peak memory of the whole process tree
(launcher, Ray, the simulated ClientApps), machine named.

    .venv/bin/mammofl bench main-job [out_dir=runs/bench_main_job] [<overrides>]

Runs `mammofl federate` in a fresh out_dir as a subprocess and samples the resident memory of
it and all its children every 0.5 s (psutil). It empties out_dir first, so it takes only a new
or empty folder, or one it wrote before (its mark file inside).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from common.atomic_io import atomic_write_text
from common.config.option_values import shell_value
from common.errors import ConfigError
from common.runs.output_lock import LOCK_FILES, empty_held_folder, output_lock
from simulations.machine import cpu_name

MARK = ".mammofl-bench-main-job"  # in an out_dir this benchmark wrote: it may empty it


def tree_rss(process: psutil.Process) -> tuple[int, int]:
    """(total, largest single process) resident bytes of a process and its descendants."""
    sizes = []
    for p in [process, *process.children(recursive=True)]:
        try:
            sizes.append(p.memory_info().rss)
        except psutil.Error:
            continue
    return sum(sizes), max(sizes, default=0)


def clear_own_folder(out: Path) -> None:
    """Empty `out` so that the job runs from scratch (downloads, patches, MCGANs, ledgers):
    only a new or empty folder, or one this benchmark wrote (its `MARK` inside). Any other may
    hold a federation's site ledgers, which nothing deletes by accident (`mammofl federate`
    itself asks for fresh=true). The mark stays while the rest goes, so a folder emptied in
    part (an entry that would not go) is still its own. Raises ConfigError for another folder
    and OutputError while another mammofl command or a ServerApp writes it (nothing deleted),
    or for an entry that cannot be removed."""
    with output_lock("bench main-job", out_dir=out):
        entries = [entry for entry in out.iterdir() if entry.name not in LOCK_FILES]
        if entries and not (out / MARK).is_file():
            raise ConfigError(
                f"{out} holds files this benchmark did not write (e.g. {entries[0].name}; a "
                "run's site ledgers, perhaps): it empties its out_dir before each run, so give "
                "it a new or empty one (out_dir=runs/bench_main_job)"
            )
        empty_held_folder(out, keep=(MARK,))
        atomic_write_text(out / MARK, "mammofl bench main-job empties this folder each run\n")


def main(args: list[str]) -> int:
    options = dict(a.split("=", 1) for a in args if a.startswith("out_dir="))
    # as the federate run reads it (quotes, a leading ~), or the mark lands elsewhere
    out = Path(shell_value(options.get("out_dir", "runs/bench_main_job")))
    rest = [a for a in args if not a.startswith("out_dir=")]
    clear_own_folder(out)
    command = [sys.executable, "-m", "simulations.cli", "federate", f"out_dir={out}", *rest]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    process = psutil.Process(child.pid)
    peak_total = peak_single = 0
    while child.poll() is None:
        total, single = tree_rss(process)
        peak_total, peak_single = max(peak_total, total), max(peak_single, single)
        time.sleep(0.5)
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        print(child.stderr.read() if child.stderr else "", file=sys.stderr)
        return child.returncode
    cpus = os.cpu_count()
    print(f"machine: {cpu_name()}, {cpus} CPUs, no GPU used")
    print(f"command: mammofl federate out_dir={out} {' '.join(rest)}")
    print(f"wall time: {seconds:.0f} s ({seconds / 60:.1f} min)")
    print(f"peak resident memory, whole process tree: {peak_total / 2**30:.2f} GiB")
    print(f"peak resident memory, largest single process: {peak_single / 2**30:.2f} GiB")
    summary = out / "summary.md"
    print(summary.read_text() if summary.is_file() else "(no summary.md)")
    return 0


if __name__ == "__main__":
    from simulations.cli import script_main

    script_main("bench_main_job", main)
