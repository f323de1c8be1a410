"""Recipe knobs: weight averaging of the iterates, per-image feature normalisation, flip
averaging at prediction, the optimiser choice; and the refusals of impossible settings."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from common.config.schema import ModelConfig, TrainConfig
from common.data.images import apply_flips, to_model_input
from common.errors import ConfigError
from common.eval.predict import predict_probabilities
from common.models.classifier import L2Normalize
from common.privacy.ledger import PrivacyLedger
from common.training.cached_engine import CachedEngine
from common.training.fit import fit
from common.training.naive_engine import NaiveEngine
from common.training.settings import make_optimizer
from common.training.weight_average import WeightAverage
from tests.unit.training.helpers import random_patches, settings, tiny_model


def test_weight_average_follows_the_warmed_up_ema_rule() -> None:
    weight = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    average = WeightAverage([weight], 0.9, optimizer)
    expected = torch.zeros(3)
    for t in range(1, 40):
        weight.grad = -torch.ones(3)  # the iterate moves by +1 every step
        optimizer.step()
        decay = min(0.9, (1 + t) / (10 + t))
        expected = decay * expected + (1 - decay) * weight.detach()
    torch.testing.assert_close(average.averages[0], expected)
    with average.applied():
        torch.testing.assert_close(weight.detach(), expected)
    assert float(weight.detach()[0]) == 39.0  # the iterate is back after the block
    average.remove()
    optimizer.step()
    torch.testing.assert_close(average.averages[0], expected)  # no more updates


def _fit(ema_decay: float | None) -> dict[str, torch.Tensor]:
    model = tiny_model("swin")
    data = random_patches(16)
    plain = dataclasses.replace(settings(train_mode=False), dp=None, ema_decay=ema_decay)
    fit(
        model,
        "cached",
        data,
        None,
        plain,
        epochs=4,
        ledger=PrivacyLedger(),
        selection="last",
    )
    return {n: p.detach().clone() for n, p in model.head.named_parameters()}


def test_fit_returns_the_averaged_weights() -> None:
    last = _fit(None)
    averaged = _fit(0.99)
    almost_last = _fit(1e-9)  # an average that forgets at once is the last iterate
    for name, value in last.items():
        torch.testing.assert_close(almost_last[name], value)
        assert not torch.allclose(averaged[name], value)


def test_flip_averaged_l2_predictions_agree_across_paths() -> None:
    model = tiny_model("swin")
    model.feature_norm = L2Normalize()
    model.flip_averaging = True
    train, test = random_patches(6), random_patches(5, seed=1)
    config = settings(train_mode=False)
    cached = CachedEngine(copy.deepcopy(model), train, {"test": test}, config)
    naive = NaiveEngine(copy.deepcopy(model), train, {"test": test}, config)
    by_cached, loss_cached = cached.predict("test")
    by_naive, loss_naive = naive.predict("test")
    direct = predict_probabilities(model, test, torch.device("cpu"))
    images = to_model_input(torch.as_tensor(test.pixels)).double()
    with torch.no_grad():
        manual = torch.stack(
            [
                torch.softmax(model(apply_flips(images, torch.full((5,), v))), 1)[:, 1]
                for v in range(4)
            ]
        ).mean(0)
        features = model.backbone(images)
        torch.testing.assert_close(
            model.head_logits(features), model.head(features / features.norm(dim=1, keepdim=True))
        )
    for got in (by_cached, by_naive, direct):
        torch.testing.assert_close(torch.as_tensor(got, dtype=manual.dtype), manual)
    assert loss_cached == pytest.approx(loss_naive, rel=1e-6)
    # without flip averaging the identity view alone is scored
    model.flip_averaging = False
    alone = predict_probabilities(model, test, torch.device("cpu"))
    assert not torch.allclose(torch.as_tensor(alone, dtype=manual.dtype), manual)


def test_sgd_with_momentum_is_the_other_optimiser() -> None:
    parameter = torch.nn.Parameter(torch.zeros(2))
    chosen = dataclasses.replace(settings(False), optimizer="sgd", momentum=0.5, lr=0.1)
    optimizer = make_optimizer([parameter], chosen)
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["momentum"] == 0.5
    with pytest.raises(ConfigError, match="adamw or sgd"):
        make_optimizer([parameter], dataclasses.replace(chosen, optimizer="lamb"))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TrainConfig(augmentation_multiplicity=4, flips=False), "needs train.flips=true"),
        (lambda: TrainConfig(augmentation_multiplicity=5), "1 to 4"),
        (lambda: TrainConfig(ema_decay=1.0), "train.ema_decay=1.0"),
        (lambda: TrainConfig(optimizer="adam"), "train.optimizer"),
        (lambda: ModelConfig(feature_norm="zscore"), "model.feature_norm"),
    ],
)
def test_impossible_recipe_settings_are_config_errors(make, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


def test_multi_stage_features_are_pooled_stage_outputs_beside_the_final_ones() -> None:
    from common.models.classifier import build_classifier
    from common.training.features import backbone_checksum
    from tests.unit.training.helpers import TINY_SWIN

    def build(stages: list[int]):
        config = ModelConfig(weights="none", kwargs=TINY_SWIN, feature_stages=stages)
        torch.manual_seed(0)
        return build_classifier(config).eval()

    plain, staged = build([]), build([0, -1])
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        final, maps = plain.backbone.forward_intermediates(images, indices=[0, 1])
        want = torch.cat(
            [maps[0].mean((2, 3)), maps[1].mean((2, 3)), plain.backbone.forward_head(final, True)],
            1,
        )
        got = staged.backbone(images)
    torch.testing.assert_close(got, want)
    assert staged.num_features == want.shape[1] == 16 + 32 + 32
    # the feature cache tells stage sets apart (same weights, other features)
    assert backbone_checksum(staged.backbone) != backbone_checksum(build([1]).backbone)
    with pytest.raises(ConfigError, match="frozen backbone"):
        ModelConfig(feature_stages=[-1], trainable="all")
    with pytest.raises(ConfigError, match="cannot give them"):
        build([7])


def test_rms_blocks_scales_each_feature_block_by_its_own_root_mean_square() -> None:
    """Each pooled stage and the final features get mean square 1 per coordinate, whatever
    their raw scale, each image on its own (no statistic across images)."""
    from common.models.classifier import build_classifier
    from tests.unit.training.helpers import TINY_SWIN

    config = ModelConfig(
        weights="none", kwargs=TINY_SWIN, feature_stages=[-1, 0], feature_norm="rms_blocks"
    )
    model = build_classifier(config).eval()
    assert model.feature_norm.widths == [16, 32, 32]  # the stages' order in the features
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.backbone(images)
        _, maps = model.backbone.model.forward_intermediates(images, indices=[0, 1])
    torch.testing.assert_close(features[:, :16], maps[0].mean((2, 3)))  # stage 0 comes first
    torch.testing.assert_close(features[:, 16:48], maps[1].mean((2, 3)))
    raw = torch.randn(3, 80) * torch.cat([torch.full((16,), 25.0), torch.full((64,), 0.5)])
    raw[0] *= 7.0  # one image's scale does not touch another's
    scaled = model.feature_norm(raw)
    for block in torch.split(scaled, [16, 32, 32], dim=1):
        torch.testing.assert_close(block.pow(2).mean(1), torch.ones(3))
    torch.testing.assert_close(model.feature_norm(raw[1:]), scaled[1:])
    want = raw[:, 16:48] / raw[:, 16:48].pow(2).mean(1, keepdim=True).sqrt()
    torch.testing.assert_close(scaled[:, 16:48], want)
    with pytest.raises(ConfigError, match="widths"):
        from common.models.classifier import build_feature_norm

        build_feature_norm("rms_blocks")


def test_a_checkpoint_keeps_its_feature_normalisation(tmp_path) -> None:
    """A head trained on raw features must not load silently into an l2 model (or back)."""
    from common.errors import WeightsError
    from common.models.classifier import build_classifier
    from common.models.weights import load_classifier_checkpoint
    from tests.unit.training.helpers import TINY_SWIN

    def build(norm: str):
        return build_classifier(ModelConfig(weights="none", kwargs=TINY_SWIN, feature_norm=norm))

    for saved, loaded in (
        ("none", "l2"),
        ("l2", "none"),
        ("rms_blocks", "l2"),
        ("none", "rms_blocks"),
    ):
        path = tmp_path / f"{saved}.pt"
        torch.save(build(saved).state_dict(), path)
        with pytest.raises(WeightsError, match="feature_norm"):
            load_classifier_checkpoint(build(loaded), path)
        load_classifier_checkpoint(build(saved), path)  # the same setting loads


def test_the_feature_cache_tells_apart_backbones_that_differ_in_options_not_weights() -> None:
    """A timm option such as global_pool changes the features but no weight: the cache key
    holds the architecture too, so max-pooled features are never served avg-pooled ones."""
    from common.models.classifier import build_classifier
    from common.training.features import backbone_checksum

    def build(pool: str):
        torch.manual_seed(0)
        config = ModelConfig(
            name="efficientnet_lite0", weights="none", kwargs={"global_pool": pool}
        )
        return build_classifier(config).backbone

    avg, again, peak = build("avg"), build("avg"), build("max")
    assert backbone_checksum(avg) == backbone_checksum(again)
    assert backbone_checksum(avg) != backbone_checksum(peak)
