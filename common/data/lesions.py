"""Lesion records (an image + a box + a label) and turning them into a patch set on disk.

Readers of raw site data (BCDR, CBIS-DDSM, manifests) produce lesions; `write_lesion_patches`
cuts them with `patch_geometry`, drops duplicates (same image and box, reported), and writes
the PNGs atomically (the caller writes the manifest, once the splits are known). A bad lesion is
reported and skipped, never silently dropped. What the image reader applied to each source file
(e.g. the DICOM pixel pipeline's steps) is kept per image in `.pixel_steps/`, so a resumed run
still records it without decoding the image again.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from tqdm import tqdm

from common.atomic_io import atomic_write_png, atomic_write_text, leftover_temporaries
from common.data.patch_geometry import Box, extract_patch
from common.data.patch_set import PatchRecord, PatchSet
from common.errors import DataError, OutputError
from common.parent_watch import watched_by_this_process

T = TypeVar("T")
ImageReader = Callable[[str], tuple[np.ndarray, str]]  # path -> (uint8 pixels, steps applied)
# the names prepare gives its patches (write_lesion_patches): only such files in out_dir/images
# are ever taken for an earlier run's or removed; a hospital's own PNGs never are
PATCH_NAME = re.compile(r".+_\d{6}_[0-9a-f]{8}\.png")


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
    abnormality: str = ""  # the lesion type the source names (mass, calcification), or ''
    official_split: str = ""  # train / test when the source says (CBIS-DDSM's CSVs), or ''
    origin: str = ""  # where the source names it ("file:line"), for skip reports

    def __post_init__(self) -> None:
        """Refuse, where the source names the lesion (its reader reports the file:line), what
        would only fail once its patch is written: an empty patient id or a label not 0/1."""
        if not self.patient_id.strip():
            raise DataError(
                "empty patient id: every lesion needs its patient (splits and patient-level "
                "DP are per patient); fill in the row's patient id"
            )
        if self.label not in (0, 1):
            raise DataError(f"label {self.label!r}: 1 (malignant) or 0 (benign)")

    @property
    def where(self) -> str:
        return self.origin or f"{self.image_path} {self.box}"

    @property
    def key(self) -> tuple[str, int, int, int, int]:
        return (self.image_path, self.box.x, self.box.y, self.box.w, self.box.h)


def drop_duplicates(lesions: Sequence[Lesion]) -> tuple[list[Lesion], list[tuple[str, str]]]:
    """Keep the first of lesions with the same image and box; report the others, naming the
    kept one and any disagreement in label or patient (then a row is wrong: check both)."""
    seen: dict[tuple[str, int, int, int, int], Lesion] = {}
    kept, skipped = [], []
    for lesion in lesions:
        first = seen.get(lesion.key)
        if first is not None:
            conflicts = [
                f"{what} {mine!r} vs {theirs!r}"
                for what, mine, theirs in (
                    ("label", lesion.label, first.label),
                    ("patient", lesion.patient_id, first.patient_id),
                )
                if mine != theirs
            ]
            reason = f"duplicate lesion (same image and box as {first.where}; the first is kept)"
            if conflicts:
                reason += f" and they disagree: {', '.join(conflicts)}; fix the wrong row"
            skipped.append((lesion.where, reason))
            continue
        seen[lesion.key] = lesion
        kept.append(lesion)
    return kept, skipped


@dataclass(frozen=True)
class PatchJob:
    """All lesions of one image (read once), with their patch file names."""

    image_path: str
    lesions: tuple[tuple[str, Lesion], ...]
    out_dir: Path
    read_image: ImageReader
    mode: str
    out_size: int
    border: str


def run_patch_job(job: PatchJob) -> tuple[list[PatchRecord], list[tuple[str, str]]]:
    """Cut and write the job's patches; a patch already on disk is kept (resume)."""
    records, skipped = [], []
    image: np.ndarray | None = None
    steps_file = job.out_dir / ".pixel_steps" / f"{job.lesions[0][0]}.txt"
    steps = steps_file.read_text() if steps_file.is_file() else None
    for name, lesion in job.lesions:
        target = job.out_dir / "images" / name
        try:
            if not target.is_file() or steps is None:
                if image is None:
                    image, steps = job.read_image(job.image_path)
                    write_output(steps_file, atomic_write_text, steps)
                patch = extract_patch(
                    image, lesion.box, mode=job.mode, out_size=job.out_size, border=job.border
                )
                write_output(target, atomic_write_png, patch)
            assert steps is not None
            records.append(_record(target, lesion, steps))
        except (DataError, OSError, ValueError) as error:  # the source's fault: this lesion
            skipped.append((lesion.where, str(error)))
    return records, skipped


