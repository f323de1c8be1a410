"""`mammofl bench dp-finetune` runs its engines side by side and prints the ratios."""

from __future__ import annotations

import pytest

from common.runs.grid_lanes import usable_cores
from simulations.cli import main


def test_dp_finetune_benchmark_prints_the_three_engines(capsys: pytest.CaptureFixture[str]) -> None:
    options = ["model=tiny_swin", "size=32", "n=32", "batch=8", "epochs=2", "cells=3"]
    assert main(["bench", "dp-finetune", *options, "naive_steps=1", "measure_epochs=1"]) == 0
    out = capsys.readouterr().out
    assert "epsilon" in out and "for every engine" in out and "projected from" in out
    table = {
        line.split()[0]: line.split()
        for line in out.splitlines()
        if line[:6] in ("naive ", "cached", "grid  ", "grid/2")
    }
    # on 2+ usable cores also the cells as 2 grids side by side (mammofl table1's lanes); the
    # cores this process may use (torch's thread count, which an earlier test may have set)
    lanes = {"grid/2"} if usable_cores() >= 2 else set()
    assert set(table) == {"naive", "cached", "grid", *lanes}
    assert all(row[-1].endswith("x") for row in table.values())
    assert bool(lanes) == ("one grid's training" in out)


def test_unknown_benchmark_names_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "nope"]) == 2
    assert "dp-finetune|gan|main-job" in capsys.readouterr().err
