"""Real Flower processes, started and stopped for sure: SuperLink, SuperNodes and the `flwr` CLI.

Every process starts in its own session with its output in a log file; `stop` ends the whole
process tree (a SuperLink's SuperExec and ServerApp, a SuperNode's ClientApps), found through
psutil before the first signal, so nothing is left behind even when a child detached itself.
The `flwr` CLI runs with a private FLWR_HOME and never installs app dependencies at run time
(flwr 1.42 would otherwise re-install them with uv on every run).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from common.atomic_io import atomic_write_text
from common.errors import ConfigError, MammoflError

BIN = Path(sys.executable).parent
CONNECTION = "consortium"  # the flwr CLI's name for the consortium's SuperLink


class DeploymentError(MammoflError, RuntimeError):
    """A Flower process or CLI call failed; the message names its log."""


def flower_env(flwr_home: Path | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every Flower process: this venv's binaries first on PATH (the
    SuperLink starts `flower-superexec` by name), a private FLWR_HOME (None: the caller's own,
    which names its connections), no runtime installs."""
    env = {
        **os.environ,
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        # SuperExec looks for new work every second by default: a ClientApp phase waits less
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    env.pop("MAMMOFL_FEDERATION_SPEC", None)  # a simulation's spec file must not leak in
    env.update(extra or {})
    return env


def free_port() -> int:
    """A loopback port free now; another program may take it before the Flower process
    binds it (see `lost_port_race`)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


PORT_TRIES = 3  # starts of one process, each on a new port, before a taken port is an error


def lost_port_race(process: ManagedProcess) -> bool:
    """The process exited because the port `free_port` gave it was taken meanwhile (uvicorn:
    "[Errno 98] ... address already in use"): worth starting again on a new port."""
    return not process.alive() and "address already in use" in process.log_since_start().lower()


@dataclass
class ManagedProcess:
    """One started Flower process and the arguments it was started with (to restart it)."""

    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str] = field(repr=False)
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log_start: int = 0  # where this start's output begins in the (appended) log

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.log_start = log.tell()
            self.popen = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tree(self) -> list[psutil.Process]:
        if self.popen is None:
            return []
        try:
            root = psutil.Process(self.popen.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the whole tree, SIGKILL what is still there after `timeout` seconds."""
        _end(self.tree(), signal.SIGTERM, timeout)
        if self.popen is not None:
            self.popen.poll()

    def kill(self) -> None:
        """SIGKILL the whole tree at once (a crash: nothing gets to clean up)."""
        _end(self.tree(), signal.SIGKILL, 10.0)
        if self.popen is not None:
            self.popen.wait(timeout=10)

    def log_since_start(self) -> str:
        """What this process wrote since its last start (not an earlier run's lines)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self.log_start)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _end(processes: Sequence[psutil.Process], sig: signal.Signals, timeout: float) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(sig)
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=5)


def superlink_args(
    port: int,
    database: Path,
    *,
    ca_certificate: Path | None,
    certificate: Path | None,
    key: Path | None,
    supernode_auth: bool = True,
) -> list[str]:
    """`flower-superlink` with TLS (all three files) and SuperNode authentication; without
    certificates it runs `--insecure` (only for refusal tests)."""
    args = [str(BIN / "flower-superlink"), "--port", str(port), "--database", str(database)]
    args.append("--disable-runtime-dependency-installation")
    if ca_certificate and certificate and key:
        args += ["--ssl-ca-certfile", str(ca_certificate), "--ssl-certfile", str(certificate)]
        args += ["--ssl-keyfile", str(key)]
    else:
        args.append("--insecure")
    if supernode_auth:
        args.append("--enable-supernode-auth")
    return args


def node_config_arg(values: Mapping[str, object]) -> str:
    """`--node-config` as flwr 1.42 parses it: space-separated `key=value`, each value a TOML
    value; flwr's own splitter cuts a string at its first matching quote, so a string holding
    `"` goes in single quotes (a TOML literal string). Raises ConfigError for a string holding
    both quote kinds or a line break, which that splitter cannot carry."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            parts.append(f"{key}={'true' if value else 'false'}")
        elif isinstance(value, int | float):
            parts.append(f"{key}={value}")
        else:
            parts.append(f"{key}={toml_string(key, str(value))}")
    return " ".join(parts)


def toml_string(key: str, text: str) -> str:
    """A string as flwr 1.42's `key=value` splitter carries it (node and run configs)."""
    if "\n" in text or "\r" in text or ('"' in text and "'" in text):
        raise ConfigError(
            f"{key}={text!r}: flwr cannot pass a value with a line break or both quote "
            "kinds; rename the folder or drop the quote"
        )
    return f"'{text}'" if '"' in text else json.dumps(text)


def supernode_args(
    superlink: str,
    runtime_port: int,
    node_config: Mapping[str, object],
    *,
    ca_certificate: Path | None,
    private_key: Path | None,
    max_retries: int = 30,
    max_wait_time_s: float = 300.0,
) -> list[str]:
    """`flower-supernode` that gives up after `max_retries` reconnections or `max_wait_time_s`
    (flwr retries forever by default); TLS with the consortium's CA unless no CA is given."""
    args = [str(BIN / "flower-supernode"), "--superlink", superlink]
    args += ["--port", str(runtime_port), "--node-config", node_config_arg(node_config)]
    args += ["--max-retries", str(max_retries), "--max-wait-time", str(max_wait_time_s)]
    args += ["--root-certificates", str(ca_certificate)] if ca_certificate else ["--insecure"]
    if private_key is not None:
        args += ["--auth-supernode-private-key", str(private_key)]
    return args


def write_connection(flwr_home: Path, address: str, root_certificates: Path | None) -> Path:
    """The flwr CLI's connection to the SuperLink (`FLWR_HOME/config.toml`), the default one."""
    import tomli_w

    connection: dict[str, Any] = {"address": address}
    if root_certificates is None:
        connection["insecure"] = True
    else:
        connection["root-certificates"] = str(root_certificates)
    text = tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: connection}})
    path = flwr_home / "config.toml"
    atomic_write_text(path, text)
    return path


