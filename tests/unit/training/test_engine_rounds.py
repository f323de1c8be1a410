"""Engines are callable once per federated round: create, train, close, create again."""

from __future__ import annotations

import copy

import pytest
import torch

from common.privacy.ledger import PrivacyLedger
from common.training.cached_engine import CachedEngine
from common.training.engine import load_trainable, trainable_state
from common.training.fit import fit
from common.training.naive_engine import NaiveEngine
from tests.unit.training.helpers import loop_gradients, random_patches, settings, tiny_model

INDICES = torch.tensor([1, 2, 5])
FLIPS = torch.tensor([3, 0, 2])


def _assert_per_image(engine: NaiveEngine, model_copy: torch.nn.Module) -> None:
    images, labels = engine.batch(INDICES, FLIPS)
    expected = loop_gradients(model_copy, images, labels, train_mode=True)
    got = engine.per_sample_gradients(INDICES, FLIPS)
    assert sorted(got) == sorted(expected)
    for name in got:
        assert got[name].shape[0] == len(INDICES)  # one row per image, never per window
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-12)


def test_naive_engine_two_rounds_on_one_model() -> None:
    """Round 1: an engine, one epoch, close. Round 2 on the same model: a new engine works (no
    'Trying to add hooks twice') and its per-sample gradients are still per image."""
    model = tiny_model("swin", policy="head_last")
    data = random_patches(8)
    reference = copy.deepcopy(model)
    first = NaiveEngine(model, data, {}, settings(True))
    _assert_per_image(first, reference)
    first.train_epoch()
    first.close()
    after_round_one = trainable_state(model)
    reference = copy.deepcopy(model)  # after close(): no opacus hook is copied along
    second = NaiveEngine(model, data, {}, settings(True))
    _assert_per_image(second, reference)
    second.train_epoch()
    second.close()
    assert any(not torch.equal(after_round_one[k], v) for k, v in trainable_state(model).items())
    assert not hasattr(model, "autograd_grad_sample_hooks")


@pytest.mark.parametrize("policy", ["head", "head_last"])
def test_both_engines_share_trainable_keys(policy: str) -> None:
    model = tiny_model("swin", policy=policy)
    data = random_patches(8)
    naive = NaiveEngine(copy.deepcopy(model), data, {}, settings(False))
    cached = CachedEngine(copy.deepcopy(model), data, {}, settings(False))
    expected = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert sorted(naive.trainable_state()) == sorted(cached.trainable_state()) == expected
    state = {k: torch.full_like(v, 0.25) for k, v in naive.trainable_state().items()}
    for engine in (naive, cached):
        engine.load_trainable(state)
        assert all(torch.equal(engine.trainable_state()[k], state[k]) for k in state)
        engine.close()


def test_load_trainable_refuses_other_keys() -> None:
    from common.errors import ConfigError

    model = tiny_model("swin", policy="head")
    state = trainable_state(model)
    state["backbone.extra"] = torch.zeros(1)
    with pytest.raises(ConfigError, match="unexpected"):
        load_trainable(model, state)


@pytest.mark.parametrize("engine", ["naive", "cached"])
def test_fit_as_a_federated_round_keeps_the_last_iterate(engine: str) -> None:
    """No validation set, last-iterate selection, reserve then settle: one event per round."""
    model = tiny_model("swin", policy="head")
    data = random_patches(8)
    ledger = PrivacyLedger()
    for round_number in (1, 2):
        result = fit(
            model,
            engine,
            data,
            None,
            settings(engine == "naive"),
            epochs=2,
            ledger=ledger,
            selection="last",
            epsilon_cap=50.0,
            round_number=round_number,
        )
        assert result.best_epoch == 2 and result.mechanism_steps == result.steps == 4
    assert [(e.round, e.status, e.steps) for e in ledger.events] == [
        (1, "settled", 4),
        (2, "settled", 4),
    ]
