"""simulations/suite_cpu: the machine's busy and steal CPU ticks from /proc/stat."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from simulations import suite_cpu

STAT = """cpu  100 20 30 4000 50 6 7 800 0 0
cpu0 50 10 15 2000 25 3 4 400 0 0
intr 12345
"""


def test_busy_ticks_count_user_nice_system_irq_softirq_and_steal_apart() -> None:
    # idle 4000 and iowait 50 are no work; steal 800 is other guests' work, shown apart
    assert suite_cpu.read_ticks(STAT) == suite_cpu.Ticks(busy=100 + 20 + 30 + 6 + 7, steal=800)


def test_a_text_without_the_aggregate_line_is_refused() -> None:
    with pytest.raises(ValueError, match="no aggregate 'cpu ' line"):
        suite_cpu.read_ticks("cpu0 1 2 3 4 5 6 7 8\n")


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
