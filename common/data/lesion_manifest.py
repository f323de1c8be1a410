"""Generic site manifest: one CSV row per lesion -> lesions.

Columns: `image` (DICOM, PNG, TIFF or PGM; relative to the CSV's folder or absolute), `label`
(1/0, malignant/benign, or CBIS-DDSM's MALIGNANT/BENIGN/BENIGN_WITHOUT_CALLBACK), `patient_id`,
and the lesion as one of: `mask` (an ROI image; each blob is a lesion), `x,y,w,h` (a box), or
`cx,cy,radius`. `y_origin` says whether rows count from the top (default) or the bottom of the
image. Optional: `laterality`, `view`, `lesion_id`. A bad row is reported with its line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import pandas as pd

from common.data.lesions import Lesion
from common.data.mammogram_io import image_shape
from common.data.masks import mask_boxes
from common.data.patch_geometry import Box
from common.errors import DataError

LABEL_WORDS = {"1": 1, "malignant": 1, "0": 0, "benign": 0, "benign_without_callback": 0}
GEOMETRIES = (("mask",), ("x", "y", "w", "h"), ("cx", "cy", "radius"))


def parse_label(value: str) -> int:
    label = LABEL_WORDS.get(str(value).strip().lower())
    if label is None:
        raise DataError(f"unknown label {value!r} (1/0, malignant/benign, BENIGN_WITHOUT_CALLBACK)")
    return label


def read_lesion_manifest(
    csv: Path, *, y_origin: str = "top", site: str = "site"
) -> tuple[list[Lesion], list[tuple[str, str]]]:
    if y_origin not in ("top", "bottom"):
        raise DataError(f"y_origin={y_origin!r}: top or bottom")
    if not csv.is_file():
        raise DataError(f"lesion manifest {csv} not found")
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    missing = [c for c in ("image", "label", "patient_id") if c not in frame.columns]
    geometry = next((g for g in GEOMETRIES if all(c in frame.columns for c in g)), None)
    if missing or geometry is None:
        raise DataError(
            f"{csv}: needs columns image, label, patient_id and one of mask | x,y,w,h | "
            f"cx,cy,radius (missing {missing or 'a lesion geometry'})"
        )
    lesions: list[Lesion] = []
    skipped: list[tuple[str, str]] = []
    for line, row in enumerate(frame.to_dict("records"), start=2):
        try:
            lesions.extend(_row_lesions(row, csv.parent, geometry, y_origin, site))
        except (DataError, ValueError) as error:
            skipped.append((f"{csv}:{line}", str(error)))
    return lesions, skipped


def _resolve(folder: Path, value: str) -> Path:
    path = Path(value.strip())
    path = path if path.is_absolute() else folder / path
    if not path.is_file():
        raise DataError(f"file {path} named in the manifest not found")
    return path


def _row_lesions(
    row: dict[Any, str], folder: Path, geometry: tuple[str, ...], y_origin: str, site: str
) -> list[Lesion]:
    image = _resolve(folder, row["image"])
    label = parse_label(row["label"])
    height, width = image_shape(image)
    if geometry == ("mask",):
        mask = cv2.imread(str(_resolve(folder, row["mask"])), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise DataError(f"mask {row['mask']} is unreadable")
        boxes = mask_boxes(mask, (height, width))
    elif geometry == ("x", "y", "w", "h"):
        x, y, w, h = (int(float(row[k])) for k in geometry)
        boxes = [Box(x, height - (y + h) if y_origin == "bottom" else y, w, h)]
    else:
        cx, cy, r = (float(row[k]) for k in geometry)
        cy = height - cy if y_origin == "bottom" else cy
        boxes = [Box(round(cx - r), round(cy - r), round(2 * r), round(2 * r))]
    for box in boxes:
        box.check_inside(height, width)
    return [
        Lesion(
            str(image),
            box,
            label,
            row["patient_id"].strip(),
            site,
            lesion_id=f"{row.get('lesion_id', '')}#{k}"
            if len(boxes) > 1
            else row.get("lesion_id", ""),
            view=row.get("view", ""),
            laterality=row.get("laterality", ""),
        )
        for k, box in enumerate(boxes)
    ]
