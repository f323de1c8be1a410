"""Run many single-node cells, training compatible ones as one grid (`fit_grid`).

Cells are compatible when they train a whole head on the cached engine from the same data
config and the same frozen backbone (model, weights, start model), with the same optimisation
settings and epochs and, under DP, the same sample rate, steps and the patch unit; they may
differ in seed and target epsilon (noise multiplier). `fit_grid` checks the backbones' weights
again before sharing one set of features.
Every other cell runs alone through `fit`. Each cell's records are written exactly as
`run_cell` writes them.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from common.config.schema import DataConfig, MammoflConfig
from common.runs.grid_lanes import NON_DP_STEP_COST, balance, default_lanes, run_lanes
from common.runs.run_data import RunData, load_run_data
from common.runs.single_node import PreparedCell, finish_cell, fit_cell, prepare_cell
from common.training.cached_engine import CachedFeatures
from common.training.fit import FitResult
from common.training.grid_engine import vectorised_optimisation
from common.training.grid_fit import GridCell, check_shared_backbone, fit_grid, grid_features
from common.training.settings import resolve_device

log = logging.getLogger(__name__)


def shared_loader() -> Callable[[DataConfig, bool], RunData]:
    """`load_run_data` that loads each distinct data config once (pixels shared by cells)."""
    loaded: dict[str, RunData] = {}

    def load(data: DataConfig, progress: bool) -> RunData:
        key = repr(data)
        if key not in loaded:
            loaded[key] = load_run_data(data, progress)
        return loaded[key]

    return load


def grid_key(config: MammoflConfig) -> tuple[Any, ...] | None:
    """What cells of one grid must share; None when the cell cannot join a grid."""
    train, privacy = config.train, config.privacy
    if train.engine != "cached" or config.model.trainable != "head" or privacy.unit != "patch":
        return None
    if config.model.feature_centring != "none":
        return None  # each cell releases its own centre: cell by cell
    if not vectorised_optimisation(
        train.optimizer, train.augmentation_multiplicity, train.ema_decay
    ):
        return None  # recipe knobs the grid engine does not vectorise: cell by cell
    return (
        repr(config.data),
        repr(config.model.name),
        config.model.library,
        config.model.weights,
        config.model.init_from,  # SynPre+RealFT: each seed's own SynPre backbone
        repr(config.model.kwargs),
        config.model.drop_path_rate,
        config.model.head,
        config.model.hidden,
        config.model.feature_norm,
        config.model.flip_averaging,
        tuple(config.model.feature_stages),
        train.device,
        train.epochs,
        train.batch_size,
        train.lr,
        train.weight_decay,
        train.label_smoothing,
        train.flips,
        train.selection_positive,
        train.feature_cache_dir,
        privacy.enabled,
        privacy.eligible_low,
        privacy.eligible_high,
    )


def run_cells(
    jobs: Sequence[tuple[MammoflConfig, Path]], progress: bool = True, lanes: int | None = None
) -> list[dict[str, Any]]:
    """Train every (config, out_dir) and write its records; returns the records in order.

    `lanes`: grids trained at once on CPU threads (`grid_lanes`); None: one per core, at most
    one per grid cell, 1 on an accelerator; 1: one grid after another."""
    load = shared_loader()
    groups: dict[Any, list[int]] = {}
    for index, (config, _) in enumerate(jobs):
        key = grid_key(config)
        groups.setdefault(key if key is not None else ("alone", index), []).append(index)
    records: dict[int, dict[str, Any]] = {}
    index_of: dict[int, int] = {}

    def finish(group: list[PreparedCell], results: list[FitResult]) -> None:
        for cell, result in zip(group, results, strict=True):
            records[index_of[id(cell)]] = finish_cell(cell, result)

    if lanes is None:
        grid_groups = [m for k, m in groups.items() if k[0] != "alone" and len(m) > 1]
        devices = [resolve_device(jobs[m[0]][0].train.device) for m in grid_groups]
        lanes = default_lanes(sum(len(m) for m in grid_groups), devices)

    def prepare(members: list[int]) -> list[list[PreparedCell]]:
        cells = [prepare_cell(jobs[i][0], jobs[i][1], progress, load) for i in members]
        index_of.update({id(cell): i for cell, i in zip(cells, members, strict=True)})
        return _same_plan_shape(cells)

    if lanes == 1:  # prepare, train and write each group in turn (the least memory)
        for members in groups.values():
            for group in prepare(members):
                finish(group, _fit_group(group, progress))
        return [records[i] for i in range(len(jobs))]

    plans = [group for members in groups.values() for group in prepare(members)]
    for group in plans:
        if len(group) == 1:
            finish(group, _fit_group(group, progress))
    grids = [group for group in plans if len(group) > 1]
    if grids:
        _fit_in_lanes(grids, lanes, progress, finish)
    return [records[i] for i in range(len(jobs))]


def _fit_group(
    group: list[PreparedCell],
    progress: bool,
    features: CachedFeatures | None = None,
    stop: threading.Event | None = None,
) -> list[FitResult]:
    names = ", ".join(f"{c.config.name} seed {c.config.seed}" for c in group)
    log.info("%s: training%s", names, " as one grid" if len(group) > 1 else "")
    if len(group) == 1 and stop is None:  # in a lane even one cell is a grid: it can stop
        return [fit_cell(group[0])]
    return fit_grid(
        [_grid_cell(c) for c in group],
        group[0].data.train,
        group[0].data.validation,
        epochs=group[0].config.train.epochs,
        progress=progress,
        features=features,
        stop=stop,
    )


def _fit_in_lanes(
    grids: list[list[PreparedCell]],
    lanes: int,
    progress: bool,
    finish: Callable[[list[PreparedCell], list[FitResult]], None],
) -> None:
    """Features for every grid first (all threads), then the grids in `lanes` threads."""
    features: dict[int, CachedFeatures] = {}  # by cell: a grid's split parts share its features
    for group in grids:
        first = group[0]
        # split parts share these features: the whole grid must share the backbone
        check_shared_backbone([_grid_cell(c) for c in group])
        computed = grid_features(_grid_cell(first), first.data.train, first.data.validation)
        features.update({id(cell): computed for cell in group})
    scheduled = balance(grids, lanes, _cell_cost)
    log.info(
        "%d grids (%d cells) on %d lanes, %d intra-op thread(s) each",
        len(scheduled),
        sum(len(g) for g in scheduled),
        lanes,
        max(1, torch.get_num_threads() // lanes),
    )

    def train(group: list[PreparedCell], stop: threading.Event) -> list[FitResult]:
        return _fit_group(group, False, features[id(group[0])], stop)

    run_lanes(scheduled, lanes, train, finish)


def _cell_cost(cell: PreparedCell) -> float:
    """A cell's steps, a plain (non-DP) step counted as NON_DP_STEP_COST of a DP one."""
    dp, epochs = cell.settings.dp, cell.config.train.epochs
    if dp is not None:
        return float(dp.steps_per_epoch * epochs)
    steps = math.ceil(len(cell.data.train.pixels) / cell.settings.batch_size)
    return NON_DP_STEP_COST * steps * epochs


def _same_plan_shape(cells: list[PreparedCell]) -> list[list[PreparedCell]]:
    """Split by the plan's sample rate and steps per epoch (DP cells of one grid share them)."""
    shapes: dict[tuple[Any, ...], list[PreparedCell]] = {}
    for cell in cells:
        dp = cell.settings.dp
        shape = (dp.sample_rate, dp.steps_per_epoch) if dp is not None else ()
        shapes.setdefault(shape, []).append(cell)
    return list(shapes.values())


def _grid_cell(cell: PreparedCell) -> GridCell:
    config = cell.config
    return GridCell(
        cell.model,
        cell.settings,
        cell.ledger,
        cell.plan.target_epsilon,
        selection_positive=config.train.selection_positive,
        eligible=(config.privacy.eligible_low, config.privacy.eligible_high),
    )
