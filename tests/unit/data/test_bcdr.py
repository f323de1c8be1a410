"""BCDR outline layout (written by the test) -> lesions -> patch set, with the layout's quirks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from common.data.bcdr import read_bcdr_lesions
from common.data.images import read_gray
from common.data.lesions import write_lesion_patches
from common.data.mammogram_io import read_mammogram_recorded
from common.data.patch_set import write_manifest
from common.errors import DataError

HEADER = (
    "patient_id,study_id,series,lesion_id,segmentation_id,image_view,image_filename,"
    "lw_x_points,lw_y_points,mammography_calcification,mammography_nodule,density,classification\n"
)


def _tif(path: Path, value: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((600, 400), value, np.uint8)
    image[200:260, 150:230] = 200
    cv2.imwrite(str(path), image)


def _layout(root: Path) -> None:
    d01 = root / "BCDR-D01_dataset"
    _tif(d01 / "patient_3" / "img_3_1_RCC.tif")
    _tif(d01 / "patient_4" / "img_4_2_LMLO.tif")
    rows = [
        # leading spaces in file name and points, padded classification, N/A density
        "3,1,1,1,1,1, patient_3/img_3_1_RCC.tif, 150 230 230 150, 200 200 260 260,0,1,N/A,"
        " Malign \n",
        # duplicate outline of the same image
        "3,1,1,1,2,1, patient_3/img_3_1_RCC.tif, 150 230 230 150, 200 200 260 260,0,1,2,Malign\n",
        "4,2,1,1,1,4, patient_4/img_4_2_LMLO.tif, 100 140 120, 300 320 350,0,1,3,Benign  \n",
        # calcification only: not a mass, ignored
        "4,2,1,2,1,4, patient_4/img_4_2_LMLO.tif, 10 20, 10 20,1,0,3,Benign\n",
        # unknown class, missing image, uneven outline: reported
        "5,3,1,1,1,2, patient_5/none.tif, 1 2, 1 2,0,1,1,Malign\n",
        "4,2,1,3,1,4, patient_4/img_4_2_LMLO.tif, 1 2, 1 2,0,1,1,Suspicious\n",
        "4,2,1,4,1,4, patient_4/img_4_2_LMLO.tif, 1 2 3, 1 2,0,1,1,Benign\n",
    ]
    (d01 / "bcdr_d01_outlines.csv").write_text(HEADER + "".join(rows))
    f03 = root / "BCDR-F03" / "BCDR-F03_dataset"  # the F03 CSV sits one folder deeper
    _tif(f03 / "patient_9" / "img_9_1_LCC.tif", 60)
    (f03 / "bcdr_f03_outlines.csv").write_text(
        HEADER + "9,1,1,1,1,2, patient_9/img_9_1_LCC.tif, 50 90, 60 95,0,1,4, Benign\n"
    )


def test_bcdr_layout_to_patches(tmp_path: Path) -> None:
    _layout(tmp_path / "bcdr")
    lesions, skipped = read_bcdr_lesions(tmp_path / "bcdr")
    assert [(les.patient_id, les.label, les.view, les.laterality) for les in lesions] == [
        ("bcdr-3", 1, "CC", "R"),
        ("bcdr-3", 1, "CC", "R"),
        ("bcdr-4", 0, "MLO", "L"),
        ("bcdr-9", 0, "CC", "L"),
    ]
    first = lesions[0].box
    assert (first.x, first.y, first.w, first.h) == (150, 200, 81, 61)
    reasons = " | ".join(why for _, why in skipped)
    assert (
        len(skipped) == 3
        and "not found" in reasons
        and "Suspicious" in reasons
        and "lengths" in reasons
    )
    assert all(":" in where for where, _ in skipped)  # CSV file and line
    patch_set = write_lesion_patches(lesions, read_mammogram_recorded, tmp_path / "patches")
    assert len(patch_set) == 3 and "duplicate" in patch_set.skipped[0][1]
    assert patch_set.records[0].pixel_steps == "tiff:8-bit as stored"  # no min-max step
    write_manifest(patch_set, tmp_path / "patches")
    manifest = pd.read_csv(tmp_path / "patches" / "manifest.csv")
    assert list(manifest["label"]) == [1, 0, 0] and manifest["box"][0] == "150,200,81,61"
    patch = read_gray(patch_set.records[0].path)
    assert patch.shape == (128, 128) and patch.max() == 200  # the lesion is inside its patch


def test_missing_columns_name_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "BCDR-D02_dataset"
    folder.mkdir()
    (folder / "bcdr_d02_outlines.csv").write_text("patient_id,image_filename\n1,a.tif\n")
    with pytest.raises(DataError, match=r"bcdr_d02_outlines\.csv: missing columns"):
        read_bcdr_lesions(tmp_path)


def test_no_subset_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="BCDR-D01_dataset"):
        read_bcdr_lesions(tmp_path)


def test_malformed_outline_rows_are_skipped_with_their_line(tmp_path: Path) -> None:
    """Spaces after commas (header included) are kept out as before; an unquoted comma in one
    row skips that row with file:line, the other rows are read."""
    folder = tmp_path / "BCDR-D01_dataset"
    _tif(folder / "patient_3" / "img_3_1_RCC.tif")
    row = "3,1,1,1,1,1, patient_3/img_3_1_RCC.tif, 150 230, 200 260,0,1,2, Malign\n"
    (folder / "bcdr_d01_outlines.csv").write_text(
        HEADER.replace(",", ", ") + row + row.replace(" Malign", " Benign, oops") + row
    )
    lesions, skipped = read_bcdr_lesions(tmp_path)
    assert [les.label for les in lesions] == [1, 1]
    assert skipped == [
        (
            f"{folder / 'bcdr_d01_outlines.csv'}:3",
            "row has 14 fields, header has 13: an unquoted comma? quote the field",
        )
    ]
