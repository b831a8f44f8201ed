"""Text values of ExportToDatabase files arrive in the backend as stored, whatever bytes they hold."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from cytoprofile.collate import collate_plate

from . import faults
from .exportdb_builders import csv_workspace, db_workspace, run_export
from .faults import BATCH, PLATE

#: values holding a CR alone: as it is, ending a value, twice, beside a quote and a comma, beside an LF
_CR_VALUES = ["\r", "a\r", "\r\rb", 'x\ry",z', "p\r\nq\rr"]


def _values(path: str, sql: str) -> list[Any]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute(sql)]
    finally:
        conn.close()


@pytest.mark.parametrize("value", _CR_VALUES)
@pytest.mark.parametrize("table", ["image", "object"])
def test_a_cr_in_a_database_text_value_is_stored_as_it_is(tmp_path: Path, value: str, table: str) -> None:
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, files = db_workspace(tmp_path, csv_ws, "P1", files=1)
    conn = sqlite3.connect(files[0])
    try:
        if table == "image":
            conn.execute('UPDATE "MyExpt_Per_Image" SET Image_FileName_OrigDNA = ? WHERE ImageNumber = 1', (value,))
        else:
            conn.execute('ALTER TABLE "MyExpt_Per_Cells" ADD COLUMN Cells_Metadata_Note TEXT')
            conn.execute('UPDATE "MyExpt_Per_Cells" SET Cells_Metadata_Note = ? '
                         'WHERE ImageNumber = 1 AND Cells_Number_Object_Number = 2', (value,))
        conn.commit()
    finally:
        conn.close()
    got = run_export(db_ws, "P1")
    sites = got["report"]["sites"]
    assert {s["status"] for s in sites} == {"ok"}, [s.get("reason") for s in sites]
    assert not any("mac2unix" in str(s) for s in sites)
    if table == "image":
        stored = _values(got["sqlite"], "SELECT FileName_OrigDNA FROM Image WHERE ImageNumber = 1")
    else:
        stored = _values(got["sqlite"], "SELECT Cells_Metadata_Note FROM Cells WHERE Cells_Metadata_Note IS NOT NULL")
    assert stored == [value]


@pytest.mark.parametrize("value", _CR_VALUES)
def test_a_quoted_cr_in_a_csv_value_is_a_byte_of_the_value(tmp_path: Path, value: str) -> None:
    """A CSV writer quotes a value holding a CR, so the CR is not a line ending: the site is read, the value kept."""
    plate_dir = faults.small_plate(tmp_path)
    folder = faults.site(plate_dir)
    lines = (folder / "Image.csv").read_text().split("\n")
    header, row = lines[0].split(","), lines[1].split(",")
    column = next(i for i, c in enumerate(header) if c.startswith("FileName_"))
    row[column] = '"' + value.replace('"', '""') + '"'
    (folder / "Image.csv").write_bytes("\n".join([lines[0], ",".join(row), *lines[2:]]).encode())
    result = collate_plate(tmp_path, BATCH, PLATE)
    assert result.status == "done", result.message
    entry = {s["site"]: s for s in result.report["sites"]}[folder.name]
    assert entry["status"] == "ok", entry.get("reason")
    stored = _values(result.outputs["sqlite"], f'SELECT "{header[column]}" FROM Image WHERE "{header[column]}" = '
                     f"'{value.replace(chr(39), chr(39) * 2)}'")
    assert stored == [value]


#: metadata numbers as a JUMP run's ExportToSpreadsheet writes them, and as ExportToDatabase stores them (REAL)
_METADATA_NUMBERS = [0.0, -4e-06, 5.979760809567617e-07, 10.0, 1e22, 123.456]


@pytest.mark.parametrize("table", ["image", "object"])
def test_numbers_in_metadata_columns_are_stored_as_the_csv_route_stores_them(tmp_path: Path, table: str) -> None:
    """``Image_Metadata_PositionX`` stored as REAL: the backend's text is what the CSV route keeps from
    ExportToSpreadsheet's file (``0.0``, ``-4e-06``), not another float format (``0``, ``-0.000004``), so a
    join on the key matches across the two routes."""
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, files = db_workspace(tmp_path, csv_ws, "P1", files=1)
    n = len(_METADATA_NUMBERS)
    cases = " ".join(f"WHEN {i} THEN {v!r}" for i, v in enumerate(_METADATA_NUMBERS))
    prefix, key = ("Image", "ImageNumber") if table == "image" else ("Cells", "Cells_Number_Object_Number")
    conn = sqlite3.connect(files[0])
    try:
        conn.execute(f'ALTER TABLE "MyExpt_Per_{prefix}" ADD COLUMN {prefix}_Metadata_PositionX REAL')
        conn.execute(f'UPDATE "MyExpt_Per_{prefix}" SET {prefix}_Metadata_PositionX = CASE {key} % {n} {cases} END')
        conn.commit()
        used = {k % n for k in _values(files[0], f'SELECT {key} FROM "MyExpt_Per_{prefix}"')}
    finally:
        conn.close()
    got = run_export(db_ws, "P1")
    column = "Metadata_PositionX" if table == "image" else "Cells_Metadata_PositionX"
    stored = set(_values(got["sqlite"], f"SELECT {column} FROM {prefix} WHERE {column} IS NOT NULL"))
    assert stored == {repr(_METADATA_NUMBERS[i]) for i in used} and len(stored) >= 3
