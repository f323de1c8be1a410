"""Hardening (issue 8): NaN/inf stops a run with a message, and nothing is half-written.

`fit` looks at the training loss only without DP (under DP the loss is a private statistic):
there, and in both modes, the trainable weights after each epoch are checked. The MCGAN
trainer checks its losses (under DP only the generator's) and both networks' weights. The
error is a MammoflError: the CLI answers with exit code 2 and one line, no traceback.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from common.errors import MammoflError, NonFiniteError
from common.privacy.ledger import PrivacyLedger
from common.training.cached_engine import CachedEngine
from common.training.fit import fit
from simulations.cli import main
from tests.unit.gan.helpers import trainer
from tests.unit.training.helpers import random_patches, settings, tiny_model

EPOCHS = 3


def poison(
    monkeypatch: pytest.MonkeyPatch, epoch: int, *, loss: bool = False, weights: bool = False
) -> None:
    """From `epoch` on, the engine reports a NaN loss and/or its head weights turn NaN."""
    original: Callable[[CachedEngine], float] = CachedEngine.train_epoch
    seen = {"epochs": 0}

    def train_epoch(self: CachedEngine) -> float:
        value = original(self)
        seen["epochs"] += 1
        if seen["epochs"] >= epoch:
            if weights:
                with torch.no_grad():
                    self.parameters[0].view(-1)[0] = float("inf")
            if loss:
                return float("nan")
        return value

    monkeypatch.setattr(CachedEngine, "train_epoch", train_epoch)


def run_fit(dp: bool, persisted: list[dict[str, Any]] | None = None) -> PrivacyLedger:
    engine_settings = settings(False)
    if not dp:
        engine_settings = dataclasses.replace(engine_settings, dp=None)
    ledger = PrivacyLedger(delta=1e-3)
    fit(
        tiny_model("swin"),
        "cached",
        random_patches(8),
        None,
        engine_settings,
        epochs=EPOCHS,
        ledger=ledger,
        selection="last",
        epsilon_cap=1000.0 if dp else None,
        persist=(lambda led: persisted.append(led.state_dict())) if persisted is not None else None,
    )
    return ledger


def test_nan_loss_stops_a_run_without_dp(monkeypatch: pytest.MonkeyPatch) -> None:
    poison(monkeypatch, epoch=2, loss=True)
    with pytest.raises(NonFiniteError, match=r"epoch 2: the training loss is nan.*train\.lr"):
        run_fit(dp=False)


def test_inf_weights_stop_a_run_without_dp(monkeypatch: pytest.MonkeyPatch) -> None:
    poison(monkeypatch, epoch=1, weights=True)
    with pytest.raises(NonFiniteError, match=r"epoch 1: parameter head\.\S+ holds NaN or inf"):
        run_fit(dp=False)


def test_under_dp_the_weights_are_checked_and_the_reservation_stays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    poison(monkeypatch, epoch=2, weights=True)
    persisted: list[dict[str, Any]] = []
    with pytest.raises(NonFiniteError, match="epoch 2: parameter head"):
        run_fit(dp=True, persisted=persisted)
    # the reservation (all planned steps) was saved before the first step and never settled
    assert len(persisted) == 1
    (event,) = persisted[0]["events"]
    assert event["status"] == "reserved" and event["steps"] == 2 * EPOCHS


def test_under_dp_the_private_loss_is_not_looked_at(monkeypatch: pytest.MonkeyPatch) -> None:
    poison(monkeypatch, epoch=1, loss=True)  # finite weights: the run goes on
    ledger = run_fit(dp=True)
    assert ledger.events[-1].status == "settled" and ledger.events[-1].steps == 2 * EPOCHS


def test_the_cli_reports_divergence_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import common.runs.single_node

    def diverged(*args: object, **kwargs: object) -> None:
        raise NonFiniteError("training diverged in epoch 3: the training loss is nan")

    monkeypatch.setattr(common.runs.single_node, "run_cell", diverged)
    assert issubclass(NonFiniteError, MammoflError)
    assert main(["train", "experiment=tiny", f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "mammofl train: error: training diverged in epoch 3" in err
    assert "Traceback" not in err


def _poison_network(net: torch.nn.Module) -> None:
    with torch.no_grad():
        next(net.parameters()).fill_(float("nan"))


@pytest.mark.parametrize(("dp", "network"), [(False, "generator_net"), (True, "discriminator")])
def test_gan_divergence_stops_and_keeps_the_last_checkpoint(
    tmp_path: Path, dp: bool, network: str
) -> None:
    gan = trainer(tmp_path, dp=dp, epochs=3)
    gan.train_epoch()
    first = gan.save_checkpoint()
    saved = first.read_bytes()
    _poison_network(getattr(gan, network))
    with pytest.raises(NonFiniteError, match=r"MCGAN training diverged in epoch 2: .*intact"):
        gan.fit(progress=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [first.name]
    assert first.read_bytes() == saved
    assert gan.epoch == 1  # the diverged epoch did not count
