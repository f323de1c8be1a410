"""The CPU SynPre path: `train.engine=cached` with `model.trainable=last_stage` trains the last
stage and the head on cached trunk maps, step for step as the naive engine does on images."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from common.config.schema import ModelConfig
from common.errors import ConfigError
from common.models.classifier import Classifier, build_classifier
from common.models.policies import apply_trainable_policy, frozen_checksum
from common.training.engines import make_engine
from common.training.naive_engine import NaiveEngine
from common.training.settings import DPSettings, EngineSettings
from common.training.tail_engine import TailEngine
from tests.unit.training.helpers import TINY_SWIN, random_patches

ARCHITECTURES = {
    "test_efficientnet": {},  # BatchNorm, NCHW maps
    "test_resnet": {},
    "swin_tiny_patch4_window7_224": TINY_SWIN,  # LayerNorm, NHWC maps
}


def _model(policy: str = "last_stage", name: str = "test_efficientnet") -> Classifier:
    torch.manual_seed(0)
    kwargs = ARCHITECTURES[name]
    config = ModelConfig(
        name=name, weights="none", head="linear", kwargs=kwargs, drop_path_rate=0.0
    )
    model = build_classifier(config).double()
    apply_trainable_policy(model, policy)
    return model


def _settings(cache_dir: str | None = None, dp: DPSettings | None = None) -> EngineSettings:
    return EngineSettings(
        batch_size=4,
        lr=1e-2,
        weight_decay=1e-8,
        label_smoothing=0.1,
        flips=True,
        seed=3,
        device=torch.device("cpu"),
        backbone_train_mode=False,
        feature_batch_size=5,
        feature_cache_dir=cache_dir,
        dp=dp,
    )


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_tail_engine_follows_the_naive_engine_step_for_step(tmp_path: Path, name: str) -> None:
    train, val = random_patches(10, size=32, seed=1), random_patches(6, size=32, seed=2)
    naive_model, tail_model = _model(name=name), _model(name=name)
    before = frozen_checksum(tail_model)
    naive = NaiveEngine(naive_model, train, {"validation": val}, _settings())
    tail = make_engine(
        "cached", tail_model, train, {"validation": val}, _settings(str(tmp_path / "maps"))
    )
    assert isinstance(tail, TailEngine)
    for _ in range(2):
        naive_loss, tail_loss = naive.train_epoch(), tail.train_epoch()
        assert tail_loss == pytest.approx(naive_loss, rel=1e-9)
    assert tail.steps_done == naive.steps_done == 6
    expected, got = naive.trainable_state(), tail.trainable_state()
    assert set(got) == set(expected) and any(k.startswith("backbone.") for k in got)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-9, atol=1e-10)
    assert any(not torch.equal(got[k], v) for k, v in _model().state_dict().items() if k in got), (
        "the tail trained"
    )
    naive_scores, naive_loss = naive.predict("validation")
    tail_scores, tail_loss = tail.predict("validation")
    torch.testing.assert_close(torch.as_tensor(tail_scores), torch.as_tensor(naive_scores))
    assert tail_loss == pytest.approx(naive_loss, rel=1e-9)
    assert frozen_checksum(tail_model) == before  # the trunk and every buffer unchanged


def test_trunk_maps_come_from_the_cache_the_second_time(tmp_path: Path) -> None:
    train = random_patches(8, size=32, seed=1)
    first = TailEngine(_model(), train, {}, _settings(str(tmp_path)))
    shards = sorted(tmp_path.rglob("shard-*.pt"))
    assert shards
    stamp = [s.stat().st_mtime_ns for s in shards]
    second = TailEngine(_model(), train, {}, _settings(str(tmp_path)))
    assert sorted(tmp_path.rglob("shard-*.pt")) == shards
    assert [s.stat().st_mtime_ns for s in shards] == stamp
    torch.testing.assert_close(second.train_maps, first.train_maps)


def test_another_trunk_or_the_pooled_features_never_share_the_maps_bank(tmp_path: Path) -> None:
    train = random_patches(8, size=32, seed=1)
    TailEngine(_model(), train, {}, _settings(str(tmp_path)))
    banks = set(tmp_path.glob("bank-*"))
    changed = _model()
    with torch.no_grad():  # a trunk weight the tail does not hold
        changed.backbone.conv_stem.weight.add_(0.01)
    TailEngine(changed, train, {}, _settings(str(tmp_path)))
    after_change = set(tmp_path.glob("bank-*"))
    assert len(after_change) == len(banks) + 1
    make_engine("cached", _model("head"), train, {}, _settings(str(tmp_path)))
    assert len(set(tmp_path.glob("bank-*"))) == len(after_change) + 1


def test_dp_and_other_policies_are_refused() -> None:
    train = random_patches(8, size=32)
    dp = DPSettings(noise_multiplier=1.0, sample_rate=0.5, max_grad_norm=1.0, steps_per_epoch=2)
    with pytest.raises(ConfigError, match=r"no per-sample clipping"):
        TailEngine(_model(), train, {}, _settings(dp=dp))
    for policy in ("all", "norm_head"):  # CachedEngine's own refusal, not the tail's
        with pytest.raises(ConfigError, match=r"needs a frozen backbone.*train\.engine=naive"):
            make_engine("cached", _model(policy), train, {}, _settings())
    frozen = copy.deepcopy(_model("head"))
    assert not isinstance(make_engine("cached", frozen, train, {}, _settings()), TailEngine)
