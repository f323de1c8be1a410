"""Hardening (issue 8): a write that fails midway never corrupts the previous file.

Each writer of a ledger, a checkpoint or a result is made to fail after part of its bytes
(a full disk), at the flush to disk, at the rename, or by SIGTERM (`Terminated`); the previous
file must stay byte-identical and no temporary file may be left beside it.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import common.atomic_io
from common.atomic_io import atomic_torch_save
from common.eval.records import save_model, write_json
from common.privacy.ledger import LedgerEvent, PrivacyLedger
from common.privacy.ledger_store import LedgerStore
from common.runs.termination import Terminated
from server.checkpoint import ServerState, checkpoint_path, save_checkpoint

PROJECT = Path(__file__).resolve().parents[2]


class DiskFull(OSError):
    def __init__(self) -> None:
        super().__init__(errno.ENOSPC, "No space left on device")


def _ledger(steps: int) -> PrivacyLedger:
    ledger = PrivacyLedger(delta=1e-4)
    ledger.append(LedgerEvent(noise_multiplier=1.1, sample_rate=0.1, steps=steps))
    return ledger


def _server_state(round_number: int) -> ServerState:
    return ServerState(
        round=round_number,
        base_state={"w": torch.full((4,), float(round_number))},
        base_sha="x",
        trainable={},
        strategy={},
        ledgers={},
        history={},
        overrides=[],
    )


# name -> (target under tmp, write version k of it)
WRITERS: dict[str, tuple[str, Callable[[Path, int], None]]] = {
    "ledger": ("state/ledger.json", lambda p, k: LedgerStore(p).save(_ledger(10 * k))),
    "result.json": ("cell/result.json", lambda p, k: write_json(p, {"version": k})),
    "model.pt": ("cell/model.pt", lambda p, k: save_model(p, {"w": torch.full((8,), k)})),
    "server checkpoint": (
        "run/server/checkpoint.pt",
        lambda p, k: save_checkpoint(p.parents[1], _server_state(k)),
    ),
    "gan checkpoint": ("gan/checkpoints/epoch_00001.pt", lambda p, k: atomic_torch_save(p, {k: k})),
}


def _fail_midway(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    def text(self: Path, data: str, *args: Any, **kwargs: Any) -> int:
        with open(self, "w") as handle:
            handle.write(data[: len(data) // 2])
        raise error

    def save(obj: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        with open(target, "wb") as handle:
            handle.write(b"PK\x03\x04 half a zip")
        raise error

    monkeypatch.setattr(Path, "write_text", text)
    monkeypatch.setattr(torch, "save", save)


def _fail_at(monkeypatch: pytest.MonkeyPatch, name: str, error: BaseException) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(common.atomic_io.os, name, broken)


FAILURES: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "disk full midway": lambda mp: _fail_midway(mp, DiskFull()),
    "SIGTERM midway": lambda mp: _fail_midway(mp, Terminated()),
    "fsync fails": lambda mp: _fail_at(mp, "fsync", OSError(errno.EIO, "I/O error")),
    "rename fails": lambda mp: _fail_at(mp, "replace", DiskFull()),
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_failed_write_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str, failure: str
) -> None:
    relative, write = WRITERS[writer]
    target = tmp_path / relative
    write(target, 1)
    before = target.read_bytes()
    folder = sorted(target.parent.iterdir())
    with monkeypatch.context() as patched:
        FAILURES[failure](patched)
        with pytest.raises((OSError, Terminated)):
            write(target, 2)
    assert target.read_bytes() == before
    assert sorted(target.parent.iterdir()) == folder  # no temporary file left behind
    write(target, 3)  # and the next write works
    assert target.read_bytes() != before


def test_the_previous_versions_still_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the failures above the files are not only identical but usable."""
    store = LedgerStore(tmp_path / "ledger.json")
    store.save(_ledger(10))
    save_checkpoint(tmp_path, _server_state(1))
    with monkeypatch.context() as patched:
        _fail_midway(patched, DiskFull())
        with pytest.raises(OSError):
            store.save(_ledger(20))
        with pytest.raises(OSError):
            save_checkpoint(tmp_path, _server_state(2))
    assert store.load(delta=1e-4, accountant="rdp", unit="patch").events[0].steps == 10
    stored = torch.load(checkpoint_path(tmp_path), weights_only=False)
    assert stored["round"] == 1
    assert json.loads((tmp_path / "ledger.json").read_text())["events"][0]["steps"] == 10


def test_data_reaches_the_disk_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_replace = os.replace
    monkeypatch.setattr(common.atomic_io.os, "fsync", lambda fd: calls.append("fsync"))
    monkeypatch.setattr(
        common.atomic_io.os,
        "replace",
        lambda a, b: (calls.append("replace"), real_replace(a, b))[1],
    )
    LedgerStore(tmp_path / "ledger.json").save(_ledger(1))
    assert calls == ["fsync", "replace", "fsync"]  # file, rename, folder


def test_every_torch_save_goes_through_the_atomic_writer() -> None:
    """A plain torch.save(obj, final_path) would leave a truncated checkpoint on failure."""
    offenders = []
    for folder in ("common", "client", "server", "simulations"):
        for path in (PROJECT / folder).rglob("*.py"):
            if path.name == "atomic_io.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"\btorch\.save\(|\.save_pretrained\(|safetensors.*save_file\(", line):
                    offenders.append(f"{path.relative_to(PROJECT)}:{number}: {line.strip()}")
    assert offenders == []
