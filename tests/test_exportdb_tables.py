"""ExportToDatabase tables found as SQLite finds them: views are read, names match in any case."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from cytoprofile.collate import collate_plate
from cytoprofile.errors import InputError
from cytoprofile.exportdb import collate_export

from . import faults
from .exportdb_builders import BATCH, backend_rows, csv_workspace, db_workspace, run_export


def _tables(path: str) -> dict[str, str]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view')").fetchall())
    finally:
        conn.close()


def _plate(tmp_path: Path, **kw: Any) -> tuple[Path, list[str]]:
    csv_ws = csv_workspace(tmp_path, long_name=False)
    return db_workspace(tmp_path, csv_ws, "P1", files=1, **kw)


def _same_as_clean(db_ws: Path, clean_rows: dict[str, int]) -> dict[str, Any]:
    got = run_export(db_ws, "P1")
    assert {s["status"] for s in got["report"]["sites"]} == {"ok"}, [s.get("reason") for s in got["report"]["sites"]]
    assert backend_rows(got["sqlite"]) == clean_rows
    return got


@pytest.fixture
def clean_rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    root = tmp_path_factory.mktemp("clean")
    csv_ws = csv_workspace(root, long_name=False)
    db_ws, _ = db_workspace(root, csv_ws, "P1", files=1)
    return backend_rows(run_export(db_ws, "P1")["sqlite"])


@pytest.mark.parametrize("renamed", ["myexpt_per_cells", "MYEXPT_PER_CELLS", "MyExpt_per_Cells"])
def test_an_object_table_named_in_other_case_is_read(tmp_path: Path, renamed: str, clean_rows: dict[str, int]) -> None:
    db_ws, files = _plate(tmp_path)
    faults.run_sql(files[0], f'ALTER TABLE "MyExpt_Per_Cells" RENAME TO "{renamed}_tmp"',
                   f'ALTER TABLE "{renamed}_tmp" RENAME TO "{renamed}"')
    assert renamed in _tables(files[0])
    got = _same_as_clean(db_ws, clean_rows)
    assert got["report"]["export_database"]["files"][0]["tables"]["Cells"] == renamed


def test_an_image_table_named_in_other_case_is_read(tmp_path: Path, clean_rows: dict[str, int]) -> None:
    db_ws, files = _plate(tmp_path)
    faults.run_sql(files[0], 'ALTER TABLE "MyExpt_Per_Image" RENAME TO "x"', 'ALTER TABLE "x" RENAME TO "myexpt_per_image"')
    _same_as_clean(db_ws, clean_rows)
    assert collate_export(db_ws, BATCH, "P1", table_prefix="MyExpt_", overwrite=True).status == "done"


@pytest.mark.parametrize("table", ["MyExpt_Per_Cells", "MyExpt_Per_Image"])
def test_a_per_table_that_is_a_view_is_read(tmp_path: Path, table: str, clean_rows: dict[str, int]) -> None:
    db_ws, files = _plate(tmp_path)
    faults.run_sql(files[0], f'ALTER TABLE "{table}" RENAME TO "raw_rows"',
                   f'CREATE VIEW "{table}" AS SELECT * FROM "raw_rows"')
    assert _tables(files[0])[table] == "view"
    got = _same_as_clean(db_ws, clean_rows)
    section = got["report"]["export_database"]
    assert section["rows"][table.rsplit("_", 1)[1]]["sites"] == section["rows"][table.rsplit("_", 1)[1]]["read"] > 0
    assert "raw_rows" in section["files"][0]["not_stored"]  # the table under the view: listed, its rows read once


def test_a_per_object_view_over_the_object_tables_is_read_once(tmp_path: Path, clean_rows: dict[str, int]) -> None:
    """CellProfiler's "single object view": Per_<Object> tables and a Per_Object view joining them."""
    db_ws, files = _plate(tmp_path)
    faults.run_sql(files[0], 'CREATE VIEW "MyExpt_Per_Object" AS SELECT c.*, n.Nuclei_Number_Object_Number '
                   'FROM "MyExpt_Per_Cells" c LEFT JOIN "MyExpt_Per_Nuclei" n ON c.ImageNumber = n.ImageNumber '
                   'AND c.Cells_Number_Object_Number = n.Nuclei_Number_Object_Number')
    got = _same_as_clean(db_ws, clean_rows)
    assert "MyExpt_Per_Object (view)" in got["report"]["export_database"]["files"][0]["not_stored"]


