"""`mammofl prepare`: a site's raw data -> patch set with per-patient splits + report.

Writes `out_dir/images/`, `out_dir/manifest.csv` (one row per patch, its `split` column train /
val / test: what every reader of a prepared set selects by) and, last, `out_dir/report.json`
(the split rule, counts per label and split, every skipped record with its reason). A run that
cuts no patch writes no manifest and raises DataError with the skip summary.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from common.atomic_io import atomic_write_text, check_writable_dir
from common.data.bcdr import read_bcdr_lesions
from common.data.cbis_ddsm import ABNORMALITIES, read_cbis_ddsm
from common.data.lesion_manifest import read_lesion_manifest
from common.data.lesions import (
    Lesion,
    interrupted_writes,
    prepared_patches,
    stale_patches,
    write_lesion_patches,
    write_output,
)
from common.data.mammogram_io import read_mammogram_recorded
from common.data.patch_geometry import BORDERS
from common.data.patch_set import SPLITS, PatchSet, write_manifest
from common.data.readers import read_released
from common.data.split_assignment import (
    SPLIT_MODES,
    assign_splits,
    check_fractions,
    refuse_partly_marked,
)
from common.errors import ConfigError, DataError

log = logging.getLogger(__name__)
SOURCES = ("cbis-ddsm", "bcdr", "manifest", "released")
SOURCE_SITES = {"cbis-ddsm": "cbis-ddsm", "bcdr": "bcdr", "manifest": "site", "released": ""}


@dataclass(frozen=True)
class PrepareOptions:
    source: str
    root: Path
    out_dir: Path
    split: str = "official"  # or random; official falls back to seeded when there is none
    test_fraction: float = 0.2  # seeded splits only
    val_fraction: float = 0.1  # of train, per patient, always seeded
    seed: int = 42
    mode: str = "corrected"
    out_size: int = 128
    border: str = "inside"
    y_origin: str = "top"
    site: str = ""  # patient identity is (site, patient id); '' = the source's name
    workers: int = 1
    # cbis-ddsm: comma-separated description CSVs (default: every *case_description*.csv)
    csv: str = ""
    abnormality: str = "mass"  # cbis-ddsm: mass, calc or all
    allow_for_processing: bool = False  # DICOM "FOR PROCESSING" raw detector images
    fresh: bool = False  # remove an earlier run's patches, manifest and report in out_dir first
    columns: tuple[tuple[str, str], ...] = ()  # manifest: (mammofl name, the file's column)

    def __post_init__(self) -> None:
        """Refuse a bad setting before any file is read (not once per record)."""
        choices = {
            "source": (self.source, SOURCES),
            "split": (self.split, SPLIT_MODES),
            "mode": (self.mode, ("corrected", "compat")),
            "out_size": (self.out_size, (128, 224)),
            "border": (self.border, BORDERS),
            "y_origin": (self.y_origin, ("top", "bottom")),
            "abnormality": (self.abnormality, tuple(ABNORMALITIES)),
        }
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"{key}={value!r}: choose one of {', '.join(map(str, allowed))}")
        if self.workers < 1:
            raise ConfigError(f"workers={self.workers}: at least 1")
        check_fractions(self.test_fraction, self.val_fraction)  # not after hours of cutting

    @property
    def site_name(self) -> str:
        return self.site or SOURCE_SITES.get(self.source, "site")


def read_lesions(
    options: PrepareOptions, tables: list[Path]
) -> tuple[list[Lesion], list[tuple[str, str]]]:
    """Every lesion the source names (not for `released`), and the rows it skipped;
    `tables`: the CBIS-DDSM description CSVs (`input_tables`)."""
    if options.source == "cbis-ddsm":
        lesions, skipped = read_cbis_ddsm(options.root, tables, options.abnormality)
    elif options.source == "bcdr":
        lesions, skipped = read_bcdr_lesions(options.root)
    elif options.source == "manifest":
        lesions, skipped = read_lesion_manifest(
            options.root,
            y_origin=options.y_origin,
            site=options.site_name,
            columns=dict(options.columns) or None,
        )
    else:
        raise ConfigError(f"source={options.source!r}: choose one of {', '.join(SOURCES)}")
    if options.site:
        lesions = [replace(lesion, site=options.site) for lesion in lesions]
    return lesions, skipped


def input_tables(options: PrepareOptions) -> list[Path]:
    """The tables the source is read from: CBIS-DDSM's description CSVs (`csv=`, else every
    one under root), or the manifest file itself."""
    if options.source == "cbis-ddsm":
        return [Path(c) for c in options.csv.split(",") if c] or sorted(
            options.root.rglob("*case_description*.csv")
        )
    return [options.root] if options.root.is_file() else []


def cut_patches(
    options: PrepareOptions, lesions: list[Lesion], skipped: list[tuple[str, str]], progress: bool
) -> PatchSet:
    """Every lesion cut into `out_dir/images/`; records carry the source's official split."""
    patch_set = write_lesion_patches(
        lesions,
        partial(read_mammogram_recorded, allow_for_processing=options.allow_for_processing),
        options.out_dir,
        mode=options.mode,
        out_size=options.out_size,
        border=options.border,
        workers=options.workers,
        progress=progress,
    )
    patch_set.skipped = skipped + patch_set.skipped
    return patch_set


