"""The single-node mode end to end on the tiny preset and built-in phantom patches."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from common.config.compose import compose_config
from common.runs.planning import plan_report
from common.runs.single_node import run_cell
from simulations.evaluate import evaluate_run

PROJECT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, name: str, *overrides: str) -> dict:
    config = compose_config(["experiment=tiny", f"out_dir={tmp_path / name}", *overrides])
    return run_cell(config, tmp_path / name, progress=False)


def _without_time(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def test_tiny_dp_run_writes_a_complete_record(phantom_env: Path, tmp_path: Path) -> None:
    record = _run(tmp_path, "a")
    plan = plan_report(compose_config(["experiment=tiny"]))
    privacy = record["privacy"]
    assert privacy["noise_multiplier"] == plan["noise_multiplier"]  # exactly as planned
    assert privacy["sample_rate"] == plan["sample_rate"]
    assert privacy["steps"] == plan["steps"] == privacy["planned_steps"]
    assert 0.75 * 6 < privacy["epsilon_spent"] <= 6.0
    assert privacy["ledger"]["events"][0]["steps"] == plan["steps"]
    assert privacy["formal_guarantee"] and privacy["note"] == ""
    assert privacy["unit"] == privacy["ledger"]["unit"] == "patch"  # the record DP protects
    # the un-noised training loss of private images is not recorded under DP
    assert all(h["train_loss"] is None for h in record["history"])
    assert record["trainable_count"] == sum(
        t.numel()
        for k, t in torch.load(tmp_path / "a" / "model.pt").items()
        if k.startswith("head.")
    )
    test = record["tests"]["phantom_test"]
    for metric in ("auroc", "auprc_malignant", "auprc_benign"):
        assert test[metric]["ci_low"] <= test[metric]["value"] <= test[metric]["ci_high"]
    predictions = pd.read_csv(tmp_path / "a" / "predictions_phantom_test.csv")
    assert list(predictions.columns) == ["patch", "patient_id", "label", "score_malignant"]
    assert len(predictions) == test["n"] == 16
    assert json.loads((tmp_path / "a" / "site_only.json").read_text()) == json.loads(
        json.dumps(record)
    )
    _assert_shareable(tmp_path / "a" / "result.json", phantom_env)


HEX_DIGEST = re.compile(r"\b[0-9a-f]{40,}\b")


def _strings(node: object) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in [str(k), *_strings(v)]]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def _assert_shareable(result: Path, data_dir: Path) -> None:
    """result.json may leave the site: no data path, hash or exact count of private records;
    it keeps the metrics and the privacy record."""
    shared = json.loads(result.read_text())
    assert "data" not in shared and "seconds" not in shared
    assert all("seconds" not in epoch for epoch in shared["history"])  # a timing side channel
    for metrics in shared["tests"].values():
        assert isinstance(metrics["auroc"]["value"], float)
        assert not {"n", "n_patients"} & set(metrics)
    assert shared["privacy"]["epsilon_spent"] > 0 and shared["privacy"]["unit"] in (
        "patch",
        "patient",
    )
    strings = _strings(shared)
    assert not [s for s in strings if str(data_dir) in s or "/phantom" in s]
    assert not [s for s in strings if HEX_DIGEST.search(s) and s != shared.get("git_commit")]
    assert not [s for s in strings if re.search(r"N=\d", s)]  # e.g. in a delta note
    assert shared["git_commit"]


def test_patient_level_dp_run(phantom_env: Path, tmp_path: Path) -> None:
    """privacy.unit=patient: N is the number of patients, the ledger says 'patient'."""
    from common.runs.run_data import read_run_patch_sets

    overrides = ("privacy.unit=patient", "train.engine=cached", "train.batch_size=4")
    record = _run(tmp_path, "p", *overrides)
    train = read_run_patch_sets(compose_config(["experiment=tiny", *overrides]).data).train
    patients = len(set(train.patients))
    assert patients < len(train)  # several patches per patient, or the test shows nothing
    privacy = record["privacy"]
    assert privacy["unit"] == privacy["ledger"]["unit"] == "patient"
    assert privacy["sample_rate"] == 1 / -(-patients // record["config"]["train"]["batch_size"])
    assert 0.75 * 6 < privacy["epsilon_spent"] <= 6.0


def test_same_seed_same_result_in_seeded_mode(phantom_env: Path, tmp_path: Path) -> None:
    seeded = "privacy.seeded_noise=true"
    first, second = _run(tmp_path, "a", seeded), _run(tmp_path, "b", seeded)
    assert first["privacy"]["noise"].startswith("seeded noise: reproducible")
    shared = json.loads((tmp_path / "a" / "result.json").read_text())
    assert shared["privacy"]["noise"] == first["privacy"]["noise"]
    assert shared["seed"] == shared["config"]["seed"] == "<kept at the site>"
    assert first["tests"] == second["tests"]
    assert _without_time(first["history"]) == _without_time(second["history"])
    a, b = torch.load(tmp_path / "a" / "model.pt"), torch.load(tmp_path / "b" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    third = _run(tmp_path, "c", "seed=7", seeded)
    assert _without_time(third["history"]) != _without_time(first["history"])


def test_default_dp_noise_is_private(phantom_env: Path, tmp_path: Path) -> None:
    """Same config and seed, default mode: OS-entropy noise, so the weights differ."""
    first = _run(tmp_path, "a")
    _run(tmp_path, "b")
    assert first["privacy"]["noise"] == "os-entropy"
    a, b = torch.load(tmp_path / "a" / "model.pt"), torch.load(tmp_path / "b" / "model.pt")
    assert not torch.equal(a["head.2.weight"], b["head.2.weight"])


def test_cached_engine_run_and_evaluate(phantom_env: Path, tmp_path: Path) -> None:
    record = _run(tmp_path, "c", "train.engine=cached", "train.epochs=4")
    assert record["best_epoch"] in range(1, 5)
    evaluated = evaluate_run(str(tmp_path / "c"), str(phantom_env / "test"), name="again")
    # the saved model reproduces the run's own test scores
    assert evaluated["metrics"]["auroc"]["value"] == pytest.approx(
        record["tests"]["phantom_test"]["auroc"]["value"], abs=1e-9
    )


def test_interrupt_leaves_no_result(
    phantom_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from common.training import naive_engine

    def interrupted(self: object) -> float:
        raise KeyboardInterrupt

    monkeypatch.setattr(naive_engine.NaiveEngine, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "x")
    assert not (tmp_path / "x" / "result.json").exists()


def test_cli_plan_and_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "simulations.cli", "plan", "experiment=table1/real_eps1"],
        capture_output=True,
        text=True,
        cwd=PROJECT,
        check=True,
    )
    report = json.loads(out.stdout)
    assert set(report) >= {
        "dataset_size",
        "batch_size",
        "sample_rate",
        "epochs",
        "steps",
        "noise_multiplier",
        "target_epsilon",
        "delta",
        "accountant",
    }
    bad = subprocess.run(
        [sys.executable, "-m", "simulations.cli", "train", "train.engine=fast", "out_dir=/tmp/x"],
        capture_output=True,
        text=True,
        cwd=PROJECT,
    )
    assert bad.returncode == 2 and "train.engine" in bad.stderr


def test_cli_refuses_a_mistyped_preset_and_answers_help() -> None:
    typo = subprocess.run(
        [sys.executable, "-m", "simulations.cli", "plan", "experiment=table1/real_ep6"],
        capture_output=True,
        text=True,
        cwd=PROJECT,
    )
    assert typo.returncode == 2 and typo.stdout == ""  # never a plan without DP
    assert "Known presets" in typo.stderr and "table1/real_eps6" in typo.stderr
    from simulations.cli import COMMANDS, main

    for command in COMMANDS:
        assert main([command, "--help"]) == 0, command


def test_help_names_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    from simulations.cli import main

    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mammofl train") and "out_dir=DIR" in out


def test_train_refuses_a_folder_that_holds_a_finished_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second run there would replace the first's result, and under DP its epsilon would
    not be composed with the first's: refused before anything loads, unless overwrite=true."""
    from simulations.cli import main

    (tmp_path / "result.json").write_text(json.dumps({"privacy": {"epsilon_spent": 5.998}}))
    args = ["train", "experiment=recipe/dp_eps6", f"out_dir={tmp_path}", "data.real.path=/none"]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "already holds a DP run that spent epsilon 5.998 (result.json)" in error
    assert "overwrite=true" in error
    assert main([*args, "overwrite=true"]) == 2  # past the check: the (missing) data refuses
    assert "/none" in capsys.readouterr().err
