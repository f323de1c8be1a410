"""A writer killed mid-write, for real: a child process SIGKILLed inside `atomic_write`."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

_KILLED_WRITER = (
    "import os, signal, sys\n"
    "from pathlib import Path\n"
    "from common.atomic_io import atomic_write\n"
    "def write(tmp):\n"
    "    Path(tmp).write_bytes(b'half a model')\n"
    "    os.kill(os.getpid(), signal.SIGKILL)\n"
    "atomic_write(Path(sys.argv[1]), write)\n"
)


def killed_mid_write(target: Path) -> None:
    """A process killed (SIGKILL: no cleanup runs) while `atomic_write` writes `target`; it
    leaves the temporary `.<name>.<8 characters>.tmp` beside `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(target)], check=False)
    assert done.returncode == -signal.SIGKILL
