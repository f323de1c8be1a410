"""Per-patient splits: seeded, label-stratified, and refusing any patient leakage."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from common.data.patch_set import SPLITS, PatchSet, show_patient
from common.errors import DataError, SplitLeakageError


def patient_labels(patch_set: PatchSet) -> dict[str, int]:
    """One label per patient (by (site, patient) key): the majority of its patches (ties count
    as malignant)."""
    votes: dict[str, Counter[int]] = defaultdict(Counter)
    for record in patch_set.records:
        votes[record.patient_key][record.label] += 1
    return {p: int(c[1] >= c[0]) for p, c in votes.items()}


def split_by_patient(patch_set: PatchSet, fraction: float, seed: int) -> tuple[PatchSet, PatchSet]:
    """Split off about `fraction` of the patients of each class; returns (rest, held_out)."""
    labels = patient_labels(patch_set)
    rng = np.random.default_rng(seed)
    held: set[str] = set()
    for label in (0, 1):
        patients = sorted(p for p, lab in labels.items() if lab == label)
        count = round(fraction * len(patients))
        if len(patients) >= 2:
            count = min(max(count, 1), len(patients) - 1)
        held.update(rng.permutation(patients)[:count].tolist())
    rest_idx = [i for i, r in enumerate(patch_set.records) if r.patient_key not in held]
    held_idx = [i for i, r in enumerate(patch_set.records) if r.patient_key in held]
    rest = patch_set.subset(rest_idx, f"{patch_set.name}:train")
    held_out = patch_set.subset(held_idx, f"{patch_set.name}:holdout")
    assert_disjoint_patients({"train": rest, "holdout": held_out})
    return rest, held_out


def shared_patients(sets: dict[str, PatchSet]) -> dict[str, tuple[str, str]]:
    """Real patients ((site, patient) keys) found in two of the named sets -> the two names."""
    seen: dict[str, str] = {}
    shared: dict[str, tuple[str, str]] = {}
    for name, patch_set in sets.items():
        for patient in sorted({r.patient_key for r in patch_set.records if r.source == "real"}):
            if patient in seen and seen[patient] != name:
                shared.setdefault(patient, (seen[patient], name))
            seen.setdefault(patient, name)
    return shared


def assert_disjoint_patients(sets: dict[str, PatchSet], fix: str = "") -> None:
    """Raise SplitLeakageError, naming up to 5 patients, if any real patient (site, patient id)
    is in two of the named sets; `fix` is appended to the message (e.g. the override that
    allows a deliberate overlap)."""
    shared = shared_patients(sets)
    if shared:
        first = next(iter(shared.values()))
        names = ", ".join(show_patient(p) for p in list(shared)[:5])
        raise SplitLeakageError(
            f"{len(shared)} patients are in both {first[0]!r} and {first[1]!r} (e.g. {names}); "
            f"splits must be per patient (re-split, or fix the manifests){fix}"
        )


def select_split(patch_set: PatchSet, split: str, where: str) -> PatchSet:
    """The records of one split of a prepared set (its manifest's `split` column), or of all.

    `split` is train, val, test, or all. A set without a split column (a folder of synthetic
    patches, an older manifest) has no test patients to leak: any split name then returns it
    whole. Raises DataError when the chosen split is empty.
    """
    if split not in (*SPLITS, "all"):
        raise DataError(f"split {split!r}: choose one of {', '.join((*SPLITS, 'all'))}")
    if split == "all" or not any(r.split for r in patch_set.records):
        return patch_set
    unlabelled = [r.path for r in patch_set.records if not r.split]
    if unlabelled:
        raise DataError(
            f"{where}: {len(unlabelled)} rows have no split (e.g. {unlabelled[0]}); a prepared "
            "set gives every row train, val or test: rerun mammofl prepare"
        )
    chosen = [i for i, r in enumerate(patch_set.records) if r.split == split]
    if not chosen:
        raise DataError(f"{where}: no {split} rows; choose another split or rerun mammofl prepare")
    subset = patch_set.subset(chosen, f"{patch_set.name}:{split}")
    subset.skipped = patch_set.skipped
    return subset


def read_prepared_split(folder: Path, split: str) -> PatchSet:
    """The records of one split of a prepared site (`mammofl prepare` output): the one library
    function every reader of a prepared set takes its split through (train, val, test or all).

    Reads `folder/manifest.csv`, whose `split` column prepare fills. Raises DataError when the
    manifest is missing or the split is empty.
    """
    from common.data.readers import read_manifest

    patch_set = read_manifest(folder)
    if not all(r.split for r in patch_set.records):
        raise DataError(
            f"{folder / 'manifest.csv'} has no split column (made before splits were kept in "
            "the manifest, or not by mammofl prepare): rerun mammofl prepare into a new folder"
        )
    return select_split(patch_set, split, str(folder / "manifest.csv"))


def patient_partition(patch_set: PatchSet, index: int, count: int, seed: int) -> PatchSet:
    """Share `index` of `count` of a patch set, split per patient (label-stratified, seeded):
    how a simulation deals one data set out to several sites."""
    if not 0 <= index < count:
        raise DataError(f"partition {index} of {count}")
    labels = patient_labels(patch_set)
    rng = np.random.default_rng(seed)
    share: dict[str, int] = {}
    for label in (0, 1):
        patients = rng.permutation(sorted(p for p, lab in labels.items() if lab == label))
        share.update({str(p): k % count for k, p in enumerate(patients)})
    chosen = [i for i, r in enumerate(patch_set.records) if share[r.patient_key] == index]
    return patch_set.subset(chosen, f"{patch_set.name}:part{index}of{count}")
