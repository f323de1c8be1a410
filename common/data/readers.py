"""Readers that turn patch folders into `PatchSet`s: released layout, synthetic folder, manifest.

Released layout (authors of the paper): `<root>/<split>/is_benign_{true,false}/*.png`, patient id
between `__` and `_image` in the file name. Released synthetic folder: `batch_*_<class>.png`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from common.config.schema import PatchSourceConfig
from common.data.csv_table import read_csv_table
from common.data.patch_set import MANIFEST_COLUMNS, PatchRecord, PatchSet
from common.data.splits import select_split
from common.errors import DataError

_RELEASED_NAME = re.compile(
    r"^patient(?P<dataset>.+?)__(?P<patient>.+?)_image.*_is_benign_(?P<b>[01])$"
)
_SYNTHETIC_NAME = re.compile(r"^batch_.*_(?P<cls>malignant|benign)$")
_FOLDER_LABEL = {"is_benign_false": 1, "is_benign_true": 0}


def read_patch_source(
    source: PatchSourceConfig, base: Path | None = None, default_split: str = "all"
) -> PatchSet:
    """Read one configured patch source; `limit` keeps a seeded, label-stratified subset.

    A patch set made by `mammofl prepare` gives the rows of `source.split`, or of
    `default_split` when that is unset: the reader says what it needs (train to train, val to
    select, test to test), so a prepared folder never feeds its test patients to training.
    """
    root = Path(source.path)
    if base is not None and not root.is_absolute():
        root = base / root
    if source.format == "released":
        patch_set = read_released(root, str(source.split))
    elif source.format == "released_synthetic":
        patch_set = read_released_synthetic(root)
    else:
        split = source.split or default_split
        patch_set = select_split(read_manifest(root), split, str(root / "manifest.csv"))
    if source.limit is not None:
        patch_set = stratified_limit(patch_set, source.limit)
    return patch_set


def _require_folder(folder: Path, what: str) -> None:
    if not folder.is_dir():
        raise DataError(f"{what}: folder {folder} not found; check the configured path")


def read_released(root: Path, split: str) -> PatchSet:
    """Released real patches; a file whose name disagrees with its folder's label is skipped."""
    split_dir = root / split
    if not split_dir.is_dir() and (root / "manifest.csv").is_file():
        raise DataError(
            f"released split {split!r}: {root} holds a manifest.csv, so it is a prepared patch "
            "set, not the released folders: read it with format patchset (e.g. "
            "real_format=patchset, or data.real.format=patchset)"
        )
    _require_folder(split_dir, f"released split {split!r}")
    records: list[PatchRecord] = []
    skipped: list[tuple[str, str]] = []
    for folder_name, label in sorted(_FOLDER_LABEL.items()):
        folder = split_dir / folder_name
        _require_folder(folder, f"released split {split!r} class folder")
        for path in sorted(folder.glob("*.png")):
            match = _RELEASED_NAME.match(path.stem)
            if match is None:
                skipped.append((str(path), "file name does not follow patient<ds>__<id>_image..."))
                continue
            if int(match["b"]) != 1 - label:
                skipped.append((str(path), f"is_benign_{match['b']} in name but in {folder_name}"))
                continue
            records.append(
                PatchRecord(
                    path=str(path.resolve()),
                    label=label,
                    patient_id=match["patient"],
                    site=match["dataset"],
                    source="real",
                    provenance_file=path.name,
                )
            )
    if not records:
        raise DataError(f"no patches found under {split_dir}")
    return PatchSet(records, skipped, name=f"released:{split}")


def read_released_synthetic(root: Path) -> PatchSet:
    """Released MCGAN output: each synthetic patch is its own pseudo-patient (no real person)."""
    _require_folder(root, "released synthetic patches")
    records: list[PatchRecord] = []
    skipped: list[tuple[str, str]] = []
    for path in sorted(root.glob("*.png")):
        match = _SYNTHETIC_NAME.match(path.stem)
        if match is None:
            skipped.append((str(path), "name must be batch_<b>_<i>_<malignant|benign>.png"))
            continue
        records.append(
            PatchRecord(
                path=str(path.resolve()),
                label=1 if match["cls"] == "malignant" else 0,
                patient_id=f"synthetic:{path.stem}",
                site="synthetic",
                source="synthetic",
                provenance_file=path.name,
            )
        )
    if not records:
        raise DataError(f"no synthetic patches batch_*_<class>.png found in {root}")
    return PatchSet(records, skipped, name="released:synthetic")


def read_manifest(folder: Path) -> PatchSet:
    """A mammofl patch set: `folder/manifest.csv`, paths relative to the folder."""
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        raise DataError(f"{manifest} not found; a patch set is a folder with manifest.csv")
    table = read_csv_table(manifest, what="patch-set manifest")
    table.require(("path", "label", "patient_id"), "expected " + ", ".join(MANIFEST_COLUMNS))
    records: list[PatchRecord] = []
    skipped: list[tuple[str, str]] = list(table.skipped)
    for csv_row in table.rows:
        row = csv_row.values
        where = table.where(csv_row)
        path = folder / row["path"]
        if not path.is_file():
            skipped.append((where, f"image {path} not found"))
            continue
        try:
            records.append(
                PatchRecord(
                    path=str(path.resolve()),
                    label=int(row["label"]),
                    patient_id=str(row["patient_id"]).strip(),  # " P1" and "P1": one patient
                    site=row.get("site", ""),
                    source=row.get("source", "") or "real",
                    provenance_file=row.get("provenance_file", ""),
                    box=row.get("box", ""),
                    laterality=row.get("laterality", ""),
                    view=row.get("view", ""),
                    pixel_spacing=row.get("pixel_spacing", ""),
                    split=row.get("split", "").strip(),
                    abnormality=row.get("abnormality", ""),
                    pixel_steps=row.get("pixel_steps", ""),
                )
            )
        except (ValueError, DataError) as error:
            skipped.append((where, str(error)))
    if not records:
        raise DataError(f"{manifest}: no usable rows ({len(skipped)} skipped)")
    return PatchSet(records, skipped, name=str(folder))


def stratified_limit(patch_set: PatchSet, limit: int, seed: int = 0) -> PatchSet:
    """Keep `limit` records, classes in their original proportion, chosen with a fixed seed."""
    if limit >= len(patch_set):
        return patch_set
    labels = np.asarray(patch_set.labels)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for label in (0, 1):
        members = np.flatnonzero(labels == label)
        share = max(1, round(limit * len(members) / len(labels))) if len(members) else 0
        chosen.extend(rng.choice(members, size=min(share, len(members)), replace=False).tolist())
    kept = patch_set.subset(sorted(chosen))
    kept.skipped = patch_set.skipped
    return kept
