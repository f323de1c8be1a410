"""Stored pixel values of a DICOM image: decoded, checked, reduced to Bits Stored.

PS3.3 C.7.6.3.1: only the Bits Stored low bits of each Bits Allocated cell are pixel data (High
Bit = Bits Stored - 1); bits above may hold an overlay (e.g. bit 12 of a 12-bit image) and
decoders such as JPEG 2000 return them as part of the value. They are masked off after any
decoder and counted; signed data (Pixel Representation 1) is sign-extended from Bits Stored.
Uncompressed data must fill exactly Rows x Columns cells (PS3.5 8.1.1, 8.2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from common.data.dicom_file import (
    check_image_header,
    dicom_errors,
    read_dicom_dataset,
    transfer_syntax,
)
from common.errors import DataError


def read_dicom_stored(path: Path) -> np.ndarray:
    """Stored values (int64) masked to Bits Stored: for ROI masks, no LUT and no scaling."""
    with dicom_errors(path):
        dataset, _ = read_dicom_dataset(path)
        check_image_header(dataset, path, allow_for_processing=True)
        return stored_values(dataset, path)[0]


def stored_values(dataset: Dataset, path: Path) -> tuple[np.ndarray, str]:
    """Decoded cells reduced to their Bits Stored (sign-extended when signed), as int64."""
    _check_native_length(dataset, path)
    try:
        decoded = np.asarray(dataset.pixel_array)
    except Exception as error:  # missing codec, truncated data: pydicom raises many types
        # pydicom 3: a decoder was found and failed on these bytes, or none can run
        failed = "raised by all available plugins" in str(error)
        fix = (
            "the installed decoders all failed on it: the compressed data are damaged, "
            "download the file again"
            if failed
            else "install its decoder (pylibjpeg, gdcm) or re-export the file uncompressed"
        )
        raise DataError(
            f"{path}: cannot decode pixel data (transfer syntax {transfer_syntax(dataset)}): "
            f"{fix} ({type(error).__name__}: {error})"
        ) from error
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    if decoded.shape != (rows, columns) or decoded.dtype.kind not in "iu":
        raise DataError(
            f"{path}: decoded pixels {decoded.shape} {decoded.dtype} do not match the header's "
            f"{rows}x{columns} integer image; re-export the file"
        )
    stored_bits = int(dataset.get("BitsStored") or dataset.BitsAllocated)
    signed = int(dataset.get("PixelRepresentation") or 0) == 1
    cells, cell_bits = _cells(dataset, decoded)
    values = (cells & np.uint64((1 << stored_bits) - 1)).astype(np.int64)
    if signed:  # two's complement within Bits Stored; above it only copies of the sign bit
        values = np.where(values >= 1 << (stored_bits - 1), values - (1 << stored_bits), values)
        above = cells >> np.uint64(stored_bits - 1)
        stray = (above != 0) & (above != np.uint64((1 << (cell_bits - stored_bits + 1)) - 1))
    else:
        stray = (cells >> np.uint64(stored_bits)) != 0
    count = int(np.count_nonzero(stray))
    step = f"bits_stored={stored_bits}" + (" signed" if signed else "")
    return values, step + (f"(masked {count} px)" if count else "")


def _check_native_length(dataset: Dataset, path: Path) -> None:
    """Uncompressed data must be exactly Rows x Columns cells (PS3.5 8.1.1; one pad byte)."""
    if transfer_syntax(dataset).is_compressed:
        return  # the codec checks its own frame size; the decoded shape is checked below
    bits = int(dataset.Rows) * int(dataset.Columns) * int(dataset.BitsAllocated)
    expected = (bits + 7) // 8
    actual = len(dataset.PixelData)
    if actual not in (expected, expected + expected % 2):
        raise DataError(
            f"{path}: pixel data of {actual} bytes, but Rows x Columns x Bits Allocated "
            f"({dataset.Rows}x{dataset.Columns}x{dataset.BitsAllocated}) needs {expected}; "
            "the header does not describe this image: re-export it"
        )


def _cells(dataset: Dataset, decoded: np.ndarray) -> tuple[np.ndarray, int]:
    """The cells as stored, bits above Bits Stored included (uint64), and their width in bits.

    pydicom masks native (uncompressed) data itself, so those cells are read from the buffer;
    a codec's output (JPEG 2000 ...) is taken as decoded.
    """
    allocated = int(dataset.BitsAllocated)
    syntax = transfer_syntax(dataset)
    width = decoded.dtype.itemsize
    if not syntax.is_compressed and allocated == 8 * width:
        order = "<" if syntax.is_little_endian else ">"
        raw = np.frombuffer(dataset.PixelData, dtype=f"{order}u{width}", count=decoded.size)
        return raw.reshape(decoded.shape).astype(np.uint64), allocated
    bits = min(allocated, 8 * width)
    unsigned = decoded.view(f"u{width}") if decoded.dtype.kind == "i" else decoded
    return unsigned.astype(np.uint64) & np.uint64((1 << bits) - 1), bits
