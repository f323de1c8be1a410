"""`mammofl table1`: run (or resume) Table 1 rows x seeds, then write table, CSV and plot.

Each cell is `mammofl train` of one preset and seed in DIR/cells/<row>/seed<seed>; a cell with a
result.json is done and is not run again. SynPre+RealFT cells start from the SynPre cell of the
same seed, which runs first when missing. Frozen-backbone features are cached in DIR/_features.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from common.config.compose import compose_config, experiment_names
from common.errors import ConfigError
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
    extra = [f"train.feature_cache_dir={out_dir / '_features'}"]
    if row.startswith("synpre_realft"):
        synpre = run_one(out_dir, "synpre", seed, overrides)
        extra.append(f"model.init_from={synpre / 'model.pt'}")
    config = compose_config(
        [f"experiment=table1/{row}", f"seed={seed}", f"out_dir={target}", *extra, *overrides]
    )
    log.info("%s seed %d: training", row, seed)
    run_cell(config, target)
    return target


def run_table1(
    out_dir: Path, rows: Sequence[str], seeds: Sequence[int], overrides: Sequence[str]
) -> dict[str, Path]:
    known = {name.split("/", 1)[1] for name in experiment_names() if name.startswith("table1/")}
    unknown = [r for r in rows if r not in known]
    if unknown:
        raise ConfigError(f"unknown Table 1 rows {unknown}; choose from {sorted(known)}")
    for bad in ("experiment=", "seed=", "out_dir="):
        if any(o.startswith(bad) for o in overrides):
            raise ConfigError(f"mammofl table1 sets {bad} per cell; use rows=, seeds=, out_dir=")
    for row in rows:
        for seed in seeds:
            run_one(out_dir, row, seed, overrides)
    return write_reports(out_dir, rows, seeds, overrides)
