"""Generic lesion manifests: mask (any depth), box, centre + radius (rows from top or bottom);
a dataset's own column names; bad rows skipped with file:line and a reason that says why."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from common.data.dicom_writer import write_dicom as write_dicom_file
from common.data.lesion_manifest import read_lesion_manifest
from common.data.patch_geometry import Box
from common.errors import DataError
from tests.unit.data.test_mammogram_io import write_dicom


@pytest.fixture
def site(tmp_path: Path) -> Path:
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((400, 300), np.uint8))
    write_dicom(tmp_path / "b.dcm", np.zeros((400, 300), np.uint16))
    mask = np.zeros((200, 150), np.uint8)  # half the image size: resized with nearest
    mask[20:40, 30:60] = 255
    mask[120:160, 90:110] = 255
    cv2.imwrite(str(tmp_path / "a_mask.png"), mask)
    return tmp_path


def test_box_rows_from_top_and_bottom(site: Path) -> None:
    (site / "m.csv").write_text(
        "image,label,patient_id,x,y,w,h\na.png,MALIGNANT,P1,10,20,30,40\nb.dcm,0,P2,5,5,10,10\n"
    )
    top, skipped = read_lesion_manifest(site / "m.csv")
    assert [les.box for les in top] == [Box(10, 20, 30, 40), Box(5, 5, 10, 10)] and not skipped
    bottom, _ = read_lesion_manifest(site / "m.csv", y_origin="bottom")
    assert bottom[0].box == Box(10, 400 - 60, 30, 40)  # height read from the PNG
    assert bottom[1].box == Box(5, 400 - 15, 10, 10)  # and from the DICOM header
    assert [les.label for les in top] == [1, 0]


def test_centre_and_radius(site: Path) -> None:
    (site / "c.csv").write_text("image,label,patient_id,cx,cy,radius\na.png,benign,P1,100,50,20\n")
    lesions, _ = read_lesion_manifest(site / "c.csv", y_origin="bottom")
    assert lesions[0].box == Box(80, 400 - 50 - 20, 40, 40)


def test_mask_blobs_become_lesions(site: Path) -> None:
    (site / "k.csv").write_text(
        "image,label,patient_id,mask\na.png,BENIGN_WITHOUT_CALLBACK,P1,a_mask.png\n"
    )
    lesions, _ = read_lesion_manifest(site / "k.csv")
    assert [les.box for les in lesions] == [Box(60, 40, 60, 40), Box(180, 240, 40, 80)]
    assert all(les.label == 0 for les in lesions)


def test_bad_rows_are_reported_with_their_line(site: Path) -> None:
    (site / "bad.csv").write_text(
        "image,label,patient_id,x,y,w,h\n"
        "a.png,1,P1,10,20,30,40\n"
        "missing.png,1,P2,1,1,5,5\n"
        "a.png,maybe,P3,1,1,5,5\n"
        "a.png,1,P4,900,20,30,40\n"
    )
    lesions, skipped = read_lesion_manifest(site / "bad.csv")
    assert len(lesions) == 1
    assert [where.rsplit(":", 1)[1] for where, _ in skipped] == ["3", "4", "5"]
    reasons = [why for _, why in skipped]
    assert "not found" in reasons[0] and "unknown label" in reasons[1] and "outside" in reasons[2]


def test_missing_columns_list_what_the_file_has(site: Path) -> None:
    (site / "x.csv").write_text("image,label,case_id,center_col\na.png,1,P1,5\n")
    with pytest.raises(DataError) as error:
        read_lesion_manifest(site / "x.csv")
    message = str(error.value)
    assert "missing patient_id; a lesion geometry" in message
    assert "found columns: image, label, case_id, center_col;" in message
    assert "map yours with columns.<name>=<your column>" in message


MASS_LIST = "case_id,file,severity,center_col,center_row,radius\nc7,a.png,M,100,50,20\n"
MAPPING = {
    "patient_id": "case_id",
    "image": "file",
    "label": "severity",
    "cx": "center_col",
    "cy": "center_row",
    "radius": "radius",
}


def test_columns_map_a_datasets_own_table(site: Path) -> None:
    (site / "masses.csv").write_text(MASS_LIST)
    lesions, skipped = read_lesion_manifest(site / "masses.csv", y_origin="bottom", columns=MAPPING)
    assert not skipped and len(lesions) == 1
    lesion = lesions[0]
    assert (lesion.patient_id, lesion.label) == ("c7", 1)
    assert lesion.box == Box(80, 400 - 50 - 20, 40, 40)


def test_a_mapped_geometry_wins_over_an_unmapped_one(site: Path) -> None:
    (site / "both.csv").write_text("image,label,patient_id,mask,col,row,r\na.png,1,P1,,100,50,20\n")
    lesions, skipped = read_lesion_manifest(
        site / "both.csv", columns={"cx": "col", "cy": "row", "radius": "r"}
    )
    assert not skipped and lesions[0].box == Box(80, 30, 40, 40)


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"centre": "center_col"}, r"columns\.centre: not a lesion manifest field; map one of"),
        ({"cx": " "}, r"columns\.cx is empty"),
        (
            {**MAPPING, "cx": "centre_col"},
            r"masses\.csv: columns\.cx=centre_col: the file has no column 'centre_col'; "
            r"found columns: case_id, file, severity, center_col, center_row, radius",
        ),
        (
            {"patient_id": "case_id", "image": "file", "label": "severity", "cx": "center_col"},
            r"missing a lesion geometry \(cx,cy,radius lacks cy\)",
        ),
    ],
)
def test_column_mapping_is_validated(site: Path, columns: dict[str, str], message: str) -> None:
    (site / "masses.csv").write_text(MASS_LIST)
    with pytest.raises(DataError, match=message):
        read_lesion_manifest(site / "masses.csv", columns=columns)


def test_empty_or_bad_location_fields_say_why(site: Path) -> None:
    """mini-MIAS leaves x, y, radius out for widespread calcifications."""
    (site / "mias.csv").write_text(
        "image,label,patient_id,cx,cy,radius\n"
        "a.png,B,mdb209,,,\n"
        "a.png,M,mdb210,100,,\n"
        "a.png,M,mdb211,abc,50,20\n"
        "a.png,M,mdb212,100,50,nan\n"
        "a.png,M,mdb213,100,50,20\n"
    )
    lesions, skipped = read_lesion_manifest(site / "mias.csv")
    assert [les.patient_id for les in lesions] == ["mdb213"]
    assert skipped == [
        (
            f"{site / 'mias.csv'}:2",
            "location fields cx, cy, radius empty: no lesion position (mini-MIAS leaves them "
            "out for widespread calcifications); the row cannot be cut",
        ),
        (
            f"{site / 'mias.csv'}:3",
            "location fields cy, radius empty: no lesion position (mini-MIAS leaves them "
            "out for widespread calcifications); the row cannot be cut",
        ),
        (f"{site / 'mias.csv'}:4", "field cx: 'abc' is not a number"),
        (f"{site / 'mias.csv'}:5", "field radius: 'nan' is not a finite number"),
    ]


def test_messages_name_the_files_own_column(site: Path) -> None:
    (site / "masses.csv").write_text(MASS_LIST + "c8,a.png,B,,,\n")
    _, skipped = read_lesion_manifest(site / "masses.csv", columns=MAPPING)
    assert skipped[0][1].startswith(
        "location fields cx (center_col), cy (center_row), radius empty: no lesion position"
    )


def test_malformed_rows_are_skipped_with_their_physical_line(site: Path) -> None:
    (site / "m.csv").write_text(
        "image,label,patient_id,x,y,w,h,lesion_id\n"
        'a.png,1,P1,10,20,30,40,"first\nnote"\n'  # a quoted newline: line 3 is inside row 2
        "a.png,1,P2,10,20,30,40,second,extra\n"
        "\n"
        "a.png,0,P3,5,5,10\n"
        "a.png,0,P4,5,5,10,10,fourth\n"
    )
    lesions, skipped = read_lesion_manifest(site / "m.csv")
    assert [les.patient_id for les in lesions] == ["P1", "P4"]
    assert lesions[0].lesion_id == "first\nnote"
    assert [where.rsplit(":", 1)[1] for where, _ in skipped] == ["4", "6"]
    assert skipped[0][1] == "row has 9 fields, header has 8: an unquoted comma? quote the field"
    assert "row has 6 fields, header has 8: fields missing" in skipped[1][1]


def test_unclosed_quote_stops_with_the_line(site: Path) -> None:
    (site / "m.csv").write_text(
        'image,label,patient_id,x,y,w,h\na.png,1,P1,1,1,5,5\n"a.png,1,P2,1,1,5,5\na.png,0,P3,1,1,5,5\n'
    )
    with pytest.raises(DataError, match=r"m\.csv:3: a quote opened on this line is never closed"):
        read_lesion_manifest(site / "m.csv")


def _lesion_mask(shape: tuple[int, int], value: int, dtype: type) -> np.ndarray:
    mask: np.ndarray = np.zeros(shape, dtype)
    mask[100:160, 52:140] = value  # on the 4-pixel grid mask_boxes closes on
    return mask


def test_same_lesion_from_any_mask_format(site: Path) -> None:
    """8-bit PNG, 16-bit PNG with lesion value 1, 255 or 65535 (an 8-bit read drops the low
    byte) and a DICOM mask: the same box."""
    shape = (400, 300)
    cv2.imwrite(str(site / "m8.png"), _lesion_mask(shape, 255, np.uint8))
    for value in (1, 255, 65535):
        cv2.imwrite(str(site / f"m16_{value}.png"), _lesion_mask(shape, value, np.uint16))
    write_dicom_file(site / "mask.dcm", _lesion_mask(shape, 255, np.uint8))
    names = ["m8.png", "m16_1.png", "m16_255.png", "m16_65535.png", "mask.dcm"]
    assert cv2.imread(str(site / "m16_1.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    (site / "masks.csv").write_text(
        "image,label,patient_id,mask\n"
        + "".join(f"a.png,1,P{i},{n}\n" for i, n in enumerate(names))
    )
    lesions, skipped = read_lesion_manifest(site / "masks.csv")
    assert not skipped
    assert [les.box for les in lesions] == [Box(52, 100, 88, 60)] * len(names)
