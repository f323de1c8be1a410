"""One training run: given weights and a privacy ledger, train local epochs, charge the ledger.

Epsilon always comes from the whole ledger plus the steps taken so far, so the same function
serves a single-node run and one federated round. Under DP the run is reserved in the ledger
before its first step and settled after its last (`persist` saves the ledger at both points),
so an interrupted run stays charged. A run whose loss or weights turn NaN/inf stops with
`NonFiniteError` (under DP the weights are checked, not the loss: a private statistic).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from common.data.images import LoadedPatches
from common.errors import NonFiniteError, PrivacyError
from common.eval.metrics import auprc
from common.models.classifier import Classifier
from common.models.policies import check_no_per_window_gradients, frozen_checksum
from common.privacy.centring import centring_event
from common.privacy.ledger import LedgerEvent, PrivacyLedger, epsilon_of
from common.training.engine import TrainingEngine
from common.training.engines import make_engine
from common.training.feature_centring import centre_features, check_centring_setup
from common.training.selection import EpochRecord, EpochSelector, LastIterate
from common.training.settings import EngineSettings
from common.training.weight_average import WeightAverage

log = logging.getLogger(__name__)
SELECTIONS = ("best", "last")


@dataclass
class FitResult:
    best_epoch: int | None
    history: list[EpochRecord]
    steps: int
    epsilon_spent: float | None
    selection_note: str
    frozen_checksum_before: str
    frozen_checksum_after: str
    mechanism_steps: int | None = None
    ledger: PrivacyLedger = field(default_factory=PrivacyLedger)
    event: LedgerEvent | None = None


def planned_event(settings: EngineSettings, epochs: int, round_number: int | None) -> LedgerEvent:
    dp = settings.dp
    assert dp is not None
    return LedgerEvent(
        noise_multiplier=dp.noise_multiplier,
        sample_rate=dp.sample_rate,
        steps=dp.steps_per_epoch * epochs,
        round=round_number,
    )


def fit(
    model: Classifier,
    engine_name: str,
    train: LoadedPatches,
    validation: LoadedPatches | None,
    settings: EngineSettings,
    *,
    epochs: int,
    ledger: PrivacyLedger,
    selection_positive: str = "benign",
    selection: str = "best",
    target_epsilon: float | None = None,
    epsilon_cap: float | None = None,
    eligible: tuple[float, float] = (0.75, 1.05),
    round_number: int | None = None,
    persist: Callable[[PrivacyLedger], None] | None = None,
    proximal_mu: float = 0.0,
) -> FitResult:
    """Train, select an epoch (best eligible by validation AUPRC, or the last), load it into
    `model`, charge the ledger. `proximal_mu` > 0 adds FedProx's mu (w - w_start) to every
    gradient before the optimiser step (Li et al. 2020); it is data-independent, so under DP it
    is post-processing of the noisy gradient and costs no privacy.

    Under DP the budget is checked before any step: the ledger plus all planned steps must stay
    within `epsilon_cap` (default: the target); a DP run with neither is refused. Raises
    `PrivacyBudgetExceeded` (nothing charged, nothing trained) when the check fails.
    """
    if selection not in SELECTIONS or (selection == "best" and validation is None):
        raise ValueError(f"selection={selection!r} (best needs a validation set; or last)")
    dp = settings.dp
    reservation = None
    planned = None
    centring = settings.centring
    check_centring_setup(model, settings)
    centre_release = (
        [centring_event(centring.noise_multiplier)]
        if dp is not None and centring is not None and centring.noise_multiplier is not None
        else []
    )
    if dp is not None:
        cap = epsilon_cap if epsilon_cap is not None else target_epsilon
        if cap is None:
            raise PrivacyError("a DP run needs a budget: set a target epsilon or a cap")
        check_no_per_window_gradients(model)
        planned = planned_event(settings, epochs, round_number)
        ledger.check_all_within([*centre_release, planned], cap)
    checksum_before = frozen_checksum(model)
    eval_sets = {"validation": validation} if validation is not None else {}
    engine = make_engine(engine_name, model, train, eval_sets, settings)
    proximal = _add_proximal_term(engine, model, proximal_mu) if proximal_mu > 0 else None
    average = (
        WeightAverage(
            [p for p in model.parameters() if p.requires_grad],
            settings.ema_decay,
            engine.optimizer,
        )
        if settings.ema_decay is not None
        else None
    )
    try:
        if centring is not None:  # before the steps' reservation: the last event is theirs
            centre_features(engine, model, settings, ledger, centre_release, persist)
        if planned is not None:
            reservation = ledger.reserve(planned)
            if persist is not None:
                persist(ledger)
        history, selector = _train_epochs(
            engine,
            model,
            validation,
            settings,
            epochs,
            ledger,
            selection,
            selection_positive,
            target_epsilon if dp else None,
            eligible,
            average,
        )
        note = selection_note(selection, selector)
        if average is not None:  # the model returned is the averaged one (last or selected)
            average.copy_to_parameters()
        if selector.best_state:
            model.load_state_dict({**model.state_dict(), **selector.best_state})
        event = None
        if reservation is not None:
            ledger.settle(reservation, steps=engine.steps_done)
            event = ledger.events[reservation]
            if persist is not None:
                persist(ledger)
        mechanism_steps = engine.mechanism_steps()
    finally:
        if proximal is not None:
            proximal.remove()
        if average is not None:
            average.remove()
        engine.close()
    return FitResult(
        best_epoch=selector.best.epoch if selector.best else None,
        history=history,
        steps=engine.steps_done,
        epsilon_spent=ledger.epsilon() if dp is not None else None,
        selection_note=note,
        frozen_checksum_before=checksum_before,
        frozen_checksum_after=frozen_checksum(model),
        mechanism_steps=mechanism_steps,
        ledger=ledger,
        event=event,
    )


def selection_note(selection: str, selector: EpochSelector | LastIterate) -> str:
    """How the returned weights were chosen, for the record."""
    if selection == "last":
        return "last iterate"
    if selector.best is None:
        return "no eligible epoch; the last epoch is used"
    return "best eligible epoch by validation AUPRC"


def check_fit_consistency(result: FitResult) -> None:
    """Raise PrivacyError when frozen weights changed or the mechanism's count of noisy steps
    differs from the ledger's: bugs that would void the privacy record, never data faults."""
    if result.frozen_checksum_before != result.frozen_checksum_after:
        raise PrivacyError("frozen parameters or buffers changed during training: a bug, not data")
    if result.mechanism_steps is not None and result.mechanism_steps != result.steps:
        raise PrivacyError(
            f"the Gaussian mechanism ran {result.mechanism_steps} times, the ledger counts "
            f"{result.steps} steps"
        )


