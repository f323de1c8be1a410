"""The eligibility window of epoch selection, edges exactly, and a DP run that honours it.

Under DP only epochs with spent epsilon in (low, high] x target may be selected (defaults
(0.75, 1.05]): at target 6 that is (4.5, 6.3].
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import replace

import pytest
import torch

from common.privacy.ledger import LedgerEvent, PrivacyLedger, epsilon_of
from common.training.fit import fit
from common.training.selection import EpochRecord, EpochSelector
from common.training.settings import DPSettings
from tests.unit.training.helpers import random_patches, settings, tiny_model

fit_module = importlib.import_module("common.training.fit")


@pytest.mark.parametrize(
    ("epsilon", "eligible"),
    [(4.5, False), (4.4999, False), (4.5001, True), (6.0, True), (6.3, True), (6.3001, False)],
)
def test_window_edges_at_target_6(epsilon: float, eligible: bool) -> None:
    selector = EpochSelector(target_epsilon=6.0, low=0.75, high=1.05)
    assert selector.eligible(epsilon) is eligible
    record = EpochRecord(1, None, 0.1, 0.9, epsilon, selector.eligible(epsilon))
    assert selector.offer(record, lambda: {"w": torch.zeros(1)}) is eligible
    assert (selector.best is not None) is eligible


def test_default_window_is_the_documented_one() -> None:
    selector = EpochSelector(target_epsilon=6.0)
    assert (selector.low, selector.high) == (0.75, 1.05)
    assert not selector.eligible(4.5) and selector.eligible(6.3) and not selector.eligible(6.3001)


def test_dp_run_selects_an_epoch_inside_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Four DP epochs; the target is the epsilon after epoch 3, so epoch 1 spends < 0.75 x target
    and epoch 4 > 1.05 x target. Validation scores favour epochs 1 and 4: a selector that
    ignored the window would pick one of them."""
    dp = DPSettings(noise_multiplier=0.8, sample_rate=0.5, max_grad_norm=1.0, steps_per_epoch=2)
    run_settings = replace(settings(False), dp=dp)

    def spent(epoch: int) -> float:
        event = LedgerEvent(noise_multiplier=0.8, sample_rate=0.5, steps=2 * epoch)
        return epsilon_of([event], 1e-4)

    target = spent(3)
    assert spent(1) <= 0.75 * target < spent(2) and spent(4) > 1.05 * target
    scores: Iterator[float] = iter([0.99, 0.5, 0.6, 0.98])
    monkeypatch.setattr(fit_module, "auprc", lambda *args: next(scores))
    model = tiny_model("swin")
    snapshots: list[dict[str, torch.Tensor]] = []
    original_offer = EpochSelector.offer

    def offer(self: EpochSelector, record: EpochRecord, state: object) -> bool:
        snapshots.append({k: v.clone() for k, v in state().items()})  # type: ignore[operator]
        return original_offer(self, record, state)  # type: ignore[arg-type]

    monkeypatch.setattr(EpochSelector, "offer", offer)
    result = fit(
        model,
        "cached",
        random_patches(8),
        random_patches(8, seed=1),
        run_settings,
        epochs=4,
        ledger=PrivacyLedger(),
        target_epsilon=target,
        epsilon_cap=spent(4) + 1.0,
    )
    epsilons = [h.epsilon for h in result.history]
    assert epsilons == pytest.approx([spent(e) for e in range(1, 5)])
    assert [h.eligible for h in result.history] == [False, True, True, False]
    assert result.best_epoch == 3
    selected = result.history[2]
    assert selected.epsilon is not None and 0.75 * target < selected.epsilon <= 1.05 * target
    # the model holds the selected epoch's weights, not the last epoch's
    state = model.state_dict()
    for name, value in snapshots[2].items():
        assert torch.equal(state[name], value), name
    assert any(not torch.equal(state[k], v) for k, v in snapshots[3].items())
    assert result.epsilon_spent == pytest.approx(spent(4))
