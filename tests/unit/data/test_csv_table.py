"""CSV tables: physical line numbers, bad rows skipped with file:line, whole-file faults named."""

from __future__ import annotations

import csv as csv_module
import io
import re
from pathlib import Path

import pandas as pd
import pytest

from common.data.csv_table import read_csv_table
from common.errors import DataError


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


def test_rows_carry_physical_lines_through_quoted_newlines(tmp_path: Path) -> None:
    """CBIS-DDSM style: CRLF lines, a quoted path ending in a bare LF, a BOM, a blank line."""
    csv = _write(
        tmp_path / "d.csv",
        "\ufeffpatient_id,density,mask path\r\n"
        'P_1,,"A/1/2/000001.dcm\n"\r\n'
        "\r\n"
        'P_2,3,"B/3/4/000001.dcm\n"\r\n'
        "P_3,1,C/5/6/000001.dcm",  # no newline at the end
    )
    table = read_csv_table(csv, what="description CSV")
    assert table.columns == ("patient_id", "density", "mask path")
    assert [row.line for row in table.rows] == [2, 5, 7]
    assert table.rows[0].values == {
        "patient_id": "P_1",
        "density": "",  # empty stays "", never NaN
        "mask path": "A/1/2/000001.dcm\n",
    }
    assert table.where(table.rows[1]) == f"{csv}:5" and not table.skipped
    frame = table.to_frame()
    assert list(frame.index) == [2, 5, 7] and frame.loc[7, "density"] == "1"


def test_extra_unquoted_comma_skips_only_that_row(tmp_path: Path) -> None:
    csv = _write(
        tmp_path / "m.csv", "image,label,patient_id\na.png,1,P1\nb,c.png,0,P2\nd.png,0,P3\n"
    )
    table = read_csv_table(csv, what="lesion manifest")
    assert [row.values["patient_id"] for row in table.rows] == ["P1", "P3"]
    assert table.skipped == [
        (f"{csv}:3", "row has 4 fields, header has 3: an unquoted comma? quote the field")
    ]


def test_fewer_fields_skip_the_row_with_a_reason(tmp_path: Path) -> None:
    csv = _write(tmp_path / "m.csv", "image,label,patient_id\na.png,1\nb.png,0,P2\n")
    table = read_csv_table(csv, what="lesion manifest")
    assert [row.line for row in table.rows] == [3]
    assert table.skipped[0][0] == f"{csv}:2"
    assert table.skipped[0][1].startswith("row has 2 fields, header has 3: fields missing")


def test_unclosed_quote_names_the_line_where_it_opened(tmp_path: Path) -> None:
    csv = _write(
        tmp_path / "m.csv",
        'image,label,patient_id\na.png,1,P1\nb.png,0,P2\n"c.png,1,P3\nd.png,0,P4\ne.png,1,P5\n',
    )
    with pytest.raises(DataError, match=re.escape(f"{csv}:4: a quote opened on this line")):
        read_csv_table(csv, what="lesion manifest")


def test_unclosed_quote_past_the_field_size_limit(tmp_path: Path) -> None:
    """A quote left open early in a big file overflows csv's field limit: still the same error."""
    rows = "".join(f"x{i}.png,1,P{i}\n" for i in range(20000))
    csv = _write(tmp_path / "m.csv", 'image,label,patient_id\na.png,1,"P1\n' + rows)
    with pytest.raises(DataError, match=re.escape(f"{csv}:2: a quote opened")):
        read_csv_table(csv, what="lesion manifest")


def test_quote_closed_rows_later_reports_the_span(tmp_path: Path) -> None:
    csv = _write(
        tmp_path / "m.csv",
        'image,label,patient_id\n"a.png,1,P1\nb.png,0,P2\nc.png,1,P3",x,y,z\nd,0,P4\n',
    )
    table = read_csv_table(csv, what="lesion manifest")
    assert [row.line for row in table.rows] == [5]
    where, why = table.skipped[0]
    assert where == f"{csv}:2" and why.startswith("row (lines 2-4) has 4 fields, header has 3")
    assert "quote left open" in why


def test_trailing_empty_fields_and_padding_rows_are_ignored(tmp_path: Path) -> None:
    """Spreadsheet exports: a trailing comma on every line, rows of bare commas."""
    csv = _write(tmp_path / "m.csv", "image,label,patient_id,\na.png,1,P1,\n,,,\n  \nb.png,0,P2,\n")
    table = read_csv_table(csv, what="lesion manifest")
    assert table.columns == ("image", "label", "patient_id")
    assert [(row.line, row.values["image"]) for row in table.rows] == [(2, "a.png"), (5, "b.png")]
    assert not table.skipped


def test_header_normaliser_and_initial_spaces(tmp_path: Path) -> None:
    csv = _write(tmp_path / "d.csv", "Patient_ID, breast density\nP_1, 3\n")
    table = read_csv_table(
        csv,
        what="description CSV",
        normalise=lambda name: " ".join(name.replace("_", " ").split()).lower(),
        skip_initial_space=True,
    )
    assert table.records() == [{"patient id": "P_1", "breast density": "3"}]
    assert read_csv_table(csv, what="x").records() == [
        {"Patient_ID": "P_1", "breast density": " 3"}  # names stripped, values as written
    ]


def test_require_lists_the_columns_found(tmp_path: Path) -> None:
    table = read_csv_table(_write(tmp_path / "m.csv", "path,label\na,1\n"), what="manifest")
    with pytest.raises(DataError, match=r"m\.csv: missing columns patient_id; found columns: "):
        table.require(("path", "patient_id"), "add it")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file; a lesion manifest starts with a header line"),
        (b"image;label;patient_id\na;1;P\n", r"m\.csv:1: .*separated by ';'"),
        (b"image,label,image\na,1,b\n", r"m\.csv:1: column 'image' appears twice"),
        (b"image,label\na.png,1\nb\xe9.png,0\n", r"m\.csv:3: not UTF-8 text .*save the lesion"),
    ],
)
def test_whole_file_faults_are_data_errors(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "m.csv").write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_csv_table(tmp_path / "m.csv", what="lesion manifest")


def test_csv_module_errors_name_the_row(tmp_path: Path) -> None:
    csv = _write(tmp_path / "m.csv", "image,label\na.png,1\n" + "b" * 50 + ".png,0\n")
    limit = csv_module.field_size_limit(20)
    try:
        with pytest.raises(DataError, match=r"m\.csv:3: unreadable CSV row \(field larger"):
            read_csv_table(csv, what="lesion manifest")
    finally:
        csv_module.field_size_limit(limit)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"lesion manifest .*nope\.csv not found"):
        read_csv_table(tmp_path / "nope.csv", what="lesion manifest")
    with pytest.raises(DataError, match="it is a folder"):
        read_csv_table(tmp_path, what="lesion manifest")


def test_real_cbis_ddsm_csvs_read_as_pandas_does() -> None:
    """The four official description CSVs: same values as pandas, and each row's line (physical,
    counting the quoted newlines) is the line in the file where that row's patient id starts."""
    from tests.conftest import SHARED, require_shared

    folder = require_shared(SHARED / "data" / "cbis-ddsm-csv")
    for csv in sorted(folder.glob("*.csv")):
        table = read_csv_table(csv, what="CBIS-DDSM description CSV")
        frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
        assert table.records() == frame.to_dict("records") and not table.skipped
        lines = list(io.StringIO(csv.read_bytes().decode(), newline=""))
        assert all(lines[r.line - 1].startswith(r.values["patient_id"] + ",") for r in table.rows)
        assert table.rows[-1].line > len(table.rows) + 1  # embedded newlines were counted
