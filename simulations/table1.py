"""`mammofl table1`: run (or resume) Table 1 rows x seeds, then write table, CSV and plot.

Each cell is `mammofl train` of one preset and seed in DIR/cells/<row>/seed<seed>; a cell with a
result.json is done and is not run again. SynPre+RealFT cells start from the SynPre cell of the
same seed, which runs first when missing. Frozen-backbone features are cached in DIR/_features.
With `grid=true` (the default) cells that can share one program (cached engine, whole head,
same data and optimisation; see `common.runs.grid`) are trained together as a grid, each with
its own sampling, noise, selection and ledger; `grid=false` trains them one by one. A row is a
paper row (`real_eps6`: experiment table1/real_eps6) or a recipe preset run beside them
(`recipe/dp_eps6`: experiment recipe/dp_eps6; docs/recipes.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from common.config.compose import compose_config, experiment_names
from common.config.schema import MammoflConfig
from common.errors import ConfigError
from common.runs.grid import run_cells
from common.runs.single_node import run_cell
from simulations.table1_report import write_reports

log = logging.getLogger(__name__)
DEFAULT_SEEDS = (42, 43, 44)
DEFAULT_ROWS = tuple(
    ["real", "syn", "synpre"]
    + [
        f"{kind}_eps{e}"
        for e in (1, 6, 12, 20, 60)
        for kind in ("real", "real_syn", "synpre_realft")
    ]
)


def cell_dir(out_dir: Path, row: str, seed: int) -> Path:
    return out_dir / "cells" / row / f"seed{seed}"


def run_one(out_dir: Path, row: str, seed: int, overrides: Sequence[str]) -> Path:
    target = cell_dir(out_dir, row, seed)
    if (target / "result.json").is_file():
        log.info("%s seed %d: done already (%s)", row, seed, target)
        return target
    if row.startswith("synpre_realft"):
        run_one(out_dir, "synpre", seed, overrides)
    log.info("%s seed %d: training", row, seed)
    run_cell(cell_config(out_dir, row, seed, overrides), target)
    return target


def row_experiment(row: str) -> str:
    """The experiment of a row: a paper row's table1/<row>, or the named preset itself."""
    return row if "/" in row else f"table1/{row}"


def cell_config(out_dir: Path, row: str, seed: int, overrides: Sequence[str]) -> MammoflConfig:
    extra = [f"train.feature_cache_dir={out_dir / '_features'}"]
    if row.startswith("synpre_realft"):
        extra.append(f"model.init_from={cell_dir(out_dir, 'synpre', seed) / 'model.pt'}")
    return compose_config(
        [
            f"experiment={row_experiment(row)}",
            f"seed={seed}",
            f"out_dir={cell_dir(out_dir, row, seed)}",
            *extra,
            *overrides,
        ]
    )


def run_grid(
    out_dir: Path, rows: Sequence[str], seeds: Sequence[int], overrides: Sequence[str]
) -> None:
    """The cells not done yet, compatible ones as grids: SynPre first (the fine-tuned rows
    start from it), then everything else."""
    pending = [
        (row, seed)
        for row in rows
        for seed in seeds
        if not (cell_dir(out_dir, row, seed) / "result.json").is_file()
    ]
    needs_synpre = {s for r, s in pending if r.startswith("synpre_realft")}
    for seed in sorted(needs_synpre):
        run_one(out_dir, "synpre", seed, overrides)
    jobs = [(cell_config(out_dir, r, s, overrides), cell_dir(out_dir, r, s)) for r, s in pending]
    if jobs:
        log.info("%d cells to train", len(jobs))
        run_cells(jobs)


def run_table1(
    out_dir: Path,
    rows: Sequence[str],
    seeds: Sequence[int],
    overrides: Sequence[str],
    grid: bool = True,
) -> dict[str, Path]:
    names = experiment_names()
    known = {name.split("/", 1)[1] for name in names if name.startswith("table1/")}
    recipes = {name for name in names if name.startswith("recipe/")}
    unknown = [r for r in rows if r not in known and r not in recipes]
    if unknown:
        raise ConfigError(
            f"unknown Table 1 rows {unknown}; choose from {sorted(known)} or a recipe "
            f"{sorted(recipes)}"
        )
    for bad in ("experiment=", "seed=", "out_dir="):
        if any(o.startswith(bad) for o in overrides):
            raise ConfigError(f"mammofl table1 sets {bad} per cell; use rows=, seeds=, out_dir=")
    if grid:
        run_grid(out_dir, rows, seeds, overrides)
    else:
        for row in rows:
            for seed in seeds:
                run_one(out_dir, row, seed, overrides)
    return write_reports(out_dir, rows, seeds, overrides)
