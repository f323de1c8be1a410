"""`model.init_from` (and a classifier checkpoint as `model.weights`) really loads: every tensor of
the loaded model equals the saved one, parameters and buffers, backbone and head. A checksum of
frozen tensors is not enough: with no policy applied it covers buffers only."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from common.config.schema import ModelConfig
from common.errors import WeightsError
from common.eval.records import save_model
from common.models.classifier import Classifier, build_classifier
from tests.unit.training.helpers import TINY_SWIN

CONFIG = ModelConfig(
    name="swin_tiny_patch4_window7_224",
    weights="none",
    head="mlp2",
    hidden=8,
    kwargs=TINY_SWIN,
    drop_path_rate=0.0,
)


def _trained_like(seed: int = 0) -> Classifier:
    """A classifier whose every floating tensor differs from a fresh build's."""
    torch.manual_seed(seed)
    model = build_classifier(CONFIG)
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.add_(torch.randn(value.shape, generator=generator, dtype=value.dtype))
    return model


def _fresh_build_differs(saved: dict[str, torch.Tensor]) -> None:
    torch.manual_seed(0)
    fresh = build_classifier(CONFIG).state_dict()
    floating = [k for k, v in saved.items() if v.is_floating_point()]
    assert floating and all(not torch.equal(fresh[k], saved[k]) for k in floating)


@pytest.mark.parametrize("prefix", ["", "_module."])
def test_init_from_loads_every_tensor(tmp_path: Path, prefix: str) -> None:
    source = _trained_like()
    saved = {k: v.detach().clone() for k, v in source.state_dict().items()}
    path = tmp_path / "model.pt"
    save_model(path, {f"{prefix}{k}": v for k, v in saved.items()})  # as run_cell writes it
    _fresh_build_differs(saved)
    torch.manual_seed(0)  # the same initial weights as the fresh build above
    loaded = build_classifier(replace(CONFIG, init_from=str(path)))
    state = loaded.state_dict()
    assert sorted(state) == sorted(saved)
    for name, value in saved.items():
        assert state[name].dtype == value.dtype and torch.equal(state[name], value), name
    for name, parameter in loaded.named_parameters():
        assert torch.equal(parameter.detach(), saved[name]), name
    for name, buffer in loaded.named_buffers():
        if name in saved:  # persistent buffers
            assert torch.equal(buffer, saved[name]), name


def test_classifier_checkpoint_as_backbone_weights_loads_every_backbone_tensor(
    tmp_path: Path,
) -> None:
    source = _trained_like()
    path = tmp_path / "model.pt"
    save_model(path, {k: v.detach().clone() for k, v in source.state_dict().items()})
    loaded = build_classifier(replace(CONFIG, weights=str(path)))
    saved = source.backbone.state_dict()
    state = loaded.backbone.state_dict()
    assert sorted(state) == sorted(saved)
    for name, value in saved.items():
        assert torch.equal(state[name], value), name
    # the head is new: a backbone checkpoint does not carry one over
    assert not torch.equal(loaded.head[0].weight, source.head[0].weight)


def test_init_from_is_strict(tmp_path: Path) -> None:
    state = _trained_like().state_dict()
    missing = tmp_path / "missing.pt"
    save_model(missing, {k: v for k, v in state.items() if k != "head.2.bias"})
    with pytest.raises(WeightsError, match="not a checkpoint of this classifier"):
        build_classifier(replace(CONFIG, init_from=str(missing)))
    other_head = tmp_path / "linear.pt"
    save_model(other_head, state)
    with pytest.raises(WeightsError):
        build_classifier(replace(CONFIG, head="linear", init_from=str(other_head)))
