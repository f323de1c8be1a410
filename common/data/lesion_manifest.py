"""Generic site manifest: one CSV row per lesion -> lesions.

Fields: `image` (DICOM, PNG, TIFF or PGM; relative to the CSV's folder or absolute), `label`
(1/0, malignant/benign, B/M, or CBIS-DDSM's MALIGNANT/BENIGN/BENIGN_WITHOUT_CALLBACK),
`patient_id`, and the lesion as one of: `mask` (an ROI image; each blob is a lesion), `x,y,w,h`
(a box), or `cx,cy,radius`. Optional: `laterality`, `view`, `lesion_id`, and `split` (train or
test: the site's own official split, kept by `split=official`; empty: prepare splits the patient).
Any other column is not read, and a warning names it. `columns` maps these
names to a dataset's own column names, so its annotation table is read as published.
`y_origin` says whether rows count from the top (default) or the bottom of the image.
A bad row is skipped and reported with its `file:line` and the reason.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from common.data.csv_table import read_csv_table
from common.data.lesions import Lesion
from common.data.mammogram_io import image_shape, read_mask
from common.data.masks import mask_boxes
from common.data.patch_geometry import Box
from common.errors import DataError

log = logging.getLogger(__name__)
LABEL_WORDS = {
    **{word: 1 for word in ("1", "malignant", "malign", "m")},
    **{word: 0 for word in ("0", "benign", "benign_without_callback", "b")},
}
REQUIRED = ("image", "label", "patient_id")
GEOMETRIES = (("mask",), ("x", "y", "w", "h"), ("cx", "cy", "radius"))
OPTIONAL = ("laterality", "view", "lesion_id", "split")
# a table's own validation rows are training rows here: mammofl carves its validation
# patients from train itself (val_fraction), never from test
SPLIT_WORDS = {
    **{word: "train" for word in ("train", "training", "val", "valid", "validation")},
    **{word: "test" for word in ("test", "testing")},
    "": "",
}
FIELDS = (*REQUIRED, *(name for geometry in GEOMETRIES for name in geometry), *OPTIONAL)


def parse_label(value: str) -> int:
    label = LABEL_WORDS.get(str(value).strip().lower())
    if label is None:
        raise DataError(
            f"unknown label {value!r} (1/0, malignant/benign, M/B, BENIGN_WITHOUT_CALLBACK)"
        )
    return label


def parse_split(value: str, shown: str = "split") -> str:
    """The row's own split: train, test, or '' (prepare splits the patient itself)."""
    split = SPLIT_WORDS.get(str(value).strip().lower())
    if split is None:
        raise DataError(
            f"field {shown}: {value!r} is not a split (train, val or test, or empty to let "
            "prepare split the patient; val rows count as train: the validation patients are "
            "carved from train with val_fraction)"
        )
    return split


@dataclass(frozen=True)
class _Layout:
    """What every row shares: its folder, geometry, how fields are named in messages."""

    folder: Path
    geometry: tuple[str, ...]
    shown: dict[str, str]
    y_origin: str
    site: str


def read_lesion_manifest(
    csv: Path,
    *,
    y_origin: str = "top",
    site: str = "site",
    columns: Mapping[str, str] | None = None,
) -> tuple[list[Lesion], list[tuple[str, str]]]:
    """Lesions of every usable row, and `(file:line, reason)` for each row that is not."""
    if y_origin not in ("top", "bottom"):
        raise DataError(f"y_origin={y_origin!r}: top or bottom")
    wanted = _check_names(columns or {})
    table = read_csv_table(csv, what="lesion manifest")
    mapping = column_map(csv, wanted, table.columns)
    unread = [c for c in table.columns if c not in mapping.values()]
    if unread:
        log.warning(
            "%s: columns %s are not lesion manifest fields and are not read (fields: %s; map "
            "yours with columns.<field>=<your column>)",
            csv,
            ", ".join(unread),
            ", ".join(FIELDS),
        )
    geometry = _geometry(csv, mapping, wanted, table.columns)
    shown = {n: n if c == n else f"{n} ({c})" for n, c in mapping.items()}
    layout = _Layout(csv.parent, geometry, shown, y_origin, site)
    lesions: list[Lesion] = []
    skipped = list(table.skipped)
    for row in table.rows:
        fields = {name: row.values[column] for name, column in mapping.items()}
        try:
            where = table.where(row)
            lesions.extend(replace(les, origin=where) for les in _row_lesions(fields, layout))
        except (DataError, ValueError) as error:
            skipped.append((table.where(row), str(error)))
    skipped.sort(key=lambda item: int(item[0].rsplit(":", 1)[1]))
    return lesions, skipped


def _check_names(columns: Mapping[str, str]) -> dict[str, str]:
    unknown = [name for name in columns if name not in FIELDS]
    if unknown:
        raise DataError(
            f"columns.{unknown[0]}: not a lesion manifest field; map one of {', '.join(FIELDS)} "
            f"as columns.<name>=<your column>"
        )
    empty = [name for name, column in columns.items() if not str(column).strip()]
    if empty:
        raise DataError(f"columns.{empty[0]} is empty: give the name of your file's column")
    return {name: str(column).strip() for name, column in columns.items()}