def flwr_cli(
    args: Sequence[str], env: Mapping[str, str], *, cwd: Path | None = None, timeout: float = 120
) -> dict[str, Any]:
    """One `flwr ... --format json` call; its JSON answer, or DeploymentError with its output."""
    command = [str(BIN / "flwr"), *args, "--format", "json"]
    try:
        done = subprocess.run(
            command, env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        created = (
            " (a run may still have been created: check `flwr ls`)" if args[0] == "run" else ""
        )
        raise DeploymentError(
            f"`flwr {' '.join(args)}` did not answer within {timeout:.0f} s; is the SuperLink "
            f"reachable?{created}"
        ) from None
    except OSError as error:  # no flwr executable (a .venv being rebuilt), or not runnable
        raise DeploymentError(f"`flwr` could not start ({command[0]}): {error}") from None
    start = done.stdout.find("{")
    try:
        answer: dict[str, Any] = json.loads(done.stdout[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        answer = {}
    if done.returncode != 0 or not answer.get("success", False):
        detail = (answer.get("error-message") or done.stderr or done.stdout).strip()[-1500:]
        raise DeploymentError(f"`flwr {' '.join(args)}` failed: {detail}")
    return answer


def register_supernode(public_key: Path, env: Mapping[str, str]) -> int:
    """Register a site's public key with the SuperLink (its node id stays with the key)."""
    return int(flwr_cli(["supernode", "register", str(public_key), CONNECTION], env)["node-id"])


def supernodes(env: Mapping[str, str]) -> list[dict[str, Any]]:
    return list(flwr_cli(["supernode", "list", CONNECTION], env).get("nodes", []))


def wait_for(what: str, ready: Any, timeout: float, interval: float = 0.5) -> Any:
    """Call `ready()` until it returns a truthy value (DeploymentError are retried)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = ready()
            if value:
                return value
        except DeploymentError as error:
            last = error
        time.sleep(interval)
    raise DeploymentError(
        f"{what}: not ready within {timeout:.0f} s" + (f" ({last})" if last else "")
    )


def submit_run(
    app: Path,
    run_config: Mapping[str, str],
    env: Mapping[str, str],
    connection: str = CONNECTION,
) -> int:
    """`flwr run <app> <connection> --run-config ...`: the run id (the run goes on detached)."""
    config = " ".join(f"{k}={toml_string(k, v)}" for k, v in run_config.items())
    answer = flwr_cli(["run", str(app), connection, "--run-config", config], env, timeout=300)
    return int(answer["run-id"])


def run_status(
    run_id: int, env: Mapping[str, str], connection: str = CONNECTION, timeout: float = 120
) -> dict[str, Any]:
    args = ["list", connection, "--run-id", str(run_id)]
    runs = flwr_cli(args, env, timeout=timeout).get("runs", [])
    if not runs:
        raise DeploymentError(f"run {run_id} is unknown to the SuperLink")
    return dict(runs[0])


def wait_run(run_id: int, env: Mapping[str, str], timeout: float, log_path: Path) -> dict:
    """Follow the run's log (`flwr log --stream`, into `log_path`) until the run has finished
    (completed, failed or stopped), or DeploymentError after `timeout` s; its last status.
    One streaming process instead of polling: each `flwr` call costs a second of CPU."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    stream = ManagedProcess(
        "flwr-log",
        [str(BIN / "flwr"), "log", str(run_id), CONNECTION, "--stream"],
        log_path,
        dict(env),
    ).start()
    deadline = time.monotonic() + timeout
    try:
        while stream.alive() and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        stream.stop(timeout=5)

    def finished() -> dict[str, Any] | None:
        status = run_status(run_id, env)
        return status if str(status.get("status", "")).startswith("finished") else None

    left = max(deadline - time.monotonic(), 10.0)
    result: dict[str, Any] = wait_for(f"run {run_id}", finished, left, interval=2.0)
    return result
