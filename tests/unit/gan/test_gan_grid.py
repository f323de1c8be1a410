"""Several MCGANs as one batched program (`GanGrid`) against the same GANs trained one by one
(CPU, tiny sizes, seeded): GANs of other seeds and of other data, step for step.

float64: losses, weights, running statistics and Adam states equal to 1e-12 over 30 steps (the
arithmetic is the same; only the order of sums differs). float32: the first 10 steps within the
tolerances of `test_gan_fast` (rounding carried on by Adam; see there).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from common.errors import ConfigError
from common.training.gan_generate import generate_patch_set
from common.training.gan_grid import GanGrid
from common.training.gan_trainer import GanTrainer
from tests.unit.gan.helpers import gan, max_difference
from tests.unit.gan.test_gan_fast import FLOAT32_LOSS_RTOL, FLOAT32_WEIGHT_ATOL, FLOAT64_TOL

gan_trainer = importlib.import_module("common.training.gan_trainer")
SPECS = ((3, 0), (4, 0), (5, 1))  # (seed, data seed): two seeds on one site's data, another site


def _gans(tmp: Path, name: str, **settings: object) -> list[GanTrainer]:
    return [
        gan(tmp / f"{name}{seed}", seed=seed, data_seed=data, **settings)  # type: ignore[arg-type]
        for seed, data in SPECS
    ]


def _adam_difference(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> float:
    first, second = a.state_dict()["state"], b.state_dict()["state"]
    assert first.keys() == second.keys()
    return max(
        float((first[i][k] - second[i][k]).abs().max())
        for i in first
        for k in ("exp_avg", "exp_avg_sq", "step")
    )


def test_batched_float64_equals_separate_gans_over_30_steps(tmp_path: Path) -> None:
    alone = _gans(tmp_path, "alone", float64=True, epochs=10)
    batched = _gans(tmp_path, "grid", float64=True, epochs=10, fast_loop=True)
    grid = GanGrid(batched)
    for _ in range(10):  # 3 steps per epoch
        for trainer in alone:
            trainer.train_epoch()
        grid.train_epoch()
        for a, b in zip(alone, batched, strict=True):
            assert max_difference(a, b) < FLOAT64_TOL
            assert _adam_difference(a.opt_g, b.opt_g) < FLOAT64_TOL
            assert _adam_difference(a.opt_d, b.opt_d) < FLOAT64_TOL
            assert torch.equal(a.rng.get_state(), b.rng.get_state())  # same draws, same order
    for a, b in zip(alone, batched, strict=True):
        assert [h["epoch"] for h in a.history] == [h["epoch"] for h in b.history]
        for key in ("d_loss", "g_loss"):
            expected = torch.tensor([h[key] for h in a.history])
            got = torch.tensor([h[key] for h in b.history])
            torch.testing.assert_close(got, expected, rtol=FLOAT64_TOL, atol=0)
    assert max_difference(alone[0], alone[1]) > 0.01  # the GANs really differ


def test_batched_float32_matches_the_first_10_steps(tmp_path: Path) -> None:
    alone = _gans(tmp_path, "alone", n=8, epochs=10)  # one step per epoch: a record per step
    batched = _gans(tmp_path, "grid", n=8, epochs=10, fast_loop=True, channels_last=True)
    grid = GanGrid(batched)
    for _ in range(10):
        for trainer in alone:
            trainer.train_epoch()
        grid.train_epoch()
        for a, b in zip(alone, batched, strict=True):
            assert max_difference(a, b) <= FLOAT32_WEIGHT_ATOL
    for a, b in zip(alone, batched, strict=True):
        for key in ("d_loss", "g_loss"):
            expected = torch.tensor([h[key] for h in a.history], dtype=torch.float64)
            got = torch.tensor([h[key] for h in b.history], dtype=torch.float64)
            torch.testing.assert_close(got, expected, rtol=FLOAT32_LOSS_RTOL, atol=0)


def test_batched_checkpoints_resume_exactly_and_generate(tmp_path: Path) -> None:
    straight = GanGrid(_gans(tmp_path, "straight", epochs=3, fast_loop=True))
    straight.fit(progress=False)
    first = GanGrid(_gans(tmp_path, "killed", epochs=3, fast_loop=True))
    first.train_epoch()
    for trainer in first.trainers:
        trainer.save_checkpoint()  # then "killed": only each GAN's checkpoint survives
    again = _gans(tmp_path, "killed", epochs=3, fast_loop=True)
    assert all(t.resume_latest() and t.epoch == 1 for t in again)
    last = GanGrid(again).fit(progress=False)
    for a, b in zip(straight.trainers, again, strict=True):
        assert max_difference(a, b) == 0.0 and a.history == b.history
        assert _adam_difference(a.opt_d, b.opt_d) == 0.0
    checkpoint = last[2]
    assert checkpoint is not None and checkpoint.parent == tmp_path / "killed5" / "checkpoints"
    generated = generate_patch_set(checkpoint, tmp_path / "gen", {1: 2, 0: 2})
    assert generated.labels == [1, 1, 0, 0]
    assert (tmp_path / "killed5" / "samples" / "epoch_00003.png").is_file()


def test_batched_refuses_dp_and_mismatched_gans(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="non-DP MCGANs only"):
        GanGrid([gan(tmp_path / "dp", dp=True)])
    with pytest.raises(ConfigError, match=r"gan\.train\.lr_generator differs"):
        GanGrid([gan(tmp_path / "a"), gan(tmp_path / "b", lr_generator=2e-4)])
    with pytest.raises(ConfigError, match="as many"):
        GanGrid([gan(tmp_path / "c"), gan(tmp_path / "d", n=16)])
    behind = gan(tmp_path / "e")
    ahead = gan(tmp_path / "f")
    ahead.train_epoch()
    with pytest.raises(ConfigError, match="same epoch"):
        GanGrid([behind, ahead])


def test_bf16_autocast_runs_through_both_paths_under_cpu_autocast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real runs refuse bf16 on a CPU, but the autocast plumbing (bf16 through the networks,
    ordinary and stacked, losses in fp32) is the CUDA one under CPU autocast: run it here, so a
    dtype error cannot first show on a lent GPU. bf16 keeps about 3 digits: losses within 5 %."""
    fp32 = _gans(tmp_path, "fp32", n=8, epochs=3, fast_loop=True, channels_last=True)
    monkeypatch.setattr(gan_trainer, "resolve_precision", lambda *args: "bf16")
    single = gan(tmp_path / "single", n=8, epochs=3, fast_loop=True, channels_last=True)
    batched = _gans(tmp_path, "bf16", n=8, epochs=3, fast_loop=True, channels_last=True)
    grid, reference = GanGrid(batched), GanGrid(fp32)
    for _ in range(3):
        single.train_epoch()
        grid.train_epoch()
        reference.train_epoch()
    assert single.precision == "bf16" and grid.precision == "bf16"
    for a, b in ((fp32[0], single), *zip(fp32, batched, strict=True)):
        for key in ("d_loss", "g_loss"):
            got = torch.tensor([h[key] for h in b.history], dtype=torch.float64)
            expected = torch.tensor([h[key] for h in a.history], dtype=torch.float64)
            torch.testing.assert_close(got, expected, rtol=0.05, atol=0)
    assert all(p.dtype == torch.float32 for p in single.generator_net.parameters())
