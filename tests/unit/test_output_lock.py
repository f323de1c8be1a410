"""One mammofl command at a time writes an output folder: a second is refused before it writes
anything, naming the first; a killed command's lock is free at once and the temporaries it
left of its own outputs go when it next runs there."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from common.errors import OutputError
from common.folder_lock import folder_lock
from common.runs.output_lock import (
    LOCK_NAME,
    OWN_OUTPUTS,
    SERVER_LOCK_NAME,
    check_no_server_app,
    output_lock,
)
from simulations.cli import main
from tests.killed_writes import killed_mid_write

# each command with the option naming the folder it writes (DIR) and what it needs besides
COMMANDS = [
    (["train", "experiment=tiny", "out_dir=DIR"], "out_dir"),
    (["table1", "rows=[real]", "seeds=[42]", "out_dir=DIR"], "out_dir"),
    (["tune", "space=dp_eps6", "out_dir=DIR"], "out_dir"),
    (["gan", "train", "gan_preset=tiny", "out_dir=DIR"], "out_dir"),
    (["gan", "train", "gan_preset=tiny", "seeds=[1,2]", "out_dir=DIR"], "out_dir"),
    (["gan", "generate", "checkpoint=none.pt", "out_dir=DIR"], "out_dir"),
    (["audit", "experiment=tiny", "out_dir=DIR"], "out_dir"),
    (["audit", "compare=[a,b]", "out_dir=DIR"], "out_dir"),
    (["federate", "experiment=federated/tiny", "out_dir=WORKSPACE", "run_dir=DIR"], "run_dir"),
    (["loopback", "work_dir=DIR"], "work_dir"),
    (["loopback", "work_dir=ELSEWHERE", "run_dir=DIR"], "run_dir"),
]


@pytest.mark.parametrize(("command", "option"), COMMANDS, ids=[" ".join(c) for c, _ in COMMANDS])
def test_a_second_command_on_a_folder_in_use_is_refused_before_writing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
    option: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "busy"
    names = {"DIR": folder, "WORKSPACE": tmp_path / "ws", "ELSEWHERE": tmp_path / "else"}
    split = (a.partition("=") for a in command)
    args = [f"{key}={names.get(value, value)}" if sep else key for key, sep, value in split]
    with output_lock("train", out_dir=folder):  # another process's flock: one per open file
        assert main(args) == 2
        assert [p.name for p in folder.iterdir()] == [LOCK_NAME]  # nothing written, nothing read
    err = capsys.readouterr().err
    assert f"{folder} is being written by another mammofl command (mammofl train, pid " in err
    assert f"pass another {option}=" in err and "Traceback" not in err


# another process holding a folder's lock (argv: folder, command, lock file name)
_HOLDER = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from common.runs.output_lock import output_lock\n"
    "with output_lock(sys.argv[2], lock_name=sys.argv[3], out_dir=Path(sys.argv[1])):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(60)\n"
)


@contextmanager
def _held_elsewhere(
    folder: Path, command: str = "gan train", lock_name: str = LOCK_NAME
) -> Iterator[int]:
    """A process that holds `folder`'s lock until the block ends (SIGKILLed then); its pid."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(folder), command, lock_name],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()


def test_the_holder_is_named_and_its_lock_is_free_once_it_is_killed(tmp_path: Path) -> None:
    """flock dies with its holder (SIGKILL too): a killed `gan train` never leaves the folder
    locked; while it lives, the refusal names it."""
    with _held_elsewhere(tmp_path) as pid:
        refused = pytest.raises(OutputError, match=f"mammofl gan train, pid {pid}")
        with refused, output_lock("train", out_dir=tmp_path):
            pass
    deadline = time.monotonic() + 10
    while True:  # the kernel releases it as the process goes
        try:
            with output_lock("train", out_dir=tmp_path):
                break
        except OutputError:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_a_command_that_wrote_nothing_leaves_no_folder(tmp_path: Path) -> None:
    """A command refused before it wrote anything (a delta above 1/N found once the data is
    read) leaves no folder; one that wrote something keeps its folder and the lock file."""
    with output_lock("train", out_dir=tmp_path / "a" / "b"):
        assert (tmp_path / "a" / "b" / LOCK_NAME).is_file()
    assert list(tmp_path.iterdir()) == []
    with output_lock("train", out_dir=tmp_path / "c"):
        (tmp_path / "c" / "result.json").write_text("{}")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [LOCK_NAME, "result.json"]


