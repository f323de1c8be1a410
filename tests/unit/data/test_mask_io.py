"""ROI masks read at full depth: one lesion, stored every way a site writes it, one mask."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from common.data.dicom_writer import write_dicom
from common.data.mammogram_io import read_mask
from common.data.masks import mask_boxes
from common.errors import DataError
from tests.unit.data.test_dicom_pixels import SHAPE, lesion_phantom


def _png(value: int, dtype: type) -> Callable[[Path, np.ndarray], Path]:
    def write(folder: Path, lesion: np.ndarray) -> Path:
        path = folder / f"mask_{dtype.__name__}_{value}.png"
        cv2.imwrite(str(path), lesion.astype(dtype) * dtype(value))
        return path

    return write


def _tiff(folder: Path, lesion: np.ndarray) -> Path:
    path = folder / "mask.tif"
    cv2.imwrite(str(path), lesion.astype(np.uint16) * 1000)
    return path


def _color(folder: Path, lesion: np.ndarray) -> Path:
    path = folder / "mask_color.png"
    bgra = np.zeros((*SHAPE, 4), np.uint8)
    bgra[..., 3] = 255  # opaque everywhere: alpha is not a lesion
    bgra[lesion, 2] = 200  # red outline fill
    cv2.imwrite(str(path), bgra)
    return path


def _dicom(folder: Path, lesion: np.ndarray) -> Path:
    return write_dicom(folder / "mask.dcm", lesion.astype(np.uint8) * 255)


def _dicom_bare_with_overlay(folder: Path, lesion: np.ndarray) -> Path:
    cells = lesion.astype(np.uint16)
    cells[:20] |= 1 << 12  # an overlay bit above Bits Stored: not a lesion
    return write_dicom(folder / "bare_mask.dcm", cells, bits_stored=12, bare="implicit")


def _dicom_monochrome1(folder: Path, lesion: np.ndarray) -> Path:
    pixels = lesion.astype(np.uint8) * 255
    return write_dicom(folder / "m1_mask.dcm", pixels, photometric="MONOCHROME1")


WRITERS = {
    "png8-255": _png(255, np.uint8),
    "png8-1": _png(1, np.uint8),
    "png16-1": _png(1, np.uint16),
    "png16-255": _png(255, np.uint16),
    "png16-65535": _png(65535, np.uint16),
    "tiff16": _tiff,
    "color-png": _color,
    "dicom": _dicom,
    "dicom-bare-overlay": _dicom_bare_with_overlay,
    "dicom-monochrome1": _dicom_monochrome1,
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_every_storage_gives_the_same_mask_and_box(tmp_path: Path, kind: str) -> None:
    _, lesion = lesion_phantom()
    mask = read_mask(WRITERS[kind](tmp_path, lesion))
    assert mask.dtype == np.bool_ and mask.shape == SHAPE
    assert np.array_equal(mask, lesion)
    assert mask_boxes(mask, SHAPE) == mask_boxes(lesion.astype(np.uint8), SHAPE)


def test_16_bit_value_1_mask_was_empty_when_read_as_8_bit(tmp_path: Path) -> None:
    _, lesion = lesion_phantom()
    path = _png(1, np.uint16)(tmp_path, lesion)
    assert not cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).any()  # the reported fault
    assert read_mask(path).sum() == lesion.sum()


def test_unreadable_masks_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n")
    (tmp_path / "broken.dcm").write_bytes(b"nothing here")
    for name in ("broken.png", "broken.dcm", "missing.png"):
        with pytest.raises(DataError, match=name.replace(".", r"\.")):
            read_mask(tmp_path / name)


def test_writer_refuses_unknown_keywords(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a DICOM keyword"):
        write_dicom(tmp_path / "x.dcm", np.zeros((4, 4), np.uint8), extra={"BitStored": 12})
