"""A CBIS-like download with mass and calc description CSVs, Training and Test: masses only by
default, calcification clusters as one lesion, the official per-patient split kept, patients on
both sides refused, and the whole run refused when nothing could be cut."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydicom.uid import generate_uid

from common.data.dicom_writer import write_dicom
from simulations.cli import main
from tests.unit.data.test_cbis_ddsm import HEADER

CALC_HEADER = HEADER.replace("breast_density", "breast density").replace(
    "mass shape,mass margins", "calc type,calc distribution"
)


def _case(root: Path, folder: str, mask: np.ndarray, seed: int) -> tuple[str, str, str]:
    """One full mammogram + ROI series (crop, mask) under a download-style folder; returns the
    CSV's image, crop and mask paths (UID form)."""
    study, series, roi_study, roi_series = (generate_uid() for _ in range(4))
    image = np.random.default_rng(seed).integers(0, 4096, mask.shape).astype(np.uint16)
    base = root / "CBIS-DDSM"
    write_dicom(
        base / folder / "d1" / "full" / "1-1.dcm", image, study_uid=study, series_uid=series
    )
    roi = base / f"{folder}_1" / "d2" / "roi"
    crop = np.full((40, 30), 7, np.uint8)
    write_dicom(roi / "1-1.dcm", crop, study_uid=roi_study, series_uid=roi_series)
    write_dicom(roi / "1-2.dcm", mask, study_uid=roi_study, series_uid=roi_series)
    return (
        f"{folder}/{study}/{series}/000000.dcm",
        f"{folder}_1/{roi_study}/{roi_series}/000000.dcm",
        f"{folder}_1/{roi_study}/{roi_series}/000001.dcm",
    )


def _mass_mask() -> np.ndarray:
    mask = np.zeros((400, 300), np.uint8)
    mask[100:160, 80:150] = 255
    return mask


def _speck_mask() -> np.ndarray:
    """A calcification cluster: 5 specks far enough apart to be 5 blobs for the mass rule."""
    mask = np.zeros((400, 300), np.uint8)
    for k in range(5):
        mask[60 + 50 * k : 63 + 50 * k, 40 + 30 * k : 43 + 30 * k] = 255
    return mask


def cbis_like(root: Path, *, shared_patient: bool = False) -> dict[str, list[str]]:
    """Mass and calc CSVs in Training and Test (TCIA's four file names); returns the patients
    of each (type, split). `shared_patient`: one patient also has a Test calc row, as happens
    in the real files (31 patients once mass and calc are combined)."""
    patients: dict[str, list[str]] = {}
    seed = 0
    for kind, header, mask_of in (
        ("mass", HEADER, _mass_mask),
        ("calc", CALC_HEADER, _speck_mask),
    ):
        for split, word, count in (("train", "Training", 4), ("test", "Test", 2)):
            rows, ids = [], []
            for k in range(count):
                patient = f"P_{kind[0]}{split[:2]}{k:02d}"
                if shared_patient and kind == "calc" and split == "test" and k == 0:
                    patient = "P_mtr00"  # a mass Training patient with a calc Test row
                folder = f"{kind.capitalize()}-{word}_{patient}_LEFT_CC"
                image, crop, mask = _case(root, folder, mask_of(), seed)
                seed += 1
                pathology = "MALIGNANT" if k % 2 else "BENIGN"
                kind_word = "mass" if kind == "mass" else "calcification"
                rows.append(
                    f"{patient},2,LEFT,CC,1,{kind_word},OVAL,CIRCUMSCRIBED,4,{pathology},3,"
                    f'{image},{crop},"{mask}\n"\n'
                )
                ids.append(patient)
            name = f"{kind}_case_description_{split}_set.csv"
            (root / name).write_text(header + "".join(rows))
            patients[f"{kind}_{split}"] = ids
    return patients


def _prepare(root: Path, out: Path, *extra: str) -> int:
    return main(["prepare", "source=cbis-ddsm", f"root={root}", f"out_dir={out}", *extra])


