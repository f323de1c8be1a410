"""Read a CSV table the way a person checks it: every row knows its physical line in the file.

Why not pandas: one bad row (an unquoted comma, an unclosed quote) stops `pd.read_csv` with a
traceback that names neither the file nor, when quoted fields hold newlines (CBIS-DDSM's paths
do), the right line. Here a row with the wrong number of fields is skipped with a reason naming
`file:line`, so a batch of thousands loses one row, not the run; a quote left open swallows the
rest of the file, so it is a `DataError` naming the line where it opened. Values are kept as
text (an empty field stays ""), blank lines are ignored and a UTF-8 BOM is dropped.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from common.errors import DataError

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class CsvRow:
    """One data row: `line` is the 1-based physical line where it starts, as an editor shows."""

    line: int
    values: dict[str, str]


@dataclass
class CsvTable:
    """Header names (normalised), the good rows, and `(f"{path}:{line}", reason)` for bad ones."""

    path: Path
    columns: tuple[str, ...]
    rows: list[CsvRow] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def where(self, row: CsvRow) -> str:
        """`file:line` of a row, the form every skipped-record report uses."""
        return f"{self.path}:{row.line}"

    def require(self, names: Iterable[str], hint: str) -> None:
        """Missing columns are a whole-file error; the message shows what the file has."""
        missing = [name for name in names if name not in self.columns]
        if missing:
            raise DataError(
                f"{self.path}: missing columns {', '.join(missing)}; found columns: "
                f"{', '.join(self.columns) or '(none)'}; {hint}"
            )

    def records(self) -> list[dict[str, str]]:
        return [row.values for row in self.rows]

    def to_frame(self) -> pd.DataFrame:
        """All-text DataFrame indexed by each row's physical line."""
        import pandas as pd

        return pd.DataFrame(
            self.records(), columns=list(self.columns), index=[row.line for row in self.rows]
        )


class _Lines:
    """Feeds csv.reader one physical line at a time and keeps the text of the current record."""

    def __init__(self, text: str) -> None:
        self._lines = iter(io.StringIO(text, newline=""))  # splits at \n, \r\n and \r
        self.record: list[str] = []
        self.exhausted = False

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        try:
            line = next(self._lines)
        except StopIteration:
            self.exhausted = True
            raise
        self.record.append(line)
        return line


def read_csv_table(
    path: Path,
    *,
    what: str,
    normalise: Callable[[str], str] = str.strip,
    skip_initial_space: bool = False,
) -> CsvTable:
    """Read `path` (comma-separated, UTF-8); `what` names the file kind in messages.

    `normalise` maps each header name (default: strip spaces); `skip_initial_space` drops
    spaces after each comma, as pandas' `skipinitialspace=True`.
    """
    text = _read_text(path, what)
    lines = _Lines(text)
    reader = csv.reader(lines, skipinitialspace=skip_initial_space)
    header: list[str] | None = None
    table = CsvTable(path, ())
    while True:
        start = reader.line_num + 1
        lines.record = []
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            _check_closed(path, "".join(lines.record), start, skip_initial_space, table)
            raise DataError(
                f"{path}:{start}: unreadable CSV row ({error}); is this a comma-separated "
                f"text file? fix or remove that row"
            ) from error
        if lines.exhausted:
            _check_closed(path, "".join(lines.record), start, skip_initial_space, table)
        if not any(value.strip() for value in record):
            continue  # blank line, or a row of empty fields (spreadsheet padding)
        if header is None:
            header = _header(path, record, normalise, start)
            table.columns = tuple(header)
            continue
        reason = _field_count_problem(len(record), header, record, start, reader.line_num)
        if reason:
            table.skipped.append((f"{path}:{start}", reason))
            continue
        table.rows.append(CsvRow(start, dict(zip(header, record, strict=False))))
    if header is None:
        raise DataError(f"{path}: empty file; a {what} starts with a header line of column names")
    return table


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise DataError(f"{what} {path} not found" + (" (it is a folder)" if path.is_dir() else ""))
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte {data[error.start]:#04x}); save the {what} as "
            f"UTF-8 (spreadsheets: 'CSV UTF-8')"
        ) from error


def _header(path: Path, record: list[str], normalise: Callable[[str], str], line: int) -> list[str]:
    names = [normalise(name) for name in record]
    while names and not names[-1]:
        names.pop()  # a trailing comma after the last name
    if len(names) == 1 and any(sep in names[0] for sep in (";", "\t")):
        raise DataError(
            f"{path}:{line}: the header {record[0]!r} is one column; the file seems separated by "
            f"';' or tabs: save it comma-separated"
        )
    seen: set[str] = set()
    for name in names:
        if name and name in seen:
            raise DataError(
                f"{path}:{line}: column {name!r} appears twice in the header; rename one"
            )
        seen.add(name)
    return names


def _field_count_problem(
    count: int, header: list[str], record: list[str], start: int, end: int
) -> str:
    """Why a row cannot be matched to the header, or "" when it can."""
    span = f"row (lines {start}-{end})" if end > start else "row"
    if count > len(header) and any(value.strip() for value in record[len(header) :]):
        hint = "an unquoted comma or a quote left open?" if end > start else "an unquoted comma?"
        return f"{span} has {count} fields, header has {len(header)}: {hint} quote the field"
    if count < len(header):
        return (
            f"{span} has {count} fields, header has {len(header)}: fields missing; "
            f"add them (an empty field is just a comma)"
        )
    return ""


def _check_closed(path: Path, text: str, start: int, skip_space: bool, table: CsvTable) -> None:
    """The last record must not end inside quotes: then a quote swallowed the file's rest.

    A stray quote pairs with the next real one, so the quote left open is often lines below
    the stray one; the first row already malformed before it is named too, as the likely
    cause."""
    line, opened, quoted, at_field_start, i = start, start, False, True, 0
    while i < len(text):
        char = text[i]
        if quoted and char == '"':
            if text[i + 1 : i + 2] == '"':  # "" is an escaped quote inside quotes
                i += 2
                continue
            quoted = False
        elif not quoted and char == '"' and at_field_start:
            quoted, opened = True, line
        if char == "\n" or (char == "\r" and text[i + 1 : i + 2] != "\n"):
            line += 1
        if not quoted:
            at_field_start = char in ",\r\n" or (at_field_start and skip_space and char == " ")
        i += 1
    if quoted:
        earlier = (
            f" (rows are malformed from {table.skipped[0][0]}: a stray quote there?)"
            if table.skipped
            else ""
        )
        raise DataError(
            f"{path}:{opened}: a quote opened on this line is never closed, so the rest of the "
            f"file reads as one field{earlier}; close or remove that quote"
        )
