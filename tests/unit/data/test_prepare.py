"""`mammofl prepare` on a BCDR layout and a lesion manifest: patches, split, report."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from simulations.cli import main
from tests.unit.data.test_bcdr import _layout


def test_prepare_bcdr(tmp_path: Path) -> None:
    _layout(tmp_path / "bcdr")
    out = tmp_path / "out"
    assert (
        main(
            [
                "prepare",
                "source=bcdr",
                f"root={tmp_path / 'bcdr'}",
                f"out_dir={out}",
                "test_fraction=0.5",
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["all"] == {"total": 3, "malignant": 1, "benign": 2}
    assert len(report["skipped"]) == 4  # 3 bad rows + 1 duplicate lesion, each with a reason
    split = pd.read_csv(out / "split.csv")
    assert not split["patient_id"].duplicated().any() and set(split["split"]) == {"train", "test"}
    assert len(pd.read_csv(out / "manifest.csv")) == 3


def test_prepare_manifest_with_a_bad_record(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = ["image,label,patient_id,x,y,w,h"]
    for i in range(8):
        cv2.imwrite(str(tmp_path / f"m{i}.png"), rng.integers(0, 255, (300, 300), dtype=np.uint8))
        rows.append(f"m{i}.png,{i % 2},P{i},100,100,40,40")
    rows.append("m0.png,1,P9,5000,5000,10,10")  # box outside the image
    (tmp_path / "lesions.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert (
        main(
            [
                "prepare",
                "source=manifest",
                f"root={tmp_path / 'lesions.csv'}",
                f"out_dir={out}",
                "site=h1",
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["all"]["total"] == 8  # every good record written
    assert len(report["skipped"]) == 1 and "outside" in report["skipped"][0]["reason"]
    assert report["patients"] == {"train": 6, "test": 2}


def test_prepare_cbis_ddsm(tmp_path: Path) -> None:
    from tests.unit.data.test_cbis_ddsm import _download

    _download(tmp_path / "dl")
    out = tmp_path / "out"
    assert (
        main(
            [
                "prepare",
                "source=cbis-ddsm",
                f"root={tmp_path / 'dl'}",
                f"out_dir={out}",
                "test_fraction=0.5",
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["all"] == {"total": 3, "malignant": 2, "benign": 1}
    assert len(report["skipped"]) == 2
    manifest = pd.read_csv(out / "manifest.csv")
    assert set(manifest["laterality"]) == {"LEFT"} and set(manifest["pixel_spacing"]) == {
        "0.05,0.05"
    }


def test_prepare_resumes_and_runs_in_parallel(tmp_path: Path) -> None:
    from tests.unit.data.test_cbis_ddsm import _download

    _download(tmp_path / "dl")
    out = tmp_path / "out"
    args = ["prepare", "source=cbis-ddsm", f"root={tmp_path / 'dl'}", f"out_dir={out}"]
    assert main([*args, "workers=2"]) == 0
    first = pd.read_csv(out / "manifest.csv")
    images = sorted((out / "images").iterdir())
    stamp = {p: p.stat().st_mtime_ns for p in images}
    images[0].unlink()  # as if interrupted before this patch was written
    assert main(args) == 0
    assert pd.read_csv(out / "manifest.csv").equals(first)  # same records, same order
    assert all(p.stat().st_mtime_ns == stamp[p] for p in images[1:])  # kept, not rewritten
    assert images[0].is_file()
