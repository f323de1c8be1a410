"""delta against N (issue #9, item 7): refused at delta >= 1/N of the unit the run samples
(patches, or patients under patient-level DP), warned above 1/(10 N), by `mammofl plan` and
`mammofl train` alike; the federated site and the DP-MCGAN are tested beside their code."""

from __future__ import annotations

import doctest
import json
import logging
from pathlib import Path

import pytest

from common.errors import ConfigError, PrivacyError
from common.privacy import delta as delta_module
from common.privacy.delta import check_delta, delta_note, suggested_delta
from simulations.cli import main


def test_doctests() -> None:
    assert doctest.testmod(delta_module).failed == 0


@pytest.mark.parametrize(("delta", "units"), [(0.5, 12), (0.25, 4), (1.0 / 12, 12), (0.9, 2)])
def test_delta_at_or_above_one_over_n_is_refused(delta: float, units: int) -> None:
    with pytest.raises(PrivacyError, match=rf"privacy\.delta={delta} >= 1/N with N={units} "):
        check_delta(delta, units)


def test_the_refusal_names_key_n_unit_and_the_fix() -> None:
    with pytest.raises(PrivacyError) as caught:
        check_delta(0.2, 6, "patient", key="gan.dp.delta")
    message = str(caught.value)
    assert "gan.dp.delta=0.2 >= 1/N with N=6 patients" in message
    assert "lower gan.dp.delta below 1/N = 0.1667" in message
    assert "gan.dp.delta=0.01" in message and "Dwork & Roth 2014" in message


def test_delta_below_one_over_ten_n_is_silent(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert check_delta(1e-5, 1104) is None
        assert check_delta(1.0 / 120 - 1e-9, 12) is None  # just below 1/(10 N)
    assert not caplog.records


@pytest.mark.parametrize("delta", [1.0 / 120 + 1e-9, 0.05, 1.0 / 12 - 1e-9])
def test_delta_between_one_over_ten_n_and_one_over_n_warns(
    delta: float, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="common.privacy.delta"):
        note = check_delta(delta, 12)
    assert note is not None and "above 1/(10 N)" in note and "N=12 patches" in note
    assert "delta << 1/N (Dwork & Roth 2014, section 2.3)" in note
    assert [r.getMessage() for r in caplog.records] == [note]


def test_delta_note_does_not_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert delta_note(0.05, 12) is not None
    assert not caplog.records


def test_suggested_delta_is_a_power_of_ten_below_one_over_ten_n() -> None:
    assert suggested_delta(12) == pytest.approx(1e-3)
    assert suggested_delta(1104) == pytest.approx(1e-5)
    assert check_delta(suggested_delta(12), 12) is None


def test_an_empty_training_set_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="empty"):
        check_delta(1e-4, 0)


# ---- the CLI: 8 phantom patients, 2 patches each; the 25 % hold-out leaves 6 patients, 12 patches


@pytest.fixture(scope="module")
def twelve_patches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from common.data.phantom_patches import write_phantom_patches

    folder = tmp_path_factory.mktemp("twelve")
    write_phantom_patches(folder, patients=8, test_patients=2, size=32, seed=0)
    return folder


@pytest.fixture
def cli(twelve_patches: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MAMMOFL_PHANTOM", str(twelve_patches))
    return twelve_patches


def test_the_fixture_has_12_training_patches_of_6_patients(cli: Path) -> None:
    from common.config.compose import compose_config
    from common.runs.planning import training_records

    records = training_records(compose_config(["experiment=tiny"]))
    assert (records.patches, records.patients, records.source) == (12, 6, "configured data")


def test_plan_and_train_refuse_delta_half_with_12_patches(
    cli: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: 12 training patches, privacy.delta=0.5 reported epsilon 6, exit 0."""
    assert main(["plan", "experiment=tiny", "privacy.delta=0.5"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no epsilon printed
    assert "mammofl plan: error: privacy.delta=0.5 >= 1/N with N=12 patches" in captured.err
    out = tmp_path / "cell"
    assert main(["train", "experiment=tiny", "privacy.delta=0.5", f"out_dir={out}"]) == 2
    captured = capsys.readouterr()
    assert "mammofl train: error: privacy.delta=0.5 >= 1/N with N=12 patches" in captured.err
    assert not out.exists()


def test_the_privacy_unit_decides_n(
    cli: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """delta=0.1: refused per patch (1/12), allowed, with a warning, per patient (1/6);
    delta=0.2 is refused per patient too (1/6), by plan and train."""
    small = ["experiment=tiny", "train.batch_size=4", "train.epochs=1"]
    assert main(["plan", *small, "privacy.delta=0.1"]) == 2
    assert "privacy.delta=0.1 >= 1/N with N=12 patches" in capsys.readouterr().err

    assert main(["plan", *small, "privacy.delta=0.1", "privacy.unit=patient"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["dataset_size"], report["unit"]) == (6, "patient")
    assert "above 1/(10 N)" in report["delta_note"] and "N=6 patients" in report["delta_note"]
    patch, patient = report["units"]["per_patch"], report["units"]["per_patient"]
    assert "epsilon" not in patch and "N=12 patches" in patch["error"]  # shown, not a crash
    assert patient["records"] == 6 and patient["epsilon"] <= 6.0
    assert "per_patient_by_group_privacy" not in report["units"]  # no per-patch guarantee

    for command in ("plan", "train"):
        args = [command, *small, "privacy.delta=0.2", "privacy.unit=patient"]
        assert main([*args, f"out_dir={tmp_path / command}"]) == 2
        assert "privacy.delta=0.2 >= 1/N with N=6 patients" in capsys.readouterr().err
        assert not (tmp_path / command).exists()


def test_plan_warns_between_one_over_ten_n_and_one_over_n(
    cli: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    small = ["experiment=tiny", "train.batch_size=4", "train.epochs=1", "privacy.delta=0.05"]
    with caplog.at_level(logging.WARNING, logger="common.privacy.delta"):
        assert main(["plan", *small]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dataset_size"] == 12 and report["epsilon_accounted"] <= 6.0
    assert [r.getMessage() for r in caplog.records] == [report["delta_note"]]
    assert "privacy.delta=0.05 is above 1/(10 N)" in report["delta_note"]
    assert report["units"]["per_patch"]["delta_note"] == report["delta_note"]


def test_plan_without_dp_checks_no_delta(cli: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without DP there is no (epsilon, delta) claim to check."""
    no_dp = ["privacy.enabled=false", "privacy.target_epsilon=null", "privacy.delta=0.5"]
    assert main(["plan", "experiment=tiny", *no_dp]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["noise_multiplier"] is None and report["delta_note"] is None
