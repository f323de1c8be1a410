"""Guards that keep a DP run honest, each triggered on purpose.

- `fit` with a ledger already near its cap refuses before any step and leaves every weight and
  the ledger exactly as they were (a DP run without any budget too);
- a single-node cell refuses (PrivacyError, no result written) when a frozen parameter or buffer
  changed during training, or when the Gaussian mechanism ran fewer times than the steps the
  ledger charges;
- CI cannot skip the real-data tests: `.ci/run` sets CI=true itself and `require_shared` fails
  (not skips) under CI=true or CI=1.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from common.config.compose import compose_config
from common.errors import PrivacyError
from common.privacy.dp_sgd import GaussianMechanism
from common.privacy.ledger import LedgerEvent, PrivacyBudgetExceeded, PrivacyLedger
from common.runs.single_node import run_cell
from common.training.cached_engine import CachedEngine
from common.training.fit import fit
from common.training.naive_engine import NaiveEngine
from common.training.settings import DPSettings, EngineSettings
from tests.conftest import require_shared
from tests.unit.training.helpers import random_patches, settings, tiny_model

PROJECT = Path(__file__).resolve().parents[3]
PRIOR = LedgerEvent(noise_multiplier=1.0, sample_rate=0.5, steps=40, round=1)


def _dp_settings() -> EngineSettings:
    dp = DPSettings(noise_multiplier=1.0, sample_rate=0.5, max_grad_norm=1.0, steps_per_epoch=2)
    return replace(settings(False), dp=dp)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert sorted(after) == sorted(before)
    for name, value in before.items():
        assert torch.equal(after[name], value), name


# ---- fit and the ledger's cap -----------------------------------------------------------------
@pytest.mark.parametrize("engine", ["cached", "naive"])
def test_fit_near_the_cap_refuses_and_changes_nothing(engine: str) -> None:
    model = tiny_model("swin")
    ledger = PrivacyLedger(events=[PRIOR])
    cap = ledger.epsilon() + 0.01  # one more small run would exceed it
    before, ledger_before = _snapshot(model), ledger.state_dict()
    saved: list[dict[str, object]] = []
    with pytest.raises(PrivacyBudgetExceeded, match="nothing charged"):
        fit(
            model,
            engine,
            random_patches(8),
            None,
            _dp_settings(),
            epochs=2,
            ledger=ledger,
            selection="last",
            epsilon_cap=cap,
            round_number=2,
            persist=lambda kept: saved.append(kept.state_dict()),
        )
    _assert_same(model, before)
    assert ledger.state_dict() == ledger_before and saved == []
    # control: the same run under a cap it fits in trains, charges and persists
    result = fit(
        model,
        engine,
        random_patches(8),
        None,
        _dp_settings(),
        epochs=2,
        ledger=ledger,
        selection="last",
        epsilon_cap=cap + 10.0,
        round_number=2,
        persist=lambda kept: saved.append(kept.state_dict()),
    )
    assert result.steps == 4 and [e.steps for e in ledger.events] == [40, 4]
    assert len(saved) == 2 and saved[-1] == ledger.state_dict()
    assert any(not torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_fit_with_a_target_as_cap_refuses_past_it() -> None:
    """No explicit cap: the target is the cap, the prior spend included."""
    model = tiny_model("swin")
    ledger = PrivacyLedger(events=[PRIOR])
    target = PrivacyLedger(events=[LedgerEvent(noise_multiplier=1.0, sample_rate=0.5, steps=4)])
    before, ledger_before = _snapshot(model), ledger.state_dict()
    with pytest.raises(PrivacyBudgetExceeded):
        fit(
            model,
            "cached",
            random_patches(8),
            random_patches(8, seed=1),
            _dp_settings(),
            epochs=2,
            ledger=ledger,
            target_epsilon=target.epsilon() * 1.01,  # enough for this run alone, not with PRIOR
        )
    _assert_same(model, before)
    assert ledger.state_dict() == ledger_before


def test_dp_fit_without_a_budget_refuses_and_changes_nothing() -> None:
    model = tiny_model("swin")
    ledger = PrivacyLedger(events=[PRIOR])
    before, ledger_before = _snapshot(model), ledger.state_dict()
    with pytest.raises(PrivacyError, match="needs a budget"):
        fit(
            model,
            "cached",
            random_patches(8),
            None,
            _dp_settings(),
            epochs=1,
            ledger=ledger,
            selection="last",
        )
    _assert_same(model, before)
    assert ledger.state_dict() == ledger_before


# ---- single-node cell guards ------------------------------------------------------------------
def _cell(tmp_path: Path, *overrides: str) -> Path:
    out = tmp_path / "cell"
    config = compose_config(["experiment=tiny", f"out_dir={out}", "train.epochs=1", *overrides])
    run_cell(config, out, progress=False)
    return out


def _assert_nothing_written(tmp_path: Path) -> None:
    out = tmp_path / "cell"
    written = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert not {"result.json", "site_only.json", "model.pt"} & set(written), written


def _tamper(model: torch.nn.Module, what: str) -> None:
    with torch.no_grad():
        if what == "parameter":
            frozen = next(p for p in model.backbone.parameters() if not p.requires_grad)
            frozen.add_(1e-3)
        else:
            name, buffer = next(iter(model.backbone.named_buffers()))
            flipped = buffer.flip(0)
            assert not torch.equal(flipped, buffer), name
            buffer.copy_(flipped)


@pytest.mark.parametrize(
    ("engine_class", "what"), [(CachedEngine, "parameter"), (NaiveEngine, "buffer")]
)
def test_cell_refuses_when_a_frozen_tensor_changed(
    engine_class: type[CachedEngine] | type[NaiveEngine],
    what: str,
    phantom_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = engine_class.train_epoch

    def train_epoch(self: CachedEngine | NaiveEngine) -> float:
        loss = original(self)  # type: ignore[arg-type]
        _tamper(self.model, what)
        return loss

    monkeypatch.setattr(engine_class, "train_epoch", train_epoch)
    engine = "cached" if engine_class is CachedEngine else "naive"
    with pytest.raises(PrivacyError, match="frozen parameters or buffers changed"):
        _cell(tmp_path, f"train.engine={engine}")
    _assert_nothing_written(tmp_path)


def test_cell_refuses_when_the_mechanism_skipped_a_step(
    phantom_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first step's gradient leaves without noise and uncounted: the ledger charges 2 steps,
    the mechanism ran once."""
    original = GaussianMechanism.privatize
    skipped: list[bool] = []

    def privatize(self: GaussianMechanism, sums: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if not skipped:
            skipped.append(True)
            return [s / self.expected_batch_size for s in sums]
        return original(self, sums)

    monkeypatch.setattr(GaussianMechanism, "privatize", privatize)
    with pytest.raises(
        PrivacyError, match=r"Gaussian mechanism ran \d+ times, the ledger counts \d+"
    ):
        _cell(tmp_path)
    assert skipped == [True]
    _assert_nothing_written(tmp_path)


def test_cell_without_tampering_passes_both_guards(phantom_env: Path, tmp_path: Path) -> None:
    out = _cell(tmp_path, "train.engine=cached")
    assert (out / "result.json").is_file()


# ---- CI cannot skip the real-data tests -------------------------------------------------------
@pytest.mark.parametrize("value", ["true", "TRUE", "True", "1"])
def test_require_shared_fails_under_ci(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="needs"):
        require_shared(tmp_path / "missing")
    assert require_shared(tmp_path) == tmp_path


@pytest.mark.parametrize("value", [None, "", "0", "false"])
def test_require_shared_skips_outside_ci(
    value: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception):
        require_shared(tmp_path / "missing")


def test_ci_script_sets_ci_before_running_the_tests() -> None:
    lines = (PROJECT / ".ci" / "run").read_text().splitlines()
    exported = next(i for i, line in enumerate(lines) if re.fullmatch(r"export CI=true", line))
    tests = next(i for i, line in enumerate(lines) if "pytest" in line)
    assert exported < tests
