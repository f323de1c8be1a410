"""simulations/suite_cpu: the machine's busy CPU ticks from /proc/stat."""

from __future__ import annotations

import sys

import pytest

from simulations import suite_cpu

STAT = """cpu  100 20 30 4000 50 6 7 800 0 0
cpu0 50 10 15 2000 25 3 4 400 0 0
intr 12345
"""


def test_busy_ticks_count_user_nice_system_irq_softirq_only() -> None:
    # idle 4000, iowait 50 and steal 800 are not this machine's work
    assert suite_cpu.busy_ticks(STAT) == 100 + 20 + 30 + 6 + 7


def test_a_text_without_the_aggregate_line_is_refused() -> None:
    with pytest.raises(ValueError, match="no aggregate 'cpu ' line"):
        suite_cpu.busy_ticks("cpu0 1 2 3 4 5 6 7 8\n")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")
def test_machine_cpu_seconds_grow_with_work() -> None:
    before = suite_cpu.machine_cpu_seconds()
    deadline = before + 0.05
    total = 0
    while suite_cpu.machine_cpu_seconds() < deadline:  # spin until the counter moves
        total += sum(range(10_000))
    assert suite_cpu.machine_cpu_seconds() > before and total > 0


def test_no_target_prints_the_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert suite_cpu.main([]) == 2
    assert "python -m simulations.suite_cpu" in capsys.readouterr().err
