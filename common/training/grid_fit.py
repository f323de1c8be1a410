"""`fit` for a grid of cached-engine cells: one vectorised program, one result per cell.

Every cell keeps what `fit` gives a single run: its budget checked before any step, its
reservation in its own ledger, its own epoch records (validation AUPRC, epsilon of its own
history), its own selection and its own settled event. Only the steps are taken together
(`GridCachedEngine`). Wall time per epoch is recorded as the grid's time divided by the cells.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn
from tqdm import tqdm

from common.data.images import LoadedPatches
from common.errors import ConfigError, PrivacyError
from common.models.classifier import Classifier
from common.models.policies import check_no_per_window_gradients, frozen_checksum
from common.privacy.ledger import LedgerEvent, PrivacyLedger
from common.training.cached_engine import CachedEngine, CachedFeatures
from common.training.features import backbone_checksum
from common.training.fit import FitResult, epoch_record, planned_event, selection_note
from common.training.grid_engine import GridCachedEngine
from common.training.selection import EpochRecord, EpochSelector, LastIterate
from common.training.settings import EngineSettings


class GridStopped(BaseException):
    """A grid stopped at an epoch boundary because its `stop` event was set (another thread
    took SIGTERM or Ctrl-C); like `Terminated`, no `except Exception` swallows it. Its cells'
    reservations stay in their ledgers, charged in full, as for any interrupted run."""


@dataclass
class GridCell:
    """One cell of a grid: its model (head trained in place), settings and ledger."""

    model: Classifier
    settings: EngineSettings
    ledger: PrivacyLedger
    target_epsilon: float | None = None
    selection: str = "best"
    selection_positive: str = "benign"
    eligible: tuple[float, float] = (0.75, 1.05)


def fit_grid(
    cells: Sequence[GridCell],
    train: LoadedPatches,
    validation: LoadedPatches | None,
    *,
    epochs: int,
    progress: bool = False,
    features: CachedFeatures | None = None,
    stop: threading.Event | None = None,
) -> list[FitResult]:
    """Train every cell on `train` (the same records and features for all), select and charge
    per cell, as `fit` with `train.engine=cached` would one cell at a time. `features`: the
    cells' features computed beforehand (`grid_features`), else computed here; `stop`: set by
    another thread to stop at the next epoch (raises `GridStopped`). Raises
    `PrivacyBudgetExceeded` before any step if any DP cell's plan exceeds its budget, and
    ConfigError (from the grid engine) for cells that cannot share one program."""
    planned: list[LedgerEvent | None] = []
    for cell in cells:
        if cell.settings.centring is not None or not isinstance(
            cell.model.feature_centre, nn.Identity
        ):
            raise ConfigError(
                "a grid cell cannot centre its features (each centred cell trains on its own)"
            )
        if cell.selection == "best" and validation is None:
            raise ValueError("selection=best needs a validation set")
        event = None
        if cell.settings.dp is not None:
            if cell.target_epsilon is None:
                raise PrivacyError("a DP run needs a budget: set a target epsilon")
            check_no_per_window_gradients(cell.model)
            event = planned_event(cell.settings, epochs, None)
            cell.ledger.check_within(event, cell.target_epsilon)
        planned.append(event)
    check_shared_backbone(cells)
    before_sums = [frozen_checksum(cell.model) for cell in cells]
    eval_sets = {"validation": validation} if validation is not None else {}
    engines = [CachedEngine(cells[0].model, train, eval_sets, cells[0].settings, features)]
    shared = engines[0].features()
    engines += [
        CachedEngine(cell.model, train, eval_sets, cell.settings, features=shared)
        for cell in cells[1:]
    ]
    try:
        grid = GridCachedEngine(engines)
        reservations = [
            cell.ledger.reserve(event) if event is not None else None
            for cell, event in zip(cells, planned, strict=True)
        ]
        histories, selectors = _train(grid, cells, validation, epochs, progress, stop)
        results = []
        for k, cell in enumerate(cells):
            results.append(
                _settle(
                    cell, engines[k], histories[k], selectors[k], reservations[k], before_sums[k]
                )
            )
    finally:
        for engine in engines:
            engine.close()
    return results


def check_shared_backbone(cells: Sequence[GridCell]) -> None:
    """Grid cells share one set of features, so they must share one frozen backbone (weights
    checked, not names). Raises ConfigError otherwise."""
    backbones = {backbone_checksum(cell.model.backbone) for cell in cells}
    if len(backbones) > 1:
        raise ConfigError(
            f"grid cells must share one frozen backbone (their features are computed once); "
            f"found {len(backbones)} different backbones: run these cells one by one"
        )


def grid_features(
    cell: GridCell, train: LoadedPatches, validation: LoadedPatches | None
) -> CachedFeatures:
    """The features `fit_grid` would compute for these cells (their shared backbone on the
    training and validation patches, from the feature bank where it has them)."""
    eval_sets = {"validation": validation} if validation is not None else {}
    engine = CachedEngine(cell.model, train, eval_sets, cell.settings)
    try:
        return engine.features()
    finally:
        engine.close()


def _train(
    grid: GridCachedEngine,
    cells: Sequence[GridCell],
    validation: LoadedPatches | None,
    epochs: int,
    progress: bool,
    stop: threading.Event | None = None,
) -> tuple[list[list[EpochRecord]], list[EpochSelector | LastIterate]]:
    selectors: list[EpochSelector | LastIterate] = [
        LastIterate()
        if cell.selection == "last"
        else EpochSelector(cell.target_epsilon if cell.settings.dp else None, *cell.eligible)
        for cell in cells
    ]
    # each ledger's last event is the reservation standing for this run's steps
    befores = [c.ledger.events[:-1] if c.settings.dp else c.ledger.events for c in cells]
    histories: list[list[EpochRecord]] = [[] for _ in cells]
    for epoch in tqdm(range(1, epochs + 1), disable=not progress, desc="grid epochs"):
        if stop is not None and stop.is_set():
            raise GridStopped(f"grid stopped before epoch {epoch}")
        started = time.perf_counter()
        losses = grid.train_epoch()
        seconds = (time.perf_counter() - started) / len(cells)
        for k, cell in enumerate(cells):
            histories[k].append(
                epoch_record(
                    grid.engines[k],
                    cell.model,
                    validation,
                    cell.settings,
                    cell.ledger,
                    befores[k],
                    selectors[k],
                    epoch,
                    losses[k],
                    seconds,
                    cell.selection_positive,
                )
            )
    return histories, selectors


def _settle(
    cell: GridCell,
    engine: CachedEngine,
    history: list[EpochRecord],
    selector: EpochSelector | LastIterate,
    reservation: int | None,
    checksum_before: str,
) -> FitResult:
    note = selection_note(cell.selection, selector)
    if selector.best_state:
        cell.model.load_state_dict({**cell.model.state_dict(), **selector.best_state})
    event = None
    if reservation is not None:
        cell.ledger.settle(reservation, steps=engine.steps_done)
        event = cell.ledger.events[reservation]
    return FitResult(
        best_epoch=selector.best.epoch if selector.best else None,
        history=history,
        steps=engine.steps_done,
        epsilon_spent=cell.ledger.epsilon() if cell.settings.dp is not None else None,
        selection_note=note,
        frozen_checksum_before=checksum_before,
        frozen_checksum_after=frozen_checksum(cell.model),
        mechanism_steps=engine.mechanism_steps(),
        ledger=cell.ledger,
        event=event,
    )
