from pathlib import Path

import pytest

from common.data.patch_set import PatchRecord, PatchSet, patient_key, write_manifest
from common.data.splits import (
    assert_disjoint_patients,
    patient_labels,
    read_prepared_split,
    select_split,
    split_by_patient,
)
from common.errors import DataError, SplitLeakageError


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
    assert patient_labels(PatchSet(records)) == {patient_key("", "A"): 0}


def test_leakage_refused() -> None:
    a = PatchSet([PatchRecord("/a", 1, "P1")])
    b = PatchSet([PatchRecord("/b", 0, "P1")])
    with pytest.raises(SplitLeakageError, match="P1"):
        assert_disjoint_patients({"train": a, "test": b})


def test_synthetic_records_do_not_count_as_patients() -> None:
    a = PatchSet([PatchRecord("/a", 1, "synthetic:x", source="synthetic")])
    assert_disjoint_patients({"train": a, "test": a})


def test_identity_is_site_and_patient() -> None:
    """Two sites may both have a patient "P_00001": not a leak, and two patients to split."""
    a = PatchSet([PatchRecord("/a", 1, "P_00001", site="h1")])
    b = PatchSet([PatchRecord("/b", 0, "P_00001", site="h2")])
    assert_disjoint_patients({"train": a, "test": b})
    with pytest.raises(SplitLeakageError, match="h1/P_00001"):
        assert_disjoint_patients(
            {"train": a, "test": PatchSet([PatchRecord("/c", 0, "P_00001", site="h1")])}
        )
    both = a.concat(b)
    assert len(patient_labels(both)) == 2


def _prepared(folder: Path, with_split: bool = True) -> None:
    records = []
    for k, split in enumerate(("train", "train", "val", "test", "test")):
        image = folder / f"{k}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(b"")
        records.append(PatchRecord(str(image), k % 2, f"P{k}", split=split if with_split else ""))
    write_manifest(PatchSet(records), folder)


def test_each_reader_takes_its_split_from_the_manifest(tmp_path: Path) -> None:
    _prepared(tmp_path)
    assert read_prepared_split(tmp_path, "train").patients == ["P0", "P1"]
    assert read_prepared_split(tmp_path, "val").patients == ["P2"]
    assert read_prepared_split(tmp_path, "test").patients == ["P3", "P4"]
    assert len(read_prepared_split(tmp_path, "all")) == 5
    with pytest.raises(DataError, match="choose one of"):
        read_prepared_split(tmp_path, "holdout")


def test_a_manifest_without_splits_is_not_a_prepared_site(tmp_path: Path) -> None:
    _prepared(tmp_path, with_split=False)
    with pytest.raises(DataError, match="rerun mammofl prepare"):
        read_prepared_split(tmp_path, "train")
    whole = select_split(PatchSet([PatchRecord("/a", 1, "P")]), "train", "x")
    assert len(whole) == 1  # a plain patch set (e.g. synthetic patches) has no test rows
