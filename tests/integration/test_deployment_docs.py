"""docs/deployment.md's step-by-step commands, run in order as written (one bash session, the
page's own variables pointed at a temporary folder and the tiny preset), then its stop command:
three registered SuperNodes complete the whole federated/tiny run (MCGANs, SynPre, 3 DP rounds)
over TLS, and no process is left."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import psutil
import pytest

from simulations.flower_processes import flower_env, flwr_cli, free_port, wait_for

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[2]
PAGE = PROJECT / "docs" / "deployment.md"


def documented(section: str) -> str:
    """The ```bash blocks between `<!-- section: begin -->` and `<!-- section: end -->`."""
    text = PAGE.read_text()
    match = re.search(rf"<!-- {section}: begin -->(.*?)<!-- {section}: end -->", text, re.S)
    assert match, f"{PAGE} has no {section} section"
    blocks = re.findall(r"```bash\n(.*?)```", match.group(1), re.S)
    assert blocks
    return "\n".join(blocks)


def _ports_free(first: int, count: int) -> bool:
    used = {c.laddr.port for c in psutil.net_connections("inet") if c.laddr}
    return not any(p in used for p in range(first, first + count))


def _ours(work: Path, port: int) -> list[str]:
    markers = [str(work), *(f":{p}" for p in range(port, port + 4))]
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        line = " ".join(process.info.get("cmdline") or [])
        if any(m in line for m in markers) and "pytest" not in line:
            found.append(line[:160])
    return found


def test_documented_steps_work_in_order(tmp_path: Path) -> None:
    work = tmp_path / "consortium"
    port = wait_for("4 free ports", lambda: (p := free_port()) and _ports_free(p, 4) and p, 30)
    env = flower_env(work / "flwr-home")
    env.update(
        WORK=str(work),
        PORT=str(port),
        EXPERIMENT="federated/tiny",
        OVERRIDES="",
    )
    env.pop("FLWR_HOME")  # the page sets it
    script = "set -euo pipefail\n" + documented("steps")
    flwr_env = {**env, "FLWR_HOME": str(work / "flwr-home")}
    try:
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=PROJECT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        runs = flwr_cli(["list", "consortium"], flwr_env)["runs"] if done.returncode == 0 else []
    finally:
        stop = subprocess.run(
            ["bash", "-c", documented("stop")], cwd=PROJECT, env=env, capture_output=True
        )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert stop.returncode == 0, stop.stderr
    assert [r["status"] for r in runs] == ["finished:completed"], runs
    result = json.loads((work / "run" / "result.json").read_text())
    assert result["rounds_completed"] == 3
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    assert sorted(metrics["synpre"]["sites"]) == ["site-a", "site-b", "site-c"]
    # the tiny sites' validation sets have fewer than 32 patches of a class and the documented
    # node configs do not consent to share their metrics: the sites sent none, said why
    scored = [site for r in metrics["rounds"] for site in r["sites"].values()]
    assert scored and all(site == {} for site in scored)
    for name in ("site-a", "site-b", "site-c"):
        assert "local scores withheld" in (work / "state" / name / "site.log").read_text()
    ledger = json.loads((work / "run" / "ledger.json").read_text())
    assert sorted(ledger["sites"]) == ["site-a", "site-b", "site-c"]
    for name, site in ledger["sites"].items():  # each hospital's own state dir, as configured
        own = json.loads((work / "state" / name / "ledger.json").read_text())
        assert site["events"] == own["events"] and len(own["events"]) == 3
        # no score left the site: its only use without DP is the MCGAN
        assert site["non_dp_uses"] == own["non_dp_uses"]
        assert [use["kind"] for use in own["non_dp_uses"]] == ["mcgan"]
        assert site["synthetic_guarantee"] == "no formal guarantee (MCGAN without DP)"
        assert 0 < site["epsilon"] <= site["budget"] == 6
    assert wait_for("no process left", lambda: not _ours(work, port), 60)
