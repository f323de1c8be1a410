"""CBIS-DDSM (TCIA layout: DICOM folders + the description CSVs) -> lesions.

Files are found through the Study/Series Instance UIDs of the CSV paths matched against the
DICOM headers, because downloaded folders do not match the CSV paths (`1-1.dcm` vs
`000000.dcm`, descriptive folder names). Of the files in the ROI series, the mask is the one
whose height exceeds half the mammogram's (the other is the cropped lesion). Each mask blob is
one lesion. The CSV quirks handled: `breast_density` vs `breast density`, paths with embedded
newlines (mask path in mass files, crop path in calc files), BENIGN_WITHOUT_CALLBACK = benign.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd

from common.data.lesions import Lesion
from common.data.mammogram_io import image_shape, read_dicom_pixels
from common.data.masks import mask_boxes
from common.errors import DataError

PATHOLOGY = {"MALIGNANT": 1, "BENIGN": 0, "BENIGN_WITHOUT_CALLBACK": 0}
COLUMNS = {
    "patient id": "patient_id",
    "left or right breast": "laterality",
    "image view": "view",
    "abnormality id": "abnormality_id",
    "pathology": "pathology",
    "image file path": "image_path",
    "cropped image file path": "crop_path",
    "roi mask file path": "mask_path",
}
UidKey = tuple[str, str]


def read_description_csv(path: Path) -> pd.DataFrame:
    """The CSV with normalised column names; quoted embedded newlines are parsed by pandas."""
    if not path.is_file():
        raise DataError(f"description CSV {path} not found")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.columns = [" ".join(c.replace("_", " ").split()).lower() for c in frame.columns]
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing}; is this a CBIS-DDSM description file?")
    return frame.rename(columns=COLUMNS)


def series_key(csv_path: str) -> UidKey:
    """(StudyInstanceUID, SeriesInstanceUID) from `<folder>/<study>/<series>/<file>`."""
    parts = [p.strip() for p in "".join(csv_path.split()).split("/") if p.strip()]
    if len(parts) < 3:
        raise DataError(f"path {csv_path!r} has no <study>/<series> UIDs")
    return parts[1], parts[2]


def index_dicoms(root: Path) -> tuple[dict[UidKey, list[Path]], list[tuple[str, str]]]:
    """Every DICOM under root by (study, series) UIDs from its header; unreadable files reported."""
    import pydicom

    index: dict[UidKey, list[Path]] = defaultdict(list)
    skipped: list[tuple[str, str]] = []
    for path in sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in (".dcm", "")
    ):
        try:
            header = pydicom.dcmread(str(path), stop_before_pixels=True)
            index[(str(header.StudyInstanceUID), str(header.SeriesInstanceUID))].append(path)
        except Exception as error:
            skipped.append((str(path), f"unreadable DICOM header: {error}"))
    return dict(index), skipped


def pixel_spacing(path: Path) -> str:
    import pydicom

    header = pydicom.dcmread(str(path), stop_before_pixels=True)
    spacing = header.get("PixelSpacing") or header.get("ImagerPixelSpacing")
    return ",".join(str(float(v)) for v in spacing) if spacing else ""


def read_cbis_ddsm(root: Path, csvs: list[Path]) -> tuple[list[Lesion], list[tuple[str, str]]]:
    index, skipped = index_dicoms(root)
    lesions: list[Lesion] = []
    for csv in csvs:
        for line, row in enumerate(read_description_csv(csv).to_dict("records"), start=2):
            try:
                lesions.extend(row_lesions(row, index))
            except DataError as error:
                skipped.append((f"{csv}:{line}", str(error)))
    return lesions, skipped


def full_image(row: dict[Any, str], index: dict[UidKey, list[Path]]) -> Path:
    files = index.get(series_key(row["image_path"]), [])
    if len(files) != 1:
        series = series_key(row["image_path"])[1]
        raise DataError(f"mammogram series {series}: {len(files)} DICOM files, 1 expected")
    return files[0]


def row_lesions(row: dict[Any, str], index: dict[UidKey, list[Path]]) -> list[Lesion]:
    pathology = row["pathology"].strip().upper()
    if pathology not in PATHOLOGY:
        raise DataError(f"unknown pathology {row['pathology']!r}")
    image = full_image(row, index)
    shape = image_shape(image)  # headers only: the mammogram is decoded once, when cut
    keys = {series_key(row["mask_path"]), series_key(row["crop_path"])}
    candidates = sorted({p for key in keys for p in index.get(key, [])})
    masks = [p for p in candidates if image_shape(p)[0] > 0.5 * shape[0]]
    if len(masks) != 1:
        raise DataError(
            f"ROI mask of {image.name}: {len(masks)} files taller than half the image, 1 expected"
        )
    boxes = mask_boxes(read_dicom_pixels(masks[0]), shape)
    spacing = pixel_spacing(image)
    return [
        Lesion(
            str(image),
            box,
            PATHOLOGY[pathology],
            row["patient_id"].strip(),
            "cbis-ddsm",
            lesion_id=f"{row['abnormality_id']}#{k}",
            view=row["view"].strip(),
            laterality=row["laterality"].strip(),
            pixel_spacing=spacing,
        )
        for k, box in enumerate(boxes)
    ]