def test_a_lock_file_removed_by_its_last_holder_is_not_taken_by_a_waiter(tmp_path: Path) -> None:
    """A waiter whose open lock file was removed meanwhile (its holder wrote nothing) takes the
    new one: two holders of one folder (one on the removed file) would not exclude each other."""
    folder = tmp_path / "new"
    waiter_holds = threading.Event()
    release = threading.Event()

    def waiter() -> None:
        with folder_lock(folder / LOCK_NAME, wait=True, guarded={}, holder="waiter"):
            waiter_holds.set()
            release.wait(10)

    thread = threading.Thread(target=waiter)
    with output_lock("train", out_dir=folder):
        thread.start()
        deadline = time.monotonic() + 10
        while _open_copies(folder / LOCK_NAME) < 2:  # until the waiter has opened it
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert not waiter_holds.is_set()
    assert waiter_holds.wait(10)
    try:
        assert (folder / LOCK_NAME).read_text().strip() == "waiter"  # the file it holds
        refused = pytest.raises(OutputError, match=r"\(waiter\)")
        with refused, output_lock("train", out_dir=folder):
            pass
    finally:
        release.set()
        thread.join(10)


def _open_copies(path: Path) -> int:
    """How many of this process's file descriptors are open on `path`."""
    fds = Path("/proc/self/fd").iterdir()
    return sum(1 for fd in fds if os.path.realpath(fd) == str(path.resolve()))


_FORKING_HOLDER = (
    "import os, sys, time\n"
    "from pathlib import Path\n"
    "from common.runs.output_lock import output_lock\n"
    "with output_lock('table1', out_dir=Path(sys.argv[1])):\n"
    "    child = os.fork()\n"
    "    if child == 0:\n"
    "        os.write(1, b'child running\\n')  # one write: atomic on a pipe\n"
    "        time.sleep(60)\n"
    "        os._exit(0)\n"
    "    os.write(1, f'{child}\\n'.encode())\n"
    "    time.sleep(60)\n"
)


