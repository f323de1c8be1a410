"""BCDR outline CSVs -> lesions (no public schema; as the paper's reference code reads it).

Subset folders `BCDR-D01_dataset`, `BCDR-D02_dataset`, `BCDR-F01_dataset`, `BCDR-F02_dataset`,
`BCDR-F03` (whose CSV may sit one folder deeper), each with `bcdr_<subset>_outlines.csv`.
Masses are rows with `mammography_nodule` = 1; the box is the outline's bounding box; the label
comes from `classification` ("Benign" / "Malign", padded). Images are 8-bit TIFFs read as
grayscale without min-max scaling. Bad rows are reported with their CSV line, never dropped.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from common.data.csv_table import read_csv_table
from common.data.lesions import Lesion
from common.data.patch_geometry import Box
from common.errors import DataError

SUBSETS = ("d01", "d02", "f01", "f02", "f03")
VIEWS = {1: ("R", "CC"), 2: ("L", "CC"), 3: ("R", "MLO"), 4: ("L", "MLO")}
REQUIRED = (
    "patient_id",
    "study_id",
    "lesion_id",
    "image_view",
    "image_filename",
    "lw_x_points",
    "lw_y_points",
    "mammography_nodule",
    "classification",
)
LABELS = {"malign": 1, "benign": 0}


def find_outline_csvs(root: Path) -> list[tuple[str, Path]]:
    """(subset, csv path) for every subset found under root, the CSV up to one folder deeper."""
    found = []
    for subset in SUBSETS:
        name = f"bcdr_{subset}_outlines.csv"
        hits = sorted(root.glob(f"BCDR-{subset.upper()}*/{name}")) + sorted(
            root.glob(f"BCDR-{subset.upper()}*/*/{name}")
        )
        if hits:
            found.append((subset, hits[0]))
    if not found:
        raise DataError(
            f"no bcdr_<subset>_outlines.csv under {root} (BCDR-D01_dataset/... expected)"
        )
    return found


def _points(text: object) -> np.ndarray:
    return np.array([int(v) for v in str(text).split()], dtype=np.int64)


def read_bcdr_lesions(root: Path) -> tuple[list[Lesion], list[tuple[str, str]]]:
    lesions: list[Lesion] = []
    skipped: list[tuple[str, str]] = []
    for _subset, csv in find_outline_csvs(root):
        table = read_csv_table(csv, what="BCDR outlines CSV", skip_initial_space=True)
        table.require(REQUIRED, "is this a BCDR outlines file?")
        skipped.extend(table.skipped)
        for csv_row in table.rows:
            row, where = csv_row.values, table.where(csv_row)
            try:
                if not is_flag_set(row["mammography_nodule"], "mammography_nodule"):
                    continue  # not a mass (calcification, distortion, ...): not for this task
                lesions.append(replace(_lesion(row, csv.parent), origin=where))
            except (DataError, ValueError) as error:
                skipped.append((where, str(error)))
    return lesions, skipped


FLAG_WORDS = {
    **{word: True for word in ("1", "1.0", "true", "yes", "y")},
    **{word: False for word in ("0", "0.0", "false", "no", "n", "")},
}


def is_flag_set(value: str, field: str) -> bool:
    """A 0/1 flag as spreadsheets write it (1, 1.0, TRUE, yes); DataError for anything else,
    so a row is reported rather than taken for 'not a mass' and dropped."""
    flag = FLAG_WORDS.get(str(value).strip().lower())
    if flag is None:
        raise DataError(f"field {field}: {value!r} is not a 0/1 flag (1, 0, true, false)")
    return flag


def _lesion(row: dict[str, str], folder: Path) -> Lesion:
    label_text = row["classification"].strip().lower()
    if label_text not in LABELS:
        raise DataError(f"unknown classification {row['classification']!r} (Benign or Malign)")
    xs, ys = _points(row["lw_x_points"]), _points(row["lw_y_points"])
    if len(xs) == 0 or len(xs) != len(ys):
        raise DataError("outline x and y point lists are empty or of different lengths")
    image = folder / row["image_filename"].strip()
    if not image.is_file():
        raise DataError(f"image {image} named in the CSV not found")
    laterality, view = VIEWS.get(int(row["image_view"]), ("", ""))
    box = Box(
        int(xs.min()), int(ys.min()), int(xs.max() - xs.min()) + 1, int(ys.max() - ys.min()) + 1
    )
    return Lesion(
        image_path=str(image),
        box=box,
        label=LABELS[label_text],
        patient_id=f"bcdr-{row['patient_id'].strip()}",
        site="bcdr",  # same id, same person
        lesion_id=row["lesion_id"].strip(),
        view=view,
        laterality=laterality,
    )
