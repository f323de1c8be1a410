"""The grid engine reproduces the per-cell cached engine step for step in seeded mode: same
sampled indices, flips and noise per cell, weights equal to 1e-5, the same selection and
epsilon; cells that cannot share one program are refused."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from common.errors import ConfigError
from common.privacy.ledger import PrivacyLedger
from common.training.cached_engine import CachedEngine
from common.training.fit import fit
from common.training.grid_engine import GridCachedEngine
from common.training.grid_fit import GridCell, check_shared_backbone, fit_grid
from common.training.settings import DPSettings, EngineSettings
from tests.unit.training.helpers import random_patches, tiny_model

SIGMAS = (0.8, 1.6, 3.0)


def _settings(seed: int, sigma: float | None, q: float = 0.25) -> EngineSettings:
    dp = None if sigma is None else DPSettings(sigma, q, max_grad_norm=0.5, steps_per_epoch=4)
    return EngineSettings(
        batch_size=6,
        lr=5e-2,
        weight_decay=1e-2,
        label_smoothing=0.1,
        flips=True,
        seed=seed,
        device=torch.device("cpu"),
        backbone_train_mode=False,
        feature_batch_size=16,
        dp=dp,
        noise_seed=seed + 1,  # the marked research mode: per-cell streams reproducible
    )


def _models(count: int) -> list[torch.nn.Module]:
    base = tiny_model("swin")
    models = []
    for k in range(count):  # different starting heads, as different seeds give
        model = copy.deepcopy(base)
        torch.manual_seed(100 + k)
        for p in model.head.parameters():
            torch.nn.init.normal_(p, std=0.3)
        models.append(model)
    return models


@pytest.mark.parametrize("dp", [True, False])
def test_grid_steps_equal_per_cell_steps(dp: bool) -> None:
    train = random_patches(24)
    settings = [
        _settings(seed, sigma if dp else None)
        for seed, sigma in zip((1, 2, 3), SIGMAS, strict=True)
    ]
    alone = _models(3)
    for model, cell in zip(alone, settings, strict=True):
        engine = CachedEngine(model, train, {}, cell)
        for _ in range(3):
            engine.train_epoch()
        alone_steps = engine.steps_done
    together = _models(3)
    engines = [CachedEngine(together[0], train, {}, settings[0])]
    engines += [
        CachedEngine(m, train, {}, s, features=engines[0].features())
        for m, s in zip(together[1:], settings[1:], strict=True)
    ]
    grid = GridCachedEngine(engines)
    for _ in range(3):
        losses = grid.train_epoch()
    assert len(losses) == 3 and all(e.steps_done == alone_steps for e in engines)
    if dp:
        assert all(e.mechanism_steps() == alone_steps for e in engines)
    for a, b in zip(alone, together, strict=True):
        for (name, p), q in zip(a.head.named_parameters(), b.head.parameters(), strict=True):
            torch.testing.assert_close(q, p, rtol=0, atol=1e-5, msg=name)
        assert not torch.equal(a.head[0].weight, _models(1)[0].head[0].weight)  # it trained


def test_fit_grid_selects_and_charges_each_cell_as_fit_does() -> None:
    train, validation = random_patches(24), random_patches(12, seed=5)
    targets = (10.0, 10.0)
    cells_alone, cells_grid = [], []
    for k, (model_a, model_b) in enumerate(zip(_models(2), _models(2), strict=True)):
        s = _settings(10 + k, SIGMAS[k])
        result = fit(
            model_a,
            "cached",
            train,
            validation,
            s,
            epochs=4,
            ledger=PrivacyLedger(delta=1e-3),
            target_epsilon=targets[k],
            eligible=(0.0, 1.05),
        )
        cells_alone.append((model_a, result))
        cells_grid.append(
            GridCell(model_b, s, PrivacyLedger(delta=1e-3), targets[k], eligible=(0.0, 1.05))
        )
    results = fit_grid(cells_grid, train, validation, epochs=4)
    for (model_a, a), cell, b in zip(cells_alone, cells_grid, results, strict=True):
        assert b.best_epoch == a.best_epoch and b.steps == a.steps
        assert b.epsilon_spent == pytest.approx(a.epsilon_spent, rel=1e-12)
        assert [h.epsilon for h in b.history] == pytest.approx([h.epsilon for h in a.history])
        for ha, hb in zip(a.history, b.history, strict=True):
            assert hb.val_auprc == pytest.approx(ha.val_auprc, abs=1e-6)
        assert b.ledger.events == a.ledger.events
        for p, q in zip(model_a.head.parameters(), cell.model.head.parameters(), strict=True):
            torch.testing.assert_close(q, p, rtol=0, atol=1e-5)


def test_cells_that_cannot_share_a_program_are_refused() -> None:
    train = random_patches(24)
    first = _settings(1, 1.0)
    other_rate = dataclasses.replace(first, dp=dataclasses.replace(first.dp, sample_rate=0.5))  # type: ignore[arg-type]
    models = _models(2)
    base = CachedEngine(models[0], train, {}, first)
    with pytest.raises(ConfigError, match="sample rate"):
        GridCachedEngine(
            [base, CachedEngine(models[1], train, {}, other_rate, features=base.features())]
        )
    patient = dataclasses.replace(first, dp=dataclasses.replace(first.dp, unit="patient"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="patch unit"):
        GridCachedEngine(
            [base, CachedEngine(_models(1)[0], train, {}, patient, features=base.features())]
        )
    # recipe knobs the grid does not vectorise: the cells train one by one instead
    for knob in ({"optimizer": "sgd"}, {"augmentation_multiplicity": 2}, {"ema_decay": 0.9}):
        other = dataclasses.replace(first, **knob)
        with pytest.raises(ConfigError, match="cell by cell"):
            GridCachedEngine(
                [base, CachedEngine(_models(1)[0], train, {}, other, features=base.features())]
            )


def test_cells_with_different_backbones_never_share_features() -> None:
    """SynPre+RealFT cells start from each seed's own SynPre model (its backbone trained): one
    set of features would be wrong for all but one of them."""
    train = random_patches(24)
    models = _models(2)
    with torch.no_grad():
        next(models[1].backbone.parameters()).add_(0.01)
    cells = [
        GridCell(m, _settings(k, None), PrivacyLedger(delta=1e-3)) for k, m in enumerate(models)
    ]
    with pytest.raises(ConfigError, match="one frozen backbone"):
        fit_grid(cells, train, random_patches(8, seed=2), epochs=1)
    # nor when the grid is split over lanes: each part alone passes fit_grid's own check, so
    # the whole grid is checked before its features are computed once for all parts
    with pytest.raises(ConfigError, match="one frozen backbone"):
        check_shared_backbone(cells)
    check_shared_backbone(cells[:1])


def test_grid_key_separates_start_models_and_devices() -> None:
    from common.config.compose import compose_config
    from common.runs.grid import grid_key

    base = [
        "experiment=table1/synpre_realft_eps6",
        "model=efficientnet_lite0",
        "train.engine=cached",
    ]
    keys = {
        grid_key(compose_config([*base, f"model.init_from=/tmp/synpre{seed}/model.pt"]))
        for seed in (42, 43)
    }
    assert len(keys) == 2
    cpu = grid_key(compose_config([*base, "train.device=cpu"]))
    assert cpu != grid_key(compose_config([*base, "train.device=auto"]))
