"""Column names as found: not UTF-8, padded with spaces; warnings of the old object.csv once; --tmp-dir made and said."""

from __future__ import annotations

import gzip
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from cytoprofile.collate import collate_plate
from cytoprofile.errors import InputError
from cytoprofile.exportdb import collate_export

from . import faults
from .exportdb_builders import BATCH as DB_BATCH
from .exportdb_builders import csv_workspace, db_workspace
from .faults import BATCH, PLATE


def _collate(ws: Path) -> Any:
    result = collate_plate(ws, BATCH, PLATE)
    assert result.status == "done", result.message
    return result


def _site(result: Any, name: str) -> dict[str, Any]:
    return {s["site"]: s for s in result.report["sites"]}[name]


def _rename_column(path: Path, position: int, name: bytes) -> None:
    """Give header field ``position`` (1-based) the raw bytes ``name`` (plain or gzip file)."""
    gz = path.name.endswith(".gz")
    raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    header, rest = raw.split(b"\n", 1)
    fields = header.split(b",")
    fields[position - 1] = name
    out = b",".join(fields) + b"\n" + rest
    path.write_bytes(gzip.compress(out) if gz else out)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(("file", "position"), [("Cells.csv", 4), ("Nuclei.csv", 3), ("Image.csv", 5)])
def test_a_column_name_that_is_not_utf8_is_named_as_a_column_name(tmp_path: Path, file: str, position: int,
                                                                  gz: bool) -> None:
    plate_dir = faults.small_plate(tmp_path)
    folder = faults.site(plate_dir)
    if gz:
        faults.compress(folder, (file,))
        file += ".gz"
    _rename_column(folder / file, position, b"AreaShape_\xff\xfeX")
    entry = _site(_collate(tmp_path), folder.name)
    assert entry["status"] == "quarantined"
    assert entry["reason"] == (f"{file} has a column name that is not UTF-8 text: column {position} of the header "
                               "('AreaShape_\\\\xff\\\\xfeX'); rename that column (save the file as UTF-8)")


def test_a_database_column_name_that_is_not_utf8_is_named_as_a_column_name(tmp_path: Path) -> None:
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, files = db_workspace(tmp_path, csv_ws, "P1", files=1)
    conn = sqlite3.connect(files[0])
    try:
        names = [r[1] for r in conn.execute('PRAGMA table_info("MyExpt_Per_Cells")')]
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'MyExpt_Per_Cells'").fetchone()[0]
        bad = sql.replace("Cells_AreaShape_Extent", "Cells_AreaShape_Ext\udcff").encode("utf-8", "surrogateescape")
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute("UPDATE sqlite_master SET sql = CAST(? AS TEXT) WHERE name = 'MyExpt_Per_Cells'", (bad,))
        conn.commit()
    finally:
        conn.close()
    position = names.index("Cells_AreaShape_Extent") + 1
    with pytest.raises(InputError) as caught:
        collate_export(db_ws, DB_BATCH, "P1")
    assert str(caught.value) == (f"{files[0]}: table MyExpt_Per_Cells has a column name that is not UTF-8 text: column "
                                 f"{position} ('Cells_AreaShape_Ext\\\\xff'); rename that column in a copy of the file")


@pytest.mark.parametrize("padded", [b" AreaShape_Area ", b"AreaShape_Area  ", b"\tAreaShape_Area", b" Cells_AreaShape_Area ",
                                    "\ufeffAreaShape_Area".encode(), "AreaShape_Area\u200b".encode(),
                                    " \u2060AreaShape_Area".encode()])
def test_a_column_name_with_spaces_around_is_read_without_them_and_noted(tmp_path: Path, padded: bytes) -> None:
    """Spaces, and characters that show as nothing (a byte-order mark inside the header, a zero-width space),
    around a name: read without them and noted (before, the invisible ones made a column of their own)."""
    plate_dir = faults.small_plate(tmp_path)
    folder = faults.site(plate_dir)
    header = (folder / "Cells.csv").read_bytes().split(b"\n", 1)[0].split(b",")
    position = header.index(b"AreaShape_Area") + 1
    _rename_column(folder / "Cells.csv", position, padded)
    result = _collate(tmp_path)
    entry = _site(result, folder.name)
    assert entry["status"] == "ok"
    shown = padded.decode()
    clean = shown.strip().strip("\ufeff\u200b\u2060")
    assert entry["notes"] == [f"Cells.csv: column {position} of the header, {shown!r}, read as {clean!r} "
                              "(spaces or invisible characters around the name removed)"]
    with sqlite3.connect(result.outputs["sqlite"]) as conn:
        columns = {r[1] for r in conn.execute("PRAGMA table_info(Cells)")}
        if clean == "AreaShape_Area":  # the name every other site has: one column, filled in every site
            assert conn.execute('SELECT count(*) FROM Cells WHERE "Cells_AreaShape_Area" IS NULL').fetchone() == (0,)
    assert f"Cells_{clean}" in columns and not [c for c in columns if "\u200b" in c or "\ufeff" in c or "\u2060" in c]


