"""`mammofl submit`: a run on a deployed SuperLink, with an exit code a script can trust.

flwr 1.42's `flwr run` exits 0 once the run is *submitted*, also with `--stream`, so a
consortium's script (`flwr run ... && publish`) goes on after a run that failed. This command
checks the overrides here first (a mistyped key never becomes a failed run), submits the run
with `flwr run`, streams its log (`flwr log --stream`) and exits with the run's own outcome:
0 for `finished:completed`, 1 for any other end, 124 for a run still going at `timeout_s`.
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.config.option_values import number
from common.errors import ConfigError
from common.federated.run_config import DEFAULT_EXPERIMENT
from common.runs.termination import EXIT_CODE, Terminated
from simulations.flower_processes import (
    BIN,
    CONNECTION,
    DeploymentError,
    flower_env,
    run_status,
    submit_run,
)

PROJECT = Path(__file__).resolve().parents[1]
COMPLETED = "finished:completed"
INTERRUPTED_EXIT_CODE = 130  # what a shell reports for a job ended by Ctrl-C
TIMED_OUT_EXIT_CODE = 124  # GNU timeout's: the run still runs (a failed run: 1)


def run_config_of(overrides: Sequence[str]) -> dict[str, str]:
    """The run config the ServerApp and ClientApps compose (`experiment`, `overrides`), after
    composing it here: ConfigError names a mistyped key or value before any run exists, and a
    relative `out_dir`/`run_dir`, which would resolve in the SuperLink's working directory."""
    from common.config.compose import compose_federated_config

    experiment = DEFAULT_EXPERIMENT
    rest = []
    for override in overrides:
        key, _, value = override.partition("=")
        if key == "experiment":
            experiment = value
        else:
            rest.append(override)
    config = compose_federated_config([f"experiment={experiment}", *rest])
    given = {o.partition("=")[0] for o in rest}
    for key, path in (("out_dir", config.out_dir), ("run_dir", config.run_dir)):
        if path is not None and not Path(path).is_absolute():
            default = "" if key in given else " (the preset's default)"
            raise ConfigError(
                f"{key}={path}{default} is relative: the ServerApp runs on the SuperLink's "
                "machine, in the SuperLink's working directory; give an absolute path on that "
                "machine "
                f"({key}=/srv/mammofl/...)"
            )
    return {"experiment": experiment, "overrides": shlex.join(rest)}


STATUS_EVERY_S = 60.0  # while the log streams: a silent, half-open stream cannot hang us
ENDED_POLL_S = 2.0  # after the stream's end: the SuperLink has marked the run finished
BROKEN_POLL_S = 30.0  # after a stream that broke: the run may go on for hours
ENDED_POLLS = 3  # polls at ENDED_POLL_S before a stream that ended is taken as broken
UNANSWERED_LIMIT = 10  # status calls in a row without an answer, once the stream has ended
LAST_LINES_S = 10.0  # a run marked finished: how long its stream may take to print the end


class Follower:
    """One run followed to its end: its log streamed, its status asked (see `follow`)."""

    def __init__(self, run_id: int, connection: str, env: Mapping[str, str]) -> None:
        self.run_id, self.connection, self.env = run_id, connection, dict(env)
        self.last = "not asked yet"  # the last status, or why there was none
        self.unanswered = 0

    def say(self, text: str) -> None:
        print(f"mammofl submit: {text}", file=sys.stderr, flush=True)

    def start_stream(self) -> subprocess.Popen[bytes] | None:
        command = [str(BIN / "flwr"), "log", str(self.run_id), self.connection, "--stream"]
        try:
            return subprocess.Popen(command, env=self.env, stdin=subprocess.DEVNULL)
        except OSError as error:
            self.say(f"the run's log cannot be streamed ({error}); asking its status instead")
            return None

    def finished(self, timeout: float) -> dict[str, Any] | None:
        """The run's status once the SuperLink marks it finished; None before, or while the
        SuperLink does not answer (each failure said on stderr)."""
        try:
            status = run_status(self.run_id, self.env, self.connection, timeout=timeout)
        except DeploymentError as error:
            self.unanswered += 1
            self.last = f"no answer: {error}"
            self.say(f"run {self.run_id}'s status: {error}")
            return None
        self.unanswered = 0
        self.last = str(status.get("status", "unknown"))
        return status if self.last.startswith("finished") else None


def _stop(stream: subprocess.Popen[bytes] | None) -> None:
    if stream is None or stream.poll() is not None:
        return
    stream.terminate()
    try:
        stream.wait(timeout=10)
    except subprocess.TimeoutExpired:
        stream.kill()
        stream.wait(timeout=10)


