"""Phantom sites written exactly as a TCIA CBIS-DDSM download looks, so that ingestion runs on
them with no phantom-specific branch: UID-named series in descriptively named folders, NBIA-style
file names (1-1.dcm), an ROI series holding the cropped lesion and the full-size mask, and
TCIA's `mass_case_description_{train,test}_set.csv` (Mass-Training / Mass-Test folders, the
official per-patient split) whose mask paths carry the embedded newline.

`write_site` returns what it drew (`PhantomLesion`: patient, split, view, label, and the boxes
that the reference mask rule gives on the mask it wrote), so a test can check that ingestion
recovers exactly the patches the generator implies.

Each site has its own acquisition style (film-like vs digital intensity curve, noise, blur,
pixel spacing, bit depth, MONOCHROME1 or 2). Seeded and deterministic.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pydicom.uid import generate_uid

from common.atomic_io import atomic_write_text
from common.data.dicom_writer import write_dicom
from common.data.masks import mask_boxes
from common.data.patch_geometry import Box
from common.data.phantom.anatomy import breast_outline, make_mass, parenchyma
from common.errors import ConfigError

CSV_HEADER = (
    "patient_id,breast_density,left or right breast,image view,abnormality id,abnormality type,"
    "mass shape,mass margins,assessment,pathology,subtlety,image file path,"
    "cropped image file path,ROI mask file path\n"
)

SPLITS = {
    "train": ("Mass-Training", "mass_case_description_train_set.csv"),
    "test": ("Mass-Test", "mass_case_description_test_set.csv"),
}


@dataclass(frozen=True)
class PhantomLesion:
    """One lesion view as drawn: what `mammofl prepare` must recover from the files."""

    patient_id: str
    split: str  # train or test (the CSV it is listed in)
    side: str
    view: str
    label: int  # 1 = malignant
    boxes: tuple[Box, ...]  # the reference mask rule (`mask_boxes`) on the mask written
    image_path: str  # the CSV's image file path (UID form)


@dataclass(frozen=True)
class SiteStyle:
    name: str
    film: bool  # film-like sigmoid curve vs digital log response
    gamma: float  # applied after the response curve
    noise: float  # relative noise standard deviation
    blur: float  # px, system resolution
    spacing: float  # mm per pixel
    bits: int
    monochrome1: bool


STYLES = (
    SiteStyle(
        "site-a", False, 1.0, noise=0.008, blur=0.5, spacing=0.07, bits=12, monochrome1=False
    ),
    SiteStyle("site-b", True, 1.0, noise=0.02, blur=2.0, spacing=0.05, bits=14, monochrome1=False),
    SiteStyle("site-c", False, 0.5, noise=0.045, blur=0.8, spacing=0.10, bits=12, monochrome1=True),
)


def acquire(attenuation: np.ndarray, style: SiteStyle, rng: np.random.Generator) -> np.ndarray:
    """Attenuation in [0, 1] -> stored integer pixel values of the site's detector."""
    image = cv2.GaussianBlur(attenuation.astype(np.float32), (0, 0), style.blur)
    image = image + rng.normal(0, style.noise, image.shape).astype(np.float32)
    image = (
        1 / (1 + np.exp(-(image - 0.45) * 6))
        if style.film
        else np.log1p(4 * np.clip(image, 0, None)) / np.log(5)
    )
    top = 2**style.bits - 1
    stored = np.clip(image, 0, 1) ** style.gamma * top
    if style.monochrome1:
        stored = top - stored
    return np.round(stored).astype(np.uint16)


def _short(uid: str) -> str:
    return hashlib.sha256(uid.encode()).hexdigest()[:5]


