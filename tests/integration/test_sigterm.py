"""Hardening (issue 8): SIGTERM during a long job saves its state and exits cleanly (143).

Real subprocesses on tiny phantom data: `mammofl gan train` checkpoints its last finished epoch
and resumes from it; `mammofl table1` keeps its finished cells and leaves no partial one. In
process: the handler itself (libraries cannot take SIGTERM away, `except Exception` cannot
swallow it) and the CLI's exit code and message.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from common.runs.termination import Terminated, note_saved, sigterm_raises
from simulations import cli
from tests.job_processes import JobProcesses

PROJECT = Path(__file__).resolve().parents[2]
TINY_CELL = [
    "data=phantom",
    "model=tiny_swin",
    "data.image_size=32",
    "train.epochs=3",
    "train.batch_size=16",
    "train.lr=1e-3",
    "eval.bootstrap=20",
]


def _sigterm_to_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler raises long before this ends
    pytest.fail("SIGTERM did not raise Terminated")


def test_sigterm_raises_terminated_past_except_exception() -> None:
    before, install = signal.getsignal(signal.SIGTERM), signal.signal
    caught = []
    with pytest.raises(Terminated), sigterm_raises():
        # a library asking for SIGTERM (ray.init installs sys.exit) is declined
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
        try:
            _sigterm_to_self()
        except Exception as error:
            caught.append(error)
    assert caught == []
    assert signal.getsignal(signal.SIGTERM) == before
    assert signal.signal is install  # the guard is gone with the block


@pytest.mark.parametrize(
    ("command", "saved", "args", "expected"),
    [
        ("train", ["/run/gan/checkpoints"], [], "state saved in /run/gan/checkpoints"),
        ("table1", [], ["out_dir=/run/t1"], "state saved in /run/t1/cells (finished cells"),
        # prepare keeps the patches it cut (it said "no partial result was written")
        ("prepare", [], ["out_dir=/site"], "state saved in /site/images (the patches cut so far"),
        ("train", [], [], "no partial result was written"),
    ],
)
def test_the_cli_exits_143_with_where_the_state_is(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    saved: list[str],
    args: list[str],
    expected: str,
) -> None:

    def job(_: object) -> int:
        for path in saved:
            note_saved(path)
        _sigterm_to_self()
        return 0

    monkeypatch.setitem(cli.COMMANDS, command, job)
    assert cli.main([command, *args]) == 143
    err = capsys.readouterr().err
    assert f"mammofl {command}: stopped by SIGTERM; {expected}" in err


@pytest.mark.parametrize("charged", [True, False])
def test_an_interrupted_loopback_names_its_run_dir_once_it_holds_a_federation(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    charged: bool,
) -> None:
    """`mammofl loopback` keeps its run under work_dir/run: once a site ledger is charged
    there a rerun is refused, so "a rerun starts again" was wrong (said after round 1)."""
    if charged:
        ledger = tmp_path / "run" / "sites" / "site-a" / "state" / "ledger.json"
        ledger.parent.mkdir(parents=True)
        ledger.write_text('{"events": [{"round": 1, "status": "reserved"}]}')

    def job(_: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "loopback", job)
    assert cli.main(["loopback", f"work_dir={tmp_path}"]) == 130
    err = capsys.readouterr().err
    if charged:
        assert f"interrupted; state saved in {tmp_path}/run (server/checkpoint.pt" in err
        assert "federation.resume=true" in err
    else:
        assert "interrupted; no partial result was written (a rerun starts again)" in err


def _start(
    args: list[str], logs: Path, env: dict[str, str], job: JobProcesses | None = None
) -> subprocess.Popen[bytes]:
    logs.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.Popen(
        [sys.executable, "-m", "simulations.cli", *args],
        cwd=PROJECT,
        env=job.env(full_env) if job else full_env,
        stdout=(logs / "stdout").open("wb"),
        stderr=(logs / "stderr").open("wb"),
    )


def _wait_until(
    process: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    timeout: float = 240,
    job: JobProcesses | None = None,
) -> None:
    """Poll `ready` until it holds; `job` records the process tree at each poll, the last
    one included."""
    deadline = time.monotonic() + timeout
    while True:
        if job is not None:
            job.record(process.pid)
        if ready():
            return
        if process.poll() is not None:
            pytest.fail(f"the job ended ({process.returncode}) before it could be interrupted")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the job never reached the point to interrupt")
        time.sleep(0.2)


def _terminate(process: subprocess.Popen[bytes], logs: Path) -> str:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    err = (logs / "stderr").read_text(errors="replace")
    assert "Traceback" not in err
    return err


def _no_temporary_files(root: Path) -> None:
    assert [p for p in root.rglob(".*.tmp")] == []


def test_gan_train_checkpoints_its_last_epoch_and_resumes(
    phantom_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "gan"
    args = [
        "gan",
        "train",
        "gan_preset=tiny",
        "data.format=patchset",
        f"data.path={phantom_dir / 'train'}",
        "data.split=null",
        "train.checkpoint_every=1000",  # nothing on disk unless SIGTERM saves it
        f"out_dir={out}",
    ]
    logs = tmp_path / "logs1"
    process = _start([*args, "train.epochs=1000"], logs, {})

    def epochs_done() -> int:
        counts = re.findall(r"gan epochs:[^|]*\|[^|]*\| *(\d+)/1000", (logs / "stderr").read_text())
        return int(counts[-1]) if counts else 0

    _wait_until(process, lambda: epochs_done() >= 2)
    err = _terminate(process, logs)
    assert f"mammofl gan: stopped by SIGTERM; state saved in {out / 'checkpoints'}" in err
    (checkpoint,) = (out / "checkpoints").iterdir()
    state = torch.load(checkpoint, weights_only=False)
    epoch = state["epoch"]
    assert epoch >= 2 and checkpoint.name == f"epoch_{epoch:05d}.pt"
    assert len(state["history"]) == epoch
    _no_temporary_files(out)

    logs = tmp_path / "logs2"
    rerun = _start([*args, f"train.epochs={epoch + 1}"], logs, {})
    assert rerun.wait(timeout=240) == 0
    assert f"resumed from {checkpoint} (epoch {epoch})" in (logs / "stderr").read_text()
    assert json.loads((logs / "stdout").read_text())["epoch"] == epoch + 1
    resumed = torch.load(out / "checkpoints" / f"epoch_{epoch + 1:05d}.pt", weights_only=False)
    assert resumed["history"][:epoch] == state["history"]


@pytest.mark.slow
def test_table1_keeps_finished_cells_and_no_partial_one(phantom_dir: Path, tmp_path: Path) -> None:
    from simulations.table1 import cell_dir, run_one

    out = tmp_path / "table1"
    logs = tmp_path / "logs"
    # 300 epochs (about 6 s a cell here): seed 43 is still training when SIGTERM arrives;
    # 3 epochs take under a second and the signal could land after its result was written
    cell = [a.replace("train.epochs=3", "train.epochs=300") for a in TINY_CELL]
    args = ["table1", "rows=[real_eps6]", "seeds=[42,43]", f"out_dir={out}", *cell]
    process = _start(args, logs, {"MAMMOFL_PHANTOM": str(phantom_dir)})
    _wait_until(process, lambda: "seed 43: training" in (logs / "stderr").read_text())
    err = _terminate(process, logs)
    assert f"mammofl table1: stopped by SIGTERM; state saved in {out / 'cells'}" in err
    done = cell_dir(out, "real_eps6", 42) / "result.json"
    record = json.loads(done.read_text())  # complete and valid
    assert record["privacy"]["epsilon_spent"] <= 6
    assert not (cell_dir(out, "real_eps6", 43) / "result.json").exists()
    _no_temporary_files(out)
    # a rerun skips the finished cell (same file, not retrained) and would redo seed 43
    stamp = done.stat().st_mtime_ns
    assert run_one(out, "real_eps6", 42, cell) == done.parent
    assert done.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_federate_stops_mid_round_with_its_state_intact(tmp_path: Path) -> None:
    """Ray would take SIGTERM (sys.exit, or its C++ handler's abort); the job keeps it, stops
    the simulation and its Ray processes, and leaves the server and site states loadable."""
    out = tmp_path / "federated"
    logs = tmp_path / "logs"
    job = JobProcesses(str(tmp_path))
    process = _start(["federate", "experiment=federated/tiny", f"out_dir={out}"], logs, {}, job)
    _wait_until(process, lambda: "round 1:" in (logs / "stderr").read_text(), 400, job)
    err = _terminate(process, logs)
    assert f"mammofl federate: stopped by SIGTERM; state saved in {out} (" in err
    assert torch.load(out / "server" / "checkpoint.pt", weights_only=False)["round"] == 0
    for ledger in (out / "sites").glob("*/state/ledger.json"):
        json.loads(ledger.read_text())
    _no_temporary_files(out)
    assert job.wait_until_gone(10) == [], "Ray processes outlived the stopped job"


@pytest.mark.slow
def test_federate_stops_on_one_ctrl_c(tmp_path: Path) -> None:
    """Ctrl-C reaches the whole foreground process group (the job and Ray's workers): one
    press ends the job within seconds (130), with where its state is and no traceback (it
    kept running on Flower's ServerApp thread, and a second press printed a traceback)."""
    out = tmp_path / "federated"
    logs = tmp_path / "logs"
    logs.mkdir(parents=True)
    args = ["federate", "experiment=federated/tiny", f"out_dir={out}"]
    job = JobProcesses(str(tmp_path))
    process = subprocess.Popen(
        [sys.executable, "-m", "simulations.cli", *args],
        cwd=PROJECT,
        env=job.env({**os.environ, "HF_HUB_OFFLINE": "1"}),
        stdout=(logs / "stdout").open("wb"),
        stderr=(logs / "stderr").open("wb"),
        start_new_session=True,  # its own process group, as a shell's foreground job
    )
    _wait_until(process, lambda: "round 1:" in (logs / "stderr").read_text(), 400, job)
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(timeout=60) == 130
    err = (logs / "stderr").read_text(errors="replace")
    assert "Traceback" not in err
    assert f"mammofl federate: interrupted; state saved in {out} (" in err
    for ledger in (out / "sites").glob("*/state/ledger.json"):
        json.loads(ledger.read_text())
    _no_temporary_files(out)
    assert job.wait_until_gone(15) == [], "Ray processes outlived the interrupted job"


def test_gan_train_keeps_its_last_epoch_on_ctrl_c(phantom_dir: Path, tmp_path: Path) -> None:
    """Ctrl-C keeps the last finished epoch as SIGTERM does, and says the run resumes there
    (it said "no partial result was written (a rerun starts again)", then resumed)."""
    out = tmp_path / "gan"
    args = ["gan", "train", "gan_preset=tiny", "data.format=patchset"]
    args += [f"data.path={phantom_dir / 'train'}", "data.split=null"]
    args += ["train.checkpoint_every=1000", "train.epochs=1000", f"out_dir={out}"]
    logs = tmp_path / "logs"
    process = _start(args, logs, {})
    _wait_until(
        process, lambda: re.search(r"\| *[2-9]\d*/1000", (logs / "stderr").read_text()) is not None
    )
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    err = (logs / "stderr").read_text(errors="replace")
    assert "Traceback" not in err
    assert f"mammofl gan: interrupted; state saved in {out / 'checkpoints'}" in err
    assert len(list((out / "checkpoints").glob("epoch_*.pt"))) == 1
