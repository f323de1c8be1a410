"""`mammofl submit`: a run on a deployed SuperLink, with an exit code a script can trust.

flwr 1.42's `flwr run` exits 0 once the run is *submitted*, also with `--stream`, so a
consortium's script (`flwr run ... && publish`) goes on after a run that failed. This command
checks the overrides here first (a mistyped key never becomes a failed run), submits the run
with `flwr run`, streams its log (`flwr log --stream`) and exits with the run's own outcome:
0 for `finished:completed`, 1 for any other end, 124 for a run still going at `timeout_s`.
"""

from __future__ import annotations

import contextlib
import os
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


def cli_env() -> dict[str, str]:
    """The caller's environment (its FLWR_HOME names the connection), this venv's `flwr` first."""
    # unbuffered: the streamed log reaches a pipe (`| tee`) line by line, its tail not lost
    env = {**os.environ, "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


STATUS_EVERY_S = 60.0  # while the log streams: a silent, half-open stream cannot hang us
ENDED_POLL_S = 2.0  # after the stream's normal end: the SuperLink marks the run a moment later
BROKEN_POLL_S = 30.0  # after a broken stream: the run may go on for hours
LAST_LINES_S = 10.0  # a run marked finished: how long its stream may take to print the end


def _finished(run_id: int, connection: str, env: Mapping[str, str]) -> dict[str, Any] | None:
    """The run's status once the SuperLink marks it finished; None before, or while the
    SuperLink does not answer (said once per failure on stderr)."""
    try:
        status = run_status(run_id, env, connection)
    except DeploymentError as error:
        print(f"mammofl submit: run {run_id}'s status: {error}", file=sys.stderr, flush=True)
        return None
    return status if str(status.get("status", "")).startswith("finished") else None


def follow(
    run_id: int, connection: str, env: Mapping[str, str], timeout_s: float | None
) -> dict[str, Any] | None:
    """Stream the run's log to stdout until the SuperLink reports the run finished: its final
    status, or None once `timeout_s` has passed. The run's status is asked every minute while
    the log streams (flwr's stream has no read timeout: a connection dropped silently would
    hang it), and every few seconds once the stream has ended; a stream that broke (the
    SuperLink restarted, the network dropped) is not re-attached, which would replay the log."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    stream = subprocess.Popen(
        [str(BIN / "flwr"), "log", str(run_id), connection, "--stream"],
        env=dict(env),
        stdin=subprocess.DEVNULL,
    )
    pause = STATUS_EVERY_S
    try:
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            wait = pause if left is None else min(pause, left)
            if stream.poll() is None:
                try:
                    code = stream.wait(timeout=wait)
                except subprocess.TimeoutExpired:
                    code = None
                if code is not None:  # ended: at the run's end (0), or broken
                    pause = ENDED_POLL_S if code == 0 else BROKEN_POLL_S
                    if code != 0:
                        print(
                            f"mammofl submit: the log stream ended (flwr log exit {code}); "
                            f"asking the run's status instead (`flwr log {run_id} "
                            f"{connection}` shows the log)",
                            file=sys.stderr,
                            flush=True,
                        )
            else:
                time.sleep(wait)
            status = _finished(run_id, connection, env)
            if status is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    stream.wait(timeout=LAST_LINES_S)
                return status
    finally:
        if stream.poll() is None:
            stream.terminate()
            stream.wait(timeout=10)


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
    env = cli_env()
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
        status = follow(run_id, connection, env, timeout_s)
    except (KeyboardInterrupt, Terminated) as stop:
        return _stopped(
            stop,
            f"stopped following run {run_id}; it goes on on the SuperLink (`flwr log {run_id} "
            f"{connection} --stream` follows it again, `flwr stop {run_id} {connection}` "
            "stops it)",
        )
    if status is None:
        print(
            f"mammofl submit: error: run {run_id} still running after {timeout_s:.0f} s; it goes "
            f"on on the SuperLink (`flwr stop {run_id} {connection}` stops it)",
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
