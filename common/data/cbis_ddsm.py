"""CBIS-DDSM (TCIA layout: DICOM folders + the description CSVs) -> lesions.

Files are found through the Study/Series Instance UIDs of the CSV paths matched against the
DICOM headers, because downloaded folders do not match the CSV paths (`1-1.dcm` vs
`000000.dcm`, descriptive folder names). Of the files in the ROI series, the mask is the one
whose height exceeds half the mammogram's (the other is the cropped lesion). Each mask blob is
one lesion (the reference code's rule for masses); a calcification cluster is one lesion however
many specks its mask holds. The CSV quirks handled: `breast_density` vs `breast density`, paths
with embedded newlines (mask path in mass files, crop path in calc files),
BENIGN_WITHOUT_CALLBACK = benign.

Masses only by default (the paper's task): calcification rows are reported as skipped ("not a
mass") unless `abnormality=calc|all`. Each row keeps its official split (TCIA's Mass-Training /
Mass-Test / Calc-Training / Calc-Test folders, the per-patient split every paper uses).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from common.data.csv_table import CsvTable, read_csv_table
from common.data.dicom_file import read_dicom_header
from common.data.lesions import Lesion
from common.data.mammogram_io import image_shape, read_mask
from common.data.masks import cluster_box, mask_boxes
from common.errors import DataError

log = logging.getLogger(__name__)

ABNORMALITIES = {"mass": ("mass",), "calc": ("calcification",), "all": ("mass", "calcification")}
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


def _column_name(name: str) -> str:
    plain = " ".join(name.replace("_", " ").split()).lower()
    return COLUMNS.get(plain, plain)


def read_description_table(path: Path) -> CsvTable:
    """The CSV's rows with their physical lines (embedded newlines counted) and normalised
    column names; a malformed row is in `skipped`, a file that cannot be trusted a DataError."""
    if not path.is_file():
        raise DataError(f"description CSV {path} not found")
    table = read_csv_table(path, what="CBIS-DDSM description CSV", normalise=_column_name)
    table.require(COLUMNS.values(), "is this a CBIS-DDSM description file?")
    return table


def read_description_csv(path: Path) -> pd.DataFrame:
    """The well-formed rows as a frame of text, indexed by physical line."""
    return read_description_table(path).to_frame()


def series_key(csv_path: str) -> UidKey:
    """(StudyInstanceUID, SeriesInstanceUID) from `<folder>/<study>/<series>/<file>` (with
    `/` or Windows' `\\`; a leading folder such as `CBIS-DDSM/` before them is allowed)."""
    return _path_parts(csv_path)[1:]


def _path_parts(csv_path: str) -> tuple[str, str, str]:
    """(folder, study UID, series UID) of a description CSV's path."""
    text = "".join(csv_path.split()).replace("\\", "/")
    parts = [p for p in text.split("/") if p]
    # <folder>/<study>/<series>/<file>, the file with or without .dcm, perhaps after a leading
    # folder (CBIS-DDSM/); three parts name no file
    has_file = len(parts) >= 4 or (bool(parts) and parts[-1].lower().endswith(".dcm"))
    end = len(parts) - 1 if has_file else len(parts)
    if end < 3:
        raise DataError(f"path {csv_path!r} has no <folder>/<study>/<series> UIDs")
    return parts[end - 3], parts[end - 2], parts[end - 1]


def index_dicoms(root: Path) -> tuple[dict[UidKey, list[Path]], list[tuple[str, str]]]:
    """Every DICOM under root by (study, series) UIDs from its header (files without the
    128-byte preamble included); unreadable files reported."""
    index: dict[UidKey, list[Path]] = defaultdict(list)
    skipped: list[tuple[str, str]] = []
    for path in sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in (".dcm", "") and p.name.upper() != "DICOMDIR"
    ):  # a DICOMDIR is the media's index of the files, not an image
        try:
            header = read_dicom_header(path)
            index[(str(header.StudyInstanceUID), str(header.SeriesInstanceUID))].append(path)
        except (DataError, AttributeError) as error:
            skipped.append((str(path), f"unreadable DICOM header: {error}"))
    return dict(index), skipped


