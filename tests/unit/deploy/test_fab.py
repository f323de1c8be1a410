"""The FAB `flwr run` / `mammofl submit` send to the SuperLink and every SuperNode: the apps'
code and presets (pyproject's `fab-include`), not the tests, docs or coordinator launchers."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[3]


def test_the_fab_holds_the_apps_and_presets_only(tmp_path: Path) -> None:
    flwr = Path(sys.executable).parent / "flwr"
    done = subprocess.run(
        [str(flwr), "build", "--app", str(PROJECT)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (fab,) = tmp_path.glob("*.fab")
    names = zipfile.ZipFile(fab).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {
        "server",
        "client",
        "common",
        "configs",
        "pyproject.toml",
        "README.md",
        "LICENSE",
        ".info",
    }
    # what the apps load: every tracked module and preset of the app folders (hydra composes
    # from configs/ at the site). Flower drops files named test_*.py or *_test.py whatever the
    # patterns: an app module so named would be missing, and only at a SuperNode, where no
    # editable install of the checkout hides it
    tracked = subprocess.run(
        ["git", "ls-files", "server", "client", "common", "configs"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert {"server/app.py", "client/app.py", "configs/experiment/federated/phantom.yaml"} <= set(
        tracked
    )
    assert set(tracked) <= set(names)
    assert not any("__pycache__" in name for name in names)
