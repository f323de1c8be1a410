"""`mammofl prepare` on a BCDR layout and a lesion manifest: patches, split, report."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

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
    manifest = pd.read_csv(out / "manifest.csv")
    assert len(manifest) == 3 and set(manifest["split"]) <= {"train", "val", "test"}
    assert manifest.groupby("patient_id")["split"].nunique().max() == 1  # per patient
    assert "seeded per-patient split" in report["split_rule"]
    assert report["skip_summary"]["unknown classification '...'"] == 1
    assert report["skip_summary"]["image <file> named in the CSV not found"] == 1


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
                "val_fraction=0",
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["all"]["total"] == 8  # every good record written
    assert len(report["skipped"]) == 1 and "outside" in report["skipped"][0]["reason"]
    assert report["patients"] == {"train": 6, "val": 0, "test": 2}


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


def test_bad_settings_stop_before_any_file_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["prepare", "source=manifest", f"root={tmp_path / 'missing.csv'}", f"out_dir={tmp_path}"]
    for bad, named in (
        ("out_size=64", "out_size=64"),
        ("split=official-ish", "split='official-ish'"),
        ("abnormality=masses", "abnormality='masses'"),
        ("test_fraction=abc", "test_fraction=abc: expected a finite number"),
    ):
        assert main([*base, bad]) == 2
        assert named in capsys.readouterr().err
    assert not (tmp_path / "report.json").exists()


def test_prepare_maps_a_datasets_own_columns(tmp_path: Path) -> None:
    """A public mass list with its own column names (center_col, center_row, radius, case_id)
    is read with columns.<name>=<column>, no rewriting by hand."""
    rng = np.random.default_rng(1)
    rows = ["case_id,file,severity,center_col,center_row,radius"]
    for i in range(6):
        cv2.imwrite(str(tmp_path / f"m{i}.png"), rng.integers(0, 255, (300, 300), dtype=np.uint8))
        rows.append(f"mdb{i:03d},m{i}.png,{'M' if i % 2 else 'B'},150,140,30")
    rows.append("mdb099,m0.png,M,,,")  # a widespread calcification: no position
    (tmp_path / "masses.csv").write_text("\n".join(rows) + "\n")
    mapping = [
        "columns.patient_id=case_id",
        "columns.image=file",
        "columns.label=severity",
        "columns.cx=center_col",
        "columns.cy=center_row",
    ]
    out = tmp_path / "out"
    args = ["prepare", "source=manifest", f"root={tmp_path / 'masses.csv'}", f"out_dir={out}"]
    assert main([*args, *mapping, "val_fraction=0"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["all"] == {"total": 6, "malignant": 3, "benign": 3}
    (skip,) = report["skipped"]
    assert skip["record"].endswith("masses.csv:8") and "empty" in skip["reason"]
    manifest = pd.read_csv(out / "manifest.csv", dtype=str)
    assert set(manifest["box"]) == {"120,110,60,60"}


def _lesion_table(folder: Path, box_x: int = 100) -> Path:
    rng = np.random.default_rng(2)
    rows = ["image,label,patient_id,x,y,w,h"]
    for i in range(4):
        cv2.imwrite(str(folder / f"r{i}.png"), rng.integers(0, 255, (300, 300), dtype=np.uint8))
        rows.append(f"r{i}.png,{i % 2},P{i},{box_x},100,40,40")
    table = folder / "lesions.csv"
    table.write_text("\n".join(rows) + "\n")
    return table


def test_a_rerun_never_keeps_a_patch_its_inputs_no_longer_give(tmp_path: Path) -> None:
    """Resume keeps only patches whose inputs and settings are unchanged: an edited box or
    another mode cuts new patches; the earlier run's files are reported; fresh=true clears."""
    out = tmp_path / "out"
    args = ["prepare", "source=manifest", f"out_dir={out}", "val_fraction=0"]
    assert main([*args, f"root={_lesion_table(tmp_path)}"]) == 0
    first = pd.read_csv(out / "manifest.csv")
    assert main([*args, f"root={_lesion_table(tmp_path, box_x=160)}"]) == 0  # boxes edited
    second = pd.read_csv(out / "manifest.csv")
    assert not set(first["path"]) & set(second["path"])  # every patch cut again
    for row in second.itertuples():
        patch = cv2.imread(str(out / row.path), cv2.IMREAD_UNCHANGED)
        source = cv2.imread(str(tmp_path / Path(row.provenance_file).name), cv2.IMREAD_UNCHANGED)
        from common.data.patch_geometry import Box, extract_patch

        assert np.array_equal(patch, extract_patch(source, Box(160, 100, 40, 40)))
    report = json.loads((out / "report.json").read_text())
    assert sorted(report["stale_files"]) == sorted(Path(p).name for p in first["path"])
    assert main([*args, f"root={tmp_path / 'lesions.csv'}", "mode=compat"]) == 0
    assert not set(pd.read_csv(out / "manifest.csv")["path"]) & set(second["path"])
    assert main([*args, f"root={tmp_path / 'lesions.csv'}", "fresh=true"]) == 0
    assert json.loads((out / "report.json").read_text())["stale_files"] == []
    assert len(list((out / "images").glob("*.png"))) == 4


