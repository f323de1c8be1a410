"""`mammofl submit` refuses a bad run before anything is submitted (the run itself, failed and
completed, is exercised on a real SuperLink by the deployment tests)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import psutil
import pytest

from simulations import submit as submit_module
from simulations.cli import main
from simulations.flower_processes import DeploymentError


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
# A stand-in `flwr` executable. `flwr log` ends as $FAKE_LOG says: broken (exit 1 at once),
# ends (exit 0 at once, as when a SuperLink stops), silent (a connection that stays open and
# says nothing, as a process named after $FAKE_TAG). `flwr list` answers the statuses in
# $FAKE_STATUSES one call after another (the last one repeats), or fails when $FAKE_LIST is
# "fail". `flwr run` submits run 7.
FAKE_FLWR = """#!/usr/bin/env bash
if [ "$1" = run ]; then echo '{"success": true, "run-id": 7}'; exit 0; fi
if [ "$1" = log ]; then
  echo "INFO : round 1"
  if [ "$FAKE_LOG" = broken ]; then echo "SuperLink unavailable" >&2; exit 1; fi
  if [ "$FAKE_LOG" = ends ]; then exit 0; fi
  exec -a "fake-flwr-log-$FAKE_TAG" sleep 600
fi
if [ "$FAKE_LIST" = fail ]; then echo "SuperLink unavailable" >&2; exit 1; fi
calls=$(cat "$FAKE_COUNT" 2>/dev/null || echo 0); echo $((calls + 1)) > "$FAKE_COUNT"
IFS=, read -ra statuses <<< "$FAKE_STATUSES"
last=$(( ${#statuses[@]} - 1 )); i=$(( calls < last ? calls : last ))
echo "{\\"success\\": true, \\"runs\\": [{\\"status\\": \\"${statuses[$i]}\\"}]}"
"""
POLLS = ("STATUS_EVERY_S", "ENDED_POLL_S", "BROKEN_POLL_S", "LAST_LINES_S")


@pytest.fixture
def fake_flwr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    from simulations import flower_processes

    (tmp_path / "flwr").write_text(FAKE_FLWR)
    (tmp_path / "flwr").chmod(0o755)
    monkeypatch.setattr(submit_module, "BIN", tmp_path)
    monkeypatch.setattr(flower_processes, "BIN", tmp_path)
    for name in POLLS:
        monkeypatch.setattr(submit_module, name, 0.2)
    tag = tmp_path.name
    return {**os.environ, "FAKE_COUNT": str(tmp_path / "count"), "FAKE_TAG": tag}


def _streams_left(env: dict[str, str]) -> list[int]:
    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if f"fake-flwr-log-{env['FAKE_TAG']}" in " ".join(p.info["cmdline"] or [])
    ]


def test_a_broken_stream_is_not_taken_for_the_runs_end(
    fake_flwr: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    env = {**fake_flwr, "FAKE_LOG": "broken", "FAKE_STATUSES": "running,running,finished:failed"}
    status, last = submit_module.follow(7, "consortium", env, timeout_s=30)
    assert status is not None and status["status"] == "finished:failed" == last
    assert "the log stream ended (flwr log exit 1)" in capsys.readouterr().err


@pytest.mark.parametrize("log", ["broken", "ends"])
def test_a_stream_over_before_the_first_look_is_still_read(
    fake_flwr: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    log: str,
) -> None:
    """The stream's end was read only if it came while being waited on: a `flwr log` that
    exited first (a loaded machine, CI under pytest-xdist) was taken for one still streaming,
    so a broken stream was never reported and an ended one never counted."""
    start = submit_module.Follower.start_stream

    def started_and_over(self: submit_module.Follower) -> object:
        stream = start(self)
        assert stream is not None
        stream.wait()
        return stream

    monkeypatch.setattr(submit_module.Follower, "start_stream", started_and_over)
    statuses = ",".join(["running"] * 5 + ["finished:failed"])
    env = {**fake_flwr, "FAKE_LOG": log, "FAKE_STATUSES": statuses}
    status, _ = submit_module.follow(7, "consortium", env, timeout_s=30)
    assert status is not None and status["status"] == "finished:failed"
    expected = {
        "broken": "the log stream ended (flwr log exit 1)",
        "ends": "the log stream ended but run 7 is running",
    }
    assert expected[log] in capsys.readouterr().err


def test_a_stream_that_ends_before_the_run_is_taken_as_broken(
    fake_flwr: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """flwr closes the stream at the run's end, a SuperLink that stops closes it too."""
    statuses = ",".join(["running"] * 5 + ["finished:completed"])
    env = {**fake_flwr, "FAKE_LOG": "ends", "FAKE_STATUSES": statuses}
    status, _ = submit_module.follow(7, "consortium", env, timeout_s=30)
    assert status is not None and status["status"] == "finished:completed"
    assert "the log stream ended but run 7 is running" in capsys.readouterr().err


def test_a_silent_stream_does_not_hang_past_the_runs_end(fake_flwr: dict[str, str]) -> None:
    env = {**fake_flwr, "FAKE_LOG": "silent", "FAKE_STATUSES": "running,finished:completed"}
    status, _ = submit_module.follow(7, "consortium", env, timeout_s=60)
    assert status is not None and status["status"] == "finished:completed"
    assert _streams_left(env) == []  # the stream was stopped


def test_a_run_still_going_at_the_timeout_is_no_end(fake_flwr: dict[str, str]) -> None:
    env = {**fake_flwr, "FAKE_LOG": "silent", "FAKE_STATUSES": "running"}
    assert submit_module.follow(7, "consortium", env, timeout_s=1.0) == (None, "running")
    assert _streams_left(env) == []


def test_a_superlink_that_stops_answering_leaves_the_outcome_unknown(
    fake_flwr: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(submit_module, "UNANSWERED_LIMIT", 3)
    env = {**fake_flwr, "FAKE_LOG": "broken", "FAKE_LIST": "fail"}
    with pytest.raises(DeploymentError, match=r"run 7's outcome is unknown: .* 3 status calls"):
        submit_module.follow(7, "consortium", env, timeout_s=None)


@pytest.mark.parametrize(
    ("statuses", "code", "said"),
    [
        ("running,finished:completed", 0, "run 7 finished:completed"),
        ("running,finished:failed", 1, "run 7 ended finished:failed"),
        ("finished:stopped", 1, "run 7 ended finished:stopped"),
        ("running", 124, "run 7 not finished after 3 s (last status: running)"),
    ],
)
def test_the_exit_code_is_the_runs_outcome(
    fake_flwr: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    statuses: str,
    code: int,
    said: str,
) -> None:
    for key, value in {**fake_flwr, "FAKE_LOG": "silent", "FAKE_STATUSES": statuses}.items():
        monkeypatch.setenv(key, value)
    overrides = ["experiment=federated/tiny", f"out_dir={tmp_path}"]
    assert submit_module.submit(overrides, timeout_s=3.0) == code
    captured = capsys.readouterr()
    assert said in captured.out + captured.err
