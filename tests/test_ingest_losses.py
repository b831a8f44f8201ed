"""Losses that used to pass with exit 0 or crash: a site ingested twice, a table absent where Image.csv counts
objects, a blank compartment label, an Image.csv without ImageNumber, damaged ExportToDatabase files, disk
faults on the database route, SQLite files beside site folders, images of other plates."""

from __future__ import annotations

import errno
import json
import logging
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from cytoprofile.collate import collate_plate
from cytoprofile.errors import OutputError
from cytoprofile.exportdb import collate_export
from cytoprofile.synth import write_export_database

from . import faults
from .faults import BATCH, PLATE, read_rows, write_rows


def _plate(ws: Path, **kw: Any) -> Path:
    return faults.small_plate(ws, wells=2, sites=2, cells=5, features=4, seed=5, **kw)


def _sites(result: Any) -> dict[str, dict[str, Any]]:
    assert result.status == "done", result.message
    return {s["site"]: s for s in result.report["sites"]}


def _db_plate(tmp_path: Path, *, files: int = 2) -> tuple[Path, list[str]]:
    """A CSV plate and its ExportToDatabase twin (``files`` runs, no table prefix)."""
    csv_ws = tmp_path / "csv"
    _plate(csv_ws)
    db_ws = tmp_path / "db"
    out = write_export_database(csv_ws, db_ws / "analysis" / BATCH / PLATE, batch=BATCH, plates=(PLATE,), files=files,
                                table_prefix="")
    return db_ws, out


# --- A1: one site ingested twice ------------------------------------------------------------------------


def _rerun_folder(plate_dir: Path, how: str) -> tuple[Path, Path]:
    """A second folder holding site A01/1 again, as a re-run or a hand copy leaves it."""
    first = faults.site(plate_dir, "A01", 1)
    name = {"rerun": f"{first.name} (rerun)", "well_spelling": f"{PLATE}-A1-1", "site_spelling": "copy"}[how]
    second = plate_dir / name
    shutil.copytree(first, second)
    rows = read_rows(second / "Image.csv")
    header = rows[0]
    time = next(c for c in header if c.startswith("ExecutionTime_"))
    rows[1][header.index(time)] = "1.2345"  # a re-run: the same images, another execution time
    if how == "well_spelling":
        rows[1][header.index("Metadata_Well")] = "A1"
    if how == "site_spelling":
        rows[1][header.index("Metadata_Site")] = "1.0"
    write_rows(second / "Image.csv", rows)
    return first, second


@pytest.mark.parametrize("how", ["rerun", "well_spelling", "site_spelling"])
def test_a_site_in_two_folders_quarantines_both(tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture) -> None:
    plate_dir = _plate(tmp_path)
    first, second = _rerun_folder(plate_dir, how)
    with caplog.at_level("WARNING", logger="cytoprofile"):
        result = collate_plate(tmp_path, BATCH, PLATE)
    sites = _sites(result)
    for one, other in ((first, second), (second, first)):
        entry = sites[one.name]
        assert entry["status"] == "quarantined"
        assert f"site {PLATE}/A01/1 is also in folder(s) {other.name}" in entry["reason"]
    assert all(s["status"] == "ok" for n, s in sites.items() if n not in (first.name, second.name))
    assert "1 site(s) appear in more than one folder" in caplog.text
    with sqlite3.connect(result.outputs["sqlite"]) as conn:
        keys = conn.execute("SELECT Metadata_Well, Metadata_Site, COUNT(*) FROM Image GROUP BY 1, 2").fetchall()
    assert all(n == 1 for _, _, n in keys) and ("A01", "1") not in {(w, str(s)) for w, s, _ in keys}
    faults.assert_rows_accounted(result, plate_dir)


def test_distinct_sites_are_not_taken_for_repeats(tmp_path: Path) -> None:
    plate_dir = _plate(tmp_path)
    result = collate_plate(tmp_path, BATCH, PLATE)
    assert all(s["status"] == "ok" for s in _sites(result).values())
    faults.assert_rows_accounted(result, plate_dir)


