"""The trunk/tail cut of `model.trainable=last_stage`: the same features as the whole backbone,
and the policy trains exactly the tail and the head."""

from __future__ import annotations

import pytest
import timm
import torch

from common.config.schema import ModelConfig
from common.errors import ConfigError
from common.models.backbone_split import check_split, split_backbone
from common.models.classifier import build_classifier
from common.models.policies import trainable_parameter_names
from tests.unit.training.helpers import TINY_SWIN

CASES = [
    ("test_efficientnet", {}, 64, ("blocks.4", "conv_head", "bn2")),
    ("test_resnet", {}, 64, ("layer4",)),
    ("swin_tiny_patch4_window7_224", TINY_SWIN, 32, ("layers.1", "norm")),
]


@pytest.mark.parametrize(("name", "kwargs", "size", "tail"), CASES)
def test_tail_of_trunk_equals_the_backbone(
    name: str, kwargs: dict[str, object], size: int, tail: tuple[str, ...]
) -> None:
    torch.manual_seed(0)
    backbone = timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()
    split = split_backbone(backbone)
    assert split.tail_modules == tail
    images = torch.randn(3, 3, size, size)
    with torch.no_grad():
        expected = backbone(images)
        got = split.tail(split.trunk(images))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # the split shares the backbone's parameters: training the tail trains the backbone
    backbone_ids = {id(p) for p in backbone.parameters()}
    assert {id(p) for p in split.tail.parameters()} <= backbone_ids
    assert not {id(p) for p in split.tail.parameters()} & {id(p) for p in split.trunk.parameters()}


def test_last_stage_policy_trains_the_tail_and_the_head_only() -> None:
    model = build_classifier(ModelConfig(name="test_efficientnet", weights="none", head="linear"))
    names = trainable_parameter_names(model, "last_stage")
    split = split_backbone(model.backbone)
    tail = {f"backbone.{n}" for n, _ in model.backbone.named_parameters()} & {
        f"backbone.{m}.{n}" for m in split.tail_modules for n, _ in _named(model.backbone, m)
    }
    assert len(tail) == len(list(split.tail.parameters())) > 0
    assert set(names) == tail | {"head.weight", "head.bias"}


def _named(backbone: torch.nn.Module, module: str) -> list[tuple[str, torch.nn.Parameter]]:
    return list(backbone.get_submodule(module).named_parameters())


def test_a_look_alike_that_the_cut_does_not_reproduce_is_refused() -> None:
    backbone = timm.create_model("test_efficientnet", pretrained=False, num_classes=0).eval()
    split = split_backbone(backbone)
    images = torch.randn(2, 3, 64, 64)
    check_split(backbone, split, images)  # the real thing passes
    # same attributes, another forward: e.g. a scaled pooled output
    backbone.forward_head = lambda x, pre_logits=False: 2 * backbone.global_pool(x)
    with pytest.raises(ConfigError, match="does not reproduce its features"):
        check_split(backbone, split, images)


def test_an_architecture_it_cannot_cut_is_refused_with_the_alternative() -> None:
    backbone = timm.create_model("test_vit", pretrained=False, num_classes=0)
    with pytest.raises(ConfigError, match=r"model\.trainable=all with train\.engine=naive"):
        split_backbone(backbone)