def pixel_spacing(path: Path) -> str:
    """'row,column' mm from PixelSpacing (else ImagerPixelSpacing), or '' when absent. A
    malformed value (not two positive numbers) is metadata the patch does not need: it is
    left empty and a warning names the file, rather than losing the lesion."""
    header = read_dicom_header(path)
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            value = header.get(tag)
            values = [value] if isinstance(value, str | bytes | int | float) else list(value or [])
            numbers = [float(v) for v in values]
        except (TypeError, ValueError) as error:  # pydicom converts DS values on access
            value, numbers = f"unreadable ({error})", []
        if not value:
            continue
        if len(numbers) == 2 and all(math.isfinite(n) and n > 0 for n in numbers):
            return ",".join(str(n) for n in numbers)
        log.warning("%s: %s %r is not two positive numbers (mm): left empty", path, tag, value)
        return ""
    return ""


def read_cbis_ddsm(
    root: Path, csvs: list[Path], abnormality: str = "mass"
) -> tuple[list[Lesion], list[tuple[str, str]]]:
    """Lesions of the chosen abnormality type (mass, calc or all) from the description CSVs;
    every other row and every unusable row is returned in `skipped` with its file:line."""
    if abnormality not in ABNORMALITIES:
        raise DataError(f"abnormality={abnormality!r}: choose one of {', '.join(ABNORMALITIES)}")
    if not csvs:
        raise DataError(
            f"no *case_description*.csv under {root}: put TCIA's description CSVs in the "
            "download folder or name them with csv=<file>,<file>"
        )
    index, skipped = index_dicoms(root)
    lesions: list[Lesion] = []
    for csv in csvs:
        rows, bad_rows = description_rows(csv)
        skipped += bad_rows
        for line, row in rows:
            try:
                kind = abnormality_type(row)
                if kind not in ABNORMALITIES[abnormality]:
                    raise DataError(
                        f"not a {' or '.join(ABNORMALITIES[abnormality])} ({kind} row); "
                        "abnormality=calc or all cuts calcifications"
                    )
                found = row_lesions(row, index, kind, official_split(row, csv))
                lesions.extend(replace(les, origin=f"{csv}:{line}") for les in found)
            except ValueError as error:  # DataError, or a header value pydicom cannot convert
                skipped.append((f"{csv}:{line}", str(error)))
    return _without_repeated_lesions(lesions, skipped)


def _lesion_key(lesion: Lesion) -> tuple[str, ...]:
    """Patient, side, view, abnormality type and id (a mass row's blobs share it)."""
    number = lesion.lesion_id.split("#")[0]
    return (lesion.patient_id, lesion.laterality, lesion.view, lesion.abnormality, number)


def _without_repeated_lesions(
    lesions: list[Lesion], skipped: list[tuple[str, str]]
) -> tuple[list[Lesion], list[tuple[str, str]]]:
    """One lesion (patient, side, view, abnormality type and id) described by two rows on two
    different mammograms (none is in TCIA's CSVs) means two downloads merged under one root,
    e.g. two hospitals whose patient ids collide: every such row is skipped, naming the
    others, rather than one patient made of two people. Rows on the same mammogram (a row
    repeated, a copy of a CSV) are one lesion: the patch writer keeps the first and reports
    the others as duplicates."""
    rows: dict[tuple[str, ...], set[str]] = {}
    images: dict[tuple[str, ...], set[str]] = {}
    for lesion in lesions:
        rows.setdefault(_lesion_key(lesion), set()).add(lesion.origin)
        images.setdefault(_lesion_key(lesion), set()).add(lesion.image_path)
    repeated = {key: sorted(origins) for key, origins in rows.items() if len(images[key]) > 1}
    if not repeated:
        return lesions, skipped
    kept = [lesion for lesion in lesions if _lesion_key(lesion) not in repeated]
    for (patient, side, view, kind, number), origins in repeated.items():
        for origin in origins:
            others = ", ".join(o for o in origins if o != origin)
            skipped.append(
                (
                    origin,
                    f"repeated lesion: patient {patient} {side} {view} {kind} {number} is also "
                    f"described at {others}; prepare each download (each hospital) on its own",
                )
            )
    return kept, skipped


