"""Phantom sites look like a TCIA CBIS-DDSM download and go through the same ingestion."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom

from common.data.phantom.sites import write_phantom_sites
from simulations.cli import main


def test_phantom_sites_ingest_like_cbis_ddsm(tmp_path: Path) -> None:
    rows = write_phantom_sites(tmp_path / "ph", sites=3, patients=4, long_side=600, seed=1)
    assert rows == {"site-a": 8, "site-b": 8, "site-c": 8}  # CC + MLO of each lesion breast
    site = tmp_path / "ph" / "site-c"
    csv_text = (site / "mass_case_description_train_set.csv").read_text()
    assert '000001.dcm\n"' in csv_text  # the mass files' embedded newline in the mask path
    files = sorted((site / "CBIS-DDSM").rglob("*.dcm"))
    assert {f.name for f in files} == {"1-1.dcm", "1-2.dcm"} and len(files) == 8 * 3
    full = pydicom.dcmread(next(f for f in files if "full mammogram" in str(f.parent)))
    assert full.PhotometricInterpretation == "MONOCHROME1" and full.BitsStored == 12
    for name in rows:
        out = tmp_path / "patches" / name
        assert (
            main(
                ["prepare", "source=cbis-ddsm", f"root={tmp_path / 'ph' / name}", f"out_dir={out}"]
            )
            == 0
        )
        report = json.loads((out / "report.json").read_text())
        assert report["counts"]["all"] == {"total": 8, "malignant": 4, "benign": 4}
        assert report["skipped"] == []


def test_phantom_is_deterministic(tmp_path: Path) -> None:
    write_phantom_sites(tmp_path / "a", sites=1, patients=2, long_side=400, seed=5)
    write_phantom_sites(tmp_path / "b", sites=1, patients=2, long_side=400, seed=5)
    files_a = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file()
    )
    files_b = sorted(
        p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file()
    )
    assert files_a == files_b
    assert all(
        (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files_a
    )


def test_test_download_and_shape_knobs(tmp_path: Path) -> None:
    """A test download (Mass-Test folders, test CSV, patients from P_100001) ingests as well;
    ambiguity and conspicuity change the images, not the layout."""
    plain = write_phantom_sites(tmp_path / "a", sites=1, patients=4, long_side=400, split="test")
    knobs = write_phantom_sites(
        tmp_path / "b",
        sites=1,
        patients=4,
        long_side=400,
        split="test",
        ambiguity=0.3,
        conspicuity=2.5,
    )
    assert plain == knobs == {"site-a": 8}
    csv_text = (tmp_path / "a" / "site-a" / "mass_case_description_test_set.csv").read_text()
    assert "Mass-Test_P_100001" in csv_text and "Mass-Training" not in csv_text
    out = tmp_path / "patches"
    assert (
        main(["prepare", "source=cbis-ddsm", f"root={tmp_path / 'b' / 'site-a'}", f"out_dir={out}"])
        == 0
    )
    assert json.loads((out / "report.json").read_text())["counts"]["all"]["total"] == 8
    a = sorted((tmp_path / "a").rglob("1-1.dcm"))[0].read_bytes()
    b = sorted((tmp_path / "b").rglob("1-1.dcm"))[0].read_bytes()
    assert a != b


def test_prepare_recovers_the_patches_the_generator_drew(tmp_path: Path) -> None:
    """Regression: on a phantom download with Training and Test CSVs, prepare gives exactly
    the lesions the generator of this commit drew (patient, official split, side, view, label,
    box from the mask it wrote) and each patch equals the stored pixels, decoded here
    independently of mammofl's reader, cut at that box."""
    import cv2
    import numpy as np
    import pandas as pd

    from common.data.mammogram_io import minmax_uint8
    from common.data.patch_geometry import Box, extract_patch
    from common.data.phantom.sites import write_phantom_site

    root = tmp_path / "site-c"  # MONOCHROME1, 12 bits: the reader must invert
    drawn = write_phantom_site(
        root, "site-c", patients=4, long_side=500, seed=3, split="both", test_patients=2
    )
    assert {d.split for d in drawn} == {"train", "test"}
    out = tmp_path / "out"
    assert main(["prepare", "source=cbis-ddsm", f"root={root}", f"out_dir={out}"]) == 0
    manifest = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    expected = sorted(
        (d.patient_id, d.split, d.side, d.view, str(d.label), f"{b.x},{b.y},{b.w},{b.h}")
        for d in drawn
        for b in d.boxes
    )
    found = sorted(
        (
            r.patient_id,
            "test" if r.split == "test" else "train",
            r.laterality,
            r.view,
            r.label,
            r.box,
        )
        for r in manifest.itertuples()
    )
    assert found == expected
    for row in manifest.itertuples():
        source = pydicom.dcmread(row.provenance_file)
        stored = source.pixel_array.astype(np.float64)
        display = minmax_uint8(
            -stored if source.PhotometricInterpretation == "MONOCHROME1" else stored
        )
        box = Box(*(int(v) for v in row.box.split(",")))
        patch = cv2.imread(str(out / row.path), cv2.IMREAD_UNCHANGED)
        assert np.abs(patch.astype(int) - extract_patch(display, box).astype(int)).mean() <= 1.0
        assert "MONOCHROME1" in row.pixel_steps
