import pytest

from common.data.patch_set import PatchRecord, PatchSet
from common.data.splits import assert_disjoint_patients, patient_labels, split_by_patient
from common.errors import SplitLeakageError


def _set(n_patients: int = 40) -> PatchSet:
    records = []
    for p in range(n_patients):
        for view in range(2):
            records.append(PatchRecord(f"/x/{p}_{view}.png", int(p % 3 == 0), f"P{p}"))
    return PatchSet(records)


def test_split_is_per_patient_stratified_and_seeded() -> None:
    data = _set()
    rest, held = split_by_patient(data, 0.25, seed=1)
    assert not set(rest.patients) & set(held.patients)
    assert len(rest) + len(held) == len(data)
    held_labels = patient_labels(held)
    assert sum(held_labels.values()) == round(0.25 * 14)  # 14 malignant patients
    again = split_by_patient(data, 0.25, seed=1)[1]
    assert again.records == held.records
    assert split_by_patient(data, 0.25, seed=2)[1].records != held.records


def test_majority_label_per_patient() -> None:
    records = [PatchRecord("/a", 1, "A"), PatchRecord("/b", 0, "A"), PatchRecord("/c", 0, "A")]
    assert patient_labels(PatchSet(records)) == {"A": 0}


def test_leakage_refused() -> None:
    a = PatchSet([PatchRecord("/a", 1, "P1")])
    b = PatchSet([PatchRecord("/b", 0, "P1")])
    with pytest.raises(SplitLeakageError, match="P1"):
        assert_disjoint_patients({"train": a, "test": b})


def test_synthetic_records_do_not_count_as_patients() -> None:
    a = PatchSet([PatchRecord("/a", 1, "synthetic:x", source="synthetic")])
    assert_disjoint_patients({"train": a, "test": a})
