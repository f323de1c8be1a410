"""Per-sample gradients of every DP path equal a loop of single-image backward passes."""

from __future__ import annotations

import copy

import pytest
import torch

from common.errors import ConfigError, UnsupportedDPModelError
from common.privacy.dp_sgd import clip_factors
from common.training.cached_engine import CachedEngine
from common.training.head_gradients import clipped_gradient_sum
from common.training.naive_engine import NaiveEngine
from tests.unit.training.helpers import (
    TINY_SWIN,
    loop_gradients,
    random_patches,
    settings,
    tiny_model,
)

INDICES = torch.tensor([0, 3, 4, 7])
FLIPS = torch.tensor([0, 1, 2, 3])


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-12, msg=name)


@pytest.mark.parametrize(
    ("kind", "policy", "train_mode"),
    [
        ("swin", "head", True),
        ("swin", "head_last", True),
        ("swin", "norm_head", True),
        ("bn_cnn", "head", False),
        ("bn_cnn", "head_last", False),
    ],
)
def test_naive_engine_per_sample_gradients_equal_loop(
    kind: str, policy: str, train_mode: bool
) -> None:
    model = tiny_model(kind, policy=policy)
    reference_model = copy.deepcopy(model)
    data = random_patches(8)
    engine = NaiveEngine(model, data, {}, settings(train_mode))
    images, labels = engine.batch(INDICES, FLIPS)
    expected = loop_gradients(reference_model, images, labels, train_mode)
    _assert_close(engine.per_sample_gradients(INDICES, FLIPS), expected)


@pytest.mark.parametrize("head", ["mlp2", "linear"])
@pytest.mark.parametrize("policy", ["head", "head_last"])
def test_cached_head_gradients_equal_loop(head: str, policy: str) -> None:
    model = tiny_model("swin", head=head, policy=policy)
    model.eval()
    data = random_patches(8)
    images = torch.randn(5, 3, 32, 32, dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0, 1])
    expected = loop_gradients(model, images, labels, train_mode=False)
    features = model.backbone(images).detach()

    def loss(logits):
        return torch.nn.functional.cross_entropy(
            logits, labels, label_smoothing=0.1, reduction="none"
        )

    clip = 0.05
    sums, norms, _ = clipped_gradient_sum(
        model.head, features, loss, lambda n: clip_factors(n, clip)
    )
    loop_norms = torch.cat([g.flatten(1) for g in expected.values()], 1).norm(dim=1)
    torch.testing.assert_close(norms, loop_norms, rtol=1e-6, atol=1e-12)
    factors = clip_factors(loop_norms, clip)
    names = {id(p): n for n, p in model.named_parameters()}
    got = {names[id(p)]: s for p, s in sums.items()}
    want = {n: torch.einsum("i,i...->...", factors, g) for n, g in expected.items()}
    _assert_close(got, want)
    assert data.pixels.shape[0] == 8


@pytest.mark.parametrize("kind", ["swin", "bn_cnn"])
@pytest.mark.parametrize("policy", ["head", "head_last"])
def test_cached_engine_equals_naive_engine(kind: str, policy: str) -> None:
    """Same inputs, flip variants and sampled indices, backbone in eval mode: same clipped sums."""
    model = tiny_model(kind, policy=policy)
    data = random_patches(8)
    dp = settings(train_mode=False, clip=0.1)
    naive = NaiveEngine(copy.deepcopy(model), data, {}, dp)
    cached = CachedEngine(copy.deepcopy(model), data, {}, dp)
    features, labels = cached.batch(INDICES, FLIPS)
    sums, _, _ = cached.dp_clipped_sum(features, labels)
    names = {id(p): n for n, p in cached.model.named_parameters()}
    _assert_close({names[id(p)]: s for p, s in sums.items()}, naive.dp_clipped_sum(INDICES, FLIPS))


