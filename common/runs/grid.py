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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common.config.schema import DataConfig, MammoflConfig
from common.runs.run_data import RunData, load_run_data
from common.runs.single_node import PreparedCell, finish_cell, fit_cell, prepare_cell
from common.training.grid_fit import GridCell, fit_grid

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
    if (train.optimizer, train.augmentation_multiplicity, train.ema_decay) != ("adamw", 1, None):
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
    jobs: Sequence[tuple[MammoflConfig, Path]], progress: bool = True
) -> list[dict[str, Any]]:
    """Train every (config, out_dir) and write its records; returns the records in order."""
    load = shared_loader()
    groups: dict[Any, list[int]] = {}
    for index, (config, _) in enumerate(jobs):
        key = grid_key(config)
        groups.setdefault(key if key is not None else ("alone", index), []).append(index)
    records: dict[int, dict[str, Any]] = {}
    for members in groups.values():
        cells = [prepare_cell(jobs[i][0], jobs[i][1], progress, load) for i in members]
        index_of = {id(cell): i for cell, i in zip(cells, members, strict=True)}
        for group in _same_plan_shape(cells):
            names = ", ".join(f"{c.config.name} seed {c.config.seed}" for c in group)
            log.info("%s: training%s", names, " as one grid" if len(group) > 1 else "")
            results = (
                fit_grid(
                    [_grid_cell(c) for c in group],
                    group[0].data.train,
                    group[0].data.validation,
                    epochs=group[0].config.train.epochs,
                    progress=progress,
                )
                if len(group) > 1
                else [fit_cell(group[0])]
            )
            for cell, result in zip(group, results, strict=True):
                records[index_of[id(cell)]] = finish_cell(cell, result)
    return [records[i] for i in range(len(jobs))]


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
