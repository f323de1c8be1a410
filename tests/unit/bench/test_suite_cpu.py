"""simulations/suite_cpu: the machine's busy and steal CPU time (psutil.cpu_times)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from simulations import suite_cpu


def test_busy_counts_user_nice_system_irq_softirq_and_steal_apart() -> None:
    # idle 4000 and iowait 50 are no work; steal 800 is other guests' work, shown apart
    times = SimpleNamespace(
        user=100, nice=20, system=30, idle=4000, iowait=50, irq=6, softirq=7, steal=800, guest=0
    )
    assert suite_cpu.busy_and_steal(times) == (100 + 20 + 30 + 6 + 7, 800)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")
@pytest.mark.timeout(60)
def test_the_machine_count_includes_this_process_work() -> None:
    before, own = suite_cpu.machine_seconds()[0], time.process_time()
    while time.process_time() - own < 0.3:  # bounded by this process's own CPU time
        sum(range(10_000))
    # margin for tick sampling (10 ms) and steal
    assert suite_cpu.machine_seconds()[0] - before >= 0.15


def test_a_failing_target_gives_exit_1_and_its_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    failing = tmp_path / "test_fails.py"
    failing.write_text("def test_fails():\n    assert 1 == 2, 'the reason'\n")
    assert suite_cpu.main([str(failing)]) == 1
    captured = capsys.readouterr()
    assert f"  1  {failing}" in captured.out and "the reason" in captured.err


def test_no_target_prints_the_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert suite_cpu.main([]) == 2
    assert "python -m simulations.suite_cpu" in capsys.readouterr().err