@pytest.mark.parametrize("where", ["Cells_AreaShape_Area > 10", "1"])
def test_a_view_of_another_object_table_is_named_not_stored(tmp_path: Path, clean_rows: dict[str, int],
                                                            where: str) -> None:
    """A view a user added (``Per_BigCells`` over ``Per_Cells``) has no rows of its own: it is listed as not
    stored, and the plate is read as without it (it failed the plate: its objects could not be numbered)."""
    db_ws, files = _plate(tmp_path)
    faults.run_sql(files[0], f'CREATE VIEW "MyExpt_Per_BigCells" AS SELECT * FROM "MyExpt_Per_Cells" WHERE {where}')
    got = _same_as_clean(db_ws, clean_rows)
    assert "MyExpt_Per_BigCells (view)" in got["report"]["export_database"]["files"][0]["not_stored"]


def test_a_table_whose_objects_cannot_be_numbered_names_the_fix(tmp_path: Path) -> None:
    db_ws, files = _plate(tmp_path)
    faults.run_sql(files[0], 'CREATE TABLE "MyExpt_Per_BigCells" AS SELECT ImageNumber, Cells_AreaShape_Area '
                   'FROM "MyExpt_Per_Cells"')
    with pytest.raises(InputError, match=r"cannot be numbered: drop the table from a copy of the file "
                                         r"\(DROP TABLE MyExpt_Per_BigCells\)"):
        collate_export(db_ws, BATCH, "P1", table_prefix="MyExpt_")


def test_a_per_object_table_that_is_a_view_is_read(tmp_path: Path) -> None:
    db_ws, files = _plate(tmp_path, layout="per_object")
    want = backend_rows(run_export(db_ws, "P1")["sqlite"])
    faults.run_sql(files[0], 'ALTER TABLE "MyExpt_Per_Object" RENAME TO "objects"',
                   'CREATE VIEW "MyExpt_Per_Object" AS SELECT * FROM "objects"')
    got = run_export(db_ws, "P1", overwrite=True)
    assert {s["status"] for s in got["report"]["sites"]} == {"ok"}
    assert backend_rows(got["sqlite"]) == want


def test_one_object_set_in_two_tables_differing_in_case_is_refused(tmp_path: Path) -> None:
    db_ws, files = _plate(tmp_path)
    faults.run_sql(files[0], 'CREATE TABLE "MyExpt_Per_Object" (ImageNumber INTEGER, cells_Number_Object_Number INTEGER)')
    with pytest.raises(InputError, match=r"object set .* is stored twice .*MyExpt_Per_Cells.*MyExpt_Per_Object|"
                                         r"object set .* is stored twice .*MyExpt_Per_Object.*MyExpt_Per_Cells"):
        collate_export(db_ws, BATCH, "P1")


@pytest.mark.parametrize("name", ["cytoprofile_run", "single_cells", "Single_Cells", "sqlite_stat9"])
def test_an_object_table_named_as_a_backend_table_is_named_by_table_and_file(
        tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture) -> None:
    db_ws, files = _plate(tmp_path)
    table = f"MyExpt_Per_{name}"
    faults.run_sql(files[0], f'CREATE TABLE "{table}" AS SELECT ImageNumber, Cells_Number_Object_Number AS '
                   f'"{name}_Number_Object_Number", Cells_AreaShape_Area AS "{name}_AreaShape_Area" FROM "MyExpt_Per_Cells"')
    rows = _count(files[0], table)
    with caplog.at_level("WARNING", logger="cytoprofile"):
        got = run_export(db_ws, "P1")
    record = got["report"]["export_database"]["files"][0]
    assert table in record["reserved"] and "ALTER TABLE" in record["reserved"][table]
    assert record["not_stored"][table] == rows > 0
    assert ".csv" not in str(got["report"]["export_database"]) and f"{name}.csv" not in str(got["report"])
    said = [r.getMessage() for r in caplog.records if table in r.getMessage()]
    assert len(said) == 1 and "run1.sqlite" in said[0] and f"{rows} rows" in said[0]
    assert name.lower() not in {t.lower() for t in backend_rows(got["sqlite"])}
    assert {s["status"] for s in got["report"]["sites"]} == {"ok"}


def test_a_per_object_set_named_as_a_backend_table_is_refused(tmp_path: Path) -> None:
    db_ws, files = _plate(tmp_path, layout="per_object")
    faults.run_sql(files[0], 'ALTER TABLE "MyExpt_Per_Object" ADD COLUMN cytoprofile_run_Number_Object_Number INTEGER')
    with pytest.raises(InputError, match=r"run1\.sqlite: MyExpt_Per_Object holds object set 'cytoprofile_run', a name "
                                         r"the backend keeps .*; rename its cytoprofile_run_ columns"):
        collate_export(db_ws, BATCH, "P1")