def _add_proximal_term(engine: TrainingEngine, model: Classifier, mu: float) -> Any:
    anchor = {id(p): p.detach().clone() for p in model.parameters() if p.requires_grad}

    def hook(optimizer: torch.optim.Optimizer, *_: object) -> None:
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                if parameter.grad is not None and id(parameter) in anchor:
                    parameter.grad.add_(parameter.detach() - anchor[id(parameter)], alpha=mu)

    return engine.optimizer.register_step_pre_hook(hook)


def check_finite(model: Classifier, train_loss: float | None, epoch: int, lr: float) -> None:
    """Stop a diverged run: NaN/inf in the training loss (None under DP: not looked at) or in
    any trainable parameter after the epoch (post-processing of the noisy gradients)."""
    what = None
    if train_loss is not None and not math.isfinite(train_loss):
        what = f"the training loss is {train_loss}"
    else:
        bad = next(
            (
                name
                for name, p in model.named_parameters()
                if p.requires_grad and not bool(torch.isfinite(p.detach()).all())
            ),
            None,
        )
        if bad is not None:
            what = f"parameter {bad} holds NaN or inf"
    if what is not None:
        raise NonFiniteError(
            f"training diverged in epoch {epoch}: {what}. Nothing from this run was kept (a DP "
            f"ledger keeps its reservation: the steps taken stay charged). Lower train.lr "
            f"(now {lr:g}) or check the training data for NaN"
        )


def epoch_record(
    engine: TrainingEngine,
    model: Classifier,
    validation: LoadedPatches | None,
    settings: EngineSettings,
    ledger: PrivacyLedger,
    before: list[LedgerEvent],
    selector: EpochSelector | LastIterate,
    epoch: int,
    train_loss: float,
    seconds: float,
    selection_positive: str,
) -> EpochRecord:
    """After an epoch: check the weights, score validation, account epsilon (history `before`
    plus the steps so far) and offer the epoch to the selector; returns its record."""
    dp = settings.dp
    check_finite(model, train_loss if dp is None else None, epoch, settings.lr)
    score = val_loss = None
    if validation is not None:
        scores, val_loss = engine.predict("validation")
        val_labels = validation.labels.numpy()
        score = (
            auprc(val_labels, scores, selection_positive)
            if len(np.unique(val_labels)) > 1
            else float("nan")
        )
    epsilon = None
    if dp is not None:
        spent = LedgerEvent(
            noise_multiplier=dp.noise_multiplier,
            sample_rate=dp.sample_rate,
            steps=engine.steps_done,
        )
        epsilon = epsilon_of([*before, spent], ledger.delta, ledger.accountant)
    # under DP the training loss is an un-noised statistic of private images: not recorded
    logged_loss = train_loss if dp is None else None
    record = EpochRecord(
        epoch, logged_loss, val_loss, score, epsilon, selector.eligible(epsilon), seconds
    )
    selector.offer(record, engine.model_state)
    return record


def _train_epochs(
    engine: TrainingEngine,
    model: Classifier,
    validation: LoadedPatches | None,
    settings: EngineSettings,
    epochs: int,
    ledger: PrivacyLedger,
    selection: str,
    selection_positive: str,
    target_epsilon: float | None,
    eligible: tuple[float, float],
    average: WeightAverage | None = None,
) -> tuple[list[EpochRecord], EpochSelector | LastIterate]:
    """Every epoch, then its record; with `average` the epoch is scored, checked and
    snapshotted with the averaged weights (what the run would return)."""
    dp = settings.dp
    selector: EpochSelector | LastIterate = (
        LastIterate() if selection == "last" else EpochSelector(target_epsilon, *eligible)
    )
    # the reservation already in the ledger stands for this run's steps: epsilon after each
    # epoch is the history before it plus the steps taken so far
    before = ledger.events[:-1] if dp is not None else ledger.events
    history: list[EpochRecord] = []
    bar = tqdm(range(1, epochs + 1), disable=not settings.progress, desc="epochs")
    for epoch in bar:
        started = time.perf_counter()
        train_loss = engine.train_epoch()
        with average.applied() if average is not None else nullcontext():
            record = epoch_record(
                engine,
                model,
                validation,
                settings,
                ledger,
                before,
                selector,
                epoch,
                train_loss,
                time.perf_counter() - started,
                selection_positive,
            )
        history.append(record)
        bar.set_postfix(val_auprc=record.val_auprc, eps=record.epsilon)
    return history, selector
