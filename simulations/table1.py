"""`mammofl table1`: run (or resume) Table 1 rows x seeds, then write table, CSV and plot.

Each cell is `mammofl train` of one preset and seed in DIR/cells/<row>/seed<seed>; a cell with a
result.json is done and is not run again. SynPre+RealFT cells start from the SynPre cell of the
same seed, which runs first when missing: `synpre`, the paper's (all parameters, naive engine),
or `synpre_cpu`, its CPU variant (last stage + head on cached trunk maps) when that row is in
rows= and `synpre` is not. `rows=paper` names the paper's 18 rows, `rows=cpu` the same 18 with
`synpre_cpu` (the complete Table 1 on CPU: docs/results.md). Frozen-backbone features are
cached in DIR/_features.
With `grid=true` (the default) cells that can share one program (cached engine, whole head,
same data and optimisation; see `common.runs.grid`) are trained together as a grid, each with
its own sampling, noise, selection and ledger; `grid=false` trains them one by one. On CPU the
grids train side by side on `lanes` threads (`common.runs.grid_lanes`; `lanes=1`: one after
another). A row is a
paper row (`real_eps6`: experiment table1/real_eps6) or a recipe preset run beside them
(`recipe/dp_eps6`: experiment recipe/dp_eps6; docs/recipes.md).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Collection, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from common.config.compose import compose_config, experiment_names
from common.config.recorded_diff import changed_sections
from common.config.schema import MammoflConfig
from common.errors import ConfigError
from common.runs.grid import run_cells
from common.runs.single_node import run_cell
from simulations.table1_identity import changed_data, identity_only, start_changed
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


CPU_ROWS = tuple("synpre_cpu" if row == "synpre" else row for row in DEFAULT_ROWS)
ROW_SETS = {"paper": DEFAULT_ROWS, "cpu": CPU_ROWS}
SYNPRE_ROWS = ("synpre", "synpre_cpu")


def expand_rows(rows: Sequence[str]) -> list[str]:
    """`paper` / `cpu` stand for their 18 rows; other names are kept, in order, once each."""
    expanded = [name for row in rows for name in ROW_SETS.get(row, (row,))]
    return list(dict.fromkeys(expanded))


def start_row(rows: Sequence[str], out_dir: Path | None = None) -> str:
    """The SynPre row the SynPre+RealFT rows fine-tune: the one in `rows`; with both, the
    paper's `synpre`; with neither, the one `out_dir` already holds cells of (`synpre_cpu`
    only when `synpre` has none), else `synpre`."""
    named = [r for r in SYNPRE_ROWS if r in rows]
    if named:
        return named[0]
    if out_dir is not None:
        held = [r for r in SYNPRE_ROWS if any((out_dir / "cells" / r).glob("seed*/result.json"))]
        if held == ["synpre_cpu"]:
            return "synpre_cpu"
    return "synpre"


def is_finetune(row: str) -> bool:
    return row.startswith("synpre_realft")


@cache
def declared_start(row: str, overrides: tuple[str, ...] = ()) -> str | None:
    """The row a recipe preset says it starts from (`start_from_row`), if any, as composed
    with the run's overrides (a preset may need them, e.g. recipe/no_dp a timm backbone)."""
    if "/" not in row:
        return None
    return compose_config([f"experiment={row_experiment(row)}", *overrides]).start_from_row


def start_of(row: str, synpre: str, overrides: Sequence[str] = ()) -> str | None:
    """The row whose model (same seed) `row` starts from: the SynPre row for SynPre+RealFT, a
    recipe's `start_from_row` (recipe/dp_synhead_eps6: recipe/syn_head), else None."""
    return synpre if is_finetune(row) else declared_start(row, tuple(overrides))


def cell_dir(out_dir: Path, row: str, seed: int) -> Path:
    return out_dir / "cells" / row / f"seed{seed}"


def start_model(out_dir: Path, synpre: str, seed: int) -> Path:
    return cell_dir(out_dir, synpre, seed) / "model.pt"


def cell_record(cell: Path) -> dict[str, Any]:
    """A finished cell's whole record (its site_only.json): how it was trained."""
    record = cell / "site_only.json"
    if not record.is_file():
        raise ConfigError(
            f"{cell} has a result.json but no site_only.json, so how it was trained is "
            f"unknown: delete {cell} and run again"
        )
    loaded: dict[str, Any] = json.loads(record.read_text())
    return loaded


def started_from(record: dict[str, Any]) -> Path | None:
    """The start model a finished cell was trained from (cells/<row>/seed<s>/model.pt, as
    typed at the time), from its record (`cell_record`); None for a fresh start."""
    started = record["config"]["model"]["init_from"]
    return Path(started) if started else None