def test_dp_refuses_window_attention_parameters() -> None:
    model = tiny_model("swin", policy="all")
    with pytest.raises(UnsupportedDPModelError, match="per-window"):
        NaiveEngine(model, random_patches(8), {}, settings(True))


def test_dp_refuses_trainable_batchnorm() -> None:
    model = tiny_model("bn_cnn", policy="norm_head")
    with pytest.raises(UnsupportedDPModelError, match="BatchNorm"):
        NaiveEngine(model, random_patches(8), {}, settings(False))


def test_batchnorm_backbone_never_in_train_mode() -> None:
    with pytest.raises(ConfigError, match="BatchNorm"):
        NaiveEngine(tiny_model("bn_cnn"), random_patches(8), {}, settings(True))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("library", "name"), [("timm", "swin_tiny_patch4_window7_224"), ("torchvision", "swin_t")]
)
def test_real_size_swin_per_sample_gradients(library: str, name: str) -> None:
    from common.config.schema import ModelConfig
    from common.models.classifier import build_classifier
    from common.models.policies import apply_trainable_policy

    torch.manual_seed(0)
    model = build_classifier(
        ModelConfig(library=library, name=name, weights="none", drop_path_rate=0.0)
    ).double()
    apply_trainable_policy(model, "head")
    reference_model = copy.deepcopy(model)
    data = random_patches(3, size=224)
    engine = NaiveEngine(model, data, {}, settings(True))
    idx, flips = torch.tensor([0, 1, 2]), torch.tensor([0, 3, 1])
    images, labels = engine.batch(idx, flips)
    expected = loop_gradients(reference_model, images, labels, train_mode=True)
    _assert_close(engine.per_sample_gradients(idx, flips), expected)


def test_generic_guard_catches_window_folding_that_names_do_not() -> None:
    """A layer that folds 4 windows into the batch dimension, under a class name the refusal
    list does not know, is still caught before any update."""
    from torch import nn

    from common.models.classifier import Classifier

    class FoldedWindows(nn.Module):  # 2x2 windows of the image become 4 "samples"
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(3 * 16 * 16, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b = x.shape[0]
            windows = x.unfold(2, 16, 16).unfold(3, 16, 16)  # b, 3, 2, 2, 16, 16
            windows = windows.permute(0, 2, 3, 1, 4, 5).reshape(b * 4, -1)
            return self.proj(windows).view(b, 4, 8).mean(1)

    model = Classifier(FoldedWindows(), nn.Linear(8, 2), 8).double()
    engine = NaiveEngine(model, random_patches(8), {}, settings(True, q=1.0))
    before = model.head.weight.detach().clone()
    with pytest.raises(UnsupportedDPModelError, match="rows for a batch"):
        engine.train_epoch()
    assert torch.equal(model.head.weight, before)


def test_dp_stochastic_depth_masks_come_from_private_randomness() -> None:
    """Under DP, a train-mode backbone's stochastic-depth masks are drawn from OS entropy, not
    from the run's seeded global RNG (which the server knows): two engines built from the same
    seed give other per-sample gradients for the same batch, and the global RNG is untouched."""
    from common.config.schema import ModelConfig
    from common.models.classifier import build_classifier
    from common.models.policies import apply_trainable_policy

    def engine() -> NaiveEngine:
        torch.manual_seed(0)
        config = ModelConfig(
            name="swin_tiny_patch4_window7_224",
            weights="none",
            head="linear",
            kwargs=TINY_SWIN,
            drop_path_rate=0.5,
        )
        model = build_classifier(config).double()
        apply_trainable_policy(model, "head")
        return NaiveEngine(model, random_patches(6), {}, settings(True))

    idx, flips = torch.arange(6), torch.zeros(6, dtype=torch.long)
    first, second = engine(), engine()
    torch.manual_seed(1)
    state = torch.get_rng_state()
    a = first.per_sample_gradients(idx, flips)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(1)
    b = second.per_sample_gradients(idx, flips)
    assert any(not torch.allclose(a[k], b[k]) for k in a)
