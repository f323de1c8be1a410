"""Open a DICOM file (Part 10 or a bare dataset) and check its image pixel description.

A file without the 128-byte preamble, "DICM" and file meta (PS3.10 7.1; some exports write the
bare dataset) is read with `force=True`; its transfer syntax is derived from the encoding pydicom
detected, since pydicom 3 decodes pixels only with one. The image header is checked against
PS3.3 C.7.6.3 (Image Pixel Module: one sample, MONOCHROME1/2, Bits Stored <= Bits Allocated,
High Bit = Bits Stored - 1), one frame (C.7.6.6, multi-frame) and the presentation intent
(C.8.11.1: "FOR PROCESSING" images are raw detector data, not mammograms to look at).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from common.errors import DataError

# pydicom logs a traceback for each decoder that fails on a file and warns of a file that ends
# early; mammofl's readers turn every such failure into a DataError naming the file, which the
# caller reports (prepare: skipped, with the reason, in report.json), so pydicom's own copies
# would only bury that report (its import set the level; this comes after it)
logging.getLogger("pydicom").setLevel(logging.CRITICAL)
#: DX family SOP classes "For Processing" (PS3.4 B.5): mammography, general DX, intra-oral.
FOR_PROCESSING_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.1.2.1",
        "1.2.840.10008.5.1.4.1.1.1.1.1",
        "1.2.840.10008.5.1.4.1.1.1.3.1",
    }
)
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
COLOR = (
    "RGB",
    "PALETTE COLOR",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_ICT",
    "YBR_RCT",
    "YBR_PARTIAL_420",
)
REQUIRED = ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation")


def read_dicom_header(path: Path) -> Dataset:
    """The header without pixel data (cheap), Part 10 file or bare dataset alike."""
    return _read(Path(path), stop_before_pixels=True)[0]


def read_dicom_dataset(path: Path) -> tuple[Dataset, bool]:
    """The whole dataset and whether it had to be force-read (no file meta)."""
    return _read(Path(path), stop_before_pixels=False)


def transfer_syntax(dataset: Dataset) -> UID:
    return UID(dataset.file_meta.TransferSyntaxUID)


def _read(path: Path, *, stop_before_pixels: bool) -> tuple[Dataset, bool]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not path.is_file():
        raise DataError(f"{path}: file not found")
    forced = False
    with (
        dicom_errors(path, "not a readable DICOM file", "check the download is complete"),
        warnings.catch_warnings(record=True) as warned,
    ):
        warnings.simplefilter("always")
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
        except InvalidDicomError:  # no preamble / "DICM" / file meta: a bare dataset
            forced = True
            dataset = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
        ended_early = [str(w.message) for w in warned if "End of file" in str(w.message)]
        for other in (w for w in warned if "End of file" not in str(w.message)):
            warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
        if ended_early and not stop_before_pixels:
            raise DataError(
                f"{path}: the file ends early ({ended_early[0]}): a truncated download; "
                "download it again"
            )
        if forced and not _looks_like_image_dataset(dataset):
            raise DataError(f"{path}: not a DICOM file (no preamble, file meta or image tags)")
        _ensure_transfer_syntax(dataset)
    return dataset, forced


@contextmanager
def dicom_errors(
    path: Path, problem: str = "malformed DICOM", fix: str = "re-export the file"
) -> Iterator[None]:
    """The readers' boundary: whatever pydicom or numpy raises becomes a DataError naming the
    file (pydicom converts element values lazily, so malformed ones fail late, in many types)."""
    try:
        yield
    except DataError:
        raise
    except Exception as error:
        raise DataError(f"{path}: {problem} ({type(error).__name__}: {error}); {fix}") from error


def _looks_like_image_dataset(dataset: Dataset) -> bool:
    """A force-read of arbitrary bytes gives nonsense tags; a real dataset has these."""
    tags = set(dataset.keys())
    return 0x00280010 in tags or 0x00080016 in tags  # Rows or SOP Class UID


def _ensure_transfer_syntax(dataset: Dataset) -> None:
    """A bare dataset has no (0002,0010): name the encoding it was actually read with."""
    meta = getattr(dataset, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = dataset.original_encoding
    if implicit is None or little is None:
        implicit, little = True, True  # PS3.5 A.1: the default transfer syntax
    if implicit and not little:
        raise DataError("implicit VR big endian is not a DICOM transfer syntax")
    syntax = (
        ImplicitVRLittleEndian
        if implicit
        else ExplicitVRLittleEndian
        if little
        else ExplicitVRBigEndian
    )
    if meta is None:
        meta = FileMetaDataset()
        dataset.file_meta = meta
    meta.TransferSyntaxUID = syntax


def check_image_header(dataset: Dataset, path: Path, *, allow_for_processing: bool) -> None:
    """Refuse, by name, what is not one consistent 2-D grayscale image (PS3.3 C.7.6.3)."""
    if "PixelData" not in dataset:
        raise DataError(
            f"{path}: DICOM without pixel data (float or double float pixel data and "
            "headers-only files are not mammograms mammofl can read)"
        )
    if not dataset.get("PixelData"):
        raise DataError(f"{path}: the pixel data element is empty (a failed export?): re-export it")
    missing = [name for name in REQUIRED if name not in dataset]
    if missing:
        raise DataError(f"{path}: DICOM image without {', '.join(missing)} (PS3.3 C.7.6.3)")
    try:
        frames = int(dataset.get("NumberOfFrames") or 1)
        samples = int(dataset.get("SamplesPerPixel") or 1)
        allocated = int(dataset.BitsAllocated)
        stored = int(dataset.get("BitsStored") or allocated)
        high = int(dataset.get("HighBit") if "HighBit" in dataset else stored - 1)
        representation = int(dataset.get("PixelRepresentation") or 0)
        rows, columns = int(dataset.Rows), int(dataset.Columns)
    except (TypeError, ValueError) as error:
        raise DataError(f"{path}: malformed image pixel attribute ({error})") from error
    photometric = str(dataset.PhotometricInterpretation).strip().upper()
    # a code string is upper case (PS3.5 6.2, CS); pydicom's decoders match it exactly, so a
    # writer's 'monochrome2' would otherwise fail as an undecodable file
    dataset.PhotometricInterpretation = photometric
    if frames > 1:
        raise DataError(
            f"{path}: multi-frame ({frames} frames): tomosynthesis or a cine; "
            "mammofl reads single 2-D mammograms (export one 2-D view, e.g. the synthetic 2-D)"
        )
    if photometric in COLOR or samples != 1:
        raise DataError(
            f"{path}: color image ({photometric}, {samples} samples per pixel); "
            "mammograms are grayscale MONOCHROME1/MONOCHROME2"
        )
    if photometric not in GRAYSCALE:
        raise DataError(
            f"{path}: unknown photometric interpretation {photometric!r}; "
            "expected MONOCHROME1 or MONOCHROME2 (PS3.3 C.7.6.3.1.2)"
        )
    check_image_size(rows, columns, path)
    _check_bits(path, allocated, stored, high, representation)
    if not allow_for_processing:
        _refuse_for_processing(dataset, path)


def _check_bits(path: Path, allocated: int, stored: int, high: int, representation: int) -> None:
    if allocated not in (1, 8, 16, 32) or not 1 <= stored <= allocated:
        raise DataError(
            f"{path}: Bits Stored {stored} with Bits Allocated {allocated} contradict each "
            "other (PS3.3 C.7.6.3: 1 <= Bits Stored <= Bits Allocated in 1, 8, 16, 32)"
        )
    if high != stored - 1:
        raise DataError(
            f"{path}: High Bit {high} != Bits Stored {stored} - 1; PS3.5 8.1.1 needs the "
            "stored bits at the bottom of each cell: re-export the image"
        )
    if representation not in (0, 1):
        raise DataError(f"{path}: Pixel Representation {representation} is not 0 or 1")


def _refuse_for_processing(dataset: Dataset, path: Path) -> None:
    if is_for_processing(dataset):
        raise DataError(
            f"{path}: a 'FOR PROCESSING' image (raw detector data, PS3.3 C.8.11.1.1.1), "
            "not a mammogram for presentation; use the site's 'FOR PRESENTATION' export "
            "or pass allow_for_processing=True"
        )


def is_for_processing(dataset: Dataset) -> bool:
    """Presentation Intent Type FOR PROCESSING, or a DX "For Processing" SOP class."""
    intent = str(dataset.get("PresentationIntentType", "")).strip().upper()
    return intent == "FOR PROCESSING" or str(dataset.get("SOPClassUID", "")) in (
        FOR_PROCESSING_SOP_CLASSES
    )


def check_image_size(rows: int, columns: int, path: Path) -> None:
    """An image with no pixel in a dimension (Rows or Columns 0) has nothing to cut: say so,
    before any box is checked against it (which would blame the box)."""
    if rows < 1 or columns < 1:
        raise DataError(
            f"{path}: empty image ({rows} rows x {columns} columns): a failed export? "
            "re-export the file"
        )