def test_a_forked_child_does_not_keep_a_killed_holders_lock(tmp_path: Path) -> None:
    """A process pool's or DataLoader's forked worker shares its parent's open files: one that
    outlives a SIGKILLed command must not keep the folder locked."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _FORKING_HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    # the child's line: it runs (its fork handlers ran); the parent's: the child's pid
    lines = sorted(holder.stdout.readline().strip() for _ in range(2))
    assert lines[1] == "child running", lines
    child = int(lines[0])
    try:
        refused = pytest.raises(OutputError, match="mammofl table1")
        with refused, output_lock("train", out_dir=tmp_path):
            pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        os.kill(child, 0)  # the forked child still runs
        with output_lock("train", out_dir=tmp_path):
            pass
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def test_one_folder_named_twice_is_locked_once(tmp_path: Path) -> None:
    """`mammofl loopback work_dir=D run_dir=D` (one folder by two names): its second lock of
    D must not refuse itself."""
    alias = tmp_path.parent / f"{tmp_path.name}-alias"
    alias.symlink_to(tmp_path, target_is_directory=True)
    with output_lock("loopback", work_dir=tmp_path, run_dir=alias):
        refused = pytest.raises(OutputError, match="pass another work_dir=")
        with refused, output_lock("loopback", work_dir=tmp_path):
            pass


# a killed run's temporaries, by command: (target it was writing, whether the command owns it)
KILLED_WRITES = {
    "train": [("model.pt", True), ("result.json", True), ("notes.txt", False)],
    "table1": [
        ("cells/real/seed42/model.pt", True),
        ("table1.md", True),
        ("privacy_utility.png", True),
        ("_features/shard-train.pt", False),  # a cache: not named in OWN_OUTPUTS
    ],
    "tune": [("trials/c01/seed42.json", True), ("tune.csv", True), ("other.json", False)],
    "gan train": [
        ("checkpoints/epoch_00003.pt", True),
        ("seed42/checkpoints/epoch_00001.pt", True),
        ("samples/epoch_00003.png", True),
        ("checkpoints/best.pt", False),
    ],
}


@pytest.mark.parametrize("command", sorted(KILLED_WRITES))
def test_a_killed_runs_temporaries_go_when_the_command_next_runs_there(
    tmp_path: Path, command: str
) -> None:
    """A SIGKILLed `gan train` (or train, table1, tune) leaves the temporary of the output it
    was writing, a whole model for a checkpoint; the next run of the command in that folder
    removes it, and nothing it does not own."""
    assert command in OWN_OUTPUTS
    for target, _ in KILLED_WRITES[command]:
        killed_mid_write(tmp_path / target)
    with output_lock(command, out_dir=tmp_path):
        for target, owned in KILLED_WRITES[command]:
            left = list((tmp_path / target).parent.glob(f".{Path(target).name}.*.tmp"))
            assert len(left) == (0 if owned else 1), target


def test_a_launcher_and_its_server_app_hold_a_run_dir_together(tmp_path: Path) -> None:
    """`mammofl federate` runs the ServerApp in its own process: the ServerApp's lock is a
    file of its own, which the launcher only checks is free."""
    with output_lock("federate", run_dir=tmp_path):
        check_no_server_app(tmp_path)
        with output_lock("ServerApp", lock_name=SERVER_LOCK_NAME, run_dir=tmp_path):
            pass


@pytest.mark.parametrize("command", ["federate", "loopback"])
def test_a_launcher_is_refused_while_a_server_app_writes_its_run_dir(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    """A ServerApp of `flwr run .`, or one a SIGKILLed `mammofl loopback` left running with
    its SuperLink, still writes run_dir: a launcher there (`fresh=true` would delete the
    sites' states under it) stops before touching anything."""
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    args = [f"run_dir={run_dir}", "fresh=true"]
    args += ["experiment=federated/tiny", f"out_dir={tmp_path / 'ws'}"]
    args += [f"work_dir={tmp_path / 'w'}"] if command == "loopback" else []
    (run_dir / "sites" / "site-a" / "state").mkdir(parents=True)
    with _held_elsewhere(run_dir, "ServerApp", SERVER_LOCK_NAME) as pid:
        assert main([command, *args]) == 2
    assert f"(mammofl ServerApp, pid {pid})" in capsys.readouterr().err
    assert (run_dir / "sites" / "site-a" / "state").is_dir()  # not reset
    assert not (tmp_path / "ws").exists()  # no workspace prepared


def test_a_second_deployed_run_on_a_run_dir_in_use_is_refused(tmp_path: Path) -> None:
    """Two ServerApps on one run_dir (a run submitted again while the first runs) would
    interleave one checkpoint and summary: the second stops before its first round."""
    from flwr.app import Context, RecordDict

    from server.app import RunRefused
    from server.app import main as server_main

    overrides = f"out_dir={tmp_path / 'workspace'} run_dir={tmp_path}"
    context = Context(
        run_id=2,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config={"experiment": "federated/tiny", "overrides": overrides},
    )
    grid = object()  # never reached: the refusal comes first
    with (
        _held_elsewhere(tmp_path, "ServerApp", SERVER_LOCK_NAME) as pid,
        pytest.raises((OutputError, RunRefused)) as refused,
    ):
        server_main(grid, context)  # type: ignore[arg-type]
    message = f"is being written by another mammofl command (mammofl ServerApp, pid {pid})"
    assert message in str(refused.value)
    assert [p.name for p in tmp_path.iterdir()] == [SERVER_LOCK_NAME]


@pytest.mark.parametrize("below", ["", "sub/run"])
def test_a_file_where_the_folder_goes_is_named_with_the_fix(tmp_path: Path, below: str) -> None:
    """out_dir=a file (or a path through one) said only "[Errno 17] File exists"."""
    (tmp_path / "results.csv").write_text("a,b\n")
    folder = tmp_path / "results.csv" / below if below else tmp_path / "results.csv"
    refused = pytest.raises(OutputError, match=r"results\.csv is a file, not a folder\): choose")
    with refused, output_lock("train", out_dir=folder):
        pass
    assert (tmp_path / "results.csv").read_text() == "a,b\n"
