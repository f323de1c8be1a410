"""One training run: given weights and a privacy ledger, train local epochs, append the spend.

Epsilon always comes from the whole ledger plus the steps taken so far, so the same function
serves a single-node run and one federated round.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from common.data.images import LoadedPatches
from common.errors import PrivacyError
from common.eval.metrics import auprc
from common.models.classifier import Classifier
from common.models.policies import frozen_checksum
from common.privacy.ledger import LedgerEvent, PrivacyLedger
from common.training.cached_engine import CachedEngine
from common.training.naive_engine import NaiveEngine
from common.training.selection import EpochRecord, EpochSelector
from common.training.settings import EngineSettings

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    best_epoch: int | None
    history: list[EpochRecord]
    steps: int
    epsilon_spent: float | None
    selection_note: str
    frozen_checksum_before: str
    frozen_checksum_after: str
    accountant_steps: int | None = None
    ledger: PrivacyLedger = field(default_factory=PrivacyLedger)


def make_engine(
    name: str,
    model: Classifier,
    train: LoadedPatches,
    eval_sets: dict[str, LoadedPatches],
    settings: EngineSettings,
) -> CachedEngine | NaiveEngine:
    engine_class = CachedEngine if name == "cached" else NaiveEngine
    return engine_class(model, train, eval_sets, settings)


def fit(
    model: Classifier,
    engine_name: str,
    train: LoadedPatches,
    validation: LoadedPatches,
    settings: EngineSettings,
    *,
    epochs: int,
    ledger: PrivacyLedger,
    selection_positive: str,
    target_epsilon: float | None = None,
    epsilon_cap: float | None = None,
    eligible: tuple[float, float] = (0.75, 1.05),
) -> FitResult:
    """Train, select the best eligible epoch, load its weights into `model`, charge the ledger.

    Under DP the budget is checked before any step: the ledger plus all planned steps must stay
    within `epsilon_cap` (default: the target).
    """
    dp = settings.dp
    if dp is not None:
        planned = LedgerEvent(dp.noise_multiplier, dp.sample_rate, dp.steps_per_epoch * epochs)
        cap = epsilon_cap if epsilon_cap is not None else target_epsilon
        projected = ledger.epsilon(extra=planned)
        if cap is not None and projected > cap * (1 + 1e-9):
            raise PrivacyError(
                f"this run would bring epsilon to {projected:.4f} > cap {cap}; refusing to start "
                "(lower the epochs or raise the noise multiplier)"
            )
    checksum_before = frozen_checksum(model)
    engine = make_engine(engine_name, model, train, {"validation": validation}, settings)
    selector = EpochSelector(target_epsilon if dp else None, *eligible)
    val_labels = validation.labels.numpy()
    history: list[EpochRecord] = []
    bar = tqdm(range(1, epochs + 1), disable=not settings.progress, desc="epochs")
    for epoch in bar:
        started = time.perf_counter()
        train_loss = engine.train_epoch()
        seconds = time.perf_counter() - started
        scores, val_loss = engine.predict("validation")
        score = (
            auprc(val_labels, scores, selection_positive)
            if len(np.unique(val_labels)) > 1
            else float("nan")
        )
        epsilon = None
        if dp is not None:
            spent = LedgerEvent(dp.noise_multiplier, dp.sample_rate, engine.steps_done)
            epsilon = ledger.epsilon(extra=spent)
        # under DP the training loss is an un-noised statistic of private images: not recorded
        logged_loss = train_loss if dp is None else None
        record = EpochRecord(
            epoch, logged_loss, val_loss, score, epsilon, selector.eligible(epsilon), seconds
        )
        history.append(record)
        selector.offer(record, engine.model_state)
        bar.set_postfix(loss=f"{train_loss:.3f}", val_auprc=f"{score:.3f}", eps=epsilon)
    note = "best eligible epoch by validation AUPRC"
    if selector.best is None:
        note = "no eligible epoch; the last epoch is used"
        selector.best_state = engine.model_state()
    model.load_state_dict({**model.state_dict(), **selector.best_state})
    if dp is not None:
        ledger.append(LedgerEvent(dp.noise_multiplier, dp.sample_rate, engine.steps_done))
    checksum_after = frozen_checksum(model)
    accountant_steps = engine.accountant_steps() if isinstance(engine, NaiveEngine) else None
    return FitResult(
        best_epoch=selector.best.epoch if selector.best else None,
        history=history,
        steps=engine.steps_done,
        epsilon_spent=ledger.epsilon() if dp is not None else None,
        selection_note=note,
        frozen_checksum_before=checksum_before,
        frozen_checksum_after=checksum_after,
        accountant_steps=accountant_steps,
        ledger=ledger,
    )
