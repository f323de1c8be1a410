import os
from pathlib import Path

import pytest

from common.atomic_io import atomic_write, atomic_write_text


def test_atomic_write_has_normal_permissions(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    atomic_write_text(target, "hello")
    mask = os.umask(0)
    os.umask(mask)
    assert target.read_text() == "hello" and (target.stat().st_mode & 0o777) == 0o666 & ~mask


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "b.txt"
    target.write_text("old")

    def broken(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_a_private_file_keeps_its_mode_when_replaced(tmp_path: Path) -> None:
    """A ledger or key kept at 0600 stays 0600 after an atomic rewrite."""
    target = tmp_path / "ledger.json"
    atomic_write(target, lambda tmp: Path(tmp).write_text("{}"), mode=0o600)
    atomic_write_text(target, '{"events": []}')
    assert (target.stat().st_mode & 0o777) == 0o600
