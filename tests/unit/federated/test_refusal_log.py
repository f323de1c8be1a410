"""A deployed run refused by mammofl (a mistyped override, a spent budget) ends with its one-line
reason in the run's log, not Flower's traceback of the ServerApp; a real fault keeps its stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[3]

# as in a SuperLink's ServerApp process: mammofl's logging joins Flower's, then Flower logs the
# exception that ended the app the way flwr 1.42's run_serverapp does
SERVERAPP_END = """
import logging, sys
from flwr.common.logger import log
from server import app
assert app._log_through_flower()
error = app.RunRefused("no round can run: site-a: budget spent") if sys.argv[1] == "refused" \\
    else ValueError("a bug")
try:
    raise error
except Exception as ex:
    log(logging.ERROR, "%s raised an exception", "ServerApp", exc_info=ex)
"""


def _log_of(kind: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", SERVERAPP_END, kind],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout + done.stderr


def test_a_refused_run_ends_without_a_traceback() -> None:
    log = _log_of("refused")
    assert "ServerApp raised an exception" in log and "Traceback" not in log


def test_a_faulty_server_app_keeps_its_traceback() -> None:
    log = _log_of("fault")
    assert "Traceback" in log and "ValueError: a bug" in log
