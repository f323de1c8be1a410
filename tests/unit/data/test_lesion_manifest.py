"""Generic lesion manifests: mask, box, centre + radius (rows from top or bottom); bad rows."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

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


def test_missing_columns(site: Path) -> None:
    (site / "x.csv").write_text("image,label,patient_id\na.png,1,P1\n")
    with pytest.raises(DataError, match="lesion geometry"):
        read_lesion_manifest(site / "x.csv")
