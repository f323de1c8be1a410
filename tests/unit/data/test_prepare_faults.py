"""Faults of real downloads and real output folders, each a kind seen at a site: an out_dir
that holds the source, output writes that fail, an official split given for some records only
(or in a manifest's own column), flags and header values in spreadsheet or odd spellings, an
empty patient id, damaged DICOM files, and a rerun that cuts nothing beside an old manifest."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames

from common.data.bcdr import read_bcdr_lesions
from common.data.cbis_ddsm import pixel_spacing
from common.data.dicom_writer import write_dicom
from simulations.cli import main
from tests.unit.data.test_bcdr import HEADER as BCDR_HEADER
from tests.unit.data.test_bcdr import _tif
from tests.unit.data.test_cbis_ddsm import HEADER
from tests.unit.data.test_cbis_official import _case, _mass_mask, _prepare, cbis_like

PROJECT = Path(__file__).resolve().parents[3]
MAMMOFL = str(Path(sys.executable).parent / "mammofl")  # the installed command


def _site_folder(folder: Path, *, table: str = "lesions.csv", splits: list[str] | None = None):  # type: ignore[no-untyped-def]
    """A hospital's folder: its mammograms in images/ and a lesion table beside them."""
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(5)
    header = "image,label,patient_id,x,y,w,h" + (",split" if splits else "")
    rows = [header]
    for i in range(4):
        cv2.imwrite(str(folder / f"images/m{i}.png"), rng.integers(0, 255, (300, 200), np.uint8))
        rows.append(
            f"images/m{i}.png,{i % 2},P{i},60,100,40,40" + (f",{splits[i]}" if splits else "")
        )
    (folder / table).write_text("\n".join(rows) + "\n")
    return folder / table


def _manifest(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)


