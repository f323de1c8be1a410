"""`flwr run .` runs the same ServerApp and ClientApp as `mammofl federate`, through a real
local SuperLink process (simulation mode), with a private FLWR_HOME and no runtime dependency
installation; the test stops every process it started and leaves pyproject.toml untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from simulations.flower_processes import free_port

PROJECT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_flwr_run_runs_the_same_apps(tiny_workspace: Path, tmp_path: Path) -> None:
    flwr_home = tmp_path / "flwr-home"
    run_dir = tmp_path / "run"
    env = {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        # the local SuperLink's ports (flwr's defaults 39091 and 39093 may be taken)
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
    }
    env.pop("MAMMOFL_FEDERATION_SPEC", None)
    pyproject = (PROJECT / "pyproject.toml").read_bytes()
    overrides = f"out_dir={tiny_workspace} run_dir={run_dir} simulation.compare=[]"
    try:
        done = subprocess.run(
            [
                str(BIN / "flwr"),
                "run",
                ".",
                "--run-config",
                f"experiment='federated/tiny' overrides='{overrides}'",
                "--federation-config",
                "num-supernodes=3",
                "--stream",
            ],
            cwd=PROJECT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:  # the local SuperLink is detached: stop it, whatever happened
        _stop(flwr_home)
    # flwr 1.42's `flwr run --stream` exits 0 whenever the run finishes, failed or not:
    # the run's own log (its stdout) says why a result is missing
    told = done.stdout[-6000:] + done.stderr[-3000:]
    assert done.returncode == 0, told
    assert (run_dir / "result.json").is_file(), told + _superlink_log(flwr_home)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["rounds_completed"] == 3
    ledger = json.loads((run_dir / "ledger.json").read_text())
    for site in ledger["sites"].values():
        assert len(site["epsilon_after_round"]) == 3 and site["epsilon"] <= site["budget"]
    assert (PROJECT / "pyproject.toml").read_bytes() == pyproject
    assert _running(flwr_home) == []


def _superlink_log(flwr_home: Path) -> str:
    log = flwr_home / "local-superlink" / "superlink.log"
    return log.read_text(errors="replace")[-6000:] if log.is_file() else ""


def _running(flwr_home: Path) -> list[str]:
    found = subprocess.run(["pgrep", "-f", str(flwr_home)], capture_output=True, text=True)
    return found.stdout.split()


def _stop(flwr_home: Path) -> None:
    """SIGTERM the SuperLink started for this FLWR_HOME; wait up to 20 s for it to exit."""
    subprocess.run(["pkill", "-f", str(flwr_home / "local-superlink")], check=False)
    deadline = time.monotonic() + 20
    while _running(flwr_home) and time.monotonic() < deadline:
        time.sleep(0.5)
