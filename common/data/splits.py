"""Per-patient splits: seeded, label-stratified, and refusing any patient leakage."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from common.data.patch_set import PatchSet
from common.errors import DataError, SplitLeakageError


def patient_labels(patch_set: PatchSet) -> dict[str, int]:
    """One label per patient: the majority of its patches (ties count as malignant)."""
    votes: dict[str, Counter[int]] = defaultdict(Counter)
    for record in patch_set.records:
        votes[record.patient_id][record.label] += 1
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
    rest_idx = [i for i, r in enumerate(patch_set.records) if r.patient_id not in held]
    held_idx = [i for i, r in enumerate(patch_set.records) if r.patient_id in held]
    rest = patch_set.subset(rest_idx, f"{patch_set.name}:train")
    held_out = patch_set.subset(held_idx, f"{patch_set.name}:holdout")
    assert_disjoint_patients({"train": rest, "holdout": held_out})
    return rest, held_out


def assert_disjoint_patients(sets: dict[str, PatchSet]) -> None:
    """Raise if any real patient appears in two of the named sets."""
    seen: dict[str, str] = {}
    for name, patch_set in sets.items():
        for patient in {r.patient_id for r in patch_set.records if r.source == "real"}:
            if patient in seen and seen[patient] != name:
                raise SplitLeakageError(
                    f"patient {patient!r} is in both {seen[patient]!r} and {name!r}; "
                    "splits must be per patient (re-split, or fix the manifests)"
                )
            seen[patient] = name


SPLIT_NAMES = ("train", "test")


def read_prepared_split(folder: Path, split: str) -> PatchSet:
    """The records of one split of a prepared site (`mammofl prepare` output): the one library
    function every reader of a prepared set uses to take its split (train or test).

    Reads `folder/manifest.csv` and `folder/split.csv` (patient_id, split). Raises DataError
    when either is missing, or when a manifest patient has no split.
    """
    import pandas as pd

    from common.data.readers import read_manifest

    if split not in SPLIT_NAMES:
        raise DataError(f"split {split!r}: choose one of {SPLIT_NAMES}")
    table = folder / "split.csv"
    if not table.is_file():
        raise DataError(f"{table} not found: is {folder} a `mammofl prepare` output?")
    frame = pd.read_csv(table, dtype=str, keep_default_na=False)
    if not {"patient_id", "split"} <= set(frame.columns):
        raise DataError(f"{table}: columns patient_id and split expected")
    split_of = dict(zip(frame["patient_id"], frame["split"], strict=True))
    patch_set = read_manifest(folder)
    unknown = sorted({p for p in patch_set.patients if p not in split_of})
    if unknown:
        raise DataError(f"{table}: no split for patients {unknown[:5]}; rerun mammofl prepare")
    chosen = [i for i, r in enumerate(patch_set.records) if split_of[r.patient_id] == split]
    if not chosen:
        raise DataError(f"{folder}: no {split} patients in {table}")
    subset = patch_set.subset(chosen, f"{patch_set.name}:{split}")
    subset.skipped = patch_set.skipped
    return subset


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
    chosen = [i for i, r in enumerate(patch_set.records) if share[r.patient_id] == index]
    return patch_set.subset(chosen, f"{patch_set.name}:part{index}of{count}")
