"""A minimal built-in patch set: procedural mass patches, so the main job runs anywhere.

Benign masses are smooth ovals, malignant ones irregular with spicules; size and contrast are
drawn from the same distributions for both classes, so shape carries the label. (A full
phantom-mammogram generator that goes through DICOM ingestion is a separate piece of work.)
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from common.data.patch_set import PatchRecord, PatchSet, write_manifest
from common.errors import ConfigError


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    noise = rng.normal(0, 1, (size, size)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), sigmaX=size / 24)
    fine = cv2.GaussianBlur(noise, (0, 0), sigmaX=1.0)
    return 0.35 + 0.08 * smooth / (smooth.std() + 1e-6) + 0.03 * fine


def _mass_mask(rng: np.random.Generator, size: int, malignant: bool) -> np.ndarray:
    radius = rng.uniform(0.12, 0.22) * size
    angles = np.linspace(0, 2 * np.pi, 180, endpoint=False)
    if malignant:
        wobble = sum(
            rng.uniform(0.05, 0.18) * np.cos(k * angles + rng.uniform(0, 6.3)) for k in range(3, 9)
        )
    else:
        aspect = rng.uniform(0.0, 0.25)
        wobble = aspect * np.cos(2 * angles + rng.uniform(0, 6.3))
    r = radius * (1 + wobble)
    centre = size / 2 + rng.normal(0, size * 0.03, 2)
    points = np.stack([centre[0] + r * np.cos(angles), centre[1] + r * np.sin(angles)], 1)
    mask = np.zeros((size, size), np.float32)
    cv2.fillPoly(mask, [points.astype(np.int32)], 1.0)
    if malignant:
        for _ in range(rng.integers(6, 12)):
            angle = rng.uniform(0, 2 * np.pi)
            start = centre + 0.8 * radius * np.array([np.cos(angle), np.sin(angle)])
            end = centre + rng.uniform(1.6, 2.4) * radius * np.array([np.cos(angle), np.sin(angle)])
            cv2.line(mask, tuple(start.astype(int)), tuple(end.astype(int)), 1.0, 1)
        return cv2.GaussianBlur(mask, (0, 0), sigmaX=0.8)
    return cv2.GaussianBlur(mask, (0, 0), sigmaX=2.0)


def make_patch(rng: np.random.Generator, size: int, malignant: bool) -> np.ndarray:
    contrast = rng.uniform(0.18, 0.35)
    image = _texture(rng, size) + contrast * _mass_mask(rng, size, malignant)
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def write_phantom_patches(
    out_dir: Path, *, patients: int = 48, test_patients: int = 24, size: int = 64, seed: int = 0
) -> dict[str, PatchSet]:
    """Write `out_dir/{train,test}` patch sets: 2 patches per patient, one label per patient."""
    if patients < 4 or test_patients < 2 or size < 16:
        raise ConfigError("phantom patches: patients >= 4, test_patients >= 2, size >= 16")
    rng = np.random.default_rng(seed)
    sets = {}
    for split, count in (("train", patients), ("test", test_patients)):
        folder = out_dir / split
        (folder / "images").mkdir(parents=True, exist_ok=True)
        records = []
        for p in range(count):
            patient = f"PH-{split}-{p:04d}"
            malignant = p % 2 == 1
            for view in ("CC", "MLO"):
                path = folder / "images" / f"{patient}_{view}.png"
                cv2.imwrite(str(path), make_patch(rng, size, malignant))
                records.append(
                    PatchRecord(
                        str(path.resolve()),
                        int(malignant),
                        patient,
                        "phantom",
                        "real",
                        f"phantom:{patient}:{view}",
                    )
                )
        sets[split] = PatchSet(records, name=f"phantom:{split}")
        write_manifest(sets[split], folder)
    return sets
