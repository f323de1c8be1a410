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
    # what the apps load: their modules, every preset (hydra composes from configs/ at the site)
    assert {"server/app.py", "client/app.py", "common/site/runtime.py"} <= set(names)
    presets = {p.relative_to(PROJECT).as_posix() for p in (PROJECT / "configs").rglob("*.yaml")}
    assert presets <= set(names)
    assert not any("__pycache__" in name for name in names)
