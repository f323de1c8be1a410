"""`mammofl submit` refuses a bad run before anything is submitted (the run itself, failed and
completed, is exercised on a real SuperLink by the deployment tests)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from simulations import submit as submit_module
from simulations.cli import main


@pytest.fixture
def nothing_submitted(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> int:
        raise AssertionError("a run was submitted")

    monkeypatch.setattr(submit_module, "submit_run", refuse)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["federation.roundz=3"], "federation.roundz is not a setting"),
        (["federation.rounds=three"], "could not be converted to Integer"),
        (["experiment=federated/nosuch"], "federated/nosuch"),
        ([], "out_dir=runs/federated (the preset's default) is relative"),
        (["out_dir=/srv/x", "connection="], "connection= names no SuperLink connection"),
        (["out_dir=/srv/x", "run_dir=run"], "run_dir=run is relative"),
        (["out_dir=/srv/x", "timeout_s=soon"], "timeout_s=soon: expected a finite number"),
        (["out_dir=/srv/x", "timeout_s=0"], "timeout_s=0: expected a number > 0"),
    ],
)
def test_a_bad_run_is_refused_before_it_is_submitted(
    nothing_submitted: None,
    overrides: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["submit", "experiment=federated/tiny", *overrides])
    assert code == 2
    assert message in capsys.readouterr().err


def test_the_run_config_is_what_the_server_composes(tmp_path: Path) -> None:
    from common.federated.run_config import overrides_from

    overrides = [f"out_dir={tmp_path / 'a b'}", "federation.rounds=2", "experiment=federated/tiny"]
    run_config = submit_module.run_config_of(overrides)
    assert run_config["experiment"] == "federated/tiny"
    assert shlex.split(run_config["overrides"]) == overrides[:2]  # a space in a path survives
    assert overrides_from(run_config) == ("experiment=federated/tiny", *overrides[:2])


# ---- following a run: the flwr CLI's contract (exit codes, `flwr list` JSON) --------------
# A stand-in `flwr` executable: `flwr log` ends as $FAKE_LOG says (broken: exit 1 at once;
# silent: a connection that stays open and says nothing), `flwr list` answers the statuses in
# $FAKE_STATUSES one call after another (the last one repeats), `flwr run` submits run 7.
FAKE_FLWR = """#!/usr/bin/env bash
if [ "$1" = run ]; then echo '{"success": true, "run-id": 7}'; exit 0; fi
if [ "$1" = log ]; then
  echo "INFO : round 1"
  if [ "$FAKE_LOG" = broken ]; then echo "SuperLink unavailable" >&2; exit 1; fi
  exec sleep 600
fi
calls=$(cat "$FAKE_COUNT" 2>/dev/null || echo 0); echo $((calls + 1)) > "$FAKE_COUNT"
IFS=, read -ra statuses <<< "$FAKE_STATUSES"
last=$(( ${#statuses[@]} - 1 )); i=$(( calls < last ? calls : last ))
echo "{\\"success\\": true, \\"runs\\": [{\\"status\\": \\"${statuses[$i]}\\"}]}"
"""


@pytest.fixture
def fake_flwr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    from simulations import flower_processes

    (tmp_path / "flwr").write_text(FAKE_FLWR)
    (tmp_path / "flwr").chmod(0o755)
    monkeypatch.setattr(submit_module, "BIN", tmp_path)
    monkeypatch.setattr(flower_processes, "BIN", tmp_path)
    for name in ("STATUS_EVERY_S", "ENDED_POLL_S", "BROKEN_POLL_S", "LAST_LINES_S"):
        monkeypatch.setattr(submit_module, name, 0.2)
    return {**os.environ, "FAKE_COUNT": str(tmp_path / "count")}


def test_a_broken_stream_is_not_taken_for_the_runs_end(
    fake_flwr: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    env = {**fake_flwr, "FAKE_LOG": "broken", "FAKE_STATUSES": "running,running,finished:failed"}
    status = submit_module.follow(7, "consortium", env, timeout_s=30)
    assert status is not None and status["status"] == "finished:failed"
    assert "the log stream ended (flwr log exit 1)" in capsys.readouterr().err


def test_a_silent_stream_does_not_hang_past_the_runs_end(fake_flwr: dict[str, str]) -> None:
    env = {**fake_flwr, "FAKE_LOG": "silent", "FAKE_STATUSES": "running,finished:completed"}
    status = submit_module.follow(7, "consortium", env, timeout_s=60)
    assert status is not None and status["status"] == "finished:completed"


def test_a_run_still_going_at_the_timeout_is_no_end(fake_flwr: dict[str, str]) -> None:
    env = {**fake_flwr, "FAKE_LOG": "silent", "FAKE_STATUSES": "running"}
    assert submit_module.follow(7, "consortium", env, timeout_s=1.0) is None


@pytest.mark.parametrize(
    ("statuses", "code"),
    [
        ("running,finished:completed", 0),
        ("running,finished:failed", 1),
        ("finished:stopped", 1),
        ("running", 124),  # still running at timeout_s: not a failed run
    ],
)
def test_the_exit_code_is_the_runs_outcome(
    fake_flwr: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    statuses: str,
    code: int,
) -> None:
    for key, value in {**fake_flwr, "FAKE_LOG": "silent", "FAKE_STATUSES": statuses}.items():
        monkeypatch.setenv(key, value)
    overrides = ["experiment=federated/tiny", f"out_dir={tmp_path}"]
    assert submit_module.submit(overrides, timeout_s=3.0) == code
