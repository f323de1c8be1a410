from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from common.config.schema import ModelConfig
from common.errors import WeightsError
from common.models.classifier import build_classifier
from common.models.policies import apply_trainable_policy, count_trainable, frozen_checksum

SWIN = {
    "timm": ModelConfig(library="timm", name="swin_tiny_patch4_window7_224", weights="none"),
    "torchvision": ModelConfig(library="torchvision", name="swin_t", weights="none"),
}
# PAPER.md: mlp2 head 296,066; linear head 1,538; all parameters 27,520,892
EXPECTED = {("mlp2", "head"): 296_066, ("linear", "head"): 1_538, ("linear", "all"): 27_520_892}


@pytest.mark.parametrize("library", sorted(SWIN))
@pytest.mark.parametrize(("head", "policy"), sorted(EXPECTED))
def test_swin_trainable_counts_match_paper(library: str, head: str, policy: str) -> None:
    config = SWIN[library]
    model = build_classifier(ModelConfig(**{**config.__dict__, "head": head}))
    names = apply_trainable_policy(model, policy)
    assert count_trainable(model) == EXPECTED[(head, policy)]
    assert names == [n for n, p in model.named_parameters() if p.requires_grad]
    assert model.num_features == 768


@pytest.mark.parametrize(("head", "count"), [("mlp2", 492_674), ("linear", 2_562)])
def test_effnet_counts(head: str, count: int) -> None:
    model = build_classifier(ModelConfig(name="efficientnet_lite0", weights="none", head=head))
    apply_trainable_policy(model, "head")
    assert count_trainable(model) == count


def test_head_last_trains_only_the_final_linear() -> None:
    model = build_classifier(ModelConfig(library="torchvision", name="swin_t", weights="none"))
    assert apply_trainable_policy(model, "head_last") == ["head.2.weight", "head.2.bias"]
    assert count_trainable(model) == 384 * 2 + 2


def test_mlp2_head_shape() -> None:
    model = build_classifier(ModelConfig(name="efficientnet_lite0", weights="none"))
    assert [type(m).__name__ for m in model.head] == ["Linear", "LeakyReLU", "Linear"]
    assert model.head[1].negative_slope == 0.2 and model.head[0].out_features == 384


def test_local_file_strict_load_drops_classifier_keys(tmp_path: Path) -> None:
    import timm

    source = timm.create_model("efficientnet_lite0", num_classes=1000)
    torch.nn.init.normal_(source.conv_stem.weight)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = build_classifier(ModelConfig(name="efficientnet_lite0", weights=str(path)))
    assert torch.equal(model.backbone.conv_stem.weight, source.conv_stem.weight)


def test_opacus_prefix_and_checkpoint_round_trip(tmp_path: Path) -> None:
    config = ModelConfig(name="efficientnet_lite0", weights="none", head="linear")
    model = build_classifier(config)
    path = tmp_path / "model.pt"
    torch.save({f"_module.{k}": v for k, v in model.state_dict().items()}, path)
    again = build_classifier(ModelConfig(**{**config.__dict__, "init_from": str(path)}))
    assert frozen_checksum(again) == frozen_checksum(model)


def test_wrong_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"nonsense": torch.zeros(2)}, str(path))
    with pytest.raises(WeightsError, match="do not fit"):
        build_classifier(ModelConfig(name="efficientnet_lite0", weights=str(path)))
    with pytest.raises(WeightsError, match="not found"):
        build_classifier(ModelConfig(name="efficientnet_lite0", weights=str(tmp_path / "none.pt")))


def test_imagenet_offline_says_how_to_pass_a_file() -> None:
    with pytest.raises(WeightsError, match=r"model\.weights=/path"):
        build_classifier(ModelConfig(library="torchvision", name="swin_t", weights="imagenet"))


def test_shared_effnet_weights_load(effnet_weights: Path) -> None:
    model = build_classifier(ModelConfig(name="efficientnet_lite0", weights=str(effnet_weights)))
    assert model.num_features == 1280
