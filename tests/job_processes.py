"""The processes one test's job started, so a test can check that none outlives the job.

Matching names such as `raylet` would also find the jobs of other tests running in parallel
(pytest-xdist) or another user's Ray. Two marks find a job's own processes instead:
- a tag in the job's environment, inherited by what it starts (Ray's GCS server, raylet and
  workers; Flower's SuperExec and ClientApps);
- the job's process tree, recorded while it runs: the raylet starts its agents
  (`ray::DashboardAgent`, `ray::RuntimeEnvAgent`) with an environment of its own.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import psutil

TAG_VARIABLE = "MAMMOFL_TEST_JOB"


class JobProcesses:
    """One job's processes: tag its environment, record its tree, ask what is left."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.seen: dict[int, float] = {}  # pid -> creation time (a reused pid is not ours)

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """The environment `base` with the job's tag."""
        return {**base, TAG_VARIABLE: self.tag}

    def record(self, root_pid: int) -> None:
        """Remember the process `root_pid` and all its descendants as they are now."""
        try:
            root = psutil.Process(root_pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for process in tree:
            try:
                self.seen[process.pid] = process.create_time()
            except psutil.NoSuchProcess:
                continue

    def running(self) -> list[str]:
        """'pid: command line' of each live process recorded or carrying the tag."""
        found = []
        for process in psutil.process_iter(["pid", "cmdline", "status", "create_time"]):
            info = process.info
            if info["status"] == psutil.STATUS_ZOMBIE:
                continue  # exited, waiting for its parent to collect it
            ours = self.seen.get(info["pid"]) == info["create_time"]
            if not ours:
                try:
                    ours = process.environ().get(TAG_VARIABLE) == self.tag
                except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
                    continue
            if ours:
                found.append(f"{info['pid']}: {' '.join(info['cmdline'] or [])[:160]}")
        return found

    def wait_until_gone(self, timeout: float) -> list[str]:
        """Poll until none of the job's processes runs or `timeout` seconds pass; returns
        those still running."""
        deadline = time.monotonic() + timeout
        while (left := self.running()) and time.monotonic() < deadline:
            time.sleep(0.5)
        return left

    def run(
        self, args: list[str], cwd: Path, logs: Path, timeout: float, env: dict[str, str]
    ) -> subprocess.CompletedProcess[str]:
        """`subprocess.run` with the tag, recording the tree every second; stdout and stderr
        go through files in `logs`. Raises subprocess.TimeoutExpired (the job killed)."""
        logs.mkdir(parents=True, exist_ok=True)
        out, err = logs / "stdout", logs / "stderr"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = subprocess.Popen(
                args, cwd=cwd, env=self.env(env), stdout=stdout, stderr=stderr
            )
            deadline = time.monotonic() + timeout
            while process.poll() is None:
                self.record(process.pid)
                if time.monotonic() > deadline:
                    process.kill()
                    process.wait()
                    raise subprocess.TimeoutExpired(args, timeout)
                time.sleep(1.0)
        return subprocess.CompletedProcess(
            args,
            process.returncode,
            out.read_text(errors="replace"),
            err.read_text(errors="replace"),
        )