@pytest.mark.parametrize(("well", "site"), [("A1", "1"), ("a01", "1"), ("A01", "1.0")])
def test_a_site_in_two_database_runs_is_left_out_from_both(tmp_path: Path, well: str, site: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    db_ws, files = _db_plate(tmp_path)
    with sqlite3.connect(files[0]) as conn:
        taken = conn.execute("SELECT Image_Metadata_Well, Image_Metadata_Site FROM Per_Image WHERE ImageNumber = 1").fetchone()
    assert taken == ("A01", 1)
    faults.run_sql(files[1], f"UPDATE Per_Image SET Image_Metadata_Well = '{well}', Image_Metadata_Site = '{site}' "
                      "WHERE ImageNumber = 1")
    with caplog.at_level("WARNING", logger="cytoprofile"):
        result = collate_export(db_ws, BATCH, PLATE)
    assert result.status == "done", result.message
    report = json.loads(Path(result.outputs["report"]).read_text())
    dropped = [d for d in report["export_database"]["dropped"] if d["table"] == "Image"]
    assert sorted(d["file"] for d in dropped) == sorted(f"analysis/{BATCH}/{PLATE}/{Path(f).name}" for f in files)
    assert all(f"site {PLATE}/A01/1" in d["reason"] for d in dropped)
    assert f"site {PLATE}/A01/1 is both image 1 of" in caplog.text
    with sqlite3.connect(result.outputs["sqlite"]) as conn:
        assert conn.execute("SELECT COUNT(*) FROM Image WHERE Metadata_Well = 'A01' AND Metadata_Site = 1").fetchone() == (0,)


@pytest.mark.parametrize("given", ["folder and file", "file twice", "link to the file"])
def test_a_database_file_given_twice_is_read_once(tmp_path: Path, given: str) -> None:
    """``--export-db DIR --export-db DIR/run1.sqlite``: one file, read once (it was refused as two files
    "both named" alike, although it is one)."""
    db_ws, files = _db_plate(tmp_path)
    first = Path(files[0])
    if given == "link to the file":
        (tmp_path / "link.sqlite").symlink_to(first)
    sources = {"folder and file": [first.parent, first], "file twice": [*files, first],
               "link to the file": [*files, tmp_path / "link.sqlite"]}[given]
    result = collate_export(db_ws, BATCH, PLATE, sources=sources)
    assert result.status == "done", result.message
    expected = collate_export(db_ws, BATCH, PLATE, sources=files, overwrite=True)
    report = json.loads(Path(expected.outputs["report"]).read_text())
    assert report["export_database"]["rows"] == json.loads(Path(result.outputs["report"]).read_text())["export_database"]["rows"]
    images = 0
    for path in files:
        with sqlite3.connect(path) as conn:
            images += conn.execute("SELECT COUNT(*) FROM Per_Image").fetchone()[0]
    assert report["export_database"]["rows"]["Image"]["read"] == images  # each file's images once


# --- A2: an extra object table absent where Image.csv counts its objects --------------------------------


@pytest.mark.parametrize("mode", ["error", "warn", "off"])
@pytest.mark.parametrize("counted", [3, 0, None])
def test_an_absent_extra_table_with_objects_counted(tmp_path: Path, mode: str, counted: int | None) -> None:
    plate_dir = _plate(tmp_path)
    for folder in sorted(plate_dir.iterdir()):
        faults.add_object_table(folder, "Speckles", rows=3, count=counted is not None)
    folder = faults.site(plate_dir, "A02", 1)
    (folder / "Speckles.csv").unlink()
    if counted is not None:
        faults.set_image_value(folder, "Count_Speckles", str(counted))
    result = collate_plate(tmp_path, BATCH, PLATE, count_check=mode)
    entry = _sites(result)[folder.name]
    number = read_rows(folder / "Image.csv")[1][read_rows(folder / "Image.csv")[0].index("ImageNumber")]
    why = (f"Speckles has no file in this site (other sites have one), but Image.csv's Count_Speckles says 3 object(s) "
           f"in ImageNumber {number}")
    if counted and mode == "error":
        assert entry["status"] == "quarantined"
        assert entry["reason"] == why
    else:
        assert entry["status"] == "ok"
        assert entry.get("warnings", []) == ([f"{why}: they are in no table"] if counted and mode == "warn" else [])
    assert "Speckles" in result.report["partial_tables"]
    faults.assert_rows_accounted(result, plate_dir)


# --- A3: the old two-row object.csv with a blank compartment label --------------------------------------


@pytest.mark.parametrize(("table", "label"), [("Cells", ""), ("Nuclei", ""), ("Cytoplasm", "  ")])
def test_a_blank_compartment_label_quarantines_naming_the_column(tmp_path: Path, table: str, label: str) -> None:
    plate_dir = _plate(tmp_path)
    for folder in sorted(plate_dir.iterdir()):
        faults.to_object_csv(folder)
    folder = faults.site(plate_dir, "A01", 2)
    rows = read_rows(folder / "object.csv")
    at = next(i for i, (lab, name) in enumerate(zip(rows[0], rows[1])) if lab == table and name.startswith("AreaShape_"))
    column = rows[1][at]
    rows[0][at] = label
    write_rows(folder / "object.csv", rows)
    result = collate_plate(tmp_path, BATCH, PLATE, count_check="warn")
    sites = _sites(result)
    assert sites[folder.name]["status"] == "quarantined"
    assert sites[folder.name]["reason"].startswith(
        f"object.csv: column {at + 1} ({column}) has a blank compartment label in the first header row (1 such column(s))")
    assert all(s["status"] == "ok" for n, s in sites.items() if n != folder.name)
    with sqlite3.connect(result.outputs["sqlite"]) as conn:
        assert f"{table}_{column}" in [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
    faults.assert_rows_accounted(result, plate_dir)


# --- C6: an Image.csv without ImageNumber ---------------------------------------------------------------


@pytest.mark.parametrize("objects", [True, False])
@pytest.mark.parametrize("name", ["Image.csv", "MyExpt_Image.csv"])
def test_an_image_csv_without_image_number_quarantines(tmp_path: Path, objects: bool, name: str) -> None:
    plate_dir = _plate(tmp_path)
    if name != "Image.csv":
        for folder in sorted(plate_dir.iterdir()):
            for f in sorted(folder.iterdir()):
                f.rename(folder / f"MyExpt_{f.name}")
    folder = faults.site(plate_dir, "A02", 2)
    prefix = name[: -len("Image.csv")]
    rows = read_rows(folder / name)
    at = rows[0].index("ImageNumber")
    rows = [[x for j, x in enumerate(r) if j != at] for r in rows]
    if not objects:
        for table in ("Cells", "Cytoplasm", "Nuclei"):
            rows[1][rows[0].index(f"Count_{table}")] = "0"
            path = folder / f"{prefix}{table}.csv"
            path.write_text(path.read_text().split("\n", 1)[0] + "\n")
    write_rows(folder / name, rows)
    result = collate_plate(tmp_path, BATCH, PLATE)
    sites = _sites(result)
    assert sites[folder.name]["status"] == "quarantined"
    assert sites[folder.name]["reason"] == f"{name} has no ImageNumber column"
    assert all(s["status"] == "ok" for n, s in sites.items() if n != folder.name)
    faults.assert_rows_accounted(result, plate_dir)


# --- C7/C8: ExportToDatabase files SQLite cannot read to the end ---------------------------------------


def _damage_page(path: str, table: str) -> None:
    """Overwrite the start of a table's root page (header and database schema left intact)."""
    with sqlite3.connect(path) as conn:
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with open(path, "r+b") as fh:
        fh.seek((root - 1) * size)
        fh.write(b"\xff" * 16)


_DAMAGE = {
    "damaged_cells_page": (lambda f: _damage_page(f, "Per_Cells"), "the file is damaged, or still being written (let its CellProfiler run finish): copy the file again"),
    "damaged_image_page": (lambda f: _damage_page(f, "Per_Image"), "the file is damaged, or still being written (let its CellProfiler run finish): copy the file again"),
    "image_text_not_utf8": (lambda f: faults.run_sql(f, "UPDATE Per_Image SET Image_FileName_OrigAGP = CAST(X'41FF42' AS TEXT) "
                                                 "WHERE ImageNumber = 2"),
                            "column 'Image_FileName_OrigAGP' holds a TEXT value that is not UTF-8; re-export"),
    "object_text_not_utf8": (lambda f: faults.run_sql(f, "ALTER TABLE Per_Nuclei ADD COLUMN Nuclei_Metadata_Note TEXT",
                                                  "UPDATE Per_Nuclei SET Nuclei_Metadata_Note = CAST(X'FE' AS TEXT)"),
                             "column 'Nuclei_Metadata_Note' holds a TEXT value that is not UTF-8"),
    "image_blob": (lambda f: faults.run_sql(f, "ALTER TABLE Per_Image ADD COLUMN Image_ImageSet_Zip_Dictionary BLOB",
                                        "UPDATE Per_Image SET Image_ImageSet_Zip_Dictionary = X'00FF1022'"),
                   "Per_Image column Image_ImageSet_Zip_Dictionary holds a binary (BLOB) value (ImageNumber 1)"),
    "object_blob": (lambda f: faults.run_sql(f, "UPDATE Per_Cells SET Cells_AreaShape_Area = X'00FF' WHERE ImageNumber = 2"),
                    "Per_Cells column Cells_AreaShape_Area holds a binary (BLOB) value (ImageNumber 2)"),
}


@pytest.mark.parametrize("fault", sorted(_DAMAGE))
def test_an_unreadable_database_value_is_one_line_exit_1(tmp_path: Path, fault: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from cytoprofile.cli import main

    db_ws, files = _db_plate(tmp_path)
    damage, message = _DAMAGE[fault]
    damage(files[0])
    assert main(["collate", str(db_ws), BATCH, PLATE, "-q"]) == 1
    err = capsys.readouterr().err
    assert "internal error" not in err and "Traceback" not in err
    assert f"{files[0]}: " in err and message in err
    assert not (db_ws / "backend" / BATCH / PLATE).exists()


# --- C9/D10/D11: full or read-only disks on the database route ------------------------------------------


def _fail_writes(monkeypatch: pytest.MonkeyPatch, where: str, code: int) -> None:
    """One kind of write failing as a full or read-only disk makes it fail."""
    import os

    from cytoprofile.exportdb import materialise

    if where == "scratch":
        def write(_table: object, path: str) -> None:
            raise OSError(code, os.strerror(code), path)
        monkeypatch.setattr(materialise, "_write_csv", write)
    elif where == "sqlite":
        faults.fail_sqlite_writes(monkeypatch, code)
    else:
        real = Path.mkdir

        def mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
            if "backend" in self.parts:
                raise OSError(code, os.strerror(code), str(self))
            real(self, *args, **kwargs)
        monkeypatch.setattr(Path, "mkdir", mkdir)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
@pytest.mark.parametrize("where", ["scratch", "mkdir", "sqlite"])
def test_a_full_or_read_only_disk_on_the_database_route_names_the_real_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], where: str, code: int) -> None:
    from cytoprofile.cli import main

    db_ws, _ = _db_plate(tmp_path)
    scratch = tmp_path / "scratch"
    _fail_writes(monkeypatch, where, code)
    assert main(["collate", str(db_ws), BATCH, PLATE, "-q", "--tmp-dir", str(scratch)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "internal error" not in err and "Traceback" not in err
    assert ("no space left" if code == errno.ENOSPC else "read-only") in err and "re-run" in err
    assert not (db_ws / "backend").exists(), "a failed run leaves no empty backend folder"
    with pytest.raises(OutputError) as caught:
        collate_export(db_ws, BATCH, PLATE, tmp_dir=str(scratch))
    message = str(caught.value)
    assert "cytoprofile-export-" not in message, "the scratch folder (removed) is not named"
    if where == "scratch":
        assert message.startswith(f"cannot write to {scratch} (the scratch copy of the plate; --tmp-dir puts it elsewhere)")
    else:
        assert message.startswith(f"cannot write to {db_ws / 'backend' / BATCH / PLATE if where == 'sqlite' else db_ws}:")
    assert not (db_ws / "backend").exists()


# --- B4: ExportToDatabase files beside CSV site folders ---------------------------------------------------


@pytest.mark.parametrize("name", ["run1.sqlite", "Run.SQLITE3", "export.db"])
def test_a_database_file_beside_csv_sites_is_named_with_the_option(tmp_path: Path, name: str,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    db_ws, files = _db_plate(tmp_path / "db_side", files=1)
    plate_dir = _plate(tmp_path / "ws")
    shutil.copyfile(files[0], plate_dir.parent / name)
    with caplog.at_level("WARNING", logger="cytoprofile"):
        result = collate_plate(tmp_path / "ws", BATCH, PLATE)
    assert result.status == "done", result.message
    why = result.report["files_not_read"][f"../{name}"]
    assert "ExportToDatabase file" in why and "--export-db" in why
    assert f"first: ../{name}" in caplog.text
    faults.assert_rows_accounted(result, plate_dir)


def test_a_database_plate_with_an_empty_analysis_folder_reads_its_files(tmp_path: Path) -> None:
    db_ws, _ = _db_plate(tmp_path)
    (db_ws / "analysis" / BATCH / PLATE / "analysis").mkdir()
    from cytoprofile.cli import main

    assert main(["collate", str(db_ws), BATCH, PLATE, "-q"]) == 0
    report = json.loads((db_ws / "backend" / BATCH / PLATE / f"{PLATE}.report.json").read_text())
    assert report["export_database"]["sites"]


# --- B5: database images naming another plate -----------------------------------------------------------


@pytest.mark.parametrize("others", [["P01"], ["P1x", "P2"]])
def test_database_images_of_other_plates_are_said(tmp_path: Path, others: list[str],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    db_ws, files = _db_plate(tmp_path)
    for number, name in enumerate(others, start=1):
        faults.run_sql(files[1], f"UPDATE Per_Image SET Image_Metadata_Plate = '{name}' WHERE ImageNumber = {number}")
    with caplog.at_level("WARNING", logger="cytoprofile"):
        result = collate_export(db_ws, BATCH, PLATE)
    assert result.status == "done", result.message
    report = json.loads(Path(result.outputs["report"]).read_text())
    assert sorted(report["export_database"]["other_plates"]) == sorted(others)
    names = ", ".join(repr(p) for p in sorted(others))
    assert f"{len(others)} image(s) of the ExportToDatabase files name another plate ({names})" in caplog.text


# --- D12: a .db file of another program in a database plate folder -------------------------------------


@pytest.mark.parametrize(("name", "content"), [("Thumbs.db", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 504),
                                               ("notes.DB", b""), ("cache.db", b"SQLite format 2\x00")])
@pytest.mark.parametrize("given", [False, True])
def test_a_foreign_db_file_in_a_database_plate_is_named_not_read(tmp_path: Path, name: str, content: bytes,
                                                                given: bool) -> None:
    """Found in the plate folder or in a folder given as the export (``--export-db FOLDER``) alike."""
    db_ws, files = _db_plate(tmp_path)
    folder = db_ws / "analysis" / BATCH / PLATE
    (folder / name).write_bytes(content)
    result = collate_export(db_ws, BATCH, PLATE, sources=[str(folder)] if given else None)
    assert result.status == "done", result.message
    report = json.loads(Path(result.outputs["report"]).read_text())
    assert "not an SQLite file" in report["export_database"]["files_not_read"][name]
    assert sorted(f["file"] for f in report["export_database"]["files"]) == sorted(
        f"analysis/{BATCH}/{PLATE}/{Path(f).name}" for f in files)


def test_the_database_route_does_not_hash_its_own_scratch_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ExportToDatabase route keeps its own record of its source files; the site CSVs it writes to scratch
    are not read a second time for the CSV route's input record."""
    from cytoprofile.collate import plan

    db_ws, _ = _db_plate(tmp_path)
    hashed: list[str] = []
    real = plan.file_digest
    monkeypatch.setattr(plan, "file_digest", lambda path: hashed.append(path) or real(path))
    result = collate_export(db_ws, BATCH, PLATE)
    assert result.status == "done", result.message
    assert hashed == []
    assert "input_files" not in json.loads(Path(result.outputs["report"]).read_text())


# --- a file without the site's file-name prefix ------------------------------------------------------------


@pytest.mark.parametrize("lacking", [["Nuclei.csv"], ["Cells.csv"], ["Cytoplasm.csv", "Nuclei.csv"]])
def test_the_file_lacking_the_prefix_is_the_one_named(tmp_path: Path, lacking: list[str]) -> None:
    plate_dir = _plate(tmp_path)
    folder = faults.site(plate_dir, "A01", 2)
    for f in sorted(folder.iterdir()):
        if f.name not in lacking:
            f.rename(folder / f"MyExpt_{f.name}")
    result = collate_plate(tmp_path, BATCH, PLATE)
    entry = _sites(result)[folder.name]
    more = f" (and {len(lacking) - 1} more)" if len(lacking) > 1 else ""
    assert entry["status"] == "quarantined"
    assert entry["reason"] == (f"cannot tell the file-name prefix: {lacking[0]}{more} does not start with 'MyExpt_', "
                               "the prefix of MyExpt_Image.csv; pass --file-prefix")
    assert entry["file"].endswith(f"{folder.name}/{lacking[0]}")
    faults.assert_rows_accounted(result, plate_dir)


@pytest.mark.parametrize("name", ["Cells.csv", "Image.csv.gz", "notes.txt"])
def test_a_stray_file_in_the_plate_folder_is_listed_as_not_read(tmp_path: Path, name: str) -> None:
    """A file beside the plate's analysis folder (a stray Cells.csv copied one level up) is named, not read."""
    plate_dir = _plate(tmp_path)
    source = faults.site(plate_dir, "A01", 1) / "Cells.csv"
    shutil.copyfile(source, plate_dir.parent / name)
    result = collate_plate(tmp_path, BATCH, PLATE)
    assert result.status == "done", result.message
    why = result.report["files_not_read"][f"../{name}"]
    assert "in the plate folder, beside its analysis folder" in why and "not read" in why
    faults.assert_rows_accounted(result, plate_dir)


def test_a_stray_file_beside_export_files_is_listed_as_not_read(tmp_path: Path) -> None:
    db_ws, files = _db_plate(tmp_path, files=1)
    stray = Path(files[0]).parent / "Cells.csv"
    stray.write_text("ImageNumber,ObjectNumber\n1,1\n")
    result = collate_export(db_ws, BATCH, PLATE)
    assert result.status == "done", result.message
    assert result.report is not None
    assert "not read" in result.report["export_database"]["files_not_read"]["Cells.csv"]


def test_a_folder_beside_the_analysis_folder_is_named_not_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A re-run's site folder in ``analysis_rerun/`` beside ``analysis/`` was left out without a word."""
    plate_dir = _plate(tmp_path)
    moved = plate_dir.parent / "analysis_rerun"
    moved.mkdir()
    shutil.move(str(faults.site(plate_dir, "A01", 1)), str(moved))
    (plate_dir.parent / "empty").mkdir()  # holds nothing: nothing to name
    with caplog.at_level("WARNING", logger="cytoprofile"):
        result = collate_plate(tmp_path, BATCH, PLATE)
    assert result.status == "done", result.message
    assert "not read" in result.report["files_not_read"]["../analysis_rerun/"]
    assert "../empty/" not in result.report["files_not_read"]
    assert "../analysis_rerun/" in caplog.text


@pytest.mark.parametrize("where", ["subfolder", "csv sites with --export-db", "gzipped run"])
def test_database_inputs_not_read_are_named_on_the_terminal(tmp_path: Path, where: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A run in a subfolder, the plate's CSV site folders beside ``--export-db`` files, a ``run2.sqlite.gz``:
    each is listed under export_database.files_not_read and said on the terminal (they were silent)."""
    db_ws, files = _db_plate(tmp_path)
    plate_folder = Path(files[0]).parent
    sources = None
    if where == "subfolder":
        (plate_folder / "runs").mkdir()
        shutil.move(files[1], plate_folder / "runs" / Path(files[1]).name)
        expected = "runs/"
    elif where == "gzipped run":
        import gzip

        Path(files[1] + ".gz").write_bytes(gzip.compress(Path(files[1]).read_bytes()))
        Path(files[1]).unlink()
        expected = Path(files[1]).name + ".gz"
    else:
        csv_sites = tmp_path / "csv" / "analysis" / BATCH / PLATE / "analysis"
        shutil.copytree(csv_sites, plate_folder / "analysis")
        (tmp_path / "dbs").mkdir()
        for f in files:
            shutil.move(f, tmp_path / "dbs" / Path(f).name)
        sources = [tmp_path / "dbs"]
        expected = f"analysis/{BATCH}/{PLATE}/analysis/"
    with caplog.at_level("WARNING", logger="cytoprofile"):
        result = collate_export(db_ws, BATCH, PLATE, **({"sources": sources} if sources else {}))
    assert result.status == "done", result.message
    assert result.report is not None
    assert "not read" in result.report["export_database"]["files_not_read"][expected]
    assert "not read" in caplog.text and expected in caplog.text


@pytest.mark.parametrize("route", ["csv", "database"])
def test_a_column_name_with_a_line_break_quarantines_its_site(tmp_path: Path, route: str) -> None:
    """A quoted column name across two lines crashed the plate (exit 3) on both routes: its site is quarantined,
    the file (or table) named, the other sites read."""
    if route == "csv":
        plate_dir = _plate(tmp_path)
        path = faults.site(plate_dir, "A01", 1) / "Cells.csv"
        rows = read_rows(path)
        write_rows(path, [[*rows[0], "Foo\nBar"], *([*r, "1"] if r else r for r in rows[1:])], raw=False)
        result = collate_plate(tmp_path, BATCH, PLATE)
        where = "Cells.csv"
    else:
        db_ws, files = _db_plate(tmp_path)
        faults.run_sql(files[0], 'ALTER TABLE Per_Cells ADD COLUMN "Cells_Foo\nBar" REAL')  # the second run is sound
        result = collate_export(db_ws, BATCH, PLATE)
        where = "Per_Cells of"
    assert result.status == "done", result.message
    assert result.report is not None
    bad = [s for s in result.report["sites"] if s["status"] == "quarantined"]
    assert bad and all(where in s["reason"] and "line break" in s["reason"] for s in bad), bad
    assert any(s["status"] == "ok" for s in result.report["sites"])


def test_a_per_object_column_no_object_set_owns_is_said_on_the_terminal(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """``Speckles_AreaShape_Area`` in a Per_Object table without ``Speckles_Number_Object_Number``: not stored, and said
    (it was only in the report)."""
    csv_ws = tmp_path / "csv"
    _plate(csv_ws)
    db_ws = tmp_path / "db"
    files = write_export_database(csv_ws, db_ws / "analysis" / BATCH / PLATE, batch=BATCH, plates=(PLATE,), files=1,
                                  table_prefix="", layout="per_object")
    faults.run_sql(files[0], "ALTER TABLE Per_Object ADD COLUMN Speckles_AreaShape_Area REAL",
                   "UPDATE Per_Object SET Speckles_AreaShape_Area = 7")
    with caplog.at_level("WARNING", logger="cytoprofile"):
        result = collate_export(db_ws, BATCH, PLATE)
    assert result.status == "done", result.message
    said = [r.getMessage() for r in caplog.records if "belong to no object set" in r.getMessage()]
    assert len(said) == 1 and "Speckles_AreaShape_Area" in said[0], caplog.text


def test_two_sites_whose_image_csv_share_a_crc32_are_both_stored(tmp_path: Path) -> None:
    """TableNumber is the CRC32 of Image.csv; two different sites may share it by chance (about 0.14% of
    384-well, 9-site plates): the later is re-hashed and says so (it was quarantined as a repeat)."""
    import zlib

    plate_dir = _plate(tmp_path)
    first, second = faults.site(plate_dir, "A01", 1), faults.site(plate_dir, "A02", 1)
    rows = faults.read_rows(second / "Image.csv")
    column = next(j for j, c in enumerate(rows[0]) if c.startswith("Granularity_"))
    for j in range(column, column + 8):
        rows[1][j] = "1.11111111111"
    faults.write_rows(second / "Image.csv", rows)
    text = (second / "Image.csv").read_text()
    start = text.index("\n") + 1
    twin = faults.crc32_twin(text, (first / "Image.csv").read_text(), digits=range(start, len(text)))
    (second / "Image.csv").write_text(twin)
    assert zlib.crc32(twin.encode()) == zlib.crc32((first / "Image.csv").read_bytes()) and twin != text
    result = collate_plate(tmp_path, BATCH, PLATE)
    sites = _sites(result)
    assert {s["status"] for s in sites.values()} == {"ok"}, {n: s.get("reason") for n, s in sites.items()}
    assert any("chance collision" in n for n in sites[second.name].get("notes", [])), sites[second.name]
    conn = sqlite3.connect(result.outputs["sqlite"])
    try:
        numbers = conn.execute("SELECT COUNT(DISTINCT TableNumber), COUNT(*) FROM Image").fetchone()
    finally:
        conn.close()
    assert numbers[0] == numbers[1] == len(sites)
    faults.assert_rows_accounted(result, plate_dir)


@pytest.mark.parametrize("file_name", ["SPECKLES.CSV", "speckles.csv", "Speckles.csv"])
def test_counts_and_links_check_a_table_in_any_case(tmp_path: Path, file_name: str) -> None:
    """A file named SPECKLES.CSV or speckles.csv is the object Count_Speckles counts and Parent_Speckles
    links to: a cut file, or a link to no such object, is caught as it is for Speckles.csv (before: stored
    as it was, exit 0)."""
    plate_dir = _plate(tmp_path)
    for folder in sorted(plate_dir.iterdir()):
        faults.add_object_table(folder, "Speckles")
        (folder / "Speckles.csv").rename(folder / f"{file_name}.tmp")
        (folder / f"{file_name}.tmp").rename(folder / file_name)
    cut = faults.site(plate_dir, "A01", 1)
    rows = read_rows(cut / file_name)
    write_rows(cut / file_name, rows[:3])
    linked = faults.site(plate_dir, "A02", 1)
    cells = read_rows(linked / "Cells.csv")
    write_rows(linked / "Cells.csv", [[*cells[0], "Parent_Speckles"], [*cells[1], "99"],
                                      *[[*r, "1"] for r in cells[2:]]])
    entries = _sites(collate_plate(tmp_path, BATCH, PLATE))
    assert entries[cut.name]["status"] == "quarantined"
    assert "has 2 rows for ImageNumber" in entries[cut.name]["reason"], entries[cut.name]
    assert entries[linked.name]["status"] == "quarantined"
    assert "Parent_Speckles 99" in entries[linked.name]["reason"], entries[linked.name]


def test_a_site_folder_moved_into_another_is_said_on_the_terminal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Its CSVs are not read (named in the report as in a subfolder), and a warning says so (before: report only)."""
    plate_dir = _plate(tmp_path)
    moved = faults.site(plate_dir, "A01", 1)
    shutil.move(str(moved), str(faults.site(plate_dir, "A02", 1) / moved.name))
    with caplog.at_level("WARNING", logger="cytoprofile"):
        result = collate_plate(tmp_path, BATCH, PLATE)
    assert result.status == "done", result.message
    said = [r.getMessage() for r in caplog.records if "subfolders of site folders" in r.getMessage()]
    assert len(said) == 1 and f"{PLATE}-A02-1/{moved.name}/" in said[0], caplog.text
    faults.assert_rows_accounted(result, plate_dir)


@pytest.mark.parametrize("mode", ["error", "warn"])
def test_children_counts_show_rows_cut_from_a_file_image_csv_does_not_count(tmp_path: Path, mode: str) -> None:
    """Image.csv without Count_Cytoplasm, Cytoplasm.csv cut at a line ending: Cells' Children_Cytoplasm_Count
    adds up to more objects than the file holds, so the cut is caught (before: 16 of 19 stored, no word)."""
    plate_dir = _plate(tmp_path)
    for folder in sorted(plate_dir.iterdir()):
        faults.keep_columns(folder, "Image", lambda c: c != "Count_Cytoplasm")
    cut = faults.site(plate_dir, "A01", 1)
    faults.drop_rows(cut, "Cytoplasm", 2)
    entry = _sites(collate_plate(tmp_path, BATCH, PLATE, count_check=mode))[cut.name]
    said = entry["reason"] if mode == "error" else " ".join(entry.get("warnings", []))
    assert "Children_Cytoplasm_Count adds up to" in said, entry
    assert entry["status"] == ("quarantined" if mode == "error" else "ok")


def test_objects_counted_with_no_file_in_any_site_are_listed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Image.csv's Count_Speckles says objects exist, but no site has a Speckles file (not exported, or
    removed): the report lists them with their numbers and the terminal says so (before: silent)."""
    plate_dir = faults.small_plate(tmp_path / "ws", wells=2, sites=2)
    folders = [f for f in plate_dir.iterdir() if f.is_dir()]
    for k, folder in enumerate(folders):
        faults.add_image_column(folder, "Count_Speckles", str(k + 1))
        faults.add_image_column(folder, "Count_Background", "0")
    with caplog.at_level(logging.INFO, logger="cytoprofile"):
        result = collate_plate(tmp_path / "ws", BATCH, PLATE)
    assert result.status == "done"
    listed = result.report["counted_without_table"]  # type: ignore[index]
    n = len(folders)
    assert listed == {"Count_Speckles": {"objects": n * (n + 1) // 2, "images": n}}, listed
    assert "Count_Speckles" in caplog.text and "no site has a file for" in caplog.text


@pytest.mark.parametrize("mode", ["error", "warn"])
def test_a_compartment_numbered_as_its_parent_shows_rows_cut_when_nothing_counts_it(tmp_path: Path, mode: str) -> None:
    """Neither Count_Cytoplasm in Image.csv nor Children_Cytoplasm_Count in Cells, Cytoplasm.csv cut at a line
    ending: Cytoplasm matches Cells object for object everywhere else, so its missing tail is caught (before:
    stored short, exit 0, no word)."""
    plate_dir = _plate(tmp_path)
    for folder in sorted(p for p in plate_dir.iterdir() if p.is_dir()):
        faults.keep_columns(folder, "Image", lambda c: c != "Count_Cytoplasm")
        faults.keep_columns(folder, "Cells", lambda c: c != "Children_Cytoplasm_Count")
    cut = faults.site(plate_dir, "A01", 1)
    faults.drop_rows(cut, "Cytoplasm", 2)
    entry = _sites(collate_plate(tmp_path, BATCH, PLATE, count_check=mode))[cut.name]
    said = entry["reason"] if mode == "error" else " ".join(entry.get("warnings", []))
    assert "Cytoplasm has " in said and "but Cells, which it matches object for object" in said, entry
    assert entry["status"] == ("quarantined" if mode == "error" else "ok")


def test_a_filtered_compartment_with_fewer_objects_than_its_parent_is_kept(tmp_path: Path) -> None:
    """A FilterObjects output (every other nucleus kept, renumbered, Parent_Nuclei the original number) has fewer
    objects than its parent by design and no Count in Image.csv: it is no cut file."""
    plate_dir = _plate(tmp_path)
    for folder in sorted(p for p in plate_dir.iterdir() if p.is_dir()):
        rows = read_rows(folder / "Nuclei.csv")
        number = rows[0].index("ObjectNumber")
        kept = [r[:] for r in rows[1::2]]
        for k, row in enumerate(kept, start=1):
            row.append(row[number])
            row[number] = str(k)
        write_rows(folder / "FilteredNuclei.csv", [[*rows[0], "Parent_Nuclei"], *kept])
    result = collate_plate(tmp_path, BATCH, PLATE)
    assert all(s["status"] == "ok" and not s.get("warnings") for s in result.report["sites"]), result.report["sites"]
    faults.assert_rows_accounted(result, plate_dir)


def test_an_empty_count_in_image_csv_is_said(tmp_path: Path) -> None:
    """An empty ``Count_Cells`` cell leaves that image's Cells rows checked against nothing: a warning names it
    (before: the check was skipped without a word)."""
    plate_dir = _plate(tmp_path)
    target = faults.site(plate_dir, "A02", 1)
    faults.set_image_value(target, "Count_Cells", "")
    entry = _sites(collate_plate(tmp_path, BATCH, PLATE))[target.name]
    assert entry["status"] == "ok"
    assert any("Image.csv's Count_Cells is empty for ImageNumber" in w for w in entry.get("warnings", [])), entry


def test_links_inside_site_folders_are_entries_never_walked(tmp_path: Path) -> None:
    """Two links to ``.`` inside a site folder made the input record's walk branch twice per level (it never
    ended); a link to an image store beside the files had every file under it hashed. A link inside a site folder
    is one entry, never followed (the scan reads nothing there), and the plate builds and then skips."""
    import signal

    from cytoprofile.collate.plan import input_state, plate_files

    plate_dir = _plate(tmp_path)
    target = faults.site(plate_dir, "A02", 2)
    store = tmp_path / "image-store"
    (store / "deep").mkdir(parents=True)
    (store / "deep" / "image.tiff").write_bytes(b"\0" * 64)
    for name, to in (("a", "."), ("b", "."), ("up", f"../{target.name}"), ("images", str(store))):
        (target / name).symlink_to(to)
    (plate_dir / "again").symlink_to(".")  # the plate folder reached from inside itself

    def stop(*_: object) -> None:
        raise TimeoutError("the walk of the plate folder does not end")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(60)
    try:
        files = plate_files(tmp_path, BATCH, PLATE)
        state = input_state(tmp_path, BATCH, PLATE)
        result = collate_plate(tmp_path, BATCH, PLATE)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    inside = {f"{target.name}/{n}" for n in ("a", "b", "up", "images")}
    assert inside <= files and not any(f.startswith(tuple(f"{p}/" for p in inside)) for f in files), sorted(files)
    assert all(state.files[p][0] == -2 for p in inside), {p: state.files[p] for p in inside}
    assert result.status == "done", result.message
    assert collate_plate(tmp_path, BATCH, PLATE).status == "skipped"


def _claim_one_parent_twice(folder: Path) -> None:
    """Cytoplasm object 2 names Cell 1 and Nucleus 1, as object 1 does; Cell 2 and Nucleus 2 are named by none.
    Rows per image, Count_ and the Children_ totals all still agree."""
    for parent in ("Parent_Cells", "Parent_Nuclei"):
        faults.set_object_value(folder, "Cytoplasm", parent, "1", row=2)


@pytest.mark.parametrize("mode", ["error", "warn"])
def test_two_objects_claiming_one_parent_are_caught_object_by_object(tmp_path: Path, mode: str) -> None:
    """Two Cytoplasm rows naming one cell: the totals per image agree, so only the parent's
    Children_Cytoplasm_Count, object by object, shows it (before: stored, one cell joined twice, exit 0)."""
    plate_dir = _plate(tmp_path)
    folder = faults.site(plate_dir, "A01", 1)
    _claim_one_parent_twice(folder)
    result = collate_plate(tmp_path, BATCH, PLATE, count_check=mode)
    entry = _sites(result)[folder.name]
    said = entry["reason"] if mode == "error" else " ".join(entry.get("warnings", []))
    assert "object 1 (ImageNumber 1) has Children_Cytoplasm_Count 1 but 2 Cytoplasm row(s) name it" in said, entry
    assert entry["status"] == ("quarantined" if mode == "error" else "ok")
    faults.assert_rows_accounted(result, plate_dir)


@pytest.mark.parametrize("route", ["csv", "export database"])
def test_one_object_is_never_joined_into_two_cells(tmp_path: Path, route: str) -> None:
    """With no Children_ counts to catch two Cytoplasm rows naming one cell, the single-cell table held that cell
    twice and counted it as every cell through. Both claimants are left out and named, and the cell they named
    too: rows in = cells out + objects named, for each compartment, and no cell key twice."""
    plate_dir = _plate(tmp_path / "ws")
    for folder in sorted(p for p in plate_dir.iterdir() if p.is_dir()):
        for table in ("Cells", "Nuclei"):
            faults.keep_columns(folder, table, lambda c: not c.startswith("Children_"))
    _claim_one_parent_twice(faults.site(plate_dir, "A01", 1))
    ws = tmp_path / "ws"
    if route == "export database":
        db_ws = tmp_path / "db"
        write_export_database(ws, db_ws / "analysis" / BATCH / PLATE, batch=BATCH, plates=(PLATE,), files=1,
                              table_prefix="")
        result = collate_export(db_ws, BATCH, PLATE, single_cells=("parquet",))
    else:
        result = collate_plate(ws, BATCH, PLATE, single_cells=("parquet",))
    assert result.status == "done", result.message
    table = pq.read_table(Path(result.outputs["report"]).with_name(f"{PLATE}_single_cells.parquet")).to_pandas()
    for number in ("Metadata_ObjectNumber_cytoplasm", "Metadata_ObjectNumber_cells", "Metadata_ObjectNumber"):
        assert not table.duplicated(["Metadata_TableNumber", "Metadata_ImageNumber", number]).any(), number
    section = result.report["single_cells"]
    for compartment, rows in section["rows_in"].items():
        assert rows == section["cells_out"] + section["unlinked"].get(compartment, 0), section
    assert section["unlinked"] == {"Cytoplasm": 2, "Cells": 2, "Nuclei": 2}, section
    reasons = {o["reason"] for o in section["unlinked_objects"] if o["compartment"] == "Cytoplasm"}
    assert any("names a Cells object that another Cytoplasm object also names" in r for r in reasons), reasons
