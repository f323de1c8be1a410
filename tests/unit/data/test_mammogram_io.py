"""Real DICOM files written by pydicom: MONOCHROME1, rescale, RLE Lossless, bad files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from common.data.dicom_writer import write_dicom as library_write_dicom
from common.data.mammogram_io import (
    image_shape,
    minmax_uint8,
    read_mammogram,
    read_mammogram_recorded,
)
from common.errors import DataError


def write_dicom(path: Path, pixels: np.ndarray, **options: object) -> None:
    library_write_dicom(path, pixels.astype(np.uint16), bits_stored=12, **options)  # type: ignore[arg-type]


def _ramp() -> np.ndarray:
    return (np.arange(64 * 48).reshape(64, 48) % 4096).astype(np.uint16)


def test_monochrome2_minmax(tmp_path: Path) -> None:
    write_dicom(tmp_path / "a.dcm", _ramp())
    image = read_mammogram(tmp_path / "a.dcm")
    assert image.dtype == np.uint8 and image.shape == (64, 48)
    assert np.array_equal(image, minmax_uint8(_ramp()))


def test_monochrome1_is_inverted_and_rescale_applied(tmp_path: Path) -> None:
    write_dicom(tmp_path / "m1.dcm", _ramp(), photometric="MONOCHROME1", slope=2.0, intercept=-100)
    image = read_mammogram(tmp_path / "m1.dcm")
    assert np.array_equal(image, minmax_uint8(-(2.0 * _ramp() - 100)))


def test_rle_lossless_decodes(tmp_path: Path) -> None:
    write_dicom(tmp_path / "rle.dcm", _ramp(), rle=True)
    assert np.array_equal(read_mammogram(tmp_path / "rle.dcm"), minmax_uint8(_ramp()))


def test_bad_dicoms_are_clear_errors(tmp_path: Path) -> None:
    write_dicom(tmp_path / "ok.dcm", _ramp())
    data = (tmp_path / "ok.dcm").read_bytes()
    (tmp_path / "truncated.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"truncated\.dcm"):
        read_mammogram(tmp_path / "truncated.dcm")
    (tmp_path / "garbage.dcm").write_bytes(b"not a dicom at all")
    with pytest.raises(DataError, match=r"garbage\.dcm"):
        read_mammogram(tmp_path / "garbage.dcm")
    write_dicom(tmp_path / "nopix.dcm", _ramp(), with_pixels=False)
    with pytest.raises(DataError, match="without pixel data"):
        read_mammogram(tmp_path / "nopix.dcm")
    with pytest.raises(DataError, match="not found"):
        read_mammogram(tmp_path / "missing.dcm")


def test_raster_formats(tmp_path: Path) -> None:
    eight = (np.arange(100).reshape(10, 10) * 2).astype(np.uint8)
    for suffix in (".png", ".tif", ".pgm"):
        cv2.imwrite(str(tmp_path / f"a{suffix}"), eight)
        assert np.array_equal(read_mammogram(tmp_path / f"a{suffix}"), eight)  # no min-max step
    sixteen = (np.arange(100).reshape(10, 10) * 300).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "b.png"), sixteen)
    assert np.array_equal(read_mammogram(tmp_path / "b.png"), minmax_uint8(sixteen))
    (tmp_path / "c.png").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(DataError, match="unreadable"):
        read_mammogram(tmp_path / "c.png")


def test_jpeg2000_lossless_decodes(tmp_path: Path) -> None:
    library_write_dicom(tmp_path / "j2k.dcm", _ramp(), bits_stored=12, jpeg2000=True)
    import pydicom

    assert (
        pydicom.dcmread(tmp_path / "j2k.dcm").file_meta.TransferSyntaxUID.name
        == "JPEG 2000 Image Compression (Lossless Only)"
    )
    assert np.array_equal(read_mammogram(tmp_path / "j2k.dcm"), minmax_uint8(_ramp()))


def test_raster_steps_are_recorded(tmp_path: Path) -> None:
    eight = (np.arange(100).reshape(10, 10) * 2).astype(np.uint8)
    sixteen = (np.arange(100).reshape(10, 10) * 300).astype(np.uint16)
    color = np.dstack([eight, eight, eight])
    cases = {
        "a.png": (eight, "png:8-bit as stored"),
        "a.tif": (eight, "tiff:8-bit as stored"),
        "a.pgm": (eight, "pgm:8-bit as stored"),
        "b.png": (sixteen, "png:16-bit minmax"),
        "b.tiff": (sixteen, "tiff:16-bit minmax"),
        "c.png": (color, "png:8-bit color->gray"),
        "d.png": (np.dstack([sixteen] * 3), "png:16-bit color->gray minmax"),
    }
    for name, (pixels, expected) in cases.items():
        cv2.imwrite(str(tmp_path / name), pixels)
        image, steps = read_mammogram_recorded(tmp_path / name)
        assert steps == expected and image.dtype == np.uint8 and image.shape == (10, 10)
        assert image_shape(tmp_path / name) == (10, 10)
    assert np.array_equal(read_mammogram_recorded(tmp_path / "c.png")[0], eight)


def test_dicom_steps_are_recorded(tmp_path: Path) -> None:
    write_dicom(tmp_path / "a.dcm", _ramp(), rle=True)
    image, steps = read_mammogram_recorded(tmp_path / "a.dcm")
    assert np.array_equal(image, read_mammogram(tmp_path / "a.dcm"))
    assert steps == (
        "dicom;transfer=1.2.840.10008.1.2.5;bits_stored=12;padding=none;"
        "modality_lut=rescale(1,0);voi=none;photometric=MONOCHROME2;minmax"
    )
    assert image_shape(tmp_path / "a.dcm") == (64, 48)
