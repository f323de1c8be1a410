"""Assemble a run's data from config: training parts, selection set, named test sets.

Every set is per patient: a patient found in two of them stops the run before training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.config.schema import DataConfig
from common.data.images import LoadedPatches, load_patches
from common.data.patch_set import PatchSet
from common.data.readers import read_patch_source
from common.data.splits import assert_disjoint_patients, split_by_patient


@dataclass
class RunPatchSets:
    train: PatchSet
    validation: PatchSet
    tests: dict[str, PatchSet]


@dataclass
class RunData:
    train: LoadedPatches
    validation: LoadedPatches
    tests: dict[str, LoadedPatches]

    def report(self) -> dict[str, Any]:
        sets = {"train": self.train, "validation": self.validation, **self.tests}
        return {
            name: {
                **loaded.patch_set.counts(),
                "manifest_sha256": loaded.patch_set.manifest_hash(),
                "skipped": [{"record": r, "reason": why} for r, why in loaded.patch_set.skipped],
            }
            for name, loaded in sets.items()
        }


def read_run_patch_sets(data: DataConfig, include_tests: bool = True) -> RunPatchSets:
    """Read (not load pixels of) every configured set and check patient disjointness."""
    real = read_patch_source(data.real) if data.real is not None and data.real.path else None
    validation_cfg = data.validation
    if validation_cfg.holdout_fraction is not None:
        assert real is not None
        real, validation = split_by_patient(
            real, validation_cfg.holdout_fraction, validation_cfg.holdout_seed
        )
    else:
        assert validation_cfg.source is not None
        validation = read_patch_source(validation_cfg.source)
    parts: list[PatchSet] = []
    if "real" in data.train_on:
        assert real is not None
        parts.append(real)
    if "synthetic" in data.train_on:
        assert data.synthetic is not None
        parts.append(read_patch_source(data.synthetic))
    train = parts[0]
    for part in parts[1:]:
        train = train.concat(part, name="+".join(data.train_on))
    tests = {}
    if include_tests:
        tests = {name: read_patch_source(source) for name, source in data.tests.items()}
    assert_disjoint_patients({"train": train, "validation": validation, **tests})
    return RunPatchSets(train, validation, tests)


def load_run_data(data: DataConfig, progress: bool = False) -> RunData:
    sets = read_run_patch_sets(data)
    size = data.image_size
    return RunData(
        train=load_patches(sets.train, size, progress),
        validation=load_patches(sets.validation, size, progress),
        tests={name: load_patches(s, size, progress) for name, s in sets.tests.items()},
    )
