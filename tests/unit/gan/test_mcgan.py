from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.models.mcgan import Discriminator, Generator, MCGANShape
from common.privacy.dp_sgd import clip_factors
from common.training.gan_augment import augment, to_signed_unit, to_uint8
from common.training.gan_dp import PrivateDiscriminatorStep
from common.training.gan_trainer import GanTrainer, bce
from tests.unit.gan.helpers import tiny_config, trainer


def test_paper_shapes() -> None:
    shape = MCGANShape()
    g, d = Generator(shape), Discriminator(shape)
    z, y = torch.randn(3, 100), torch.tensor([0, 1, 1])
    images = g(z, y)
    assert images.shape == (3, 1, 128, 128) and images.abs().max() <= 1
    assert d(images, y).shape == (3,)
    assert [m.kernel_size for m in g.modules() if isinstance(m, torch.nn.ConvTranspose2d)] == [
        (4, 4)
    ] * 6
    assert [m.kernel_size for m in d.modules() if isinstance(m, torch.nn.Conv2d)] == [(6, 6)] * 6
    assert all(m.bias is None for m in g.modules() if isinstance(m, torch.nn.ConvTranspose2d))
    assert g.label[0].embedding_dim == 50 and d.label[1].out_features == 128 * 128
    widths = [m.out_channels for m in g.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert widths == [1024, 512, 256, 128, 64, 1]


def test_init_follows_dcgan() -> None:
    d = Discriminator(MCGANShape())
    conv = [m.weight for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert abs(float(torch.cat([w.flatten() for w in conv]).std()) - 0.02) < 0.002
    norms = [m.weight for m in d.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert abs(float(torch.cat(norms).mean()) - 1.0) < 0.01


def test_conditioning_changes_the_output_distribution(tmp_path: Path) -> None:
    """After brief training on classes that differ (bright vs dark disk), generated class means
    differ far more than two halves of one class do."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    disk = ((yy - 16) ** 2 + (xx - 16) ** 2 < 64).astype(float)
    labels = np.arange(64) % 2
    pixels = np.stack([60 + (130 if y else 20) * disk + rng.normal(0, 8, (32, 32)) for y in labels])
    t = GanTrainer(
        tiny_config(epochs=15),
        pixels.clip(0, 255).astype(np.uint8),
        labels,
        tmp_path,
        torch.device("cpu"),
    )
    for _ in range(15):
        t.train_epoch()
    g = t.generator_net.eval()
    with torch.no_grad():
        z = torch.randn(256, 16, generator=torch.Generator().manual_seed(1))
        malignant = g(z, torch.ones(256, dtype=torch.long)).flatten(1)
        benign = g(z, torch.zeros(256, dtype=torch.long)).flatten(1)
    between = (malignant.mean(0) - benign.mean(0)).norm()
    within = (malignant[:128].mean(0) - malignant[128:].mean(0)).norm()
    assert between > 3 * within
    centre = disk.astype(bool).flatten()
    assert malignant[:, centre].mean() > benign[:, centre].mean()  # the bright class is brighter


def test_real_targets_are_smoothed_in_range(tmp_path: Path) -> None:
    t = trainer(tmp_path)
    targets = torch.cat([t._real(t._step_draws(torch.arange(24)))[2] for _ in range(20)])
    assert 0.7 <= float(targets.min()) < 0.72 and 1.18 < float(targets.max()) <= 1.2
    logits = torch.randn(len(targets))
    assert torch.isfinite(bce(logits, targets)).all()  # the logits form accepts targets above 1
    with pytest.raises(RuntimeError):
        F.binary_cross_entropy(torch.sigmoid(logits), targets)


def test_uint8_conversion_clips_not_wraps() -> None:
    images = torch.tensor([-1.5, -1.0, 0.0, 1.0, 1.7]).view(5, 1, 1, 1)
    assert to_uint8(images).flatten().tolist() == [0, 0, 128, 255, 255]
    pixels = np.array([[[0, 255]]], dtype=np.uint8)
    assert to_uint8(to_signed_unit(pixels)).tolist() == pixels.tolist()


def test_augment_flips_and_zooms_out() -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.linspace(-1, 1, 16).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    out = augment(image, g, flip_probability=1.0, zoom=(1.0, 1.0))
    assert torch.allclose(out, image.flip(-1).flip(-2), atol=1e-5)
    zoomed = augment(image, g, 0.0, (0.9, 0.9))  # zoom out: content shrinks, borders reflect
    assert not torch.allclose(zoomed, image)


@pytest.mark.parametrize("dp", [False, True])
def test_resume_is_bit_identical(tmp_path: Path, dp: bool) -> None:
    straight = trainer(tmp_path / "a", dp=dp, epochs=3)
    straight.fit(progress=False)
    first = trainer(tmp_path / "b", dp=dp, epochs=3)
    first.train_epoch()
    first.save_checkpoint()  # then "killed": only the checkpoint survives
    resumed = trainer(tmp_path / "b", dp=dp, epochs=3)
    assert resumed.resume_latest() and resumed.epoch == 1
    resumed.fit(progress=False)
    for key in ("generator", "discriminator"):
        a, b = straight.state_dict()[key], resumed.state_dict()[key]
        assert all(torch.equal(a[k], b[k]) for k in a), key
    assert straight.history == resumed.history
    assert (tmp_path / "b" / "samples" / "epoch_00003.png").is_file()


def test_dp_discriminator_update_with_zero_noise() -> None:
    """Gradient = sum of clipped real per-sample gradients / E[batch] + unclipped fake gradient."""
    torch.manual_seed(0)
    d = Discriminator(
        MCGANShape(image_size=32, discriminator_width=8, discriminator_norm="group")
    ).double()
    reference = copy.deepcopy(d)
    real, real_y = torch.randn(5, 1, 32, 32, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1])
    targets = torch.tensor([0.8, 1.1, 0.9, 1.2, 0.7], dtype=torch.float64)
    fake, fake_y = torch.randn(4, 1, 32, 32, dtype=torch.float64), torch.tensor([1, 0, 0, 1])
    clip, expected_batch = 0.01, 6
    step = PrivateDiscriminatorStep(
        d,
        noise_multiplier=0.0,
        max_grad_norm=clip,
        expected_batch_size=expected_batch,
        generator=None,
    )
    got = step.gradients(
        lambda m: bce(m(real, real_y), targets), lambda m: bce(m(fake, fake_y), 0.0)
    )
    params = list(reference.parameters())
    per_sample = []
    for i in range(5):
        grads = torch.autograd.grad(
            bce(reference(real[i : i + 1], real_y[i : i + 1]), targets[i : i + 1]).sum(), params
        )
        per_sample.append(grads)
    norms = torch.stack([torch.cat([g.flatten() for g in grads]).norm() for grads in per_sample])
    factors = clip_factors(norms, clip)
    assert (factors < 1).all()  # clipping is really exercised
    fake_grads = torch.autograd.grad(bce(reference(fake, fake_y), 0.0).mean(), params)
    for k in range(len(params)):
        clipped = sum(factors[i] * per_sample[i][k] for i in range(5))
        torch.testing.assert_close(
            got[k], clipped / expected_batch + fake_grads[k], rtol=1e-6, atol=1e-12
        )


def test_a_resume_may_change_only_how_long_and_how_fast_it_trains() -> None:
    """A checkpoint records its gan.model, gan.train and seed: a resume with another batch,
    learning rate, architecture or seed would continue a different run under the same name."""
    import dataclasses

    from common.training.gan_checkpoint import changed_training
    from tests.unit.gan.helpers import tiny_config

    config = tiny_config()
    recorded = dataclasses.asdict(config)
    assert changed_training(recorded, config) == []
    longer = dataclasses.replace(
        config, train=dataclasses.replace(config.train, epochs=99, checkpoint_every=7)
    )
    assert changed_training(recorded, longer) == []
    other = dataclasses.replace(
        config, seed=config.seed + 1, train=dataclasses.replace(config.train, batch_size=3)
    )
    assert changed_training(recorded, other) == [
        f"train.batch_size: {config.train.batch_size!r} -> 3",
        f"seed: {config.seed!r} -> {config.seed + 1!r}",
    ]
    older = {"model": recorded["model"], "train": {"batch_size": 3}}  # keys it lacks: skipped
    assert changed_training(older, config) == [
        f"train.batch_size: 3 -> {config.train.batch_size!r}"
    ]
    assert changed_training(older, config, "gan.")[0].startswith("gan.train.batch_size: 3")


@pytest.mark.parametrize("dp", [False, True])
def test_a_resume_takes_the_configured_learning_rates_and_refuses_other_settings(
    tmp_path: Path, dp: bool
) -> None:
    """The divergence message says: lower the learning rates and resume. The optimiser state
    comes from the checkpoint, its learning rates from the config; a batch change is refused,
    unless the caller is a site reusing its own MCGAN (check_settings=False)."""
    from common.errors import ConfigError

    first = trainer(tmp_path, dp=dp)
    first.train_epoch()
    first.save_checkpoint()
    slower = trainer(tmp_path, dp=dp, lr_generator=1e-5, lr_discriminator=2e-5)
    assert slower.resume_latest() and slower.epoch == 1
    assert {g["lr"] for g in slower.opt_g.param_groups} == {1e-5}
    assert {g["lr"] for g in slower.opt_d.param_groups} == {2e-5}
    if not dp:  # under DP the plan (batch, steps) refuses it first, as before
        other = trainer(tmp_path, dp=dp, discriminator_steps=2)
        with pytest.raises(ConfigError, match="discriminator_steps: 1 -> 2"):
            other.resume_latest()
        assert trainer(tmp_path, dp=dp, discriminator_steps=2).resume_latest(check_settings=False)