def _report(out: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((out / "report.json").read_text())


def test_an_out_dir_holding_the_source_images_is_refused_and_nothing_is_removed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = _site_folder(tmp_path / "site")
    before = sorted((tmp_path / "site" / "images").iterdir())
    for extra in ([], ["fresh=true"]):
        args = ["prepare", "source=manifest", f"root={table}", f"out_dir={tmp_path / 'site'}"]
        assert main([*args, *extra]) == 2
        assert "m0.png" in capsys.readouterr().err
        assert sorted((tmp_path / "site" / "images").iterdir()) == before
    assert not (tmp_path / "site" / "manifest.csv").exists()


def test_an_input_table_named_as_an_output_is_never_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = _site_folder(tmp_path / "site", table="manifest.csv")
    text = table.read_text()
    out = tmp_path / "site"
    assert main(["prepare", "source=manifest", f"root={table}", f"out_dir={out}"]) == 2
    assert "would overwrite the input table" in capsys.readouterr().err
    assert table.read_text() == text


def test_fresh_removes_only_prepares_own_patches(tmp_path: Path) -> None:
    table = _site_folder(tmp_path / "site")
    out = tmp_path / "out"
    assert main(["prepare", "source=manifest", f"root={table}", f"out_dir={out}"]) == 0
    own = out / "images" / "scan_of_the_week.png"  # a user's file that only sits there
    cv2.imwrite(str(own), np.zeros((8, 8), np.uint8))
    assert main(["prepare", "source=manifest", f"root={table}", f"out_dir={out}"]) == 0
    assert _report(out)["stale_files"] == []  # not taken for an earlier run's patch
    assert (
        main(["prepare", "source=manifest", f"root={table}", f"out_dir={out}", "fresh=true"]) == 0
    )
    assert own.is_file() and len(list((out / "images").glob("*.png"))) == 5


def _left_by_a_killed_write(target: Path) -> Path:
    """The temporary `atomic_write` makes for `target` (as mkstemp names it), left behind."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    return Path(name)


def test_temporaries_of_an_interrupted_run_are_removed_and_no_others(tmp_path: Path) -> None:
    """A worker killed mid-write (SIGTERM with workers=2) runs no cleanup: its temporaries
    stayed in images/ and .pixel_steps/ for good. The next run removes prepare's own."""
    table = _site_folder(tmp_path / "site")
    out = tmp_path / "out"
    assert main(["prepare", "source=manifest", f"root={table}", f"out_dir={out}"]) == 0
    patch = Path(_manifest(out)["path"][0]).name
    own = [
        _left_by_a_killed_write(out / "images" / patch),
        _left_by_a_killed_write(out / ".pixel_steps" / f"{patch}.txt"),
        _left_by_a_killed_write(out / "manifest.csv"),
    ]
    others = [  # a user's or another program's files, however named
        _left_by_a_killed_write(out / "images" / "scan_of_the_week.png"),
        _left_by_a_killed_write(out / "notes.txt"),
        out / "images" / f".{patch}.tmp",
    ]
    others[-1].write_bytes(b"")
    assert main(["prepare", "source=manifest", f"root={table}", f"out_dir={out}"]) == 0
    assert [p for p in own if p.exists()] == []
    assert all(p.exists() for p in others)


def test_an_out_dir_that_cannot_be_written_stops_before_any_source_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = _site_folder(tmp_path / "site")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["prepare", "source=manifest", f"root={table}", f"out_dir={blocker / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert "cannot be written" in err and "Traceback" not in err


def test_a_patch_write_that_fails_stops_the_run_instead_of_skipping_its_lesions(
    tmp_path: Path,
) -> None:
    """A real write failure (the file-size limit: EFBIG, as a full disk gives ENOSPC): the
    run stops naming the file; it neither exits 0 without the patients nor writes a manifest."""
    table = _site_folder(tmp_path / "site")
    out = tmp_path / "out"
    limit = 4096  # bytes: room for the steps files, not for a 128-px noise patch

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(
        [MAMMOFL, "prepare", "source=manifest", f"root={table}",
         f"out_dir={out}"],
        cwd=PROJECT, capture_output=True, text=True, timeout=120, preexec_fn=small_files,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "cannot write" in done.stderr and ".png" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (out / "manifest.csv").exists()


def test_a_rerun_that_cuts_nothing_removes_the_earlier_manifest(tmp_path: Path) -> None:
    table = _site_folder(tmp_path / "site")
    out = tmp_path / "out"
    assert main(["prepare", "source=manifest", f"root={table}", f"out_dir={out}"]) == 0
    for image in (tmp_path / "site" / "images").iterdir():
        image.unlink()  # every image gone: nothing to cut
    assert main(["prepare", "source=manifest", f"root={table}", f"out_dir={out}"]) == 2
    assert not (out / "manifest.csv").exists()
    assert len(_report(out)["skipped"]) == 4


def test_a_manifests_split_column_is_the_official_split(tmp_path: Path) -> None:
    table = _site_folder(tmp_path / "site", splits=["Test", "val", "TEST", "training"])
    out = tmp_path / "out"
    assert main(["prepare", "source=manifest", f"root={table}", f"out_dir={out}"]) == 0
    manifest = _manifest(out)
    assert set(manifest.loc[manifest["split"] == "test", "patient_id"]) == {"P0", "P2"}
    assert set(manifest.loc[manifest["split"] != "test", "patient_id"]) == {"P1", "P3"}
    assert _report(out)["split_rule"].startswith("official split")


def test_a_bad_split_value_skips_its_row_with_the_line(tmp_path: Path) -> None:
    table = _site_folder(tmp_path / "site", splits=["test", "train", "holdout", "train"])
    out = tmp_path / "out"
    assert main(["prepare", "source=manifest", f"root={table}", f"out_dir={out}"]) == 0
    (skip,) = _report(out)["skipped"]
    assert skip["record"].endswith("lesions.csv:4") and "'holdout' is not a split" in skip["reason"]


def test_records_with_and_without_an_official_split_are_refused_before_cutting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Test-only download plus one table without Training/Test marks: a seeded split would
    put official Test patients into train; refused, naming the unmarked rows."""
    manifest_table = _site_folder(tmp_path / "site", splits=["test", "test", "", "test"])
    out = tmp_path / "out"
    assert main(["prepare", "source=manifest", f"root={manifest_table}", f"out_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert "1 records have no official split" in err and "lesions.csv:4" in err
    assert not list((out / "images").glob("*.png"))  # refused before any patch was cut
    # the same in a CBIS-DDSM download: Test CSVs only, and an extra CSV whose folders have no
    # Training/Test mark
    cbis_like(tmp_path / "dl")
    for name in ("mass_case_description_train_set.csv", "calc_case_description_train_set.csv"):
        (tmp_path / "dl" / name).unlink()
    rows = []
    for k in range(2):
        image, crop, mask = _case(
            tmp_path / "dl", f"Mass-Extra_Q_{k}_LEFT_CC", _mass_mask(), 50 + k
        )
        rows.append(
            f'Q_{k},2,LEFT,CC,1,mass,OVAL,CIRCUMSCRIBED,4,BENIGN,3,{image},{crop},"{mask}\n"\n'
        )
    (tmp_path / "dl" / "mass_case_description_addendum.csv").write_text(HEADER + "".join(rows))
    assert _prepare(tmp_path / "dl", tmp_path / "out2") == 2
    err = capsys.readouterr().err
    assert "2 records have no official split" in err
    assert "mass_case_description_addendum.csv:2" in err
    # split=random re-splits all on purpose
    assert _prepare(tmp_path / "dl", tmp_path / "out2", "split=random") == 0


def test_an_empty_patient_id_skips_its_row_with_the_line(tmp_path: Path) -> None:
    cbis_like(tmp_path / "dl")
    csv = tmp_path / "dl" / "mass_case_description_train_set.csv"
    lines = csv.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace("P_mtr00,", ",", 1)  # the first data row
    csv.write_text("".join(lines))
    assert _prepare(tmp_path / "dl", tmp_path / "out") == 0
    skips = [s for s in _report(tmp_path / "out")["skipped"] if "patient id" in s["reason"]]
    assert [s["record"] for s in skips] == [f"{csv}:2"]
    assert len(_manifest(tmp_path / "out")) == 5  # the other mass rows all cut


@pytest.mark.parametrize(
    ("stored", "expected"),
    [(b"0.07\\0.08", "0.07,0.08"), (b"0.05     ", ""), (b"0.05\\abc ", ""), (b"0\\0.1    ", "")],
)
def test_a_malformed_pixel_spacing_is_left_empty_not_fatal(
    tmp_path: Path, stored: bytes, expected: str
) -> None:
    """The value's bytes as a file holds them (pydicom would refuse to write 0.05\\abc)."""
    path = write_dicom(
        tmp_path / "a.dcm", np.zeros((20, 20), np.uint16), pixel_spacing=(0.05, 0.05)
    )
    data = path.read_bytes()
    assert data.count(b"0.05\\0.05") == 1 and len(stored) == 9
    path.write_bytes(data.replace(b"0.05\\0.05", stored))
    assert pixel_spacing(path) == expected


def test_bcdr_nodule_flags_in_spreadsheet_spellings(tmp_path: Path) -> None:
    """1.0 and TRUE are masses (kept), not silently dropped; an unknown flag is reported."""
    d01 = tmp_path / "bcdr" / "BCDR-D01_dataset"
    _tif(d01 / "patient_3" / "img_3_1_RCC.tif")
    rows = [
        f"3,1,1,{k},1,1, patient_3/img_3_1_RCC.tif, {x} {x + 40}, 200 260,0,{flag},1,Malign\n"
        for k, (flag, x) in enumerate((("1.0", 100), ("TRUE", 160), ("0", 200), ("maybe", 30)))
    ]
    (d01 / "bcdr_d01_outlines.csv").write_text(BCDR_HEADER + "".join(rows))
    lesions, skipped = read_bcdr_lesions(tmp_path / "bcdr")
    assert sorted(les.box.x for les in lesions) == [100, 160]
    (skip,) = skipped
    assert skip[0].endswith("bcdr_d01_outlines.csv:5") and "'maybe'" in skip[1]


def _cbis_with_damaged_images(root: Path) -> dict[str, Path]:
    """The first two Training mass images: a half JPEG 2000 codestream; a file cut short."""
    cbis_like(root)
    images = sorted((root / "CBIS-DDSM").glob("Mass-Training_*_LEFT_CC/d1/full/1-1.dcm"))
    damaged, truncated = images[0], images[1]
    dataset = pydicom.dcmread(damaged)
    write_dicom(
        damaged,
        dataset.pixel_array.astype(np.uint16),
        study_uid=dataset.StudyInstanceUID,
        series_uid=dataset.SeriesInstanceUID,
        bits_stored=12,
        jpeg2000=True,
    )
    j2k = pydicom.dcmread(damaged)
    frame = next(generate_frames(j2k.PixelData, number_of_frames=1))
    j2k.PixelData = encapsulate([frame[: len(frame) // 2]])
    j2k.save_as(damaged)
    write_dicom(
        truncated,
        pydicom.dcmread(truncated).pixel_array.astype(np.uint16),
        study_uid=pydicom.dcmread(truncated).StudyInstanceUID,
        series_uid=pydicom.dcmread(truncated).SeriesInstanceUID,
        rle=True,
    )
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) * 3 // 4])
    return {"damaged": damaged, "truncated": truncated}


def test_damaged_dicom_pixels_are_skipped_with_the_right_fix_and_no_traceback(
    tmp_path: Path,
) -> None:
    files = _cbis_with_damaged_images(tmp_path / "dl")
    done = subprocess.run(
        [MAMMOFL, "prepare", "source=cbis-ddsm",
         f"root={tmp_path / 'dl'}", f"out_dir={tmp_path / 'out'}"],
        cwd=PROJECT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "pydicom" not in done.stderr
    reasons = {s["reason"].split(":")[0]: s["reason"] for s in _report(tmp_path / "out")["skipped"]}
    damaged = reasons[str(files["damaged"])]
    assert "compressed data are damaged" in damaged and "install its decoder" not in damaged
    assert "truncated download" in reasons[str(files["truncated"])]


def test_inverted_masks_are_refused_and_a_transparent_background_is_no_lesion(
    tmp_path: Path,
) -> None:
    """An inverted mask (lesion 0 on 255) or an all-white one would cut the whole mammogram;
    an RGBA mask's white but transparent background is background."""
    rng = np.random.default_rng(4)
    lesion = np.zeros((300, 200), bool)
    lesion[100:140, 60:100] = True
    masks = {
        "inverted.png": np.where(lesion, 0, 255).astype(np.uint8),
        "white.png": np.full((300, 200), 255, np.uint8),
        "rgba.png": np.dstack(
            [np.full((300, 200, 3), 255, np.uint8), lesion.astype(np.uint8) * 255]
        ),
    }
    rows = ["image,label,patient_id,mask"]
    for k, (name, mask) in enumerate(masks.items()):
        cv2.imwrite(str(tmp_path / name), mask)
        cv2.imwrite(str(tmp_path / f"m{k}.png"), rng.integers(0, 255, (300, 200), np.uint8))
        rows.append(f"m{k}.png,{k % 2},P{k},{name}")
    (tmp_path / "lesions.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert main(["prepare", "source=manifest", f"root={tmp_path / 'lesions.csv'}",
                 f"out_dir={out}", "split=random", "test_fraction=0"]) == 0  # fmt: skip
    skipped = {s["record"].rsplit(":", 1)[1]: s["reason"] for s in _report(out)["skipped"]}
    assert set(skipped) == {"2", "3"} and all("inverted mask" in r for r in skipped.values())
    assert list(_manifest(out)["box"]) == ["60,100,40,40"]


def test_cbis_rows_repeated_or_spelled_otherwise_still_give_their_lesion(tmp_path: Path) -> None:
    """A row repeated in its CSV is one lesion (the copy reported as a duplicate, not both
    lost as 'repeated lesion'); Windows backslashes and a leading CBIS-DDSM/ in the paths; a
    DICOMDIR in the tree is no unreadable image; a lower-case photometric interpretation."""
    cbis_like(tmp_path / "dl")
    csv = tmp_path / "dl" / "mass_case_description_train_set.csv"
    text = csv.read_text()
    first_row = text[text.index("\n") + 1 : text.index('\n"\n') + 3]
    second_row = text[text.index('\n"\n') + 3 :].split('\n"\n')[0] + '\n"\n'
    spelled = second_row.replace("/", "\\")  # Windows paths, the same files
    csv.write_text(text.replace(second_row, spelled) + first_row)
    (tmp_path / "dl" / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM")
    image = next((tmp_path / "dl" / "CBIS-DDSM").glob("Mass-Training_*_LEFT_CC/d1/full/1-1.dcm"))
    dataset = pydicom.dcmread(image)
    dataset.PhotometricInterpretation = "monochrome2"
    dataset.save_as(image)
    assert _prepare(tmp_path / "dl", tmp_path / "out") == 0
    report = _report(tmp_path / "out")
    assert [s["reason"].split(" (")[0] for s in report["skipped"] if "calc" not in s["record"]] == [
        "duplicate lesion"
    ]
    assert len(_manifest(tmp_path / "out")) == 6


def test_an_empty_pixel_data_element_is_named(tmp_path: Path) -> None:
    from common.data.dicom_stored import read_dicom_stored
    from common.errors import DataError

    path = write_dicom(tmp_path / "a.dcm", np.zeros((20, 20), np.uint16), extra={"PixelData": b""})
    with pytest.raises(DataError, match="pixel data element is empty"):
        read_dicom_stored(path)


def test_a_mammogram_with_no_rows_or_columns_is_named_not_its_box(tmp_path: Path) -> None:
    """Its header read first (to check the box): an empty image blamed the box ("outside
    the image of 0x0 pixels"), not the file."""
    table = _site_folder(tmp_path / "site")
    write_dicom(tmp_path / "site/images/m0.dcm", np.zeros((8, 8), np.uint16), extra={"Rows": 0})
    table.write_text(table.read_text().replace("images/m0.png", "images/m0.dcm"))
    out = tmp_path / "out"
    assert main(["prepare", "source=manifest", f"root={table}", f"out_dir={out}"]) == 0
    [skipped] = _report(out)["skipped"]
    assert skipped["record"].endswith("lesions.csv:2")
    assert "m0.dcm: empty image (0 rows x 8 columns)" in skipped["reason"]
    assert "re-export" in skipped["reason"] and "box" not in skipped["reason"]


@pytest.mark.parametrize(
    "path",
    [
        "Mass-Training_P_1_LCC/1.3.6.1/1.3.6.2/000000.dcm",
        "Mass-Training_P_1_LCC/1.3.6.1/1.3.6.2/000000",  # a rebuilt CSV: no .dcm
        "CBIS-DDSM/Mass-Training_P_1_LCC/1.3.6.1/1.3.6.2/000000.dcm",
        "Mass-Training_P_1_LCC\\1.3.6.1\\1.3.6.2\\000000.dcm",
        "Mass-Training_P_1_LCC/1.3.6.1/1.3.6.2",
    ],
)
def test_description_csv_paths_in_every_spelling_name_the_same_series(path: str) -> None:
    from common.data.cbis_ddsm import official_split, series_key

    assert series_key(path) == ("1.3.6.1", "1.3.6.2")
    assert official_split({"image_path": path}, Path("extra.csv")) == "train"
