"""Values and shapes that used to pass silently: numbers float64 cannot hold, tab-delimited files, repeated columns
named differently across sites, an empty extra object file whose Count_ says it has objects."""

from __future__ import annotations

import gzip
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cytoprofile.collate import collate_plate

from . import faults
from .faults import BATCH, PLATE, read_rows, write_rows


def _plate(ws: Path, **kw: Any) -> Path:
    return faults.small_plate(ws, wells=2, sites=2, cells=5, features=4, seed=4, **kw)


def _sites(result: Any) -> dict[str, dict[str, Any]]:
    assert result.status == "done", result.message
    return {s["site"]: s for s in result.report["sites"]}


def _query(path: str, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


# --- numbers float64 cannot hold ---------------------------------------------------------------------


def test_values_beyond_float64_are_counted_and_named(tmp_path: Path) -> None:
    plate_dir = _plate(tmp_path)
    folder = faults.site(plate_dir, "A01", 1)
    faults.set_object_value(folder, "Cells", "AreaShape_Area", "1e400", row=1)
    faults.set_object_value(folder, "Cells", "AreaShape_Area", "-2E999", row=3)
    faults.set_object_value(folder, "Cells", "Location_Center_X", "inf", row=2)  # as CellProfiler writes it: no warning
    image = read_rows(folder / "Image.csv")[0]
    measured = next(c for c in image if c.startswith("Granularity_"))
    faults.set_image_value(folder, measured, "1e309")
    result = collate_plate(tmp_path, BATCH, PLATE)
    sites = _sites(result)
    assert {s["status"] for s in sites.values()} == {"ok"}
    warnings = sites[folder.name]["warnings"]
    assert ("Cells.csv: column AreaShape_Area: 2 value(s) beyond float64's range (first '1e400', line 2) stored as inf; "
            "CellProfiler writes no such number: check the file") in warnings
    assert any(w.startswith(f"Image.csv: column {measured}: 1 value(s) beyond float64's range (first '1e309', line 2)")
               for w in warnings)
    assert not [w for w in warnings if "Location_Center_X" in w]
    assert len(warnings) == 2
    stored = sorted(v for (v,) in _query(result.outputs["sqlite"], 'SELECT Cells_AreaShape_Area FROM Cells')
                    if v is not None and np.isinf(v))
    assert stored == [-np.inf, np.inf]
    faults.assert_rows_accounted(result, plate_dir)


@pytest.mark.parametrize(("value", "warned"), [
    ("1e-400", True), ("-2.5E-999", True), ("1e-330", True),
    ("0e-400", False),   # a zero, however written
    ("1e-310", False),   # subnormal: not 0
    ("0", False),
])
@pytest.mark.parametrize("table", ["Cells", "Image"])
def test_values_too_small_for_float64_are_named(tmp_path: Path, value: str, warned: bool, table: str) -> None:
    plate_dir = _plate(tmp_path)
    folder = faults.site(plate_dir, "A01", 2)
    header = read_rows(folder / f"{table}.csv")[0]
    column = "AreaShape_Area" if table == "Cells" else next(c for c in header if c.startswith("Granularity_"))
    faults.set_object_value(folder, table, column, value, row=1)
    result = collate_plate(tmp_path, BATCH, PLATE)
    sites = _sites(result)
    assert {s["status"] for s in sites.values()} == {"ok"}
    expected = (f"{table}.csv: column {column}: 1 value(s) too small for float64 (first {value!r}, line 2) stored as 0; "
                "CellProfiler writes no such number: check the file")
    assert sites[folder.name].get("warnings", []) == ([expected] if warned else [])
    faults.assert_rows_accounted(result, plate_dir)


@pytest.mark.parametrize(("value", "warned"), [
    ("9007199254740993", True),        # 2^53 + 1: rounded to 2^53
    ("12345678901234567891", True),    # beyond int64 as well
    ("9007199254740992", False),       # 2^53 is exact
    ("-9007199254740995", True),
    ("9007199254740994", False),       # even: exact in float64
])
def test_integers_above_2_53_in_measurements_are_named(tmp_path: Path, value: str, warned: bool) -> None:
    plate_dir = _plate(tmp_path)
    folder = faults.site(plate_dir, "A02", 2)
    faults.set_object_value(folder, "Nuclei", "AreaShape_Area", value, row=2)
    result = collate_plate(tmp_path, BATCH, PLATE)
    warnings = _sites(result)[folder.name].get("warnings", [])
    expected = (f"Nuclei.csv: column AreaShape_Area: 1 integer(s) above 2^53 (first {value!r}, line 3) stored rounded "
                f"to the nearest float64 ({int(float(value))}); measurements are float64")
    assert warnings == ([expected] if warned else [])


@pytest.mark.parametrize("backend", ["sqlite", "parquet"])
@pytest.mark.parametrize("column", ["Granularity_1_AGP", "ExecutionTime_01Module"])
def test_integers_above_2_53_in_image_csv_are_named_not_a_crash(tmp_path: Path, column: str, backend: str) -> None:
    """An Image.csv integer above 2^53 (parsed as int64 there) is stored as float64 like every measurement and
    named, in an aggregated image feature and in a stored-only column alike, whatever the backend."""
    plate_dir = _plate(tmp_path)
    folder = faults.site(plate_dir, "A01", 1)
    faults.set_object_value(folder, "Image", column, "9007199254740993", row=1)
    result = collate_plate(tmp_path, BATCH, PLATE, backend=(backend,))  # type: ignore[arg-type]
    warnings = _sites(result)[folder.name].get("warnings", [])
    assert any(w.startswith(f"Image.csv: column {column}: 1 integer(s) above 2^53") for w in warnings), warnings
    faults.assert_rows_accounted(result, plate_dir)


# --- tab-delimited exports ---------------------------------------------------------------------------


def _to_tabs(path: Path, mark: str = "\t") -> None:
    rows = read_rows(path)
    data = "".join(mark.join(r) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


@pytest.mark.parametrize(("mark", "kind"), [("\t", "tab"), (";", "semicolon")])
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["Image", "Cells"])
def test_a_tab_delimited_file_is_named_with_the_fix(tmp_path: Path, name: str, gz: bool, mark: str, kind: str) -> None:
    plate_dir = _plate(tmp_path)
    folder = faults.site(plate_dir, "A01", 2)
    if gz:
        faults.compress(folder)
    file = f"{name}.csv" + (".gz" if gz else "")
    _to_tabs(folder / file, mark)
    result = collate_plate(tmp_path, BATCH, PLATE)
    entry = _sites(result)[folder.name]
    assert entry["status"] == "quarantined"
    why = f"{kind}-delimited; CellProfiler writes commas: re-export it from CellProfiler or convert the {kind}s to commas"
    assert entry["reason"] == (f"{file} is {why}" if name == "Image" else f"{file}: {why}; Cells is one of the compartments")
    faults.assert_rows_accounted(result, plate_dir)


def test_a_tab_delimited_extra_table_is_not_stored_with_the_reason(tmp_path: Path) -> None:
    plate_dir = _plate(tmp_path)
    folder = faults.site(plate_dir, "A01", 1)
    faults.add_object_table(folder, "Speckles", count=False)
    _to_tabs(folder / "Speckles.csv")
    result = collate_plate(tmp_path, BATCH, PLATE)
    entry = _sites(result)[folder.name]
    assert entry["status"] == "ok"
    assert entry["files"]["Speckles.csv"]["not_stored"].startswith("tab-delimited; CellProfiler writes commas")
    faults.assert_rows_accounted(result, plate_dir)


# --- repeated columns: one name, one meaning, across the plate ------------------------------------


def _repeat(folder: Path, table: str, column: str, shifts: list[float | None]) -> None:
    """Append occurrences of ``column``: ``None`` a copy of its values, a number those values shifted by it."""
    rows = read_rows(folder / f"{table}.csv")
    j = rows[0].index(column)
    for shift in shifts:
        rows[0].append(column)
        for row in rows[1:]:
            row.append(row[j] if shift is None else repr(float(row[j]) + shift))
    write_rows(folder / f"{table}.csv", rows)


@pytest.mark.parametrize("backend", ["sqlite", "parquet"])
def test_repeated_column_names_mean_the_same_column_in_every_site(tmp_path: Path, backend: str) -> None:
    """Site A repeats X once with equal values, site B once with other values, site C twice (equal, then other):
    X_2 is the second occurrence and X_3 the third in every site; none is dropped where another site needs it."""
    plate_dir = _plate(tmp_path)
    a, b, c = (faults.site(plate_dir, "A01", 1), faults.site(plate_dir, "A01", 2), faults.site(plate_dir, "A02", 1))
    column = "Location_Center_X"
    _repeat(a, "Cells", column, [None])
    _repeat(b, "Cells", column, [1000.0])
    _repeat(c, "Cells", column, [None, 2000.0])
    result = collate_plate(tmp_path, BATCH, PLATE, backend=(backend,))
    assert {s["status"] for s in _sites(result).values()} == {"ok"}
    cells = _object_table(result, backend, "Cells")
    tables = {s["site"]: s for s in result.report["sites"]}
    number = {name: cells.loc[cells["ImageNumber"] == _image_number(folder), :] for name, folder in
              (("a", a), ("b", b), ("c", c))}
    x, x2, x3 = f"Cells_{column}", f"Cells_{column}_2", f"Cells_{column}_3"
    assert (number["a"][x2] == number["a"][x]).all() and number["a"][x3].isna().all()
    assert np.allclose(number["b"][x2], number["b"][x] + 1000.0) and number["b"][x3].isna().all()
    assert (number["c"][x2] == number["c"][x]).all() and np.allclose(number["c"][x3], number["c"][x] + 2000.0)
    entries = {(d["site"], d["stored_as"], d["identical"]) for d in result.report["duplicate_columns"]}
    assert entries == {(a.name, f"{column}_2", True), (b.name, f"{column}_2", False),
                       (c.name, f"{column}_2", True), (c.name, f"{column}_3", False)}
    assert tables
    faults.assert_rows_accounted(result, plate_dir)


def test_a_repeat_equal_in_every_site_is_kept_once(tmp_path: Path) -> None:
    plate_dir = _plate(tmp_path)
    for folder in (faults.site(plate_dir, "A01", 1), faults.site(plate_dir, "A02", 2)):
        _repeat(folder, "Nuclei", "AreaShape_Area", [None])
    result = collate_plate(tmp_path, BATCH, PLATE)
    columns = [r[1] for r in _query(result.outputs["sqlite"], 'PRAGMA table_info("Nuclei")')]
    assert "Nuclei_AreaShape_Area" in columns and "Nuclei_AreaShape_Area_2" not in columns
    assert {(d["stored_as"], d["identical"]) for d in result.report["duplicate_columns"]} == {(None, True)}


def test_a_written_x_2_and_a_repeat_of_x_are_two_names_in_every_site(tmp_path: Path) -> None:
    """Site A's header is ``X, X_2, X`` (a column really named X_2, then a repeat of X); site B's is ``X, X``: the
    repeat of X has one name in both sites, never the name of A's own X_2, and the report says its field."""
    plate_dir = _plate(tmp_path)
    a, b = faults.site(plate_dir, "A01", 1), faults.site(plate_dir, "A02", 2)
    column = "Location_Center_X"
    rows = read_rows(a / "Cells.csv")
    j = rows[0].index(column)
    rows[0] += [f"{column}_2", column]
    for row in rows[1:]:
        row += [repr(float(row[j]) + 500.0), repr(float(row[j]) + 7000.0)]
    write_rows(a / "Cells.csv", rows)
    _repeat(b, "Cells", column, [3000.0])
    result = collate_plate(tmp_path, BATCH, PLATE)
    assert {s["status"] for s in _sites(result).values()} == {"ok"}
    cells = _object_table(result, "sqlite", "Cells")
    x, written, repeat = f"Cells_{column}", f"Cells_{column}_2", f"Cells_{column}_3"
    in_a = cells.loc[cells["ImageNumber"] == _image_number(a)]
    in_b = cells.loc[cells["ImageNumber"] == _image_number(b)]
    assert np.allclose(in_a[written], in_a[x] + 500.0) and np.allclose(in_a[repeat], in_a[x] + 7000.0)
    assert in_b[written].isna().all() and np.allclose(in_b[repeat], in_b[x] + 3000.0)
    entries = {(d["site"], d["column"], d["field"], d["stored_as"]) for d in result.report["duplicate_columns"]}
    width = len(read_rows(b / "Cells.csv")[0])
    assert entries == {(a.name, column, width + 1, f"{column}_3"), (b.name, column, width, f"{column}_3")}
    faults.assert_rows_accounted(result, plate_dir)


@pytest.mark.parametrize("column", ["Metadata_Well", "Metadata_Site", "Count_Cells", "ImageNumber"])
def test_a_differing_copy_of_an_image_key_or_count_quarantines_naming_it(tmp_path: Path, column: str) -> None:
    plate_dir = _plate(tmp_path)
    folder = faults.site(plate_dir, "A01", 2)
    rows = read_rows(folder / "Image.csv")
    other = {"Metadata_Well": "B07", "Metadata_Site": "9", "Count_Cells": "99", "ImageNumber": "77"}[column]
    rows[0].append(column)
    rows[1].append(other)
    write_rows(folder / "Image.csv", rows)
    result = collate_plate(tmp_path, BATCH, PLATE)
    sites = _sites(result)
    first = rows[0].index(column) + 1
    assert sites[folder.name]["status"] == "quarantined"
    assert sites[folder.name]["reason"] == (f"Image.csv: column {column} is in the header twice (fields {first} and "
                                            f"{len(rows[0])}) with different values; which is right is unknown")
    assert all(s["status"] == "ok" for n, s in sites.items() if n != folder.name)
    faults.assert_rows_accounted(result, plate_dir)


@pytest.mark.parametrize(("table", "column"), [("Cytoplasm", "Parent_Cells"), ("Nuclei", "ObjectNumber")])
def test_a_differing_copy_of_an_object_key_quarantines(tmp_path: Path, table: str, column: str) -> None:
    plate_dir = _plate(tmp_path)
    folder = faults.site(plate_dir, "A02", 1)
    _repeat(folder, table, column, [1.0])
    result = collate_plate(tmp_path, BATCH, PLATE)
    entry = _sites(result)[folder.name]
    assert entry["status"] == "quarantined"
    assert entry["reason"].startswith(f"{table}.csv: column {column} is in the header twice (fields ")
    faults.assert_rows_accounted(result, plate_dir)


def test_an_equal_copy_of_a_key_is_kept_once(tmp_path: Path) -> None:
    plate_dir = _plate(tmp_path)
    folder = faults.site(plate_dir, "A02", 1)
    _repeat(folder, "Image", "Metadata_Well", [None])
    result = collate_plate(tmp_path, BATCH, PLATE)
    assert {s["status"] for s in _sites(result).values()} == {"ok"}
    assert [(d["column"], d["stored_as"]) for d in result.report["duplicate_columns"]] == [("Metadata_Well", None)]


def _image_number(folder: Path) -> int:
    rows = read_rows(folder / "Image.csv")
    return int(rows[1][rows[0].index("ImageNumber")])


def _object_table(result: Any, backend: str, table: str) -> Any:
    import pandas as pd
    import pyarrow.parquet as pq

    if backend == "sqlite":
        with sqlite3.connect(result.outputs["sqlite"]) as conn:
            return pd.read_sql_query(f'SELECT * FROM "{table}"', conn)
    return pq.read_table(result.outputs["parquet"].replace("_Image.parquet", f"_{table}.parquet")).to_pandas()


# --- an extra object file emptied although Image.csv counts its objects ---------------------------------


@pytest.mark.parametrize(("compartment", "count_check"), [(False, "error"), (False, "warn"), (True, "error")])
def test_an_empty_extra_object_file_with_objects_counted_is_flagged(tmp_path: Path, compartment: bool,
                                                                    count_check: str) -> None:
    """Objects Image.csv counts in an emptied file: quarantined under count_check error (as when the file is
    absent or header-only), a warning under warn; the file is never stored."""
    plate_dir = _plate(tmp_path)
    for folder in sorted(plate_dir.iterdir()):
        faults.add_object_table(folder, "Speckles", rows=3)
    folder = faults.site(plate_dir, "A02", 1)
    (folder / "Speckles.csv").write_bytes(b"")
    kw: dict[str, Any] = {"compartments": ("Cells", "Cytoplasm", "Nuclei", "Speckles")} if compartment else {}
    result = collate_plate(tmp_path, BATCH, PLATE, count_check=count_check, **kw)  # type: ignore[arg-type]
    entry = _sites(result)[folder.name]
    image = read_rows(folder / "Image.csv")
    count = image[1][image[0].index("Count_Speckles")]
    assert int(count) > 0
    said = (f"Speckles.csv is empty (0 bytes), but Image.csv's Count_Speckles says {count} object(s) "
            f"in ImageNumber {_image_number(folder)}: they are in no table")
    if compartment:
        assert entry["status"] == "quarantined"
        assert entry["reason"] == "Speckles.csv is empty (0 bytes); Speckles is one of the compartments"
    elif count_check == "error":
        assert entry["status"] == "quarantined"
        assert entry["reason"] == said
    else:
        assert entry["status"] == "ok"
        assert entry["warnings"] == [said]
        assert entry["files"]["Speckles.csv"]["not_stored"] == "empty file (0 bytes)"
    assert not [s for n, s in _sites(result).items() if n != folder.name and s.get("warnings")]
    faults.assert_rows_accounted(result, plate_dir)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")
@pytest.mark.parametrize("name", ["Speckles.csv", "Cells.csv.gz", "notes.txt"])
def test_a_named_pipe_in_a_site_folder_is_named_never_opened(tmp_path: Path, name: str) -> None:
    """A FIFO among a site's files (an unfinished copy tool, a stray ``mkfifo``) would block whoever opens it:
    collate finishes, the file is listed as not read, and a re-run still skips the unchanged plate."""
    plate_dir = _plate(tmp_path)
    folder = faults.site(plate_dir, "A01", 2)
    os.mkfifo(folder / name)
    command = [sys.executable, "-m", "cytoprofile", "collate", str(tmp_path), BATCH, PLATE, "-q"]
    for _ in range(2):
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "backend" / BATCH / PLATE / f"{PLATE}.report.json").read_text())
    entry = {s["site"]: s for s in report["sites"]}[folder.name]
    assert entry["files"][name]["not_read"] == "not a regular file"
