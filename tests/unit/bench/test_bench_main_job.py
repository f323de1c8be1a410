"""`mammofl bench main-job` empties its out_dir before each run: only a folder it wrote itself,
never one holding a federation's ledgers, never while another mammofl command writes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import ConfigError, OutputError
from common.runs import output_lock as locks
from common.runs.output_lock import LOCK_FILES, LOCK_NAME, SERVER_LOCK_NAME, output_lock
from simulations.bench_main_job import MARK, clear_own_folder
from simulations.cli import main


def _a_federation(folder: Path) -> Path:
    ledger = folder / "sites" / "site-a" / "state" / "ledger.json"
    ledger.parent.mkdir(parents=True)
    ledger.write_text(json.dumps({"events": [{"round": 1, "status": "settled"}]}))
    return ledger


def test_a_folder_it_did_not_write_is_refused_and_kept(tmp_path: Path) -> None:
    ledger = _a_federation(tmp_path / "federated")
    with pytest.raises(ConfigError, match=r"did not write .* new or empty one"):
        clear_own_folder(tmp_path / "federated")
    assert ledger.is_file()


def test_the_command_says_so_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = _a_federation(tmp_path / "federated")
    assert main(["bench", "main-job", f"out_dir={tmp_path / 'federated'}"]) != 0
    err = capsys.readouterr().err
    assert "did not write" in err and "Traceback" not in err
    assert ledger.is_file()


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in LOCK_FILES)


def test_its_own_folder_is_emptied_and_marked(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    clear_own_folder(out)  # new: created and marked
    assert _left(out) == [MARK]
    _a_federation(out)  # what the last run left
    (out / "summary.md").write_text("last run")
    clear_own_folder(out)
    assert _left(out) == [MARK]


def test_nothing_is_deleted_while_another_command_writes_it(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    clear_own_folder(out)
    ledger = _a_federation(out)
    with output_lock("federate", run_dir=out), pytest.raises(OutputError, match="another"):
        clear_own_folder(out)
    assert ledger.is_file()


def test_nothing_is_deleted_under_a_running_server_app(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    clear_own_folder(out)
    ledger = _a_federation(out)
    server_app = output_lock("server app", lock_name=SERVER_LOCK_NAME, run_dir=out)
    with server_app, pytest.raises(OutputError, match="another"):
        clear_own_folder(out)
    assert ledger.is_file()


def test_an_entry_that_will_not_go_is_named_and_the_folder_stays_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "bench"
    clear_own_folder(out)
    for name in ("a", "b", "c"):
        (out / name).mkdir()

    def refuse(path: Path) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(locks.shutil, "rmtree", refuse)
    with pytest.raises(OutputError, match=r"cannot remove .*a \(Permission denied\)"):
        clear_own_folder(out)
    monkeypatch.undo()
    assert (out / MARK).is_file() and (out / LOCK_NAME).is_file()
    clear_own_folder(out)  # the next run empties it
    assert _left(out) == [MARK]
