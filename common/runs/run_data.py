"""Assemble a run's data from config: training parts, selection set, named test sets.

Every set is per patient: a (site, patient) found in two of them stops the run before training,
unless `data.allow_patient_overlap=true` asks for it (the overlap is then logged and recorded
in the data report). A prepared site's manifest gives each reader its own split: train to
train, val to select, test to test.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from common.config.schema import DataConfig, PatchSourceConfig
from common.data.images import LoadedPatches, load_patches
from common.data.patch_set import PatchSet, show_patient
from common.data.readers import read_patch_source
from common.data.splits import assert_disjoint_patients, shared_patients, split_by_patient
from common.errors import DataError

log = logging.getLogger(__name__)
OVERLAP_FIX = "; set data.allow_patient_overlap=true only to use an overlap on purpose"


@dataclass
class RunPatchSets:
    train: PatchSet
    validation: PatchSet
    tests: dict[str, PatchSet]
    overlap: dict[str, list[str]] = field(default_factory=dict)  # allowed: set pair -> patients

    def hashes(self) -> dict[str, str]:
        """Each set's manifest hash (file names, labels, patients, boxes), by set name."""
        named = {"train": self.train, "validation": self.validation, **self.tests}
        return {name: patch_set.manifest_hash() for name, patch_set in named.items()}


@dataclass
class RunData:
    train: LoadedPatches
    validation: LoadedPatches
    tests: dict[str, LoadedPatches]
    overlap: dict[str, list[str]] = field(default_factory=dict)
    # each set's manifest hash as read, before unreadable images were skipped at loading: what
    # a later reading of the same data gives (mammofl table1 compares it)
    read_hashes: dict[str, str] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        sets = {"train": self.train, "validation": self.validation, **self.tests}
        overlap = {"patient_overlap_allowed": self.overlap} if self.overlap else {}
        return overlap | {
            name: {
                **loaded.patch_set.counts(),
                "manifest_sha256": loaded.patch_set.manifest_hash(),
                "read_manifest_sha256": self.read_hashes.get(name),
                "skipped": [{"record": r, "reason": why} for r, why in loaded.patch_set.skipped],
            }
            for name, loaded in sets.items()
        }


def read_run_patch_sets(data: DataConfig, include_tests: bool = True) -> RunPatchSets:
    """Read (not load pixels of) every configured set and check patient disjointness."""
    real = None
    if data.real is not None and data.real.path:
        real = _read(data.real, "data.real", "train")
    validation_cfg = data.validation
    if validation_cfg.holdout_fraction is not None:
        assert real is not None
        real, validation = split_by_patient(
            real, validation_cfg.holdout_fraction, validation_cfg.holdout_seed
        )
    else:
        assert validation_cfg.source is not None
        validation = _read(validation_cfg.source, "data.validation.source", "val")
    parts: list[PatchSet] = []
    if "real" in data.train_on:
        assert real is not None
        parts.append(real)
    if "synthetic" in data.train_on:
        assert data.synthetic is not None
        parts.append(_read(data.synthetic, "data.synthetic", "train"))
    train = parts[0]
    for part in parts[1:]:
        train = train.concat(part, name="+".join(data.train_on))
    tests = {}
    if include_tests:
        tests = {
            name: _read(source, f"data.tests.{name}", "test") for name, source in data.tests.items()
        }
    sets = {"train": train, "validation": validation, **tests}
    if not data.allow_patient_overlap:
        assert_disjoint_patients(sets, fix=OVERLAP_FIX)
        return RunPatchSets(train, validation, tests)
    overlap: dict[str, list[str]] = {}
    for patient, (first, second) in shared_patients(sets).items():
        overlap.setdefault(f"{first}+{second}", []).append(show_patient(patient))
    if overlap:
        log.warning("data.allow_patient_overlap=true: patients shared by %s", sorted(overlap))
    return RunPatchSets(train, validation, tests, overlap)


def _read(source: PatchSourceConfig, key: str, default_split: str) -> PatchSet:
    """`read_patch_source`, its data errors naming the config key to fix (`data.real.path=`)."""
    try:
        return read_patch_source(source, default_split=default_split)
    except DataError as error:
        raise DataError(f"{key} ({key}.path={source.path}): {error}") from error


def load_run_data(data: DataConfig, progress: bool = False) -> RunData:
    sets = read_run_patch_sets(data)
    size = data.image_size
    return RunData(
        train=load_patches(sets.train, size, progress),
        validation=load_patches(sets.validation, size, progress),
        tests={name: load_patches(s, size, progress) for name, s in sets.tests.items()},
        overlap=sets.overlap,
        read_hashes=sets.hashes(),
    )