# settings that do not change what a cell computes: where things are, and how fast (the
# start model is compared by content: table1_identity.start_changed)
UNCOMPARED = {
    "train.feature_cache_dir",
    "train.device",
    "train.num_workers",
    "train.feature_batch_size",
    "model.init_from",
}


def changed_settings(record: dict[str, Any], config: MammoflConfig) -> list[str]:
    """`key: was -> now` for each training, model, privacy, data or evaluation setting that
    the finished cell's record (`cell_record`) holds otherwise than `config` (keys an older
    record lacks are not compared), data by manifest hash (not path) and backbone weights by
    file name (`table1_identity`)."""
    changes = changed_sections(
        identity_only(record.get("config", {})),
        identity_only(dataclasses.asdict(config)),
        ("train", "model", "privacy", "data", "eval"),
        skip=UNCOMPARED,
    )
    return changes + changed_data(record.get("data", {}), config.data)


def cell_done(
    out_dir: Path,
    row: str,
    seed: int,
    synpre: str,
    overrides: Sequence[str] | None = None,
    compare_settings: bool | None = None,
    rows: Collection[str] | None = None,
) -> bool:
    """Whether the cell has its result. Refused, not mixed in: a finished cell that started
    from another row's model than the row's start (e.g. SynPre+RealFT from `synpre` where
    `synpre_cpu` is asked for) or another seed's; with `compare_settings` (default: when
    `overrides` are given), a cell whose recorded settings differ from what the row composes
    to now (a preset changed since; a compose each, so `check_cells` does it once a run) or
    whose start model changed since (or is gone, where its row is among `rows`, this run's)."""
    target = cell_dir(out_dir, row, seed)
    if not (target / "result.json").is_file():
        return False
    start = start_of(row, synpre, overrides or ())
    record = cell_record(target)
    started = started_from(record)
    if (
        start is not None
        and not is_finetune(row)
        and (started is None or started.parent.parent.name != Path(start).name)
    ):
        raise ConfigError(
            f"{target} did not start from the {start} row's model, as {row} does now: delete "
            f"{target.parent} or use another out_dir="
        )
    if is_finetune(row) and (origin := started.parent.parent.name if started else "") != synpre:
        raise ConfigError(
            f"{target} fine-tuned the {origin} row's model, not {synpre}'s: Table 1 would mix "
            f"two SynPre variants. Name {origin} in rows= (e.g. rows="
            f"{'cpu' if origin == 'synpre_cpu' else 'paper'}), use another out_dir=, or delete "
            f"{target.parent}"
        )
    if start is not None and started is not None and started.parent.name != f"seed{seed}":
        raise ConfigError(
            f"{target} started from {started.parent.name}'s model, not seed{seed}'s: delete "
            f"{target} and run again"
        )
    if compare_settings if compare_settings is not None else overrides is not None:
        assert overrides is not None, "comparing settings needs the run's overrides"
        changes = changed_settings(record, cell_config(out_dir, row, seed, overrides, synpre))
        start_row = synpre if is_finetune(row) else start
        if start_row is not None:
            path = start_model(out_dir, start_row, seed)
            # a start model gone matters only when its row runs again (`rows`: this run's)
            if path.is_file() or rows is None or start_row in rows:
                why = start_changed(record.get("start_model_sha256"), path)
                changes = ([why] if why else []) + changes
        if changes:
            raise ConfigError(
                f"{target} was trained with other settings than {row} composes to now "
                f"({'; '.join(changes[:3])}): Table 1 would mix them. Delete {target.parent} "
                "to rerun the row, or use another out_dir="
            )
    return True


def run_one(
    out_dir: Path,
    row: str,
    seed: int,
    overrides: Sequence[str],
    synpre: str = "synpre",
    chain: tuple[str, ...] = (),
) -> Path:
    """Train the cell unless done, after the cell it starts from (`chain`: the rows that wait
    on this one, to refuse a preset that starts from itself)."""
    if row in chain:
        raise ConfigError(f"start_from_row loops: {' -> '.join([*chain, row])}")
    target = cell_dir(out_dir, row, seed)
    if cell_done(out_dir, row, seed, synpre, overrides, compare_settings=False):  # checked
        log.info("%s seed %d: done already (%s)", row, seed, target)
        return target
    if (start := start_of(row, synpre, overrides)) is not None:
        run_one(out_dir, start, seed, overrides, synpre, (*chain, row))
    log.info("%s seed %d: training", row, seed)
    run_cell(cell_config(out_dir, row, seed, overrides, synpre), target)
    return target


def row_experiment(row: str) -> str:
    """The experiment of a row: a paper row's table1/<row>, or the named preset itself."""
    return row if "/" in row else f"table1/{row}"