def _uid(*parts: object) -> str:
    """Deterministic UIDs: the same seed gives the same download."""
    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def _mass_position(
    outline: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[int, int] | None:
    """Top-left corner of the mass box: its centre and 4 points around it inside the breast;
    None when 200 tries found no room (a narrow breast drawn for a large mass)."""
    height, width = outline.shape
    half = size // 2
    reach = int(size * 0.3)
    for _ in range(200):
        cy, cx = int(rng.integers(half, height - half)), int(rng.integers(half, width - half))
        probes = [(cy, cx), (cy - reach, cx), (cy + reach, cx), (cy, cx - reach), (cy, cx + reach)]
        if all(0.99 < outline[y, x] <= 1.01 for y, x in probes):  # 1.0 up to float blur
            return cy - half, cx - half
    return None


def _write_view(
    root: Path,
    folder: str,
    kind: str,
    pixels: np.ndarray,
    style: SiteStyle,
    patient: str,
    file_name: str,
    study: str,
    series: str,
) -> str:
    # descriptive NBIA-style folder names that do not match the CSV's UID paths
    study_folder = f"07-20-2016-DDSM-{_short(study)}"
    series_folder = f"1.000000-{kind}-{_short(series)}"
    path = root / "CBIS-DDSM" / folder / study_folder / series_folder / file_name
    photometric = (
        "MONOCHROME1" if style.monochrome1 and kind == "full mammogram images" else "MONOCHROME2"
    )
    write_dicom(
        path,
        pixels,
        study_uid=study,
        series_uid=series,
        instance_uid=_uid(study, series, file_name),
        patient_id=patient,
        photometric=photometric,
        bits_stored=style.bits if pixels.dtype == np.uint16 else 8,
        pixel_spacing=(style.spacing, style.spacing),
    )
    return f"{folder}/{study}/{series}/000000.dcm"


def write_site(
    root: Path,
    style: SiteStyle,
    *,
    patients: int,
    long_side: int,
    seed: int,
    ambiguity: float = 0.0,
    split: str = "train",
    first_patient: int = 1,
    conspicuity: float = 1.0,
) -> list[PhantomLesion]:
    """One split of a site's download (its folders and description CSV); returns the lesion
    views drawn (one CSV row each).

    `ambiguity`: the share of patients whose mass looks like the other class (a circumscribed
    cancer, an irregular benign mass), as real masses sometimes do; it caps the AUROC any model
    can reach at about 1 - ambiguity. `split`: "train" or "test" (TCIA's Mass-Training /
    Mass-Test folders and description CSV).
    """
    if split not in SPLITS:
        raise ConfigError(f"phantom split={split!r}: choose train or test")
    if not 0.0 <= ambiguity < 0.5:
        raise ConfigError(f"phantom ambiguity={ambiguity}: use [0, 0.5)")
    rng = np.random.default_rng(seed)
    height, width = long_side, int(long_side * 0.65)
    rows: list[str] = []
    drawn: list[PhantomLesion] = []
    for p in range(patients):
        patient = f"P_{p + first_patient:05d}"
        malignant = p % 2 == 1
        looks_malignant = malignant
        if ambiguity > 0 and rng.random() < ambiguity:  # no extra draw at 0: same streams
            looks_malignant = not malignant
        side = "LEFT" if rng.random() < 0.5 else "RIGHT"
        radius = rng.uniform(0.025, 0.06) * long_side
        contrast = rng.uniform(0.12, 0.3)
        density = rng.uniform(0.3, 0.7)
        for view in ("CC", "MLO"):
            mass = make_mass(rng, looks_malignant, radius, contrast, conspicuity)
            tissue = parenchyma(height, width, rng, density)
            outline = breast_outline(height, width, view, rng)
            size = mass.body.shape[0]
            position = _mass_position(outline, size, rng)
            for _ in range(50):  # another breast outline, as another patient's would be
                if position is not None:
                    break
                outline = breast_outline(height, width, view, rng)
                position = _mass_position(outline, size, rng)
            if position is None:
                raise ConfigError("no room for the mass inside the breast: use a larger long_side")
            y0, x0 = position
            attenuation = np.where(outline > 1.5, 0.55, outline * (0.2 + 0.35 * tissue))
            attenuation[y0 : y0 + size, x0 : x0 + size] += mass.body
            mask = np.zeros((height, width), np.uint8)
            mask[y0 : y0 + size, x0 : x0 + size] = mass.mask * 255
            pixels = acquire(np.clip(attenuation, 0, 1), style, rng)
            if side == "LEFT":  # chest wall on the right for left breasts, as displayed
                pixels, mask = pixels[:, ::-1].copy(), mask[:, ::-1].copy()
            folder = f"{SPLITS[split][0]}_{patient}_{side}_{view}"
            study, series = _uid(seed, patient, view, "study"), _uid(seed, patient, view, "series")
            image_path = _write_view(
                root,
                folder,
                "full mammogram images",
                pixels,
                style,
                patient,
                "1-1.dcm",
                study,
                series,
            )
            roi_study, roi_series = (
                _uid(seed, patient, view, "roi-study"),
                _uid(seed, patient, view, "roi"),
            )
            in_rows, in_columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            crop = (
                pixels[in_rows[0] : in_rows[-1] + 1, in_columns[0] : in_columns[-1] + 1]
                >> (style.bits - 8)
            ).astype(np.uint8)
            crop_path = _write_view(
                root,
                folder + "_1",
                "ROI mask images",
                crop,
                style,
                patient,
                "1-1.dcm",
                roi_study,
                roi_series,
            )
            _write_view(
                root,
                folder + "_1",
                "ROI mask images",
                mask,
                style,
                patient,
                "1-2.dcm",
                roi_study,
                roi_series,
            )
            mask_path = crop_path.replace("000000.dcm", "000001.dcm")
            boxes = tuple(mask_boxes(mask, (height, width)))
            drawn.append(
                PhantomLesion(patient, split, side, view, int(malignant), boxes, image_path)
            )
            rows.append(
                f"{patient},{int(1 + density * 3)},{side},{view},1,mass,"
                f"{'IRREGULAR' if malignant else 'OVAL'},"
                f"{'SPICULATED' if malignant else 'CIRCUMSCRIBED'},"
                f"{5 if malignant else 3},{'MALIGNANT' if malignant else 'BENIGN'},3,{image_path},"
                f'{crop_path},"{mask_path}\n"\n'
            )
    atomic_write_text(root / SPLITS[split][1], CSV_HEADER + "".join(rows))
    return drawn


def write_phantom_sites(
    out_dir: Path,
    *,
    sites: int = 3,
    patients: int = 30,
    long_side: int = 2000,
    seed: int = 0,
    ambiguity: float = 0.0,
    split: str = "train",
    conspicuity: float = 1.0,
    test_patients: int | None = None,
) -> dict[str, int]:
    """`sites` downloads in `out_dir/<site-name>` (one acquisition style each); returns the
    number of lesion views per site. `split`: train, test, or both (a Training and a Test CSV
    in one download, as TCIA ships CBIS-DDSM; `test_patients` of them in Test, default a
    quarter). Test patients are numbered from 100001, so they never share an id with a
    training patient."""
    if not 1 <= sites <= len(STYLES):
        raise ConfigError(f"sites={sites}: 1 to {len(STYLES)} built-in acquisition styles")
    if patients < 2 or long_side < 256:
        raise ConfigError("phantom: patients >= 2 and long_side >= 256")
    return {
        style.name: len(
            write_phantom_site(
                out_dir / style.name,
                style.name,
                patients=patients,
                long_side=long_side,
                seed=seed,
                ambiguity=ambiguity,
                split=split,
                conspicuity=conspicuity,
                test_patients=test_patients,
            )
        )
        for style in STYLES[:sites]
    }


def write_phantom_site(
    root: Path,
    style_name: str,
    *,
    patients: int,
    long_side: int,
    seed: int = 0,
    ambiguity: float = 0.0,
    split: str = "train",
    conspicuity: float = 1.0,
    test_patients: int | None = None,
) -> list[PhantomLesion]:
    """One site's download in the named acquisition style, seeded as `write_phantom_sites` seeds
    that style (so the same style and seed give the same site either way). `split="both"`
    writes the Training split (`patients`) and the Test split (`test_patients`, default a
    quarter of `patients`, at least 2) from separate seeds into the same download."""
    names = [s.name for s in STYLES]
    if style_name not in names:
        raise ConfigError(f"phantom style {style_name!r}: choose one of {names}")
    if split not in (*SPLITS, "both"):
        raise ConfigError(f"phantom split={split!r}: choose train, test or both")
    k = names.index(style_name)
    counts = {"train": patients, "test": patients}
    if split == "both":
        counts["test"] = test_patients if test_patients is not None else max(2, patients // 4)
        if counts["test"] < 2:
            raise ConfigError(f"phantom test_patients={counts['test']}: at least 2")
    drawn: list[PhantomLesion] = []
    for part in ("train", "test") if split == "both" else (split,):
        drawn += write_site(
            root,
            STYLES[k],
            patients=counts[part],
            long_side=long_side,
            seed=seed + 1000 * k + (500 if split == "both" and part == "test" else 0),
            ambiguity=ambiguity,
            split=part,
            first_patient=1 if part == "train" else 100001,
            conspicuity=conspicuity,
        )
    return drawn
