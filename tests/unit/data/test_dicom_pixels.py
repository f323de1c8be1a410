"""The DICOM pixel pipeline on a 512x384 12-bit phantom with a bright disk lesion.

Each reported fault is a file whose read must equal the read of a clean copy of the same image
(within 1 grey level mean absolute error around the lesion), or a refusal naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from common.data.dicom_file import read_dicom_header
from common.data.dicom_pixels import read_dicom_values
from common.data.dicom_writer import write_dicom
from common.data.mammogram_io import (
    image_shape,
    minmax_uint8,
    read_mammogram,
    read_mammogram_recorded,
)
from common.errors import ConfigError, DataError

SHAPE = (512, 384)
DISK = (256, 150, 30)  # row, column, radius
AIR, TISSUE, LESION = 200, 1200, 1500


def lesion_phantom(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """12-bit mammogram-like image (breast on the left, air on the right) and its lesion."""
    rows, columns = np.mgrid[: SHAPE[0], : SHAPE[1]]
    breast = (columns / 300.0) ** 2 + ((rows - SHAPE[0] / 2) / (SHAPE[0] / 2)) ** 2 < 1
    lesion = (rows - DISK[0]) ** 2 + (columns - DISK[1]) ** 2 < DISK[2] ** 2
    noise = np.random.default_rng(seed).normal(0, 40, SHAPE)
    image = AIR + breast * (TISSUE + 400 * (1 - columns / 300.0) + noise) + lesion * LESION
    return np.clip(np.round(image), 0, 4095).astype(np.uint16), lesion


def around_disk(image: np.ndarray) -> np.ndarray:
    row, column, radius = DISK
    margin = radius + 20
    return image[row - margin : row + margin, column - margin : column + margin]


def crop_mae(image: np.ndarray, clean: np.ndarray) -> float:
    return float(np.abs(around_disk(image).astype(float) - around_disk(clean)).mean())


def clean_read(tmp_path: Path, pixels: np.ndarray, **options: object) -> np.ndarray:
    write_dicom(tmp_path / "clean.dcm", pixels, bits_stored=12, **options)  # type: ignore[arg-type]
    return read_mammogram(tmp_path / "clean.dcm")


@pytest.mark.parametrize(
    ("bare", "syntax"), [("implicit", "1.2.840.10008.1.2"), ("explicit", "1.2.840.10008.1.2.1")]
)
def test_bare_dataset_without_file_meta_is_read(tmp_path: Path, bare: str, syntax: str) -> None:
    pixels, _ = lesion_phantom()
    path = write_dicom(tmp_path / "bare.dcm", pixels, bits_stored=12, bare=bare)  # type: ignore[arg-type]
    assert b"DICM" not in path.read_bytes()[:132]  # no preamble, no prefix
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(path)  # the reported fault: pydicom alone says "use force=True"
    image, steps = read_mammogram_recorded(path)
    assert np.array_equal(image, clean_read(tmp_path, pixels))
    assert steps.startswith(f"dicom:force-read;transfer={syntax};bits_stored=12;")
    assert image_shape(path) == SHAPE
    header = read_dicom_header(path)
    assert isinstance(header, Dataset) and (header.Rows, header.Columns) == SHAPE
    assert "PixelData" not in header


def test_header_of_garbage_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "junk.dcm").write_bytes(b"\x01\x02 definitely not a dataset" * 10)
    for read in (read_dicom_header, image_shape, read_mammogram):
        with pytest.raises(DataError, match=r"junk\.dcm"):
            read(tmp_path / "junk.dcm")


@pytest.mark.parametrize("jpeg2000", [True, False])
def test_overlay_bits_above_bits_stored_are_masked(tmp_path: Path, jpeg2000: bool) -> None:
    pixels, _ = lesion_phantom()
    overlaid = pixels.copy()
    overlaid[40:60, 20:360] |= 1 << 12  # an overlay bar in bit 12, as in the report
    # encoded at 16 bits, header then says 12: what the reported files look like
    path = write_dicom(
        tmp_path / "overlay.dcm",
        overlaid,
        bits_stored=16,
        jpeg2000=jpeg2000,
        extra={"BitsStored": 12, "HighBit": 11},
    )
    if jpeg2000:
        assert pydicom.dcmread(path).pixel_array.max() > 4095  # the decoder keeps bit 12
    image, steps = read_mammogram_recorded(path)
    assert float(np.abs(image.astype(float) - clean_read(tmp_path, pixels)).mean()) <= 1
    assert np.array_equal(image, clean_read(tmp_path, pixels))
    assert "bits_stored=12(masked 6800 px)" in steps.split(";")


def test_signed_pixels_are_sign_extended_from_bits_stored(tmp_path: Path) -> None:
    pixels, _ = lesion_phantom()
    signed = pixels.astype(np.int16) - 2048
    cells = signed.view(np.uint16).copy()
    cells[40:60, 20:360] ^= 1 << 13  # stray bits above the sign copies
    path = write_dicom(tmp_path / "signed.dcm", cells.view(np.int16), bits_stored=12)
    values, steps = read_dicom_values(path)
    assert np.array_equal(values, signed.astype(np.float32))
    assert "bits_stored=12 signed(masked 6800 px)" in steps


@pytest.mark.parametrize("limit", [None, 10])
def test_monochrome1_padding_is_background_not_brightest(tmp_path: Path, limit: int | None) -> None:
    pixels, _ = lesion_phantom()
    stored = (4095 - pixels).astype(np.uint16)  # MONOCHROME1: air is bright in stored values
    padded = stored.copy()
    padded[:, -32:] = np.arange(32 * SHAPE[0]).reshape(SHAPE[0], 32) % ((limit or 0) + 1)
    extra: dict[str, object] = {"PixelPaddingValue": 0}
    if limit is not None:
        extra["PixelPaddingRangeLimit"] = limit
    path = write_dicom(
        tmp_path / "pad.dcm", padded, bits_stored=12, photometric="MONOCHROME1", extra=extra
    )
    image, steps = read_mammogram_recorded(path)
    clean = clean_read(tmp_path, stored, photometric="MONOCHROME1")
    assert crop_mae(image, clean) <= 1
    assert (image[:, -32:] == 0).all()  # padding is black, like air
    padding = "0" if limit is None else f"0..{limit}"
    assert f"padding={padding}({32 * SHAPE[0]} px)->background" in steps.split(";")
    assert "photometric=MONOCHROME1->inverted" in steps.split(";")


def test_modality_lut_sequence(tmp_path: Path) -> None:
    pixels, _ = lesion_phantom()
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    table = (np.sqrt(np.arange(4096)) * 1000).astype("<u2")
    item.LUTData = table.tobytes()
    item.ModalityLUTType = "US"
    path = write_dicom(
        tmp_path / "lut.dcm",
        pixels,
        bits_stored=12,
        extra={"ModalityLUTSequence": Sequence([item])},
    )
    image, steps = read_mammogram_recorded(path)
    expected = minmax_uint8(table[pixels])
    assert np.array_equal(image, expected) and "modality_lut=sequence" in steps


@pytest.mark.parametrize(
    ("photometric", "shape", "inverted"),
    [
        ("MONOCHROME1", "INVERSE", True),
        ("MONOCHROME2", "INVERSE", True),
        ("MONOCHROME2", "IDENTITY", False),
        ("MONOCHROME1", None, True),
    ],
)
def test_presentation_lut_shape_inverts_once(
    tmp_path: Path, photometric: str, shape: str | None, inverted: bool
) -> None:
    pixels, _ = lesion_phantom()
    extra = {"PresentationLUTShape": shape} if shape else {}
    path = write_dicom(
        tmp_path / "p.dcm", pixels, bits_stored=12, photometric=photometric, extra=extra
    )
    image, steps = read_mammogram_recorded(path)
    assert np.array_equal(image, minmax_uint8(-pixels.astype(int) if inverted else pixels))
    assert steps.split(";")[-2].endswith("->inverted") == inverted


def test_voi_window_is_not_applied_by_default(tmp_path: Path) -> None:
    pixels, _ = lesion_phantom()
    extra = {"WindowCenter": [1500, 2500], "WindowWidth": [1000, 800]}  # two views
    path = write_dicom(tmp_path / "w.dcm", pixels, bits_stored=12, extra=extra)
    image, steps = read_mammogram_recorded(path)
    assert np.array_equal(image, minmax_uint8(pixels)) and "voi=none" in steps
    windowed, steps_list = read_dicom_values(path, voi="window")
    assert "voi=window(1500,1000)" in steps_list
    assert windowed[pixels < 1000].max() == windowed.min()  # below the window: clipped
    with pytest.raises(ConfigError, match="voi"):
        read_dicom_values(path, voi="sigmoid")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"NumberOfFrames": 3}, r"multi-frame \(3 frames\): tomosynthesis or a cine; mammofl"),
        ({"PresentationIntentType": "FOR PROCESSING"}, "FOR PROCESSING"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.2.1"}, "FOR PROCESSING"),
        ({"BitsStored": 17, "HighBit": 16}, "Bits Stored 17 with Bits Allocated 16"),
        ({"HighBit": 15}, "High Bit 15"),
        ({"SamplesPerPixel": 3}, "color image"),
        ({"PhotometricInterpretation": "RGB"}, "color image"),
        ({"PhotometricInterpretation": "MONOCHROME3"}, "unknown photometric"),
        ({"PresentationLUTShape": "LIN OD"}, "Presentation LUT Shape"),
        (
            {"PhotometricInterpretation": "MONOCHROME1", "PresentationLUTShape": "IDENTITY"},
            "contradicts",
        ),
        ({"Rows": 500}, "pixel data of 393216 bytes"),
        ({"PixelPaddingValue": 0, "PixelPaddingRangeLimit": 4095}, "every pixel is padding"),
    ],
)
def test_inconsistent_files_are_refused_by_name(
    tmp_path: Path, extra: dict[str, object], message: str
) -> None:
    pixels, _ = lesion_phantom()
    path = write_dicom(tmp_path / "bad.dcm", pixels, bits_stored=12, extra=extra)
    with pytest.raises(DataError, match=message) as caught:
        read_mammogram(path)
    assert "bad.dcm" in str(caught.value)


def test_for_processing_is_read_when_asked(tmp_path: Path) -> None:
    pixels, _ = lesion_phantom()
    extra = {"PresentationIntentType": "FOR PROCESSING"}
    path = write_dicom(tmp_path / "raw.dcm", pixels, bits_stored=12, extra=extra)
    image, steps = read_mammogram_recorded(path, allow_for_processing=True)
    assert np.array_equal(image, minmax_uint8(pixels))
    assert "intent=FOR PROCESSING(allowed)" in steps.split(";")


def test_recorded_steps_are_one_stable_line(tmp_path: Path) -> None:
    pixels, _ = lesion_phantom()
    path = write_dicom(
        tmp_path / "r.dcm",
        pixels,
        bits_stored=12,
        photometric="MONOCHROME1",
        slope=2,
        intercept=-100,
    )
    _, steps = read_mammogram_recorded(path)
    assert steps == (
        "dicom;transfer=1.2.840.10008.1.2.1;bits_stored=12;padding=none;"
        "modality_lut=rescale(2,-100);voi=none;photometric=MONOCHROME1->inverted;minmax"
    )