def check_outputs_apart(options: PrepareOptions, lesions: list[Lesion], tables: list[Path]) -> None:
    """Refuse (ConfigError, before anything is written or removed) an out_dir whose outputs
    would land on the source: its images in out_dir/images (a rerun would take them for an
    earlier run's patches) or its table as out_dir/manifest.csv or report.json."""
    out = options.out_dir.resolve()
    for table in tables:
        if table.resolve() in (out / "manifest.csv", out / "report.json"):
            raise ConfigError(
                f"out_dir={options.out_dir}: prepare writes {table.name} there and would "
                f"overwrite the input table {table}; choose another out_dir"
            )
    for folder in (out / "images", out / ".pixel_steps"):
        inside = next((les for les in lesions if _under(les.image_path, folder)), None)
        if inside is not None:
            raise ConfigError(
                f"out_dir={options.out_dir}: the source's image {inside.image_path} is in "
                f"{folder}, where prepare writes its own files; choose an out_dir outside the "
                "source's folders"
            )


def _under(path: str, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder)


def prepare(options: PrepareOptions, progress: bool = True) -> dict[str, Any]:
    """Cut, split and write a site's patch set; returns the report (also in report.json).

    Raises DataError, with the skip summary, when no patch could be cut (nothing is written
    then but the report and the patches' folder; an earlier run's manifest is removed);
    ConfigError, before anything is written, when out_dir's outputs would land on the source;
    OutputError when out_dir cannot be written (checked before any source is read).
    """
    if not options.root.exists():
        raise DataError(f"root={options.root} not found: give the download folder or the CSV")
    check_writable_dir(options.out_dir)  # before hours of decoding, not after
    lesions: list[Lesion] = []
    read_skipped: list[tuple[str, str]] = []
    if options.source != "released":  # a release's patches are used in place
        tables = input_tables(options)
        lesions, read_skipped = read_lesions(options, tables)
        check_outputs_apart(options, lesions, tables)
        if options.split == "official":  # before hours of cutting, not after
            refuse_partly_marked([(les.official_split, les.where) for les in lesions])
    if options.fresh:
        clear_outputs(options.out_dir)
    remove_interrupted_writes(options.out_dir)
    if options.source == "released":
        patch_set = read_released(options.root, "train")
    else:
        patch_set = cut_patches(options, lesions, read_skipped, progress)
    skipped = [{"record": r, "reason": why} for r, why in patch_set.skipped]
    report: dict[str, Any] = {
        "source": options.source,
        "root": str(options.root),
        "settings": {k: str(v) for k, v in options.__dict__.items()},
        "skipped": skipped,
        "skip_summary": skip_summary(patch_set.skipped),
    }
    if not patch_set.records:
        # an earlier run's manifest beside this report would still be read as the site's set
        write_output(options.out_dir / "manifest.csv", lambda path: path.unlink(missing_ok=True))
        write_report(options.out_dir, report)
        why = (
            f"all {len(skipped)} records were skipped ({format_summary(report['skip_summary'])})"
            if skipped
            else "the source names no lesion (an empty table, or no file where it looked)"
        )
        raise DataError(
            f"prepare cut no patch from {options.root}: {why}; details in "
            f"{options.out_dir / 'report.json'}"
        )
    patch_set, rule = assign_splits(
        patch_set,
        mode=options.split,
        test_fraction=options.test_fraction,
        val_fraction=options.val_fraction,
        seed=options.seed,
    )
    write_output(options.out_dir, lambda out: write_manifest(patch_set, out))
    stale = stale_patches(options.out_dir, patch_set) if options.source != "released" else []
    if stale:
        log.warning(
            "%d PNGs in %s are not in this manifest (an earlier run's); they are never read: "
            "delete them, or prepare with fresh=true",
            len(stale),
            options.out_dir / "images",
        )
    parts = {s: [r for r in patch_set.records if r.split == s] for s in SPLITS}
    report |= {
        "split_rule": rule,
        "counts": {"all": patch_set.counts()}
        | {s: PatchSet(records).counts() for s, records in parts.items()},
        "patients": {s: len({r.patient_key for r in records}) for s, records in parts.items()},
        "stale_files": [p.name for p in stale],
    }
    write_report(options.out_dir, report)
    return report


