"""The README's first command, end to end (slow: about 2-3 minutes on 2 CPU cores)."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from tests.job_processes import JobProcesses

PROJECT = Path(__file__).resolve().parents[2]
OUTPUTS = (
    "metrics.json",
    "ledger.json",
    "result.json",
    "summary.md",
    "epsilon_per_round.png",
    "auroc_per_round.png",
    "model.pt",
)


def test_readme_starts_with_the_two_commands() -> None:
    commands = re.findall(r"```bash\n(.*?)```", (PROJECT / "README.md").read_text(), re.S)[0]
    assert commands.splitlines() == [
        "bash .ci/setup && .venv/bin/mammofl federate",
        "bash .ci/setup && .venv/bin/python -m pytest",
    ]
    assert ".venv/bin/python -m pytest" in (PROJECT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_main_job_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "federated"
    job = JobProcesses(str(tmp_path))
    args = [sys.executable, "-m", "simulations.cli", "federate", f"out_dir={out}"]
    done = job.run(args, PROJECT, tmp_path / "logs", 1200, dict(os.environ))
    assert done.returncode == 0, done.stderr[-3000:]
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    ledger = json.loads((out / "ledger.json").read_text())
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    assert len(rounds) >= 3
    assert len(ledger["sites"]) == 3
    for site in ledger["sites"].values():
        assert len(site["epsilon_after_round"]) == len(rounds)
        assert all(e <= site["budget"] for e in site["epsilon_after_round"])
        assert site["epsilon_dp_sgd"] <= site["budget"]
    for arm in ("SynPre + DP rounds", "DP rounds, no SynPre", "site-a alone"):
        assert arm in done.stdout
    assert job.wait_until_gone(10) == []  # nothing left running (Ray's processes included)