def column_map(csv: Path, wanted: Mapping[str, str], found: Sequence[str]) -> dict[str, str]:
    """mammofl field -> the file's column, for the fields the file has; mapped ones must exist."""
    for name, column in wanted.items():
        if column not in found:
            raise DataError(
                f"{csv}: columns.{name}={column}: the file has no column {column!r}; "
                f"found columns: {', '.join(found)}"
            )
    names = {name: wanted.get(name, name) for name in FIELDS}
    return {name: column for name, column in names.items() if column in found}


def _geometry(
    csv: Path, mapping: Mapping[str, str], wanted: Mapping[str, str], found: Sequence[str]
) -> tuple[str, ...]:
    """The lesion geometry to use: a complete one, preferring one the caller mapped."""
    complete = [g for g in GEOMETRIES if all(name in mapping for name in g)]
    chosen = [g for g in complete if any(name in wanted for name in g)] or complete
    missing = [name for name in REQUIRED if name not in mapping]
    if chosen and not missing:
        return chosen[0]
    if not chosen:
        partial = [
            f"{','.join(g)} lacks {', '.join(n for n in g if n not in mapping)}"
            for g in GEOMETRIES
            if any(name in mapping for name in g)
        ]
        missing.append("a lesion geometry" + (f" ({'; '.join(partial)})" if partial else ""))
    raise DataError(
        f"{csv}: a lesion manifest needs columns image, label, patient_id and one lesion "
        f"geometry: mask | x,y,w,h | cx,cy,radius; missing {'; '.join(missing)}; found "
        f"columns: {', '.join(found) or '(none)'}; map yours with columns.<name>=<your column> "
        f"(e.g. columns.cx=center_col)"
    )


def _resolve(folder: Path, value: str) -> Path:
    path = Path(value.strip())
    path = path if path.is_absolute() else folder / path
    if not path.is_file():
        raise DataError(f"file {path} named in the manifest not found")
    return path


def _numbers(
    fields: Mapping[str, str], names: Sequence[str], shown: Mapping[str, str]
) -> list[float]:
    """The location fields as numbers; empty ones mean the row has no position at all."""
    empty = [shown[name] for name in names if not fields[name].strip()]
    if empty:
        plural = "s" if len(empty) > 1 else ""
        raise DataError(
            f"location field{plural} {', '.join(empty)} empty: no lesion position (mini-MIAS "
            f"leaves them out for widespread calcifications); the row cannot be cut"
        )
    values = []
    for name in names:
        try:
            value = float(fields[name])
        except ValueError:
            raise DataError(f"field {shown[name]}: {fields[name]!r} is not a number") from None
        if not math.isfinite(value):
            raise DataError(f"field {shown[name]}: {fields[name]!r} is not a finite number")
        values.append(value)
    return values


def _boxes(fields: Mapping[str, str], layout: _Layout, height: int, width: int) -> list[Box]:
    geometry = layout.geometry
    if geometry == ("mask",):
        if not fields["mask"].strip():
            raise DataError(
                f"field {layout.shown['mask']} empty: no ROI mask; the row cannot be cut"
            )
        mask = read_mask(_resolve(layout.folder, fields["mask"]))  # full depth: 16-bit, DICOM
        return mask_boxes(mask, (height, width))
    bottom = layout.y_origin == "bottom"
    if geometry == ("x", "y", "w", "h"):
        x, y, w, h = (int(v) for v in _numbers(fields, geometry, layout.shown))
        return [Box(x, height - (y + h) if bottom else y, w, h)]
    cx, cy, r = _numbers(fields, geometry, layout.shown)
    cy = height - cy if bottom else cy
    return [Box(round(cx - r), round(cy - r), round(2 * r), round(2 * r))]


def _row_lesions(fields: Mapping[str, str], layout: _Layout) -> list[Lesion]:
    if layout.geometry != ("mask",):
        _numbers(fields, layout.geometry, layout.shown)  # a row without a position: say so first
    if not fields["patient_id"].strip():
        raise DataError(f"field {layout.shown['patient_id']} empty: every lesion needs its patient")
    image = _resolve(layout.folder, fields["image"])
    label = parse_label(fields["label"])
    height, width = image_shape(image)
    boxes = _boxes(fields, layout, height, width)
    for box in boxes:
        box.check_inside(height, width)
    lesion_id = fields.get("lesion_id", "").strip()
    split = parse_split(fields.get("split", ""), layout.shown.get("split", "split"))
    return [
        Lesion(
            str(image),
            box,
            label,
            fields["patient_id"].strip(),
            layout.site,
            lesion_id=f"{lesion_id}#{k}" if len(boxes) > 1 else lesion_id,
            view=fields.get("view", "").strip(),
            laterality=fields.get("laterality", "").strip(),
            official_split=split,
        )
        for k, box in enumerate(boxes)
    ]