def cell_config(
    out_dir: Path, row: str, seed: int, overrides: Sequence[str], synpre: str = "synpre"
) -> MammoflConfig:
    extra = [f"train.feature_cache_dir={out_dir / '_features'}"]
    if (start := start_of(row, synpre, overrides)) is not None:
        extra.append(f"model.init_from={start_model(out_dir, start, seed)}")
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
    out_dir: Path,
    rows: Sequence[str],
    seeds: Sequence[int],
    overrides: Sequence[str],
    synpre: str = "synpre",
    lanes: int | None = None,
) -> None:
    """The cells not done yet, compatible ones as grids: the start rows first (SynPre, a
    recipe's `start_from_row`: the fine-tuned rows start from their models), then everything
    else (`lanes`: see `common.runs.grid.run_cells`)."""

    def done(row: str, seed: int) -> bool:  # settings: compared once by check_cells
        return cell_done(out_dir, row, seed, synpre, overrides, compare_settings=False)

    pending = [(row, seed) for row in rows for seed in seeds if not done(row, seed)]
    starts = {
        (start, s, r) for r, s in pending if (start := start_of(r, synpre, overrides)) is not None
    }
    for start, seed, row in sorted(starts):
        run_one(out_dir, start, seed, overrides, synpre, (row,))
    pending = [(r, s) for r, s in pending if not done(r, s)]
    jobs = [
        (cell_config(out_dir, r, s, overrides, synpre), cell_dir(out_dir, r, s)) for r, s in pending
    ]
    if jobs:
        log.info("%d cells to train", len(jobs))
        run_cells(jobs, lanes=lanes)


def check_cells(
    out_dir: Path, rows: Sequence[str], seeds: Sequence[int], synpre: str, overrides: Sequence[str]
) -> None:
    """Before anything trains: every row has a test set, and no finished cell (of a row or of
    a row it starts from) would be mixed in (`cell_done`); one ConfigError lists them all."""
    refusals: dict[str, None] = {}
    for row in rows:
        if not compose_config([f"experiment={row_experiment(row)}", *overrides]).data.tests:
            raise ConfigError(
                f"{row}: no test set (data.tests is empty); Table 1 reports test-set metrics, "
                "so keep at least one (e.g. data=release_dev's cbis_ddsm_val)"
            )
        needed, start = [row], start_of(row, synpre, overrides)
        while start is not None and start not in needed:
            needed.append(start)
            start = start_of(start, synpre, overrides)
        for name in needed:
            for seed in seeds:
                try:
                    cell_done(out_dir, name, seed, synpre, overrides, rows=rows)
                except ConfigError as error:
                    refusals[str(error)] = None
    if refusals:
        raise ConfigError("\n".join(refusals))


def run_table1(
    out_dir: Path,
    rows: Sequence[str],
    seeds: Sequence[int],
    overrides: Sequence[str],
    grid: bool = True,
    lanes: int | None = None,
) -> dict[str, Path]:
    rows = expand_rows(rows)
    names = experiment_names()
    known = {name.split("/", 1)[1] for name in names if name.startswith("table1/")}
    recipes = {name for name in names if name.startswith("recipe/")}
    unknown = [r for r in rows if r not in known and r not in recipes]
    if unknown:
        raise ConfigError(
            f"unknown Table 1 rows {unknown}; choose from {sorted(known)}, a recipe "
            f"{sorted(recipes)}, or paper / cpu (all 18 rows)"
        )
    for bad in ("experiment=", "seed=", "out_dir=", "model.init_from=", "start_from_row="):
        if any(o.lstrip("+~").startswith(bad) for o in overrides):
            raise ConfigError(
                f"mammofl table1 sets {bad} per cell (a row's start model is its start row's, "
                "same seed); use rows=, seeds=, out_dir="
            )
    synpre = start_row(rows, out_dir)
    check_cells(out_dir, rows, seeds, synpre, overrides)
    if grid:
        run_grid(out_dir, rows, seeds, overrides, synpre, lanes)
    else:
        for row in rows:
            for seed in seeds:
                run_one(out_dir, row, seed, overrides, synpre)
    finetuned = [r for r in rows if is_finetune(r)]
    notes = [f"SynPre+RealFT rows fine-tune each seed's `{synpre}` model"] if finetuned else []
    notes += [
        f"`{r}` starts from each seed's `{start}` model (cells/{start})"
        for r in rows
        if not is_finetune(r) and (start := start_of(r, synpre, overrides)) is not None
    ]
    variants = {"synpre_cpu", *(finetuned if synpre == "synpre_cpu" else [])}
    return write_reports(out_dir, rows, seeds, overrides, notes, variants)
