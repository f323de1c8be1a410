"""Lesion records (an image + a box + a label) and turning them into a patch set on disk.

Readers of raw site data (BCDR, CBIS-DDSM, manifests) produce lesions; `write_lesion_patches`
cuts them with `patch_geometry`, drops duplicates (same image and box, reported), and writes
PNGs + manifest.csv atomically. A bad lesion is reported and skipped, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.atomic_io import atomic_write_png
from common.data.patch_geometry import Box, extract_patch
from common.data.patch_set import PatchRecord, PatchSet, write_manifest
from common.errors import DataError


@dataclass(frozen=True)
class Lesion:
    image_path: str
    box: Box
    label: int  # 1 = malignant
    patient_id: str
    site: str
    lesion_id: str = ""
    view: str = ""
    laterality: str = ""
    pixel_spacing: str = ""  # "row,column" mm, when the source records it

    @property
    def key(self) -> tuple[str, int, int, int, int]:
        return (self.image_path, self.box.x, self.box.y, self.box.w, self.box.h)


def drop_duplicates(lesions: Sequence[Lesion]) -> tuple[list[Lesion], list[tuple[str, str]]]:
    """Keep the first of lesions with the same image and box; report the others."""
    seen: set[tuple[str, int, int, int, int]] = set()
    kept, skipped = [], []
    for lesion in lesions:
        if lesion.key in seen:
            skipped.append(
                (f"{lesion.image_path} {lesion.box}", "duplicate lesion (same image and box)")
            )
            continue
        seen.add(lesion.key)
        kept.append(lesion)
    return kept, skipped


def write_lesion_patches(
    lesions: Sequence[Lesion],
    read_image: Callable[[str], np.ndarray],
    out_dir: Path,
    *,
    mode: str = "corrected",
    out_size: int = 128,
    border: str = "inside",
) -> PatchSet:
    """Cut every lesion's patch, write `out_dir/images/*.png` and `out_dir/manifest.csv`."""
    unique, skipped = drop_duplicates(lesions)
    records: list[PatchRecord] = []
    cache: dict[str, np.ndarray] = {}
    for index, lesion in enumerate(unique):
        try:
            if lesion.image_path not in cache:
                cache.clear()  # lesions of one image are consecutive in every reader
                cache[lesion.image_path] = read_image(lesion.image_path)
            patch = extract_patch(
                cache[lesion.image_path], lesion.box, mode=mode, out_size=out_size, border=border
            )
        except (DataError, OSError, ValueError) as error:
            skipped.append((f"{lesion.image_path} {lesion.box}", str(error)))
            continue
        name = f"{lesion.site}_{lesion.patient_id}_{index:06d}.png".replace("/", "_")
        atomic_write_png(out_dir / "images" / name, patch)
        box = lesion.box
        records.append(
            PatchRecord(
                path=str((out_dir / "images" / name).resolve()),
                label=lesion.label,
                patient_id=lesion.patient_id,
                site=lesion.site,
                source="real",
                provenance_file=lesion.image_path,
                box=f"{box.x},{box.y},{box.w},{box.h}",
                laterality=lesion.laterality,
                view=lesion.view,
                pixel_spacing=lesion.pixel_spacing,
            )
        )
    patch_set = PatchSet(records, skipped, name=str(out_dir))
    write_manifest(patch_set, out_dir)
    return patch_set
