"""Read a mammogram (DICOM, PNG, TIFF, PGM, JPEG) as 8-bit grayscale, and an ROI mask as bool.

The format dispatcher. DICOM goes through `dicom_pixels` (PS3.3 C.7.6.3 image pixel module,
C.7.5.1.1.2 padding, C.11.1 modality LUT, C.11.2 VOI LUT not applied, C.11.6 polarity) and then
whole-image min-max to uint8, as the reference code; padding pixels end black. Other formats:
8-bit as stored (BCDR's TIFFs get no min-max step); deeper images are min-max scaled. Masks are
read at full depth through the same readers: nonzero = lesion, no scaling.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from common.data.dicom_file import check_image_size, read_dicom_header
from common.data.dicom_pixels import read_dicom_values
from common.data.dicom_stored import read_dicom_stored
from common.errors import DataError

__all__ = [
    "RASTER_SUFFIXES",
    "image_shape",
    "minmax_uint8",
    "read_dicom_header",
    "read_dicom_pixels",
    "read_mammogram",
    "read_mammogram_recorded",
    "read_mask",
]

RASTER_SUFFIXES = (".png", ".tif", ".tiff", ".pgm", ".jpg", ".jpeg")
FORMAT_NAMES = {".tif": "tiff", ".jpg": "jpeg"}


def minmax_uint8(pixels: np.ndarray) -> np.ndarray:
    """Whole-image min-max to 0..255, as the paper's reference code scales every mammogram."""
    values = pixels.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(pixels.shape, np.uint8)
    return np.round((values - low) / (high - low) * 255).astype(np.uint8)


def read_dicom_pixels(path: Path) -> np.ndarray:
    """Display-ordered values of a DICOM image (float32; MONOCHROME1 turned to MONOCHROME2)."""
    return read_dicom_values(Path(path))[0]


def read_raster(path: Path) -> np.ndarray:
    """A raster file at its full depth (uint8 or uint16; color kept as BGR)."""
    try:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    except cv2.error as error:
        raise DataError(f"{path}: unreadable image ({error})") from error
    if image is None:
        raise DataError(f"{path}: unreadable image (truncated or unknown format); re-export it")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3):
        raise DataError(f"{path}: image of shape {image.shape}, expected one 2-D picture")
    return image


def image_shape(path: Path) -> tuple[int, int]:
    """(height, width), without decoding DICOM pixel data."""
    path = Path(path)
    if path.suffix.lower() in RASTER_SUFFIXES:
        image = read_raster(path)
        return int(image.shape[0]), int(image.shape[1])
    header = read_dicom_header(path)
    try:
        rows, columns = int(header.Rows), int(header.Columns)
    except (AttributeError, TypeError, ValueError) as error:
        raise DataError(f"{path}: DICOM header without Rows / Columns ({error})") from error
    check_image_size(rows, columns, path)
    return rows, columns


def read_mammogram_recorded(
    path: str | Path, *, allow_for_processing: bool = False
) -> tuple[np.ndarray, str]:
    """8-bit grayscale image and a one-line, path-free description of the steps applied.

    DICOM: "dicom[:force-read];transfer=UID;bits_stored=N[ signed][(masked K px)];
    padding=none|V[..L](K px)->background;modality_lut=none|rescale(s,i)|sequence;voi=none;
    photometric=P[+SHAPE][->inverted];minmax" ("intent=FOR PROCESSING(allowed)" after transfer
    when allowed). Raster: "png:8-bit as stored", "png:16-bit minmax", "png:8-bit color->gray".
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix not in RASTER_SUFFIXES:
        values, steps = read_dicom_values(path, allow_for_processing=allow_for_processing)
        return minmax_uint8(values), ";".join([*steps, "minmax"])
    image = read_raster(path)
    label = f"{FORMAT_NAMES.get(suffix, suffix[1:])}:{image.dtype.itemsize * 8}-bit"
    if image.ndim == 3:
        image, label = _gray(image, path), label + " color->gray"
    if image.dtype == np.uint8:
        return image, label if label.endswith("gray") else label + " as stored"
    return minmax_uint8(image), label + " minmax"


def _gray(image: np.ndarray, path: Path) -> np.ndarray:
    if image.shape[2] not in (3, 4):
        raise DataError(f"{path}: {image.shape[2]}-channel image; expected gray, BGR or BGRA")
    code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
    return cv2.cvtColor(image, code)


def read_mammogram(path: str | Path) -> np.ndarray:
    """8-bit grayscale image, whatever the file format (see `read_mammogram_recorded`)."""
    return read_mammogram_recorded(path)[0]


def read_mask(path: Path) -> np.ndarray:
    """ROI mask as bool (nonzero = lesion), at full depth: 8/16-bit PNG, TIFF, color, DICOM.

    A 16-bit PNG mask with lesion value 1 stays a lesion (an 8-bit read would drop it); a color
    mask is a lesion where any color channel is nonzero, and with an alpha channel that is not
    uniform, where it is opaque (a drawing on a transparent background, whatever colour that
    background holds). DICOM: nonzero stored
    value (masked to Bits Stored, no LUT, no padding, no scaling) = lesion, whatever the
    photometric interpretation, as CBIS-DDSM masks are 0/255 MONOCHROME2.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: mask file not found")
    if path.suffix.lower() in RASTER_SUFFIXES:
        image = read_raster(path)
        if image.ndim == 3 and image.shape[2] == 4 and image[:, :, 3].min() != image[:, :, 3].max():
            return np.asarray(image[:, :, 3] != 0)
        return np.asarray(image[:, :, :3].any(axis=2) if image.ndim == 3 else image != 0)
    return read_dicom_stored(path) != 0