def test_masses_only_by_default_with_the_official_split(tmp_path: Path) -> None:
    truth = cbis_like(tmp_path / "dl")
    assert _prepare(tmp_path / "dl", tmp_path / "out", "val_fraction=0.25") == 0
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv", dtype=str, keep_default_na=False)
    assert set(manifest["abnormality"]) == {"mass"}
    assert len(manifest) == 6  # one patch per mass row, no calcification patch
    test_ids = set(manifest.loc[manifest["split"] == "test", "patient_id"])
    train_ids = set(manifest.loc[manifest["split"].isin(["train", "val"]), "patient_id"])
    assert test_ids == set(truth["mass_test"]) and train_ids == set(truth["mass_train"])
    assert set(manifest["split"]) == {"train", "val", "test"}  # val carved from train only
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["split_rule"].startswith("official split")
    calc_skips = [s for s in report["skipped"] if "not a mass" in s["reason"]]
    assert len(calc_skips) == 6 and report["skip_summary"] == {"not a mass": 6}
    assert all("calc_case_description" in s["record"] for s in calc_skips)


def test_one_mass_row_and_one_calc_row_give_one_patch_and_one_skip(tmp_path: Path) -> None:
    cbis_like(tmp_path / "dl")
    csvs = ",".join(
        str(tmp_path / "dl" / f"{k}_case_description_train_set.csv") for k in ("mass", "calc")
    )
    for name in ("mass", "calc"):  # keep the first row of each
        path = tmp_path / "dl" / f"{name}_case_description_train_set.csv"
        text = path.read_text()
        header, first = text.split("\n", 1)[0], text.split("\n", 1)[1]
        path.write_text(header + "\n" + first.split('\n"\n')[0] + '\n"\n')
    out = tmp_path / "out"
    assert _prepare(tmp_path / "dl", out, f"csv={csvs}", "val_fraction=0") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["all"]["total"] == 1 and len(report["skipped"]) == 1


def test_a_calcification_cluster_is_one_patch_not_one_per_speck(tmp_path: Path) -> None:
    cbis_like(tmp_path / "dl")
    out = tmp_path / "out"
    assert _prepare(tmp_path / "dl", out, "abnormality=calc", "val_fraction=0") == 0
    manifest = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    assert len(manifest) == 6 and set(manifest["abnormality"]) == {"calcification"}
    assert set(manifest["box"]) == {"40,60,123,203"}  # the 5 specks' bounding box, once
    assert _prepare(tmp_path / "dl", tmp_path / "all", "abnormality=all") == 0
    assert len(pd.read_csv(tmp_path / "all" / "manifest.csv")) == 12


