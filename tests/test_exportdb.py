"""ExportToDatabase SQLite input: same backend, profiles and report as the CSV route on the same cells."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import zlib
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cytoprofile.collate import collate_plate
from cytoprofile.errors import InputError
from cytoprofile.exportdb import (
    collate_export,
    export_plates,
    find_export_files,
    materialise_plate,
    open_export,
    table_number,
)
from cytoprofile.ingest import TABLE_NUMBER_FILE
from cytoprofile.synth import cellprofiler_column_name, write_export_database

from . import faults
from .exportdb_builders import (
    BATCH,
    LONG,
    assert_accounted,
    backend_rows,
    csv_workspace,
    db_workspace,
    read_profiles,
    run_export,
    sql_rows,
)


@pytest.mark.parametrize("layout", ["per_object_table", "per_object"])
@pytest.mark.parametrize("prefix", ["MyExpt_", ""])
@pytest.mark.parametrize("n_files", [1, 3])
def test_profiles_equal_the_csv_route(tmp_path: Path, layout: str, prefix: str, n_files: int) -> None:
    csv_ws = csv_workspace(tmp_path)
    db_ws, files = db_workspace(tmp_path, csv_ws, "P1", layout=layout, table_prefix=prefix, files=n_files)
    expected = collate_plate(csv_ws, BATCH, "P1")
    got = run_export(db_ws, "P1")
    want = read_profiles(expected.outputs["profiles"])
    long_profile = f"Cells_{LONG}"
    assert long_profile in want.columns
    want = want.rename(columns={long_profile: cellprofiler_column_name(long_profile)})
    ours = read_profiles(got["result"].outputs["profiles"])
    assert sorted(ours.columns) == sorted(want.columns)
    pd.testing.assert_frame_equal(ours, want[ours.columns])
    assert got["result"].message == expected.message
    assert_accounted(files, [got])
    section = got["report"]["export_database"]
    assert {f["layout"] for f in section["files"]} == {layout}
    assert {f["table_prefix"] for f in section["files"]} == {prefix}
    assert cellprofiler_column_name(long_profile) in {n for f in section["files"] for n in f["long_names"]}
    assert all(f["not_stored"][f"{prefix}Per_Experiment"] == 1 for f in section["files"])


def test_backend_holds_the_same_cells(tmp_path: Path) -> None:
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, files = db_workspace(tmp_path, csv_ws, "P1", files=2)
    expected = collate_plate(csv_ws, BATCH, "P1")
    got = run_export(db_ws, "P1")

    def cells(path: str, table: str) -> pd.DataFrame:
        conn = sqlite3.connect(path)
        try:
            frame = pd.read_sql(f'SELECT i.Metadata_Well, i.Metadata_Site, o.* FROM "{table}" o JOIN Image i '
                                "USING (TableNumber, ImageNumber)", conn)
        finally:
            conn.close()
        keys = ["Metadata_Well", "Metadata_Site", "ObjectNumber"]
        return frame.drop(columns=["TableNumber", "ImageNumber"]).sort_values(keys).reset_index(drop=True)

    for table in ("Cells", "Cytoplasm", "Nuclei"):
        pd.testing.assert_frame_equal(cells(got["sqlite"], table), cells(expected.outputs["sqlite"], table))


def test_table_numbers_are_crc32_of_file_name_and_image_number(tmp_path: Path) -> None:
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, files = db_workspace(tmp_path, csv_ws, "P1", files=2)
    got = run_export(db_ws, "P1")
    conn = sqlite3.connect(got["sqlite"])
    try:
        rows = conn.execute("SELECT TableNumber, ImageNumber FROM Image").fetchall()
    finally:
        conn.close()
    names = [f"analysis/{BATCH}/P1/run{k}.sqlite" for k in (1, 2)]
    want = {(zlib.crc32(f"{n}:{i}".encode()) & 0xFFFFFFFF, i) for n in names for i in range(1, 4)}
    assert set(rows) == want  # 6 sites, ImageNumbers 1-3 in each file, TableNumbers all distinct
    assert len({t for t, _ in rows}) == 6
    assert table_number(names[0], 1) == zlib.crc32(f"{names[0]}:1".encode())


def test_materialised_sites_look_like_the_csv_export(tmp_path: Path) -> None:
    csv_ws = csv_workspace(tmp_path, long_name=False)
    _, files = db_workspace(tmp_path, csv_ws, "P1", files=1)
    out = materialise_plate(files, plate="P1", out_dir=tmp_path / "sites")
    site = tmp_path / "sites" / "P1-A01-1"
    assert sorted(p.name for p in site.iterdir()) == sorted(["Image.csv", "Cells.csv", "Cytoplasm.csv", "Nuclei.csv", TABLE_NUMBER_FILE])
    src = csv_ws / "analysis" / BATCH / "P1" / "analysis" / "P1-A01-1"
    for name in ("Image.csv", "Cells.csv"):
        ours = pd.read_csv(site / name)
        theirs = pd.read_csv(src / name)
        assert sorted(ours.columns) == sorted(theirs.columns)
        pd.testing.assert_frame_equal(ours[sorted(ours.columns)].drop(columns="ImageNumber"),
                                      theirs[sorted(theirs.columns)].drop(columns="ImageNumber"))
    assert int((site / TABLE_NUMBER_FILE).read_text()) == out.sites["P1-A01-1"]["table_number"]


def test_two_plates_in_one_file_are_routed_by_plate(tmp_path: Path) -> None:
    csv_ws = csv_workspace(tmp_path, ("P1", "P2"), long_name=False)
    db_file = write_export_database(csv_ws, tmp_path / "db_files", batch=BATCH, plates=("P1", "P2"), files=1)
    assert export_plates(db_file) == {"P1": 6, "P2": 6}
    db_ws = tmp_path / "db"
    runs = []
    for plate in ("P1", "P2"):
        run = run_export(db_ws, plate, sources=[tmp_path / "db_files"])
        expected = collate_plate(csv_ws, BATCH, plate)
        pd.testing.assert_frame_equal(read_profiles(run["result"].outputs["profiles"]), read_profiles(expected.outputs["profiles"]))
        other = "P2" if plate == "P1" else "P1"
        assert run["report"]["export_database"]["other_plates"][other]["Image"] == 6
        runs.append(run)
    assert_accounted(db_file, runs)


@pytest.mark.parametrize("layout", ["per_object_table", "per_object"])
def test_object_rows_of_unknown_images_are_reported(tmp_path: Path, layout: str) -> None:
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, files = db_workspace(tmp_path, csv_ws, "P1", files=2, layout=layout)
    table = "MyExpt_Per_Cells" if layout == "per_object_table" else "MyExpt_Per_Object"
    faults.run_sql(files[0], f'UPDATE "{table}" SET ImageNumber = 99 WHERE ImageNumber = 2',
            f'UPDATE "{table}" SET ImageNumber = NULL WHERE ImageNumber = 3 AND rowid IN '
            f'(SELECT rowid FROM "{table}" WHERE ImageNumber = 3 LIMIT 2)')
    got = run_export(db_ws, "P1")
    dropped = got["report"]["export_database"]["dropped"]
    reasons = " | ".join(d["reason"] for d in dropped)
    assert "ImageNumber 99, which is not in Per_Image" in reasons
    assert "no ImageNumber" in reasons
    assert all(d["file"] == f"analysis/{BATCH}/P1/run1.sqlite" for d in dropped)
    assert_accounted(files, [got])


def test_duplicate_image_numbers_and_sites_are_left_out_and_named(tmp_path: Path) -> None:
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, files = db_workspace(tmp_path, csv_ws, "P1", files=2, table_prefix="")
    conn = sqlite3.connect(files[0])
    cols = [r[1] for r in conn.execute('PRAGMA table_info("Per_Image")')]
    conn.close()
    select = ", ".join(f'"{c}"' for c in cols)
    faults.run_sql(
        files[0],
        # a table without the primary key, with ImageNumber 1 twice
        f'CREATE TABLE tmp AS SELECT {select} FROM "Per_Image"', 'DROP TABLE "Per_Image"',
        'ALTER TABLE tmp RENAME TO "Per_Image"',
        f'INSERT INTO "Per_Image" SELECT {select.replace(chr(34) + "ImageNumber" + chr(34), "1", 1)} FROM "Per_Image" WHERE ImageNumber = 2',
    )
    # the last site of file 2 also claims to be P1/A01/2 (a re-run of one site)
    faults.run_sql(files[1], 'UPDATE "Per_Image" SET Image_Metadata_Well = \'A01\', Image_Metadata_Site = 2 '
            'WHERE ImageNumber = (SELECT MAX(ImageNumber) FROM "Per_Image")')
    got = run_export(db_ws, "P1")
    reasons = [d["reason"] for d in got["report"]["export_database"]["dropped"]]
    assert any("ImageNumber 1 is on 2 rows" in r for r in reasons)
    assert any("site P1/A01/2" in r and "more than once" in r for r in reasons)
    assert "P1-A01-1" not in got["report"]["export_database"]["sites"]
    assert_accounted(files, [got])


def test_single_per_object_table_with_unequal_counts(tmp_path: Path) -> None:
    csv_ws = csv_workspace(tmp_path, long_name=False)
    for path in csv_ws.glob(f"analysis/{BATCH}/P1/analysis/*/Cytoplasm.csv"):
        lines = path.read_text().splitlines()
        path.write_text("\n".join(lines[:-2]) + "\n")  # two fewer cytoplasms than cells per site
    for path in csv_ws.glob(f"analysis/{BATCH}/P1/analysis/*/Image.csv"):
        frame = pd.read_csv(path)
        frame["Count_Cytoplasm"] -= 2
        frame.to_csv(path, index=False)
    for path in csv_ws.glob(f"analysis/{BATCH}/P1/analysis/*/Cells.csv"):  # as CellProfiler would count them
        frame = pd.read_csv(path)
        frame.loc[frame.index[-2:], "Children_Cytoplasm_Count"] = 0
        frame.to_csv(path, index=False)
    db_ws, files = db_workspace(tmp_path, csv_ws, "P1", files=1, layout="per_object")
    expected = collate_plate(csv_ws, BATCH, "P1")
    got = run_export(db_ws, "P1")
    pd.testing.assert_frame_equal(read_profiles(got["result"].outputs["profiles"]), read_profiles(expected.outputs["profiles"]))
    assert backend_rows(got["sqlite"])["Cytoplasm"] == backend_rows(got["sqlite"])["Cells"] - 2 * 6
    assert_accounted(files, [got])


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (['DROP TABLE "MyExpt_Per_Image"'], "no Per_Image table"),
        (['CREATE TABLE "Other_Per_Image" (ImageNumber INTEGER)'], "pick one with --table-prefix"),
        (['ALTER TABLE "MyExpt_Per_Image" RENAME COLUMN ImageNumber TO ImageNo'], "has no ImageNumber column"),
        (['ALTER TABLE "MyExpt_Per_Image" DROP COLUMN Image_Metadata_Well'], "no Image_Metadata_Well column"),
        (['ALTER TABLE "MyExpt_Per_Cells" RENAME COLUMN Cells_Number_Object_Number TO CellNo'], "cannot be numbered"),
    ],
)
def test_broken_files_are_refused_naming_file_and_fix(tmp_path: Path, mutation: list[str], message: str) -> None:
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, files = db_workspace(tmp_path, csv_ws, "P1", files=1)
    faults.run_sql(files[0], *mutation)
    with pytest.raises(InputError, match=message) as caught:
        collate_export(db_ws, BATCH, "P1")
    assert "run1.sqlite" in str(caught.value)


def test_not_sqlite_and_missing_files(tmp_path: Path) -> None:
    bogus = tmp_path / "ws" / "analysis" / BATCH / "P1" / "run.sqlite"
    bogus.parent.mkdir(parents=True)
    bogus.write_text("ImageNumber,Count_Cells\n1,3\n")
    with pytest.raises(InputError, match="not an SQLite file"):
        collate_export(tmp_path / "ws", BATCH, "P1")
    with pytest.raises(InputError, match="no ExportToDatabase files"):
        collate_export(tmp_path / "ws", BATCH, "P2")
    with pytest.raises(InputError, match="no such file or folder"):
        find_export_files(tmp_path / "nope")


def test_table_prefix_option(tmp_path: Path) -> None:
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, files = db_workspace(tmp_path, csv_ws, "P1", files=1, table_prefix="Run7_")
    faults.run_sql(files[0], 'CREATE TABLE "Other_Per_Image" (ImageNumber INTEGER)')
    assert open_export(files[0], table_prefix="Run7_").prefix == "Run7_"
    with pytest.raises(InputError, match="no table Nope_Per_Image"):
        open_export(files[0], table_prefix="Nope_")
    got = run_export(db_ws, "P1", table_prefix="Run7_")
    assert got["report"]["export_database"]["files"][0]["not_stored"]["Other_Per_Image"] == 0


def test_a_file_without_plate_metadata_belongs_to_the_plate(tmp_path: Path) -> None:
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, files = db_workspace(tmp_path, csv_ws, "P1", files=1)
    faults.run_sql(files[0], 'ALTER TABLE "MyExpt_Per_Image" DROP COLUMN Image_Metadata_Plate')
    expected = collate_plate(csv_ws, BATCH, "P1")
    got = run_export(db_ws, "P1")
    pd.testing.assert_frame_equal(read_profiles(got["result"].outputs["profiles"]), read_profiles(expected.outputs["profiles"]))


def test_rerun_skips_and_new_files_rebuild(tmp_path: Path) -> None:
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, files = db_workspace(tmp_path, csv_ws, "P1", files=2)
    run_export(db_ws, "P1")
    assert collate_export(db_ws, BATCH, "P1").status == "skipped"
    mean = run_export(db_ws, "P1", operation="mean")  # other options rebuild
    assert mean["report"]["options"]["operation"] == "mean"
    again_only = collate_export(db_ws, BATCH, "P1", aggregate_only=True, overwrite=True)
    assert again_only.status == "done" and "aggregated 3 wells" in again_only.message
    Path(files[1]).unlink()
    again = run_export(db_ws, "P1")
    assert len(again["report"]["export_database"]["files"]) == 1
    assert_accounted(files[:1], [again])


@pytest.mark.parametrize("how", ["mtime put back", "replaced by a copy"])
def test_a_same_size_edit_with_its_mtime_put_back_rebuilds(tmp_path: Path, how: str) -> None:
    """A value changed in a file of the same size whose mtime is then restored (``touch -r``), or the file
    replaced by an edited copy keeping the old mtime (``cp -p``): rebuilt, not skipped on size and mtime."""
    db_ws, files = db_workspace(tmp_path, csv_workspace(tmp_path, long_name=False), "P1", table_prefix="")
    run_export(db_ws, "P1")
    before = os.stat(files[0])
    edited = files[0] if how == "mtime put back" else str(tmp_path / "edited.sqlite")
    if edited != files[0]:
        shutil.copyfile(files[0], edited)
    faults.run_sql(edited, 'UPDATE "Per_Cells" SET Cells_AreaShape_Area = 777777 WHERE rowid = 1')
    if edited != files[0]:
        os.replace(edited, files[0])
    os.utime(files[0], ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(files[0]).st_size == before.st_size
    again = collate_export(db_ws, BATCH, "P1")
    assert again.status == "done", again.message
    with sqlite3.connect(again.outputs["sqlite"]) as db:
        assert db.execute("SELECT count(*) FROM Cells WHERE Cells_AreaShape_Area = 777777").fetchone() == (1,)


def test_cellprofiler_column_name_shortening() -> None:
    name = "Cells_" + LONG
    short = cellprofiler_column_name(name)
    assert len(name) > 64 and len(short) == 64
    assert short.startswith("Cells_")
    # vowels go first, from the end
    assert cellprofiler_column_name("Ab_cdefo", max_length=6) == "Ab_cdf"
    assert cellprofiler_column_name("Short_name") == "Short_name"


def test_values_of_another_type_are_kept_as_written(tmp_path: Path) -> None:
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, files = db_workspace(tmp_path, csv_ws, "P1", files=1)
    faults.run_sql(files[0],
            # a REAL in an INTEGER column must not be truncated; text in a REAL column is not a number
            'UPDATE "MyExpt_Per_Cells" SET Cells_Parent_Nuclei = 2.5 WHERE ImageNumber = 1 AND Cells_Number_Object_Number = 1',
            'UPDATE "MyExpt_Per_Nuclei" SET Nuclei_AreaShape_Area = \'n/a\' WHERE ImageNumber = 2 AND Nuclei_Number_Object_Number = 3')
    out = materialise_plate(files, plate="P1", out_dir=tmp_path / "sites")
    cells = pd.read_csv(tmp_path / "sites" / "P1-A01-1" / "Cells.csv")
    assert cells.loc[cells["ObjectNumber"] == 1, "Parent_Nuclei"].item() == 2.5
    assert "n/a" in (tmp_path / "sites" / "P1-A01-2" / "Nuclei.csv").read_text()
    assert set(out.sites) == {f"P1-{w}-{s}" for w in ("A01", "A02", "A03") for s in (1, 2)}
    got = run_export(db_ws, "P1")
    status = {s["site"]: s for s in got["report"]["sites"]}
    assert status["P1-A01-2"]["status"] == "quarantined"
    assert status["P1-A01-2"]["file"] == f"analysis/{BATCH}/P1/run1.sqlite (image 2; MyExpt_Per_Nuclei)"
    assert_accounted(files, [got])


@pytest.fixture(scope="module")
def small_databases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """One synthetic plate as ExportToDatabase files in both layouts (built once; each example copies them)."""
    root = tmp_path_factory.mktemp("exportdb")
    csv_ws = csv_workspace(root, ("P1", "P2"), long_name=False)
    return {layout: write_export_database(csv_ws, root / layout, batch=BATCH, plates=("P1", "P2"), files=2, layout=layout)
            for layout in ("per_object_table", "per_object")}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=st.sampled_from(["per_object_table", "per_object"]),
       moves=st.lists(st.tuples(st.integers(1, 60), st.one_of(st.none(), st.integers(-2, 9), st.just(3.5), st.just("x"))),
                      max_size=8),
       batch_rows=st.sampled_from([1, 7, 2000]))
def test_every_row_is_placed_or_named(tmp_path_factory: pytest.TempPathFactory, small_databases: dict[str, list[str]],
                                      layout: str, moves: list[tuple[int, Any]], batch_rows: int) -> None:
    """Whatever ImageNumbers the object rows carry, rows read = rows in sites + rows of other plates + rows named."""
    import shutil

    work = tmp_path_factory.mktemp("example")
    files = [shutil.copy(f, work / Path(f).name) for f in small_databases[layout]]
    table = "MyExpt_Per_Cells" if layout == "per_object_table" else "MyExpt_Per_Object"
    conn = sqlite3.connect(files[0])
    try:
        for rowid, value in moves:
            conn.execute(f'UPDATE OR IGNORE "{table}" SET ImageNumber = ? WHERE rowid = ?', (value, rowid))
        conn.commit()
    finally:
        conn.close()
    out = materialise_plate(files, plate="P1", out_dir=work / "sites", batch_rows=batch_rows)
    in_files = sql_rows([str(f) for f in files])
    rows = out.rows()
    for t, n in in_files.items():
        assert rows[t]["read"] == n
    for t, r in rows.items():
        assert r["read"] == r["sites"] + r["other_plates"] + r["dropped"], t
    for name, site in out.sites.items():
        for t, n in site["rows"].items():
            text = (work / "sites" / name / f"{t}.csv").read_text().splitlines()
            assert len(text) - 1 == n


def test_real_jump_sites_through_a_database_equal_the_csv_route(tmp_path: Path, shared_data: Path) -> None:
    """Two real JUMP sites (about 1,930 columns a compartment, 1,917 Image columns), one file each."""
    from .conftest import link_sites

    src = shared_data / "jump-BR00121431/analysis/2021_04_20_Target2/BR00121431/analysis"
    csv_ws = tmp_path / "csv"
    link_sites(csv_ws, BATCH, "BR00121431", {n: src / n for n in ("BR00121431-A01-1", "BR00121431-A02-1")})
    db_ws, files = db_workspace(tmp_path, csv_ws, "BR00121431", files=2)
    expected = collate_plate(csv_ws, BATCH, "BR00121431")
    got = run_export(db_ws, "BR00121431")
    want = read_profiles(expected.outputs["profiles"])
    want = want.rename(columns={c: cellprofiler_column_name(c) for c in want.columns})
    ours = read_profiles(got["result"].outputs["profiles"])
    assert sorted(ours.columns) == sorted(want.columns)
    pd.testing.assert_frame_equal(ours, want[ours.columns])
    assert_accounted(files, [got])


def test_a_bound_table_number_must_be_a_number(tmp_path: Path) -> None:
    csv_ws = csv_workspace(tmp_path, long_name=False)
    site = csv_ws / "analysis" / BATCH / "P1" / "analysis" / "P1-A01-1"
    (site / TABLE_NUMBER_FILE).write_text("12345\n")
    result = collate_plate(csv_ws, BATCH, "P1")
    conn = sqlite3.connect(result.outputs["sqlite"])
    try:
        assert conn.execute("SELECT COUNT(*) FROM Image WHERE TableNumber = 12345").fetchone()[0] == 1
    finally:
        conn.close()
    (site / TABLE_NUMBER_FILE).write_text("x1\n")
    with pytest.raises(InputError, match="is not a TableNumber"):
        collate_plate(csv_ws, BATCH, "P1", overwrite=True)


def test_collate_command_reads_export_files_of_synth_database(tmp_path: Path) -> None:
    """`synth --export database` then plain `collate`: the same profiles as the CSV route."""
    from cytoprofile.cli import main

    args = ["--plate", "P1", "--wells", "96", "--well-subset", "6", "--sites", "2", "--cells", "6",
            "--features", "5", "-q"]
    assert main(["synth", str(tmp_path / "csv"), *args]) == 0
    assert main(["synth", str(tmp_path / "db"), *args, "--export", "database", "--export-files", "3"]) == 0
    assert not (tmp_path / "db/analysis/BATCH1/P1/analysis").exists()
    assert len(list((tmp_path / "db/analysis/BATCH1/P1").glob("*.sqlite"))) == 3
    for ws in ("csv", "db"):
        assert main(["collate", str(tmp_path / ws), "BATCH1", "P1", "-q"]) == 0
    ours = pd.read_csv(tmp_path / "db/backend/BATCH1/P1/P1.csv")
    ref = pd.read_csv(tmp_path / "csv/backend/BATCH1/P1/P1.csv")
    pd.testing.assert_frame_equal(ours, ref)
    report = json.loads((tmp_path / "db/backend/BATCH1/P1/P1.report.json").read_text())
    assert "export_database" in report


def test_synth_database_refuses_faults(tmp_path: Path) -> None:
    from cytoprofile.cli import main

    assert main(["synth", str(tmp_path / "x"), "--export", "database", "--faults", "-q"]) == 1
    assert main(["synth", str(tmp_path / "y"), "--export", "parquet", "-q"]) == 1
    assert main(["synth", str(tmp_path / "z"), "--wells", "4", "-q"]) == 1


def test_a_copied_run_file_is_read_once_and_drops_are_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A run exported twice (identical bytes) is read once, not dropped as repeated sites; rows that are
    dropped (a changed copy) are said on the terminal, not only in the report."""
    import shutil

    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, files = db_workspace(tmp_path, csv_ws, "P1", files=2, table_prefix="")
    expected = read_profiles(collate_plate(csv_ws, BATCH, "P1").outputs["profiles"])
    copy = Path(files[0]).with_name("zcopy.sqlite")
    shutil.copyfile(files[0], copy)
    with caplog.at_level("WARNING", logger="cytoprofile"):
        got = run_export(db_ws, "P1")
    ours = read_profiles(got["result"].outputs["profiles"])
    pd.testing.assert_frame_equal(ours, expected[ours.columns])
    entry = next(f for f in got["report"]["export_database"]["files"] if f["file"].endswith("zcopy.sqlite"))
    assert "a copy of" in entry["not_read"] and not entry["rows"] and entry["rows_not_read"]
    assert not got["report"]["export_database"]["dropped"]
    assert "zcopy.sqlite is a copy of" in caplog.text
    faults.run_sql(str(copy), 'UPDATE "Per_Image" SET Image_Metadata_Site = Image_Metadata_Site WHERE ImageNumber = 1',
            'CREATE TABLE changed (x)')  # same images, other bytes: which copy is right is unknown
    caplog.clear()
    with caplog.at_level("WARNING", logger="cytoprofile"):
        again = run_export(db_ws, "P1")
    assert again["report"]["export_database"]["dropped"]
    assert "of the ExportToDatabase files are not in the backend" in caplog.text


def test_export_files_in_a_subfolder_of_the_plate_are_pointed_to(tmp_path: Path) -> None:
    """ExportToDatabase files one folder down (``PLATE/run1/run1.sqlite``): the error names them and
    ``--export-db`` (before: only "no such folder …/analysis", as if the plate held nothing)."""
    from cytoprofile.synth import synth

    synth(tmp_path, batch="B1", plates=["P1"], well_subset=2, sites=1, cells=5, features=4, export="database")
    plate = tmp_path / "analysis/B1/P1"
    (plate / "run1").mkdir()
    (plate / "run1.sqlite").rename(plate / "run1/run1.sqlite")
    with pytest.raises(InputError, match=r"1 ExportToDatabase file\(s\) are in subfolders .*run1/run1.sqlite.*--export-db"):
        collate_plate(tmp_path, "B1", "P1")
