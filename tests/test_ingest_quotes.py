"""Quotes in object CSVs (Excel and pandas quote numbers; a text value with a comma is quoted): a cut-off row
or a stray quote pair never passes as rows filled with NULLs or fewer rows; a real quoted value is kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cytoprofile.collate import collate_plate

from . import faults
from .faults import BATCH, PLATE


def _quote_a_number(rows: list[list[str]], *, row: int = 1, column: int = 3) -> None:
    rows[row][column] = f'"{rows[row][column]}"'  # legal CSV: a quoted number


def _site_entry(ws: Path, folder: Path, **kw: Any) -> dict[str, Any]:
    result = collate_plate(ws, BATCH, PLATE, **kw)
    assert result.status == "done", result.message
    faults.assert_rows_accounted(result, folder.parent)
    return {s["site"]: s for s in result.report["sites"]}[folder.name]


@pytest.mark.parametrize("table", ["Cells", "Cytoplasm", "Nuclei"])
@pytest.mark.parametrize("keep", [1, 4, 9])
def test_a_cut_off_row_in_a_file_with_quotes_quarantines(tmp_path: Path, table: str, keep: int) -> None:
    analysis = faults.small_plate(tmp_path, wells=1, sites=2, cells=8, features=5)
    folder = faults.site(analysis)
    rows = faults.read_rows(folder / f"{table}.csv")
    _quote_a_number(rows, row=len(rows) - 1)
    rows[2] = rows[2][:keep]  # cut off, the line still ends with a newline
    faults.write_rows(folder / f"{table}.csv", rows)
    entry = _site_entry(tmp_path, folder, count_check="off")
    assert entry["status"] == "quarantined", entry
    assert f"{table}.csv: a row has the wrong number of fields at line 3" in entry["reason"]


@pytest.mark.parametrize("table", ["Cells", "Cytoplasm"])
@pytest.mark.parametrize("span", [1, 3])
@pytest.mark.parametrize("kind", ["text", "number"])
def test_a_stray_quote_pair_swallowing_rows_quarantines(tmp_path: Path, table: str, span: int, kind: str) -> None:
    """In a text column (image metadata an object CSV repeats) the swallowed rows would pass as one value."""
    analysis = faults.small_plate(tmp_path, wells=1, sites=2, cells=8, features=5)
    folder = faults.site(analysis)
    rows = faults.read_rows(folder / f"{table}.csv")
    if kind == "text":
        for i, row in enumerate(rows):
            row.append("PathName_OrigDNA" if i == 0 else "/images/plate")
    column = len(rows[0]) - 1 if kind == "text" else 4
    rows[2][column] = '"' + rows[2][column]
    rows[2 + span][column] += '"'
    faults.write_rows(folder / f"{table}.csv", rows)
    entry = _site_entry(tmp_path, folder, count_check="off")
    assert entry["status"] == "quarantined", entry
    expected = f"a quoted value spans lines 3-{3 + span} and holds whole rows" if kind == "text" else "is not a number"
    assert expected in entry["reason"], entry["reason"]


def test_a_quoted_value_with_a_line_break_is_kept(tmp_path: Path) -> None:
    """A text value written with a line break (quoted) is one value, not a swallowed row."""
    analysis = faults.small_plate(tmp_path, wells=1, sites=2, cells=8, features=5)
    folder = faults.site(analysis)
    rows = faults.read_rows(folder / "Cells.csv")
    rows[0].append("Metadata_Note")
    for i, row in enumerate(rows[1:], start=1):
        row.append("first line\nsecond, line" if i == 2 else "plain")
    faults.write_rows(folder / "Cells.csv", rows, raw=False)
    entry = _site_entry(tmp_path, folder)
    assert entry["status"] == "ok", entry.get("reason")
    assert entry["rows"]["Cells"] == len(rows) - 1


@pytest.mark.parametrize(("value", "stored"), [("5 ", 5.0), ("  2.5  ", 2.5), ("1e3 ", 1000.0), ("abc ", None)])
def test_spaces_after_a_number_read_as_before_it(tmp_path: Path, value: str, stored: float | None) -> None:
    """``' 5'`` and ``'5 '`` are the same number; a word with a space is still named with its line and column."""
    import sqlite3

    analysis = faults.small_plate(tmp_path, wells=1, sites=2, cells=8, features=5)
    folder = faults.site(analysis)
    rows = faults.read_rows(folder / "Cells.csv")
    column = rows[0].index(next(c for c in rows[0] if c.startswith("AreaShape_")))
    rows[2][column] = value
    faults.write_rows(folder / "Cells.csv", rows)
    result = collate_plate(tmp_path, BATCH, PLATE)
    entry = {s["site"]: s for s in result.report["sites"]}[folder.name]
    if stored is None:
        assert entry["status"] == "quarantined"
        assert f"Cells.csv line 3, column {rows[0][column]}: {value!r} is not a number" in entry["reason"]
        return
    assert entry["status"] == "ok", entry.get("reason")
    conn = sqlite3.connect(result.outputs["sqlite"])
    try:
        got = conn.execute(f'SELECT "Cells_{rows[0][column]}" FROM Cells WHERE ObjectNumber = ? AND ImageNumber = ?',
                           (int(rows[2][rows[0].index("ObjectNumber")]), int(rows[2][rows[0].index("ImageNumber")]))).fetchall()
    finally:
        conn.close()
    assert [g[0] for g in got] == [stored]