def write_report(out_dir: Path, report: dict[str, Any]) -> None:
    write_output(out_dir / "report.json", atomic_write_text, json.dumps(report, indent=2) + "\n")


def skip_summary(skipped: list[tuple[str, str]]) -> dict[str, int]:
    """How many records were skipped for each kind of reason, most frequent first. A kind is
    the reason up to its first ': ' or ' (' with quoted values, file paths and numbers made
    placeholders, so that per-record details group together."""
    kinds: Counter[str] = Counter()
    for _, reason in skipped:
        kind = re.split(r": | \(", reason, maxsplit=1)[0]
        kind = re.sub(r"'[^']*'", "'...'", kind)
        kind = re.sub(r"(?<![\w/])/\S+|\S+/\S+\.\w+", "<file>", kind)
        kind = re.sub(r"\b\d+(\.\d+){3,}\b", "<uid>", kind)  # DICOM UIDs
        kind = re.sub(r"\d+(\.\d+)?", "N", kind).strip()
        kinds[re.sub(r"^<file>[\s:-]*", "", kind) or "<file>"] += 1  # a reason led by its file
    return dict(kinds.most_common())


def clear_outputs(out_dir: Path) -> None:
    """fresh=true: remove what prepare writes (its patches by their names, their steps,
    manifest, report); no other file in out_dir is touched."""
    for name in ("manifest.csv", "report.json"):
        (out_dir / name).unlink(missing_ok=True)
    for path in [*prepared_patches(out_dir), *(out_dir / ".pixel_steps").glob("*.txt")]:
        path.unlink()


def remove_interrupted_writes(out_dir: Path) -> None:
    """An interrupted run's temporary files (`interrupted_writes`): never read, only in the
    way. One prepare at a time per out_dir, as always: another's would be in flight."""
    leftovers = interrupted_writes(out_dir)
    for path in leftovers:
        write_output(path, lambda target: target.unlink(missing_ok=True))
    if leftovers:
        log.info("removed %d temporary files an interrupted run left", len(leftovers))


def format_summary(summary: dict[str, int]) -> str:
    return "; ".join(f"{count} x {kind}" for kind, count in list(summary.items())[:5])
