"""Write real DICOM files (a mammogram, an ROI mask, a crop): for synthetic sites and tests.

Secondary-capture style datasets with the tags mammofl's readers use: Study/Series Instance
UIDs, photometric interpretation, rescale slope/intercept, pixel spacing; optionally RLE
Lossless compressed (pydicom's own encoder), as TCIA's CBIS-DDSM files are. For the reader's
tests it also writes what real exports contain: signed pixels (int16), a bare dataset without
preamble and file meta (PS3.10 7.1 not followed), and any header attribute set after encoding
(`extra`), e.g. a JPEG 2000 codestream at 16 bits whose header says Bits Stored 12.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from common.errors import DataError

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    instance_uid: str | None = None,
    patient_id: str = "anonymous",
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
    pixel_spacing: tuple[float, float] | None = (0.05, 0.05),
    rle: bool = False,
    jpeg2000: bool = False,
    with_pixels: bool = True,
    bare: Literal["implicit", "explicit"] | None = None,
    extra: Mapping[str, object] | None = None,
) -> Path:
    """Write `pixels` (2-D uint8, uint16 or int16 = signed) as a DICOM file at `path`.

    `bare`: no preamble, "DICM" or file meta; the dataset in implicit (or explicit) VR little
    endian. `extra`: keyword -> value set last, after any compression (so it may contradict
    the pixel data on purpose).
    """
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16, np.int16):
        raise DataError("write_dicom takes a 2-D uint8, uint16 or int16 array")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(SECONDARY_CAPTURE)
    meta.MediaStorageSOPInstanceUID = UID(instance_uid) if instance_uid else generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SECONDARY_CAPTURE, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientID, ds.Modality = patient_id, "MG"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    allocated = pixels.dtype.itemsize * 8
    stored = bits_stored or allocated
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (
        allocated,
        stored,
        stored - 1,
        int(pixels.dtype == np.int16),
    )
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    if with_pixels:
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        if rle:
            ds.compress(RLELossless)
        elif jpeg2000:  # needs pylibjpeg-openjpeg, as decoding such files does
            ds.compress(JPEG2000Lossless)
    for keyword, value in (extra or {}).items():
        if tag_for_keyword(keyword) is None:
            raise DataError(f"extra={{{keyword!r}: ...}}: not a DICOM keyword")
        setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    if bare is None:
        ds.save_as(path, enforce_file_format=True)
        return path
    del ds.file_meta
    ds.save_as(path, implicit_vr=bare == "implicit", little_endian=True, enforce_file_format=False)
    return path
