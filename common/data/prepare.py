"""`mammofl prepare`: a site's raw data -> patch set + per-patient split + report.

Writes `out_dir/manifest.csv` and `out_dir/images/`, `out_dir/split.csv` (patient_id, split)
and `out_dir/report.json` (counts per label and split, every skipped record with its reason).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from common.atomic_io import atomic_write_text
from common.data.bcdr import read_bcdr_lesions
from common.data.cbis_ddsm import read_cbis_ddsm
from common.data.lesion_manifest import read_lesion_manifest
from common.data.lesions import write_lesion_patches
from common.data.mammogram_io import read_mammogram
from common.data.patch_set import PatchSet, write_manifest
from common.data.readers import read_released
from common.data.splits import split_by_patient
from common.errors import ConfigError

SOURCES = ("cbis-ddsm", "bcdr", "manifest", "released")


@dataclass(frozen=True)
class PrepareOptions:
    source: str
    root: Path
    out_dir: Path
    test_fraction: float = 0.2
    seed: int = 42
    mode: str = "corrected"
    out_size: int = 128
    border: str = "inside"
    y_origin: str = "top"
    site: str = "site"
    workers: int = 1
    # cbis-ddsm: comma-separated description CSVs (default: every *case_description*.csv)
    csv: str = ""


def patch_set_for(options: PrepareOptions, progress: bool = True) -> PatchSet:
    if options.source == "released":
        patch_set = read_released(options.root, "train")
        write_manifest(patch_set, options.out_dir)  # released patches are used in place
        return patch_set
    if options.source == "cbis-ddsm":
        csvs = [Path(c) for c in options.csv.split(",") if c] or sorted(
            options.root.rglob("*case_description*.csv")
        )
        lesions, skipped = read_cbis_ddsm(options.root, csvs)
    elif options.source == "bcdr":
        lesions, skipped = read_bcdr_lesions(options.root)
    elif options.source == "manifest":
        lesions, skipped = read_lesion_manifest(
            options.root, y_origin=options.y_origin, site=options.site
        )
    else:
        raise ConfigError(f"source={options.source!r}: choose one of {', '.join(SOURCES)}")
    patch_set = write_lesion_patches(
        lesions,
        read_mammogram,
        options.out_dir,
        mode=options.mode,
        out_size=options.out_size,
        border=options.border,
        workers=options.workers,
        progress=progress,
    )
    patch_set.skipped = skipped + patch_set.skipped
    return patch_set


def prepare(options: PrepareOptions, progress: bool = True) -> dict[str, Any]:
    patch_set = patch_set_for(options, progress)
    train, test = split_by_patient(patch_set, options.test_fraction, options.seed)
    split = pd.DataFrame(
        [{"patient_id": p, "split": "train"} for p in sorted(set(train.patients))]
        + [{"patient_id": p, "split": "test"} for p in sorted(set(test.patients))]
    )
    atomic_write_text(options.out_dir / "split.csv", split.to_csv(index=False))
    report = {
        "source": options.source,
        "root": str(options.root),
        "counts": {"all": patch_set.counts(), "train": train.counts(), "test": test.counts()},
        "patients": {"train": len(set(train.patients)), "test": len(set(test.patients))},
        "skipped": [{"record": r, "reason": why} for r, why in patch_set.skipped],
        "settings": {k: str(v) for k, v in options.__dict__.items()},
    }
    atomic_write_text(options.out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    return report