def follow(
    run_id: int, connection: str, env: Mapping[str, str], timeout_s: float | None
) -> tuple[dict[str, Any] | None, str]:
    """Stream the run's log to stdout until the SuperLink reports the run finished: its final
    status, or None once `timeout_s` has passed; with the last status seen (or why none).

    flwr 1.42 closes the stream only at the run's end, but its stream has no read timeout (a
    connection dropped silently would hang it) and a SuperLink that stops closes it too: so
    the run's status is asked every minute while the log streams, every few seconds once it
    has ended, then every 30 s if the SuperLink still reports the run going on. A stream that
    ended is not re-attached, which would replay the log. Raises DeploymentError when the
    SuperLink has not answered `UNANSWERED_LIMIT` status calls in a row after the stream ended.
    """
    follower = Follower(run_id, connection, env)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    stream = follower.start_stream()
    pause, ended_polls = (STATUS_EVERY_S, 0) if stream is not None else (BROKEN_POLL_S, None)
    stream_seen_ended = stream is None
    try:
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None, follower.last
            wait = pause if left is None else min(pause, left)
            if stream is not None and not stream_seen_ended:
                # also a stream that ended before the first look (it was taken for one
                # still streaming, and its exit code never read)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    stream.wait(timeout=wait)
                code = stream.poll()
                stream_seen_ended = code is not None
                if code is not None and code != 0:
                    pause, ended_polls = BROKEN_POLL_S, None
                    follower.say(
                        f"the log stream ended (flwr log exit {code}); asking the run's status "
                        f"instead (`flwr log {run_id} {connection}` shows the log)"
                    )
                elif code == 0:
                    pause = ENDED_POLL_S
            else:
                time.sleep(wait)
            asked = 120.0 if left is None else min(120.0, max(left, 5.0))
            status = follower.finished(asked)
            if status is not None:
                if stream is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        stream.wait(timeout=LAST_LINES_S)
                return status, follower.last
            stream_over = stream is None or stream.poll() is not None
            if stream_over and follower.unanswered >= UNANSWERED_LIMIT:
                raise DeploymentError(
                    f"run {run_id}'s outcome is unknown: the SuperLink did not answer "
                    f"{follower.unanswered} status calls in a row ({follower.last}); check "
                    f"`flwr ls {connection}` when it is back"
                )
            if stream_over and ended_polls is not None and pause == ENDED_POLL_S:
                ended_polls += 1
                if ended_polls >= ENDED_POLLS:  # flwr closes it at the end: not the end here
                    pause, ended_polls = BROKEN_POLL_S, None
                    follower.say(
                        f"the log stream ended but run {run_id} is {follower.last}; asking "
                        "its status every 30 s"
                    )
    finally:
        _stop(stream)


def _stopped(stop: BaseException, message: str) -> int:
    """Ctrl-C or SIGTERM while submitting or following: what the run's state is, and the
    exit code a shell expects (130, 143)."""
    print(f"mammofl submit: {message}", file=sys.stderr)
    return EXIT_CODE if isinstance(stop, Terminated) else INTERRUPTED_EXIT_CODE


def submit(
    overrides: Sequence[str],
    *,
    connection: str = CONNECTION,
    app: Path = PROJECT,
    timeout_s: float | None = None,
) -> int:
    """Submit, follow, and return the exit code: 0 completed; 1 failed or stopped; 124 still
    running `timeout_s` after it was submitted; 130 (Ctrl-C) or 143 (SIGTERM) when the caller
    stopped following, the run going on. Raises ConfigError for a bad override and DeploymentError
    when `flwr run` cannot submit (its message)."""
    if not connection:
        raise ConfigError("connection= names no SuperLink connection (e.g. connection=consortium)")
    # the caller's FLWR_HOME; unbuffered: the streamed log reaches a pipe (`| tee`) line by line
    env = flower_env(None, {"PYTHONUNBUFFERED": "1"})
    run_config = run_config_of(overrides)
    try:
        run_id = submit_run(app, run_config, env, connection)
    except (KeyboardInterrupt, Terminated) as stop:
        return _stopped(
            stop,
            f"stopped while submitting; a run may have been created: check `flwr ls "
            f"{connection}` before submitting again (a second run spends the sites' budgets "
            "again)",
        )
    print(f"mammofl submit: run {run_id} submitted to {connection}; its log follows", flush=True)
    try:
        status, last = follow(run_id, connection, env, timeout_s)
    except (KeyboardInterrupt, Terminated) as stop:
        return _stopped(
            stop,
            f"stopped following run {run_id}; it goes on on the SuperLink (`flwr log {run_id} "
            f"{connection} --stream` follows it again, `flwr stop {run_id} {connection}` "
            "stops it)",
        )
    if status is None:
        print(
            f"mammofl submit: error: run {run_id} not finished after {timeout_s:.0f} s (last "
            f"status: {last}); it goes on on the SuperLink (`flwr stop {run_id} {connection}` "
            "stops it)",
            file=sys.stderr,
        )
        return TIMED_OUT_EXIT_CODE
    if status.get("status") == COMPLETED:
        print(f"mammofl submit: run {run_id} {COMPLETED}", flush=True)
        return 0
    details = status.get("status-details") or "no details"
    print(
        f"mammofl submit: error: run {run_id} ended {status.get('status')} ({details}); "
        f"its log: `flwr log {run_id} {connection}`",
        file=sys.stderr,
    )
    return 1


def cmd_submit(args: Sequence[str]) -> int:
    from simulations.cli import split_options

    options, overrides = split_options(args, ("connection", "timeout_s"))
    timeout = None
    if "timeout_s" in options:
        timeout = number("timeout_s", options["timeout_s"], positive=True)
    return submit(
        overrides,
        connection=options.get("connection", CONNECTION),
        timeout_s=timeout,
    )