def test_an_old_object_csv_without_a_final_line_ending_warns_once(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    plate_dir = faults.small_plate(tmp_path)
    folder = faults.site(plate_dir)
    faults.to_object_csv(folder)
    path = folder / "object.csv"
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    with caplog.at_level(logging.WARNING, logger="cytoprofile"):
        result = _collate(tmp_path)
    warnings = [w for w in _site(result, folder.name).get("warnings", []) if "without a line ending" in w]
    assert len(warnings) == 1 and warnings[0].startswith("object.csv ends without a line ending")
    assert sum("object.csv ends without a line ending" in r.getMessage() for r in caplog.records) <= 1


def test_a_missing_tmp_dir_is_created_and_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, _ = db_workspace(tmp_path, csv_ws, "P1", files=1)
    scratch = tmp_path / "no" / "such" / "scratch"
    with caplog.at_level(logging.INFO, logger="cytoprofile"):
        assert collate_export(db_ws, DB_BATCH, "P1", tmp_dir=str(scratch)).status == "done"
    assert scratch.is_dir()
    assert f"--tmp-dir {scratch} did not exist: created it" in [r.getMessage() for r in caplog.records]


def test_a_plate_folder_in_decomposed_unicode_is_named_as_such(tmp_path: Path) -> None:
    """A folder copied from macOS is NFD while Image.csv's Metadata_Plate is NFC: the two print alike, so the
    messages say how they differ and how to rename the folder."""
    import unicodedata

    from cytoprofile.synth import synth

    composed = unicodedata.normalize("NFC", "Plätte")
    decomposed = unicodedata.normalize("NFD", composed)
    synth(tmp_path, plates=[composed], wells=96, well_subset=1, sites=2, cells=3, features=3)
    plates = tmp_path / "analysis" / BATCH
    (plates / composed).rename(plates / decomposed)
    with pytest.raises(InputError, match="differ only in Unicode normalisation.*--nfc"):
        collate_plate(tmp_path, BATCH, composed)
    with pytest.raises(InputError) as caught:
        collate_plate(tmp_path, BATCH, decomposed)
    assert "differ only in Unicode normalisation" in str(caught.value)


@pytest.mark.parametrize("name", ["Image.csv", "Cells.csv"])
def test_nul_bytes_a_crash_left_are_named_not_printed(tmp_path: Path, name: str) -> None:
    analysis = faults.small_plate(tmp_path, wells=1, sites=2)
    folder = faults.site(analysis)
    (folder / name).write_bytes((folder / name).read_bytes() + b"\x00" * 4096)
    result = collate_plate(tmp_path, BATCH, PLATE)
    entry = {s["site"]: s for s in result.report["sites"]}[folder.name]
    assert entry["status"] == "quarantined" and "\x00" not in entry["reason"], entry["reason"]
    assert "NUL byte" in entry["reason"] or "NUL" in entry["reason"], entry["reason"]


@pytest.mark.parametrize(("name", "said"), [("cytoprofile_run.csv", True), ("sqlite_stat1.csv", True),
                                            ("Experiment.csv", False)])
def test_a_table_csv_not_stored_is_said_on_the_terminal(tmp_path: Path, name: str, said: bool,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A CSV with measurements the backend cannot store under its name is in no output: said in one
    line (run metadata is listed in the report only)."""
    import shutil

    analysis = faults.small_plate(tmp_path, wells=1, sites=2)
    folder = faults.site(analysis)
    shutil.copy(folder / "Nuclei.csv", folder / name)
    with caplog.at_level(logging.WARNING, logger="cytoprofile"):
        result = collate_plate(tmp_path, BATCH, PLATE)
    assert result.status == "done"
    lines = [r.getMessage() for r in caplog.records if "are not stored" in r.getMessage()]
    assert bool(lines) == said and (not said or name in lines[0]), lines
    faults.assert_rows_accounted(result, analysis)


@pytest.mark.parametrize("table", ["Image", "Cells"])
@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\x85", "\x0c"])
def test_a_header_ending_in_an_odd_line_break_is_named(tmp_path: Path, table: str, char: str) -> None:
    """A header line ended by U+2028 (or another character some tools show as a line break): the site is
    quarantined naming the character and the fix (before: a raw parser message about missing columns)."""
    plate_dir = faults.small_plate(tmp_path / "ws")
    folder = faults.site(plate_dir, "A01", 1)
    path = folder / f"{table}.csv"
    raw = path.read_bytes()
    end = raw.index(b"\n")
    path.write_bytes(raw[:end] + char.encode() + raw[end + 1:])
    result = collate_plate(tmp_path / "ws", BATCH, PLATE)
    entry = next(s for s in result.report["sites"] if s["site"] == folder.name)  # type: ignore[index]
    assert entry["status"] == "quarantined" and "replace it with a newline" in entry["reason"], entry
    assert f"U+{ord(char):04X}" in entry["reason"] or "form feed" in entry["reason"], entry
    faults.assert_rows_accounted(result, plate_dir)
