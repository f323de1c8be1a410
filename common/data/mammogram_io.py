"""Read a full mammogram (DICOM, PNG, TIFF, PGM) as 8-bit grayscale, the way patches are cut.

DICOM: pixel data through pydicom's handlers (compressed transfer syntaxes included where a
handler is installed), the modality LUT (rescale slope / intercept), MONOCHROME1 inverted, then
whole-image min-max to uint8 (as the reference code). Other formats: 8-bit as stored (BCDR's
TIFFs get no min-max step); deeper images are min-max scaled.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from common.errors import DataError

RASTER_SUFFIXES = (".png", ".tif", ".tiff", ".pgm", ".jpg", ".jpeg")


def minmax_uint8(pixels: np.ndarray) -> np.ndarray:
    values = pixels.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(pixels.shape, np.uint8)
    return np.round((values - low) / (high - low) * 255).astype(np.uint8)


def read_dicom_pixels(path: Path) -> np.ndarray:
    """Modality values of a DICOM image (float32), MONOCHROME1 turned to MONOCHROME2."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut

    try:
        dataset = pydicom.dcmread(str(path))
    except (InvalidDicomError, OSError, EOFError, ValueError) as error:
        raise DataError(f"{path}: not a readable DICOM file ({error})") from error
    if "PixelData" not in dataset:
        raise DataError(f"{path}: DICOM without pixel data")
    try:
        pixels = dataset.pixel_array
    except Exception as error:  # missing codec, truncated data: pydicom raises many types
        raise DataError(
            f"{path}: cannot decode pixel data (transfer syntax "
            f"{getattr(dataset.file_meta, 'TransferSyntaxUID', '?')}): {error}"
        ) from error
    values = np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float32)
    if str(dataset.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        values = values.max() - values
    if values.ndim != 2:
        raise DataError(f"{path}: expected one 2-D frame, found shape {values.shape}")
    return values


def image_shape(path: Path) -> tuple[int, int]:
    """(height, width), without decoding DICOM pixel data."""
    if path.suffix.lower() in RASTER_SUFFIXES:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise DataError(f"{path}: unreadable image")
        return int(image.shape[0]), int(image.shape[1])
    import pydicom

    try:
        header = pydicom.dcmread(str(path), stop_before_pixels=True)
        return int(header.Rows), int(header.Columns)
    except Exception as error:
        raise DataError(f"{path}: not a readable DICOM header ({error})") from error


def read_mammogram(path: str | Path) -> np.ndarray:
    """8-bit grayscale image, whatever the file format."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix.lower() in RASTER_SUFFIXES:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise DataError(f"{path}: unreadable image (truncated or unknown format)")
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        return image if image.dtype == np.uint8 else minmax_uint8(image)
    return minmax_uint8(read_dicom_pixels(path))