def test_conflicting_duplicates_and_misfit_masks_are_reported_with_their_lines(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(3)
    cv2.imwrite(str(tmp_path / "a.png"), rng.integers(0, 255, (300, 300), dtype=np.uint8))
    cv2.imwrite(str(tmp_path / "small.png"), np.zeros((20, 20), np.uint8))
    mask = np.zeros((400, 300), np.uint8)
    mask[100:150, 100:150] = 255
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    rows = [
        "image,label,patient_id,x,y,w,h",
        "a.png,1,P1,100,100,40,40",
        "a.png,0,P2,100,100,40,40",  # the same lesion, another label and patient
    ]
    (tmp_path / "boxes.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    base = ["prepare", "source=manifest", "val_fraction=0", "test_fraction=0"]
    assert main([*base, f"root={tmp_path / 'boxes.csv'}", f"out_dir={out}"]) == 0
    (skip,) = json.loads((out / "report.json").read_text())["skipped"]
    assert skip["record"].endswith("boxes.csv:3")
    assert "boxes.csv:2" in skip["reason"] and "label 0 vs 1" in skip["reason"]
    (tmp_path / "masks.csv").write_text("image,label,patient_id,mask\nsmall.png,1,P1,mask.png\n")
    assert main([*base, f"root={tmp_path / 'masks.csv'}", f"out_dir={tmp_path / 'o2'}"]) == 2
    report = json.loads((tmp_path / "o2" / "report.json").read_text())
    assert "does not fit an image of 20x20" in report["skipped"][0]["reason"]


def test_skip_summary_groups_kinds_without_paths_or_values() -> None:
    from common.data.prepare import skip_summary

    summary = skip_summary(
        [
            ("x:2", "unknown label 'maybe' (1/0, malignant/benign, BENIGN_WITHOUT_CALLBACK)"),
            ("x:3", "unknown label 'sure' (1/0, malignant/benign, BENIGN_WITHOUT_CALLBACK)"),
            ("x:4", "box x,y,w,h=1,2,3,4 lies outside the image (width x height 20x20 pixels)"),
            ("x:5", "image /data/a/b.png named in the CSV not found"),
            ("x:6", "image imgs/c.png named in the CSV not found"),
            ("x:7", "mammogram series 1.3.6.1.4.1.9590.100.1.2.12: 2 DICOM files, 1 expected"),
            ("x:8", "dl/a/1-1.dcm-full mammogram dl/a/1-1.dcm: truncated"),
        ]
    )
    assert summary == {
        "unknown label '...'": 2,
        "image <file> named in the CSV not found": 2,
        "box x,y,w,h=N,N,N,N lies outside the image": 1,
        "mammogram series <uid>": 1,
        "full mammogram <file>": 1,
    }
