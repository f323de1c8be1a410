"""What a finished Table 1 cell was made of, against what its row would use now.

`table1.changed_settings` compares the recorded settings; this adds what settings do not show:
the data by its manifest (file names, labels, patients, boxes as a cell records them: a moved
folder is the same data, another selection of patches is not; pixels edited under the same
names are not seen), the backbone weights by file name, and the start model's content (a
retrained start row leaves the cells fine-tuned from it stale).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from common.config.schema import DataConfig
from common.runs.provenance import file_sha256
from common.runs.run_data import read_run_patch_sets

_data_hashes: dict[str, dict[str, str]] = {}
_file_hashes: dict[tuple[str, int, int], str] = {}


def identity_only(node: Any) -> Any:
    """A config node with every data `path` dropped (where data lives is not what it is; the
    manifest hashes say which patches) and `weights` files reduced to their file name."""
    if isinstance(node, dict):
        return {
            k: Path(v).name if k == "weights" and isinstance(v, str) else identity_only(v)
            for k, v in node.items()
            if k != "path"
        }
    if isinstance(node, list):
        return [identity_only(v) for v in node]
    return node


def data_hashes(data: DataConfig) -> dict[str, str]:
    """Manifest hash of each patch set a run of `data` reads (train, validation, tests), as
    run records keep them (`data.<set>.read_manifest_sha256`); read once per data config."""
    key = json.dumps(dataclasses.asdict(data), sort_keys=True, default=str)
    if key not in _data_hashes:
        _data_hashes[key] = read_run_patch_sets(data).hashes()
    return _data_hashes[key]


def _recorded_read_hash(report: Any) -> str | None:
    """A set's manifest hash as read when the cell ran: `read_manifest_sha256`; in an older
    record, `manifest_sha256` where nothing was skipped at loading (then the two agree)."""
    if not isinstance(report, dict):
        return None
    if report.get("read_manifest_sha256"):
        return str(report["read_manifest_sha256"])
    if report.get("manifest_sha256") and not report.get("skipped"):
        return str(report["manifest_sha256"])
    return None


def changed_data(recorded: dict[str, Any], data: DataConfig) -> list[str]:
    """`data <set>: other patches` for each set whose recorded manifest hash (file names,
    labels, patients, boxes) differs from the one `data` reads now (sets an older record
    lacks are not compared)."""
    was = {
        name: sha
        for name, report in recorded.items()
        if (sha := _recorded_read_hash(report)) is not None
    }
    if not was:
        return []
    now = data_hashes(data)
    return [
        f"data {name}: other patches than the cell was trained or tested on"
        for name, sha in was.items()
        if name in now and now[name] != sha
    ]


def cached_sha256(path: Path) -> str:
    """`file_sha256`, once per path, size and modification time (a start model serves many
    cells)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _file_hashes:
        _file_hashes[key] = file_sha256(path)
    return _file_hashes[key]


def start_changed(recorded_sha256: str | None, start: Path) -> str | None:
    """Why a cell's start model is no longer the one it was trained from, or None (also for an
    older record without the hash: unknown)."""
    if recorded_sha256 is None:
        return None
    if not start.is_file():
        return f"its start model {start} is gone (retraining it would give another)"
    if cached_sha256(start) != recorded_sha256:
        return f"its start model {start} has changed since (its row was retrained)"
    return None
