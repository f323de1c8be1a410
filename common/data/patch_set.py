"""The patch record and patch set: image path, label (1 = malignant), patient, site, source.

A patch set on disk is a folder of PNGs plus `manifest.csv` with the columns of `MANIFEST_COLUMNS`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from common.atomic_io import atomic_write_text
from common.errors import DataError

MANIFEST_COLUMNS = (
    "path",
    "label",
    "patient_id",
    "site",
    "source",
    "provenance_file",
    "box",
    "laterality",
    "view",
    "pixel_spacing",
    "split",
    "abnormality",
    "pixel_steps",
)
SOURCES = ("real", "synthetic")
SPLITS = ("train", "val", "test")
PATIENT_KEY_SEPARATOR = "\x1f"  # unit separator: cannot occur in a site name or patient id


def patient_key(site: str, patient_id: str) -> str:
    """A patient's identity: (site, patient id); two sites may both have a patient "P_00001"."""
    return f"{site}{PATIENT_KEY_SEPARATOR}{patient_id}"


def show_patient(key: str) -> str:
    """'site/patient' for messages (the key itself holds an unprintable separator)."""
    site, _, patient = key.partition(PATIENT_KEY_SEPARATOR)
    return f"{site}/{patient}" if site else patient


@dataclass(frozen=True)
class PatchRecord:
    """One lesion patch. `path` is absolute; `box` is 'x,y,w,h' in the source image or ''.

    `split` is the prepared split (train / val / test, '' when the set has none),
    `abnormality` the lesion type the source names (e.g. mass, calcification) and `pixel_steps`
    what the image reader applied to the source file (DICOM pixel pipeline, bit depth).
    """

    path: str
    label: int
    patient_id: str
    site: str = ""
    source: str = "real"
    provenance_file: str = ""
    box: str = ""
    laterality: str = ""
    view: str = ""
    pixel_spacing: str = ""
    split: str = ""
    abnormality: str = ""
    pixel_steps: str = ""

    def __post_init__(self) -> None:
        if self.label not in (0, 1):
            raise DataError(f"{self.path}: label {self.label!r} must be 1 (malignant) or 0")
        if self.source not in SOURCES:
            raise DataError(f"{self.path}: source {self.source!r} must be one of {SOURCES}")
        if not self.patient_id:
            raise DataError(f"{self.path}: empty patient id")
        if self.split not in ("", *SPLITS):
            raise DataError(f"{self.path}: split {self.split!r} must be one of {SPLITS} or empty")

    @property
    def patient_key(self) -> str:
        return patient_key(self.site, self.patient_id)


@dataclass
class PatchSet:
    """An ordered list of patch records plus the bad records a reader skipped (with reasons)."""

    records: list[PatchRecord]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    name: str = ""

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    @property
    def patients(self) -> list[str]:
        return [r.patient_id for r in self.records]

    @property
    def patient_keys(self) -> list[str]:
        """(site, patient id) identities, one per record: what splits and DP units group by."""
        return [r.patient_key for r in self.records]

    def subset(self, indices: Iterable[int], name: str | None = None) -> PatchSet:
        return PatchSet([self.records[i] for i in indices], [], name or self.name)

    def concat(self, other: PatchSet, name: str | None = None) -> PatchSet:
        return PatchSet(
            self.records + other.records, self.skipped + other.skipped, name or self.name
        )

    def counts(self) -> dict[str, int]:
        malignant = sum(self.labels)
        return {"total": len(self), "malignant": malignant, "benign": len(self) - malignant}

    def manifest_hash(self) -> str:
        """Content hash of the manifest (paths by file name, labels, patients), order-aware."""
        digest = hashlib.sha256()
        for r in self.records:
            line = f"{Path(r.path).name},{r.label},{r.patient_id},{r.site},{r.source},{r.box}\n"
            digest.update(line.encode())
        return digest.hexdigest()

    def to_frame(self, relative_to: Path | None = None) -> pd.DataFrame:
        rows = []
        for r in self.records:
            path = r.path
            if relative_to is not None:
                path = os.path.relpath(r.path, relative_to)
            rows.append({**r.__dict__, "path": path})
        return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))


def write_manifest(patch_set: PatchSet, folder: Path) -> Path:
    """Write `folder/manifest.csv` atomically, paths relative to the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = patch_set.to_frame(relative_to=folder)
    target = folder / "manifest.csv"
    atomic_write_text(target, frame.to_csv(index=False))
    return target


def with_site(records: Sequence[PatchRecord], site: str) -> list[PatchRecord]:
    return [replace(r, site=site) for r in records]