def description_rows(csv: Path) -> tuple[list[tuple[int, dict[str, str]]], list[tuple[str, str]]]:
    """(line, row) pairs of a description CSV, and its malformed rows (file:line, reason)."""
    table = read_description_table(csv)
    return [(row.line, row.values) for row in table.rows], list(table.skipped)


def abnormality_type(row: dict[Any, str]) -> str:
    """mass or calcification: the row's `abnormality type`, else its folder name's prefix."""
    given = str(row.get("abnormality type", "")).strip().lower()
    word = given or row["image_path"].strip().split("/")[0].split("-")[0].lower()
    for kind in ("mass", "calcification"):
        if word and kind.startswith(word[:4]):  # calc, calcification; mass
            return kind
    raise DataError(f"unknown abnormality type {given!r} (mass or calcification expected)")


def official_split(row: dict[Any, str], csv: Path) -> str:
    """train or test: TCIA's folder prefix (Mass-Training_P_..., Calc-Test_P_...), else the CSV
    name (..._train_set.csv), else '' (unknown: prepare splits such rows itself)."""
    folder = _path_parts(row["image_path"])[0].lower()
    name = csv.name.lower()
    for text, marks in ((folder, ("-training_", "-test_")), (name, ("_train", "_test"))):
        for split, mark in zip(("train", "test"), marks, strict=True):
            if mark in text:
                return split
    return ""


def full_image(row: dict[Any, str], index: dict[UidKey, list[Path]]) -> Path:
    files = index.get(series_key(row["image_path"]), [])
    if len(files) != 1:
        series = series_key(row["image_path"])[1]
        found = f": {', '.join(str(f) for f in files[:3])}" if files else ""
        why = "the same series downloaded twice?" if files else "not downloaded?"
        raise DataError(
            f"mammogram series {series}: {len(files)} DICOM files, 1 expected ({why}){found}"
        )
    return files[0]


def row_lesions(
    row: dict[Any, str], index: dict[UidKey, list[Path]], kind: str = "mass", split: str = ""
) -> list[Lesion]:
    """The row's lesions: one per mask blob for a mass, one per row for a calcification."""
    pathology = row["pathology"].strip().upper()
    if pathology not in PATHOLOGY:
        raise DataError(f"unknown pathology {row['pathology']!r}")
    image = full_image(row, index)
    shape = image_shape(image)  # headers only: the mammogram is decoded once, when cut
    keys = {series_key(row["mask_path"]), series_key(row["crop_path"])}
    candidates = sorted({p for key in keys for p in index.get(key, [])})
    masks = [p for p in candidates if image_shape(p)[0] > 0.5 * shape[0]]
    if len(masks) > 1:  # a large mass's crop may be taller than half the mammogram too
        same_size = [p for p in masks if image_shape(p) == shape]
        masks = same_size if len(same_size) == 1 else masks
    if len(masks) != 1:
        raise DataError(
            f"ROI mask of {image.name}: {len(masks)} files taller than half the image, 1 "
            f"expected{': ' + ', '.join(str(m) for m in masks[:3]) if masks else ''}"
        )
    mask = read_mask(masks[0])
    boxes = [cluster_box(mask, shape)] if kind == "calcification" else mask_boxes(mask, shape)
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
            abnormality=kind,
            official_split=split,
        )
        for k, box in enumerate(boxes)
    ]
