from pathlib import Path

import cv2
import numpy as np
import pytest

from common.config.schema import PatchSourceConfig
from common.data.images import apply_flips, load_patches, to_model_input
from common.data.patch_set import PatchRecord, PatchSet, write_manifest
from common.data.readers import (
    read_patch_source,
    read_released,
    read_released_synthetic,
    stratified_limit,
)
from common.errors import DataError


def _png(path: Path, value: int = 100, size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size, size), value, np.uint8))


def _released(root: Path) -> None:
    train = root / "train"
    _png(train / "is_benign_false" / "patientcbis-ddsm__P_00009_image18_mass6_is_benign_0.png")
    _png(train / "is_benign_false" / "patientcbis-ddsm__P_00010_image19_mass1_is_benign_0.png")
    _png(train / "is_benign_true" / "patientcbis-ddsm__P_00004_image1_mass1_is_benign_1.png")
    # label in the name disagrees with the folder: reported, not used
    _png(train / "is_benign_true" / "patientcbis-ddsm__P_00005_image2_mass1_is_benign_0.png")


def test_released_layout(tmp_path: Path) -> None:
    _released(tmp_path)
    patch_set = read_released(tmp_path, "train")
    assert sorted((r.patient_id, r.label) for r in patch_set.records) == [
        ("P_00004", 0),
        ("P_00009", 1),
        ("P_00010", 1),
    ]
    assert all(r.site == "cbis-ddsm" and r.source == "real" for r in patch_set.records)
    assert len(patch_set.skipped) == 1 and "is_benign_0" in patch_set.skipped[0][1]


def test_released_missing_split_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="val"):
        read_released(tmp_path, "val")


def test_released_synthetic(tmp_path: Path) -> None:
    _png(tmp_path / "batch_0_1_malignant.png")
    _png(tmp_path / "batch_0_2_benign.png")
    _png(tmp_path / "oops.png")
    patch_set = read_released_synthetic(tmp_path)
    assert [(r.label, r.source) for r in patch_set.records] == [(1, "synthetic"), (0, "synthetic")]
    assert len(patch_set.skipped) == 1


def test_manifest_round_trip_and_bad_rows(tmp_path: Path) -> None:
    records = []
    for i in range(3):
        _png(tmp_path / f"p{i}.png")
        records.append(PatchRecord(str(tmp_path / f"p{i}.png"), i % 2, f"pt{i}", "s1", "real"))
    write_manifest(PatchSet(records), tmp_path)
    (tmp_path / "p2.png").unlink()
    patch_set = read_patch_source(PatchSourceConfig(format="patchset", path=str(tmp_path)))
    assert [r.patient_id for r in patch_set.records] == ["pt0", "pt1"]
    assert "not found" in patch_set.skipped[0][1]


def test_manifest_missing_columns(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text("path,label\na.png,1\n")
    with pytest.raises(DataError, match="patient_id"):
        read_patch_source(PatchSourceConfig(format="patchset", path=str(tmp_path)))


def test_bad_label_in_manifest_is_reported(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    (tmp_path / "manifest.csv").write_text("path,label,patient_id\na.png,1,p1\nb.png,7,p2\n")
    patch_set = read_patch_source(PatchSourceConfig(format="patchset", path=str(tmp_path)))
    assert len(patch_set) == 1 and "label 7" in patch_set.skipped[0][1]


def test_unreadable_image_is_skipped_with_reason(tmp_path: Path) -> None:
    _png(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG truncated")
    records = [PatchRecord(str(tmp_path / n), 1, n) for n in ("good.png", "bad.png")]
    loaded = load_patches(PatchSet(records), 8)
    assert loaded.pixels.shape == (1, 8, 8)
    assert loaded.patch_set.skipped[0][0].endswith("bad.png")


def test_stratified_limit_keeps_both_classes() -> None:
    records = [PatchRecord(f"/x/{i}.png", int(i < 30), f"p{i}") for i in range(100)]
    kept = stratified_limit(PatchSet(records), 20)
    assert len(kept) == 20 and sum(kept.labels) == 6
    assert kept.records == stratified_limit(PatchSet(records), 20).records


def test_model_input_and_flips() -> None:
    pixels = np.arange(16, dtype=np.uint8).reshape(1, 4, 4) * 17
    x = to_model_input(pixels)
    assert x.shape == (1, 3, 4, 4) and float(x.min()) == -1.0 and float(x.max()) == 1.0
    import torch

    flipped = apply_flips(x.repeat(4, 1, 1, 1), torch.tensor([0, 1, 2, 3]))
    assert torch.equal(flipped[1], x[0].flip(-1)) and torch.equal(flipped[2], x[0].flip(-2))
    assert torch.equal(flipped[3], x[0].flip(-1).flip(-2)) and torch.equal(flipped[0], x[0])


def test_manifest_malformed_rows_are_skipped_with_their_physical_line(tmp_path: Path) -> None:
    """An unquoted comma skips that row only; a quoted newline earlier keeps lines physical."""
    for name in ("a.png", "b.png", "c.png"):
        _png(tmp_path / name)
    (tmp_path / "manifest.csv").write_text(
        "path,label,patient_id,provenance_file\n"
        'a.png,1,p1,"scan\nnotes"\n'
        "b.png,0,p2,x,y\n"
        "c.png,0,p3,z\n"
    )
    patch_set = read_patch_source(PatchSourceConfig(format="patchset", path=str(tmp_path)))
    assert [r.patient_id for r in patch_set.records] == ["p1", "p3"]
    assert patch_set.skipped == [
        (
            f"{tmp_path / 'manifest.csv'}:4",
            "row has 5 fields, header has 4: an unquoted comma? quote the field",
        )
    ]


def test_manifest_unclosed_quote_is_a_data_error(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    (tmp_path / "manifest.csv").write_text('path,label,patient_id\na.png,1,"p1\na.png,0,p2\n')
    with pytest.raises(DataError, match=r"manifest\.csv:2: a quote opened on this line"):
        read_patch_source(PatchSourceConfig(format="patchset", path=str(tmp_path)))
