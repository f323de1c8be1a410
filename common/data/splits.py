"""Per-patient splits: seeded, label-stratified, and refusing any patient leakage."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from common.data.patch_set import PatchSet
from common.errors import SplitLeakageError


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
