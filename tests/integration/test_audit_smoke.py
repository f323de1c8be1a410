"""`mammofl audit`, small: tiny Swin, phantom patches, DP epsilon 6, 5 models (about 20 s)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.audit.canaries import OneRunAudit
from common.errors import ConfigError
from simulations.audit_cli import EXIT_AUDIT_FAILED, cmd_audit

TINY = ["experiment=tiny", "train.engine=cached", "train.batch_size=4", "train.epochs=4"]
OPTIONS = ["shadows=4", "seeds=[42,43]", "k=[2,5]"]


def test_audit_smoke(
    phantom_env: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "audit"
    assert cmd_audit([*TINY, *OPTIONS, f"out_dir={out}"]) == 0
    printed = json.loads(capsys.readouterr().out)
    record = json.loads((out / "audit.json").read_text())
    assert printed["passed"] and record["verdict"]["passed"]
    # a tiny audit cannot certify epsilon 6 (its ceiling, every guess right, is far below):
    # "passed" is then said to be inconclusive, not a test the run survived
    assert max(t["one_run_audit"]["epsilon_ceiling"] for t in record["targets"]) < 6 * 0.75
    assert printed["conclusive"] is False and record["verdict"]["conclusive"] is False
    assert printed["note"].startswith("inconclusive: the audit cannot certify")
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out / "models").glob("seed*.npz")) == [
        f"seed{s}.npz" for s in (10000, 10001, 10002, 42, 43)
    ]
    assert record["reference_models"]["per_target"] == 4
    assert record["population"]["canaries_m"] == record["population"]["records"] > 10
    for target in record["targets"]:
        audit = target["one_run_audit"]
        assert 0.75 * 6 < target["accounted_epsilon"] <= 6.0
        assert audit["epsilon_lower_bound"] < target["accounted_epsilon"]
        assert audit["confidence"] == 0.95 and audit["bonferroni_tests"] == 2 * 2
        for attack in ("lira_online", "lira_offline", "loss"):
            metrics = target["attacks"][attack]
            assert 0 <= metrics["auc"] <= 1
            assert metrics["tpr_at_0.001_fpr"] <= metrics["tpr_at_0.01_fpr"] <= 1
            assert metrics["members"] + metrics["non_members"] == audit["canaries_m"]
    assert record["summary"]["attacks"]["lira_online"]["auc"]["n"] == 2
    text = (out / "audit.json").read_text()
    assert str(phantom_env) not in text and "sha256" not in text  # no private paths or hashes

    # a second call resumes from the saved models: same figures
    assert cmd_audit([*TINY, *OPTIONS, f"out_dir={out}"]) == 0
    capsys.readouterr()
    again = json.loads((out / "audit.json").read_text())
    assert again["targets"] == record["targets"]

    # other settings in the same folder are refused
    with pytest.raises(ConfigError, match="other settings"):
        cmd_audit([*TINY, "train.lr=0.01", *OPTIONS, f"out_dir={out}"])
    # a new analysis of the same models: one more shadow is trained, nothing else
    assert cmd_audit([*TINY, "shadows=5", "seeds=[42,43]", "k=[2]", f"out_dir={out}"]) == 0
    capsys.readouterr()
    assert len(list((out / "models").glob("seed*.npz"))) == 6

    # an empirical bound above the accounted epsilon fails loudly with exit code 3
    from common.audit import attack

    def broken(*args: object, **kwargs: object) -> OneRunAudit:
        return OneRunAudit(24, 12, 0.95, 1e-4, (), 50.0, best=None, ceiling=60.0)

    monkeypatch.setattr(attack, "one_run_audit", broken)
    assert cmd_audit([*TINY, *OPTIONS, f"out_dir={out}"]) == EXIT_AUDIT_FAILED
    assert "PRIVACY AUDIT FAILED" in capsys.readouterr().err
    assert json.loads((out / "audit.json").read_text())["verdict"]["failed_seeds"] == [42, 43]
    monkeypatch.undo()

    # two audits side by side
    assert cmd_audit([f"compare=[{out},{out}]", f"out_dir={tmp_path / 'both'}"]) == 0
    assert "LiRA online" in (tmp_path / "both" / "summary.md").read_text()
    assert (tmp_path / "both" / "roc.png").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([*TINY, "shadows=1"], "at least 2 reference models"),
        ([*TINY, "shadows=x"], "shadows=x: expected a whole number"),
        ([*TINY, "seeds=[1,1]"], "distinct seeds"),
        ([*TINY, "canaries=mislabelled"], "canary_count"),
        ([*TINY, "canaries=purple"], "choose one of"),
        ([*TINY, "confidence=1.5"], "confidence"),
        ([*TINY, "audit_attacks=[lira,loss]"], "choose among"),
        (["experiment=tiny", "train.batch_size=4"], "train.engine=cached"),
        ([*TINY, "k=[500]"], "smallest k"),
    ],
)
def test_bad_options_are_clear_errors(
    phantom_env: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        cmd_audit([*args, f"out_dir={tmp_path / 'x'}"])


def test_out_dir_is_required() -> None:
    with pytest.raises(ConfigError, match="out_dir"):
        cmd_audit(["experiment=tiny"])
