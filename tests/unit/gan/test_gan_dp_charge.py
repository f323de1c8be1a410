"""The DP-MCGAN's privacy charge, offline on the tiny GAN: the discriminator takes exactly the
planned noisy steps, the ledger charges them (epsilon in (0.75, 1] x target), and a resume that
would change the charge (other epochs, DP turned off or on) is refused."""

from __future__ import annotations

import dataclasses
import importlib
import math
from functools import cache
from pathlib import Path

import pytest
import torch
from opacus.accountants import RDPAccountant

from common.errors import PrivacyError
from common.privacy.plan import PrivacyPlan, plan_privacy
from tests.unit.gan.helpers import tiny_config, tiny_data, trainer

gan_trainer = importlib.import_module("common.training.gan_trainer")


@cache
def _plan_once(**settings: object) -> PrivacyPlan:
    return plan_privacy(**settings)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _plans_computed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same plan (opacus' noise search, seconds on a CPU) is computed once per file."""
    monkeypatch.setattr(gan_trainer, "plan_privacy", _plan_once)


def test_dp_gan_charges_exactly_the_planned_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gan = trainer(tmp_path, dp=True, epochs=2)
    plan, ledger, private = gan.plan, gan.ledger, gan.private
    assert plan is not None and ledger is not None and private is not None
    assert plan.noise_multiplier is not None
    n, batch = len(gan.labels), gan.config.train.batch_size
    assert plan.sample_rate == 1 / math.ceil(n / batch)
    assert plan.steps == plan.steps_per_epoch * 2 == math.ceil(n / batch) * 2
    steps_taken: list[int] = []
    original = private.gradients

    def counted(*args: object) -> list[torch.Tensor]:
        steps_taken.append(1)
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(private, "gradients", counted)
    gan.fit(progress=False)
    target = gan.config.dp.target_epsilon
    assert len(steps_taken) == plan.steps == private.mechanism.invocations
    assert [(e.kind, e.steps, e.noise_multiplier, e.sample_rate) for e in ledger.events] == [
        ("dp-gan", plan.steps, plan.noise_multiplier, plan.sample_rate)
    ]
    epsilon = gan.epsilon()
    assert epsilon is not None and 0.75 * target < epsilon <= target
    accountant = RDPAccountant()
    accountant.history = [(plan.noise_multiplier, plan.sample_rate, plan.steps)]
    assert epsilon == pytest.approx(accountant.get_epsilon(gan.config.dp.delta), rel=1e-9)
    assert [h["epsilon"] for h in gan.history] == sorted(h["epsilon"] for h in gan.history)
    # the checkpoint carries the same ledger and plan
    saved = torch.load(gan.checkpoint_path(2), weights_only=False)
    assert saved["ledger"] == ledger.state_dict() and saved["plan"] == plan.to_dict()


def _refused(tmp_path: Path, *, dp: bool, epochs: int) -> None:
    again = trainer(tmp_path, dp=dp, epochs=epochs)
    before = {k: v.clone() for k, v in again.discriminator.state_dict().items()}
    with pytest.raises(PrivacyError):
        again.resume_latest()
    assert again.epoch == 0
    after = again.discriminator.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_dp_gan_resume_with_other_epochs_or_without_dp_is_refused(tmp_path: Path) -> None:
    first = trainer(tmp_path, dp=True, epochs=2)
    first.train_epoch()
    first.save_checkpoint()
    _refused(tmp_path, dp=True, epochs=3)  # another plan: another sigma for the same budget
    _refused(tmp_path, dp=False, epochs=2)  # DP turned off: the steps would go uncharged
    same = trainer(tmp_path, dp=True, epochs=2)  # control: the original settings resume
    assert same.resume_latest() and same.epoch == 1 and same.ledger is not None
    assert same.ledger.events[0].steps == same.plan.steps_per_epoch  # type: ignore[union-attr]


def test_non_dp_gan_resume_with_dp_is_refused(tmp_path: Path) -> None:
    first = trainer(tmp_path, dp=False, epochs=2)
    first.train_epoch()
    first.save_checkpoint()
    _refused(tmp_path, dp=True, epochs=2)


def test_dp_gan_refuses_delta_at_or_above_one_over_n(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gan.dp.delta against the N=24 patches the discriminator samples, before any plan."""
    config = tiny_config(dp=True)
    config = dataclasses.replace(config, dp=dataclasses.replace(config.dp, delta=0.05))
    pixels, labels = tiny_data()
    planned: list[object] = []
    monkeypatch.setattr(gan_trainer, "plan_privacy", lambda **kw: planned.append(kw))
    with pytest.raises(PrivacyError, match=r"^dp\.delta=0\.05 >= 1/N with N=24 patches"):
        gan_trainer.GanTrainer(config, pixels, labels, tmp_path, torch.device("cpu"))
    assert not planned and not any(tmp_path.iterdir())
