"""DICOM grayscale pipeline, stored values -> display-ordered values (MONOCHROME2 sense).

The order is PS3.4 N.2 (grayscale transformations), each step one function:
1. stored values (`dicom_stored`): decoded, masked to Bits Stored, sign-extended if signed;
2. pixel padding (C.7.5.1.1.2): Pixel Padding Value, up to Pixel Padding Range Limit when
   present, compared on stored values before the modality LUT; left out of the scaling;
3. modality LUT (C.11.1): Modality LUT Sequence, else Rescale Slope / Intercept;
4. VOI LUT (C.11.2): not applied by default, as the reference code min-maxes the whole modality
   range; `voi="window"` applies the first VOI LUT Sequence item or window;
5. polarity (C.7.6.3.1.2, C.11.6.1): Presentation LUT Shape, when present, is the last step
   before P-values and decides alone: INVERSE inverts once (its required value for MONOCHROME1,
   so MONOCHROME1 + INVERSE is one inversion, not two; MONOCHROME2 + INVERSE means "display
   inverted"); MONOCHROME1 + IDENTITY is refused (C.8.11.3.1: MONOCHROME1 shall be INVERSE, so
   the file contradicts itself). Without it, MONOCHROME1 is inverted.
Padding pixels end as the lowest content value: black after min-max, like air.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset

from common.data.dicom_file import (
    check_image_header,
    dicom_errors,
    is_for_processing,
    read_dicom_dataset,
    transfer_syntax,
)
from common.data.dicom_stored import stored_values
from common.errors import ConfigError, DataError

Voi = Literal["none", "window"]


def read_dicom_values(
    path: Path, *, voi: Voi = "none", allow_for_processing: bool = False
) -> tuple[np.ndarray, list[str]]:
    """Float32 values (higher = brighter, padding = darkest content) and the steps applied."""
    if voi not in ("none", "window"):
        raise ConfigError(f"voi={voi!r}: choose 'none' (default) or 'window'")
    with dicom_errors(path):
        return _pipeline(path, voi, allow_for_processing)


def _pipeline(path: Path, voi: Voi, allow_for_processing: bool) -> tuple[np.ndarray, list[str]]:
    dataset, forced = read_dicom_dataset(path)
    check_image_header(dataset, path, allow_for_processing=allow_for_processing)
    invert, polarity_step = polarity(dataset, path)  # refuses before decoding
    steps = ["dicom:force-read" if forced else "dicom", f"transfer={transfer_syntax(dataset)}"]
    if is_for_processing(dataset):
        steps.append("intent=FOR PROCESSING(allowed)")
    stored, step = stored_values(dataset, path)
    steps.append(step)
    padding, step = padding_mask(dataset, stored, path)
    steps.append(step)
    values, step = modality_values(dataset, stored, path)
    steps.append(step)
    values, step = voi_values(dataset, values, voi, path)
    steps.append(step)
    steps.append(polarity_step)
    content = values[~padding]
    if invert:
        values = float(content.max()) - values
        content = values[~padding]
    values = np.where(padding, content.min(), values).astype(np.float32)
    return values, steps


def padding_mask(dataset: Dataset, stored: np.ndarray, path: Path) -> tuple[np.ndarray, str]:
    """Pixels that are padding, not patient (PS3.3 C.7.5.1.1.2), compared on stored values."""
    if "PixelPaddingValue" not in dataset:
        return np.zeros(stored.shape, bool), "padding=none"
    bits = int(dataset.get("BitsStored") or dataset.BitsAllocated)
    signed = int(dataset.get("PixelRepresentation") or 0) == 1
    first = _as_stored(dataset.PixelPaddingValue, bits, signed, path)
    limit = dataset.get("PixelPaddingRangeLimit")
    last = first if limit is None else _as_stored(limit, bits, signed, path)
    low, high = min(first, last), max(first, last)
    padding = (stored >= low) & (stored <= high)
    count = int(padding.sum())
    if count == stored.size:
        raise DataError(f"{path}: every pixel is padding ({low}..{high}); nothing to read")
    label = f"{low}" if low == high else f"{low}..{high}"
    return padding, f"padding={label}({count} px)->background"


def _as_stored(value: object, bits: int, signed: bool, path: Path) -> int:
    """A padding attribute (US or SS, possibly read as the wrong one) in stored-value terms."""
    if isinstance(value, bytes):
        value = int.from_bytes(value[:2], "little", signed=signed)
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError) as error:
        raise DataError(f"{path}: malformed Pixel Padding Value ({value!r})") from error
    number &= (1 << bits) - 1
    if signed and number >= 1 << (bits - 1):
        number -= 1 << bits
    return number


def modality_values(dataset: Dataset, stored: np.ndarray, path: Path) -> tuple[np.ndarray, str]:
    """Modality LUT (PS3.3 C.11.1): LUT Sequence first, else rescale, else identity."""
    from pydicom.pixels import apply_modality_lut

    if "ModalityLUTSequence" in dataset:
        step = "modality_lut=sequence"
    elif "RescaleSlope" in dataset or "RescaleIntercept" in dataset:
        slope = float(dataset.get("RescaleSlope", 1.0))
        intercept = float(dataset.get("RescaleIntercept", 0.0))
        step = f"modality_lut=rescale({slope:g},{intercept:g})"
    else:
        step = "modality_lut=none"
    try:
        values = np.asarray(apply_modality_lut(stored, dataset), dtype=np.float64)
    except Exception as error:
        raise DataError(f"{path}: malformed modality LUT / rescale ({error})") from error
    return values, step


def voi_values(
    dataset: Dataset, values: np.ndarray, voi: Voi, path: Path
) -> tuple[np.ndarray, str]:
    """VOI LUT (PS3.3 C.11.2), applied only when asked: the paper min-maxes the full range."""
    from pydicom.pixels import apply_voi_lut

    if voi == "none":
        return values, "voi=none"
    if dataset.get("VOILUTSequence"):
        step = "voi=lut-sequence"
    elif "WindowCenter" in dataset and "WindowWidth" in dataset:
        center, width = (_first(dataset.WindowCenter), _first(dataset.WindowWidth))
        step = f"voi=window({center:g},{width:g})"
    else:
        return values, "voi=none(absent)"
    try:
        return np.asarray(apply_voi_lut(values, dataset, index=0), dtype=np.float64), step
    except Exception as error:
        raise DataError(f"{path}: malformed VOI LUT / window ({error})") from error


def _first(value: object) -> float:
    """The first of a multi-valued window attribute (one view per value, C.11.2.1.2)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0]
    return float(value)  # type: ignore[arg-type]


def polarity(dataset: Dataset, path: Path) -> tuple[bool, str]:
    """Whether to invert (PS3.3 C.7.6.3.1.2 and C.11.6.1; see the module docstring)."""
    photometric = str(dataset.PhotometricInterpretation).strip().upper()
    shape = str(dataset.get("PresentationLUTShape", "")).strip().upper()
    if shape and shape not in ("IDENTITY", "INVERSE"):
        raise DataError(f"{path}: Presentation LUT Shape {shape!r} is not IDENTITY or INVERSE")
    if photometric == "MONOCHROME1" and shape == "IDENTITY":
        raise DataError(
            f"{path}: MONOCHROME1 with Presentation LUT Shape IDENTITY contradicts PS3.3 "
            "C.8.11.3.1 (MONOCHROME1 requires INVERSE); fix one of the two tags"
        )
    invert = shape == "INVERSE" if shape else photometric == "MONOCHROME1"
    label = f"photometric={photometric}" + (f"+{shape}" if shape else "")
    return invert, label + ("->inverted" if invert else "")