def write_output(target: Path, write: Callable[..., object], *args: object) -> None:
    """`write(target, *args)`; a failure (disk full, permissions) is the output's fault, not
    the record's: OutputError stops the run instead of skipping every later lesion with it."""
    try:
        write(target, *args)
    except OSError as error:
        raise OutputError(
            f"cannot write {target}: {error.strerror or error}; free disk space or fix the "
            "permissions, then run prepare again (the patches written so far are kept and "
            "reused)"
        ) from error


def _record(target: Path, lesion: Lesion, steps: str) -> PatchRecord:
    box = lesion.box
    return PatchRecord(
        path=str(target.resolve()),
        label=lesion.label,
        patient_id=lesion.patient_id,
        site=lesion.site,
        source="real",
        provenance_file=lesion.image_path,
        box=f"{box.x},{box.y},{box.w},{box.h}",
        laterality=lesion.laterality,
        view=lesion.view,
        pixel_spacing=lesion.pixel_spacing,
        split=lesion.official_split,
        abnormality=lesion.abnormality,
        pixel_steps=steps,
    )


def write_lesion_patches(
    lesions: Sequence[Lesion],
    read_image: ImageReader,
    out_dir: Path,
    *,
    mode: str = "corrected",
    out_size: int = 128,
    border: str = "inside",
    workers: int = 1,
    progress: bool = False,
) -> PatchSet:
    """Cut every lesion's patch into `out_dir/images/*.png`; the records carry each lesion's
    official split (if any), which the caller turns into the manifest's split column.

    One job per image, run by `workers` processes, in order. A patch's name holds a digest of
    everything that decides its pixels (source file, its size and modification time, box,
    mode, size, border), so a rerun after an interruption keeps exactly the patches that are
    still right and cuts the rest: a changed box, setting or source file gives a new name.
    """
    unique, skipped = drop_duplicates(lesions)
    by_image: dict[str, list[tuple[str, Lesion]]] = {}
    for index, lesion in enumerate(unique):
        digest = patch_digest(lesion, mode, out_size, border)
        name = f"{lesion.site}_{lesion.patient_id}_{index:06d}_{digest}.png".replace("/", "_")
        by_image.setdefault(lesion.image_path, []).append((name, lesion))
    jobs = [
        PatchJob(path, tuple(items), out_dir, read_image, mode, out_size, border)
        for path, items in by_image.items()
    ]
    records: list[PatchRecord] = []
    bar = tqdm(total=len(jobs), disable=not progress, desc="images", unit="img")
    if workers > 1:
        spawn = multiprocessing.get_context("spawn")
        with spawn.Pool(workers, **watched_by_this_process()) as pool:
            results = list(_tracked(pool.imap(run_patch_job, jobs), bar))
    else:
        results = list(_tracked(map(run_patch_job, jobs), bar))
    bar.close()
    for job_records, job_skipped in results:
        records += job_records
        skipped += job_skipped
    return PatchSet(records, skipped, name=str(out_dir))


def patch_digest(lesion: Lesion, mode: str, out_size: int, border: str) -> str:
    """8 hex digits over what decides a patch's pixels (see write_lesion_patches)."""
    try:
        stat = Path(lesion.image_path).stat()
        version = f"{stat.st_size}:{stat.st_mtime_ns}"
    except OSError:
        version = "missing"  # reading it will fail and say so
    text = f"{lesion.image_path}|{version}|{lesion.box}|{mode}|{out_size}|{border}"
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def stale_patches(out_dir: Path, patch_set: PatchSet) -> list[Path]:
    """Patches in `out_dir/images` (prepare's own names, PATCH_NAME) that the patch set does
    not name: an earlier run's."""
    named = {Path(r.path).name for r in patch_set.records}
    return sorted(p for p in prepared_patches(out_dir) if p.name not in named)


def prepared_patches(out_dir: Path) -> list[Path]:
    """The PNGs in `out_dir/images` named as prepare names its patches (PATCH_NAME)."""
    return [p for p in (out_dir / "images").glob("*.png") if PATCH_NAME.fullmatch(p.name)]


def interrupted_writes(out_dir: Path) -> list[Path]:
    """Temporary files that an interrupted prepare left in `out_dir` (a worker killed
    mid-write): those of its patches (PATCH_NAME), their `.pixel_steps`, its manifest and
    report. Nothing else there is named so; a later run removes them."""

    def steps_of_a_patch(name: str) -> bool:
        return name.endswith(".txt") and PATCH_NAME.fullmatch(name[: -len(".txt")]) is not None

    owners: list[tuple[Path, Callable[[str], object]]] = [
        (out_dir / "images", PATCH_NAME.fullmatch),
        (out_dir / ".pixel_steps", steps_of_a_patch),
        (out_dir, {"manifest.csv", "report.json"}.__contains__),
    ]
    return sorted(path for folder, owned in owners for path in leftover_temporaries(folder, owned))


def _tracked(results: Iterable[T], bar: tqdm) -> Iterator[T]:
    for result in results:
        bar.update(1)
        yield result
