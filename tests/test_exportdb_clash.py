"""ExportToDatabase columns whose stripped names clash, stray key columns and Per_Object rows without a number."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from . import faults
from .exportdb_builders import csv_workspace, db_workspace, run_export


def _values(path: str, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("prefix", ["MyExpt_", ""])
def test_a_stripped_name_never_takes_over_the_measurement(tmp_path: Path, prefix: str) -> None:
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, files = db_workspace(tmp_path, csv_ws, "P1", files=1, table_prefix=prefix)
    cells, image = f"{prefix}Per_Cells", f"{prefix}Per_Image"
    real = _values(files[0], f'SELECT ImageNumber, Cells_Number_Object_Number, Cells_AreaShape_Area FROM "{cells}"')
    faults.run_sql(files[0], f'ALTER TABLE "{cells}" ADD COLUMN AreaShape_Area FLOAT',
                   f'UPDATE "{cells}" SET AreaShape_Area = 777',
                   f'ALTER TABLE "{image}" ADD COLUMN Granularity_1_DNA FLOAT',
                   f'UPDATE "{image}" SET Granularity_1_DNA = 555')
    got = run_export(db_ws, "P1")
    stored = _values(got["sqlite"], 'SELECT i.ImageNumber, c.ObjectNumber, c.Cells_AreaShape_Area, c.Cells_AreaShape_Area_2 '
                     'FROM Cells c JOIN Image i USING (TableNumber, ImageNumber)')
    assert sorted(r[:3] for r in stored) == sorted(real)
    assert {r[3] for r in stored} == {777}
    granularity = _values(got["sqlite"], "SELECT DISTINCT Granularity_1_DNA_2 FROM Image")
    assert granularity == [(555,)]
    assert 555 not in {r[0] for r in _values(got["sqlite"], "SELECT Granularity_1_DNA FROM Image")}
    columns = {r[1] for r in _values(got["sqlite"], "PRAGMA table_info(Cells)")}
    assert "Cells_Cells_AreaShape_Area" not in columns
    repeats = {(d["table"], d["column"], d["stored_as"], d["database_column"]) for d in got["report"]["duplicate_columns"]}
    assert ("Cells", "AreaShape_Area", "AreaShape_Area_2", "AreaShape_Area") in repeats
    assert ("Image", "Granularity_1_DNA", "Granularity_1_DNA_2", "Granularity_1_DNA") in repeats
    assert all(".csv" not in d["file"] for d in got["report"]["duplicate_columns"])
    assert all(s["status"] == "ok" for s in got["report"]["sites"])


def test_an_equal_stray_copy_is_kept_once(tmp_path: Path) -> None:
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, files = db_workspace(tmp_path, csv_ws, "P1", files=1)
    faults.run_sql(files[0], 'ALTER TABLE "MyExpt_Per_Cells" ADD COLUMN AreaShape_Area FLOAT',
                   'UPDATE "MyExpt_Per_Cells" SET AreaShape_Area = Cells_AreaShape_Area')
    got = run_export(db_ws, "P1")
    columns = {r[1] for r in _values(got["sqlite"], "PRAGMA table_info(Cells)")}
    assert "Cells_AreaShape_Area" in columns and "Cells_AreaShape_Area_2" not in columns
    assert any(d["column"] == "AreaShape_Area" and d["identical"] for d in got["report"]["duplicate_columns"])


def _one_site_quarantined(tmp_path: Path, table: str, column: str, kind: str, copy_of: str, change: str) -> str:
    """Add ``column`` to ``table`` as a copy of ``copy_of``, changed (``SET column = change``) for image 1: the
    reason of the one site quarantined."""
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, files = db_workspace(tmp_path, csv_ws, "P1", files=1)
    faults.run_sql(files[0], f'ALTER TABLE "{table}" ADD COLUMN {column} {kind}',
                   f'UPDATE "{table}" SET {column} = {copy_of}',
                   f'UPDATE "{table}" SET {column} = {change} WHERE ImageNumber = 1')
    got = run_export(db_ws, "P1")
    bad = [s for s in got["report"]["sites"] if s["status"] != "ok"]
    assert len(bad) == 1
    return str(bad[0]["reason"])


def test_a_stray_unprefixed_well_quarantines_naming_both_columns(tmp_path: Path) -> None:
    reason = _one_site_quarantined(tmp_path, "MyExpt_Per_Image", "Metadata_Well", "TEXT", "Image_Metadata_Well", "'H12'")
    assert "Image_Metadata_Well" in reason and "Metadata_Well" in reason and "MyExpt_Per_Image" in reason
    assert "not a number" not in reason and ".csv" not in reason


def test_a_differing_objectnumber_column_quarantines(tmp_path: Path) -> None:
    reason = _one_site_quarantined(tmp_path, "MyExpt_Per_Cells", "ObjectNumber", "INTEGER", "Cells_Number_Object_Number",
                                   "ObjectNumber + 1000")
    assert "Cells_Number_Object_Number" in reason and "ObjectNumber" in reason and "MyExpt_Per_Cells" in reason


def test_an_equal_objectnumber_column_is_kept_once(tmp_path: Path) -> None:
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, files = db_workspace(tmp_path, csv_ws, "P1", files=1)
    faults.run_sql(files[0], 'ALTER TABLE "MyExpt_Per_Cells" ADD COLUMN ObjectNumber INTEGER',
                   'UPDATE "MyExpt_Per_Cells" SET ObjectNumber = Cells_Number_Object_Number')
    got = run_export(db_ws, "P1")
    assert all(s["status"] == "ok" for s in got["report"]["sites"])
    assert any(d["column"] == "ObjectNumber" and d["identical"] for d in got["report"]["duplicate_columns"])


def test_a_per_object_row_without_its_number_is_counted_and_named(tmp_path: Path) -> None:
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, files = db_workspace(tmp_path, csv_ws, "P1", files=1, layout="per_object")
    total = _values(files[0], 'SELECT COUNT(*) FROM "MyExpt_Per_Object" WHERE Cells_Number_Object_Number IS NOT NULL')[0][0]
    faults.run_sql(files[0], 'UPDATE "MyExpt_Per_Object" SET Cells_Number_Object_Number = NULL WHERE rowid = 1',
                   'UPDATE "MyExpt_Per_Image" SET Image_Count_Cells = NULL WHERE ImageNumber = '
                   '(SELECT ImageNumber FROM "MyExpt_Per_Object" WHERE rowid = 1)')
    got = run_export(db_ws, "P1", count_check="warn")  # the cytoplasm of the lost cell names a parent no longer there
    section = got["report"]["export_database"]
    assert section["rows"]["Cells"]["read"] == total
    named = [d for d in section["dropped"] if d["table"] == "Cells"]
    assert [d["rows"] for d in named] == [1]
    assert "Cells_Number_Object_Number" in named[0]["reason"]
    assert _values(got["sqlite"], "SELECT COUNT(*) FROM Cells")[0][0] == total - 1
    assert section["rows"]["Cells"]["dropped"] == 1


def test_a_per_object_row_without_its_number_quarantines_under_the_count_check(tmp_path: Path) -> None:
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, files = db_workspace(tmp_path, csv_ws, "P1", files=1, layout="per_object")
    faults.run_sql(files[0], 'UPDATE "MyExpt_Per_Object" SET Cells_Number_Object_Number = NULL, '
                   'Cytoplasm_Number_Object_Number = NULL, Nuclei_Number_Object_Number = NULL WHERE rowid = 1')
    got = run_export(db_ws, "P1")
    section = got["report"]["export_database"]
    assert {d["table"] for d in section["dropped"]} >= {"Cells", "Cytoplasm", "Nuclei"}
    assert "Per_Object" not in section["rows"] or section["rows"]["Per_Object"]["read"] == 0
    assert [s["status"] for s in got["report"]["sites"]].count("ok") == len(got["report"]["sites"]) - 1


def test_the_prefixed_column_keeps_the_name_whatever_the_column_order(tmp_path: Path) -> None:
    from cytoprofile.exportdb import open_export

    path = tmp_path / "run.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE Per_Image (Metadata_Well TEXT, ImageNumber INTEGER, Image_Metadata_Well TEXT)")
    conn.execute("CREATE TABLE Per_Cells (AreaShape_Area FLOAT, ObjectNumber INTEGER, ImageNumber INTEGER, "
                 "Cells_AreaShape_Area FLOAT, Cells_Number_Object_Number INTEGER)")
    conn.commit()
    conn.close()
    export = open_export(path)
    image = dict(zip(export.image_columns, export.image_csv_names))
    assert export.image_csv_names.index("Metadata_Well") == export.image_columns.index("Image_Metadata_Well")
    assert image == {"ImageNumber": "ImageNumber", "Image_Metadata_Well": "Metadata_Well", "Metadata_Well": "Metadata_Well"}
    cells = export.objects[0]
    assert cells.columns[:3] == ("ImageNumber", "Cells_Number_Object_Number", "Cells_Number_Object_Number")
    pairs = list(zip(cells.columns, cells.csv_names))
    assert pairs.index(("Cells_AreaShape_Area", "AreaShape_Area")) < pairs.index(("AreaShape_Area", "AreaShape_Area"))
    assert pairs.index(("Cells_Number_Object_Number", "ObjectNumber")) < pairs.index(("ObjectNumber", "ObjectNumber"))