def test_a_patient_on_both_sides_is_refused_unless_split_random(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cbis_like(tmp_path / "dl", shared_patient=True)
    out = tmp_path / "out"
    assert _prepare(tmp_path / "dl", out, "abnormality=all") == 2
    error = capsys.readouterr().err
    assert "P_mtr00" in error and "split=random" in error
    assert not (out / "manifest.csv").exists()
    assert _prepare(tmp_path / "dl", out, "abnormality=all", "split=random") == 0
    manifest = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    in_test = manifest["split"] == "test"
    assert not set(manifest.loc[in_test, "patient_id"]) & set(manifest.loc[~in_test, "patient_id"])
    report = json.loads((out / "report.json").read_text())
    assert "split=random" in report["split_rule"]


def test_one_split_in_the_csvs_gets_a_named_seeded_split(tmp_path: Path) -> None:
    cbis_like(tmp_path / "dl")
    for name in ("mass_case_description_test_set.csv", "calc_case_description_test_set.csv"):
        (tmp_path / "dl" / name).unlink()
    out = tmp_path / "out"
    assert _prepare(tmp_path / "dl", out, "val_fraction=0") == 0
    report = json.loads((out / "report.json").read_text())
    assert "seeded per-patient split" in report["split_rule"]
    assert "the source holds only train rows" in report["split_rule"]
    assert report["patients"]["test"] >= 1 and report["patients"]["train"] >= 1


def test_a_test_only_download_is_all_test(tmp_path: Path) -> None:
    """The usual way to build the paper's CBIS-DDSM test set: the Test rows only. Every one of
    its patients is test (a seeded split sent about 80 % of them to train and val)."""
    truth = cbis_like(tmp_path / "dl")
    for name in ("mass_case_description_train_set.csv", "calc_case_description_train_set.csv"):
        (tmp_path / "dl" / name).unlink()
    out = tmp_path / "out"
    assert _prepare(tmp_path / "dl", out) == 0
    manifest = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    assert set(manifest["split"]) == {"test"}
    assert set(manifest["patient_id"]) == set(truth["mass_test"])
    report = json.loads((out / "report.json").read_text())
    assert report["split_rule"] == "official split (the source holds only Test rows: all test)"


def test_test_fraction_alone_asks_for_a_random_split(tmp_path: Path) -> None:
    cbis_like(tmp_path / "dl")
    out = tmp_path / "out"
    assert _prepare(tmp_path / "dl", out, "test_fraction=0.5") == 0
    assert "split=random" in json.loads((out / "report.json").read_text())["split_rule"]


def test_nothing_cut_is_a_failure_with_the_skip_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cbis_like(tmp_path / "dl")
    for name in ("mass_case_description_train_set.csv", "mass_case_description_test_set.csv"):
        (tmp_path / "dl" / name).unlink()
    out = tmp_path / "out"
    assert _prepare(tmp_path / "dl", out) == 2
    error = capsys.readouterr().err
    assert "cut no patch" in error and "6 x not a mass" in error
    assert not (out / "manifest.csv").exists() and (out / "report.json").is_file()


def test_malformed_description_rows_name_their_physical_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each good row spans two physical lines (the quoted mask path ends in a newline): an
    extra unquoted comma in the third row is reported at line 6, not pandas' row count."""
    cbis_like(tmp_path / "dl")
    csv = tmp_path / "dl" / "mass_case_description_train_set.csv"
    lines = csv.read_text().split("\n")
    assert lines[5].startswith("P_mtr02")
    lines[5] = lines[5].replace(",LEFT,", ",LEFT,extra,", 1)
    csv.write_text("\n".join(lines))
    out = tmp_path / "out"
    assert _prepare(tmp_path / "dl", out) == 0
    report = json.loads((out / "report.json").read_text())
    (bad,) = [
        s
        for s in report["skipped"]
        if s["record"].endswith("mass_case_description_train_set.csv:6")
    ]
    assert "unquoted comma" in bad["reason"]
    assert report["counts"]["all"]["total"] == 5  # every other mass row still cut
    lines[5] = lines[5].replace(",LEFT,extra,", ',LEFT,"open,', 1)
    csv.write_text("\n".join(lines))
    assert _prepare(tmp_path / "dl", tmp_path / "out2") == 2
    error = capsys.readouterr().err
    assert "never closed" in error and "malformed from" in error
    assert error.count("mass_case_description_train_set.csv:6") == 1  # the likely cause


def test_two_downloads_under_one_root_do_not_make_one_patient_of_two(tmp_path: Path) -> None:
    """Two hospitals' downloads whose patient ids collide, prepared from one root: the same
    lesion (patient, side, view, type, id) described on two mammograms is skipped at both
    rows, naming the other (TCIA's own CSVs never repeat one), not merged into one patient.
    (A row repeated on the same mammogram is one lesion: test_prepare_faults.)"""
    from common.data.cbis_ddsm import read_cbis_ddsm

    truth = cbis_like(tmp_path / "dl")
    csv = tmp_path / "dl" / "mass_case_description_train_set.csv"
    again = tmp_path / "dl" / "second_hospital_mass_case_description_train_set.csv"
    rows = []
    for k, patient in enumerate(truth["mass_train"]):  # the same ids, other mammograms
        folder = f"Mass-Training_{patient}_LEFT_CC"
        image, crop, mask = _case(tmp_path / "dl" / "hospital-b", folder, _mass_mask(), 100 + k)
        rows.append(
            f'{patient},2,LEFT,CC,1,mass,OVAL,CIRCUMSCRIBED,4,BENIGN,3,{image},{crop},"{mask}\n"\n'
        )
    again.write_text(HEADER + "".join(rows))
    lesions, skipped = read_cbis_ddsm(tmp_path / "dl", [csv, again])
    assert lesions == []
    repeated = [(where, why) for where, why in skipped if "repeated lesion" in why]
    assert len(repeated) == 8
    where, why = repeated[0]
    assert "is also described at" in why and "prepare each download" in why
    assert (str(again) in why) != (str(again) in where)