def _count(path: str, table: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize("table", ["Per_Cells", "Per_Image"])
@pytest.mark.parametrize("spelling", ["imagenumber", "IMAGENUMBER", "Imagenumber"])
def test_the_image_key_in_another_case_is_the_image_key(tmp_path: Path, table: str, spelling: str) -> None:
    """SQLite's column names are case-blind: ``imagenumber`` is ImageNumber (every site was quarantined with
    "table MyExpt_Per_Cells is missing" while the table was listed as not stored, with no reason)."""
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, files = db_workspace(tmp_path, csv_ws, "P1", files=1)
    expected = Path(run_export(db_ws, "P1")["result"].outputs["profiles"]).read_bytes()
    conn = sqlite3.connect(files[0])
    try:
        conn.execute(f'ALTER TABLE "MyExpt_{table}" RENAME COLUMN ImageNumber TO {spelling}')
        conn.commit()
    finally:
        conn.close()
    got = run_export(db_ws, "P1", overwrite=True)
    assert {s["status"] for s in got["report"]["sites"]} == {"ok"}
    assert got["report"]["totals"]["export_rows_dropped"] == 0
    assert Path(got["result"].outputs["profiles"]).read_bytes() == expected


@pytest.mark.parametrize("files", [1, 2])
def test_an_object_key_in_another_case_renames_no_measurement(tmp_path: Path, files: int) -> None:
    """``cells_number_object_number`` in one run file: the set is still Cells, as its measurements spell it (its
    features were stored as ``Cells_Cells_*``, two half-empty columns beside the other file's, exit 0)."""
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, paths = db_workspace(tmp_path, csv_ws, "P1", files=files)
    expected = Path(run_export(db_ws, "P1")["result"].outputs["profiles"]).read_bytes()
    conn = sqlite3.connect(paths[-1])
    try:
        conn.execute('ALTER TABLE "MyExpt_Per_Cells" RENAME COLUMN Cells_Number_Object_Number TO '
                     "cells_number_object_number")
        conn.commit()
    finally:
        conn.close()
    got = run_export(db_ws, "P1", overwrite=True)
    columns = [r[1] for r in sqlite3.connect(got["sqlite"]).execute("PRAGMA table_info(Cells)")]
    assert not [c for c in columns if c.lower().startswith("cells_cells_")], columns
    assert got["report"]["totals"]["export_rows_dropped"] == 0
    assert Path(got["result"].outputs["profiles"]).read_bytes() == expected


@pytest.mark.parametrize("route", ["database", "csv"])
def test_images_of_one_site_at_two_time_points_are_two_sites_with_strata(tmp_path: Path, route: str) -> None:
    """A time-lapse (or z-stack) export: images of one well and site told apart by Metadata_Timepoint.
    Named in --strata, each is its own site, on both routes alike; not named, they are repeats (both out)."""
    csv_ws = csv_workspace(tmp_path, long_name=False)
    sites = sorted((csv_ws / "analysis" / BATCH / "P1" / "analysis").iterdir())
    for k, folder in enumerate(sites):  # every site becomes site 1 of its well, at time point k
        rows = faults.read_rows(folder / "Image.csv")
        rows[0].append("Metadata_Timepoint")
        rows[1].append(str(k))
        rows[1][rows[0].index("Metadata_Site")] = "1"
        faults.write_rows(folder / "Image.csv", rows)
    ws = db_workspace(tmp_path, csv_ws, "P1", files=1)[0] if route == "database" else csv_ws
    strata = ["Metadata_Plate", "Metadata_Well", "Metadata_Timepoint"]
    collate = collate_export if route == "database" else collate_plate
    result = collate(ws, BATCH, "P1", strata=strata, **({"table_prefix": "MyExpt_"} if route == "database" else {}))
    assert result.status == "done", result.message
    assert {s["status"] for s in result.report["sites"]} == {"ok"}, [s.get("reason") for s in result.report["sites"]]
    profiles = pd.read_csv(result.outputs["profiles"])
    assert len(profiles) == len(sites) and profiles["Metadata_Timepoint"].nunique() == len(sites)
    with pytest.raises(InputError):  # without the time point every well's two images are one site twice
        collate(ws, BATCH, "P1", overwrite=True, **({"table_prefix": "MyExpt_"} if route == "database" else {}))
