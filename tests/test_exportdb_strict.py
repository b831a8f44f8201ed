"""``--strict`` on the ExportToDatabase route: rows of the files left out fail the plate, as quarantined sites do."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cytoprofile.cli import main
from cytoprofile.errors import QuarantineError
from cytoprofile.exportdb import collate_export

from . import faults
from .test_exportdb import BATCH, _csv_workspace, _db_workspace, _run

#: faults that leave rows of the files out of the backend (each named under export_database.dropped)
FAULTS = {
    "changed copy of a run": None,  # a second file repeating the images with other values
    "image without a well": 'UPDATE "Per_Image" SET Image_Metadata_Well = NULL WHERE ImageNumber = 1',
    "objects of no image": 'UPDATE "Per_Cells" SET ImageNumber = 999 WHERE rowid = 1',
}


def _faulty(tmp_path: Path, fault: str) -> Path:
    db_ws, files = _db_workspace(tmp_path, _csv_workspace(tmp_path, long_name=False), "P1", table_prefix="")
    if FAULTS[fault] is None:
        copy = Path(files[0]).with_name("zcopy.sqlite")
        shutil.copyfile(files[0], copy)
        faults.run_sql(str(copy), 'UPDATE "Per_Cells" SET Cells_AreaShape_Area = 1')
    else:
        faults.run_sql(files[0], FAULTS[fault])
    return db_ws


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_strict_refuses_rows_the_files_leave_out(tmp_path: Path, fault: str, capsys: pytest.CaptureFixture[str]) -> None:
    ws = _faulty(tmp_path, fault)
    with pytest.raises(QuarantineError, match="nothing written; fix the files or drop --strict"):
        collate_export(ws, BATCH, "P1", strict=True)
    assert not list((ws / "backend").rglob("P1.*")), "nothing under a final name"
    capsys.readouterr()
    assert main(["collate", str(ws), BATCH, "P1", "--strict", "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()  # warnings naming the rows, then one error line
    errors = [line for line in err if "error" in line.lower() and "would be left out" in line]
    assert len(errors) == 1 and err[-1] == errors[0] and "Traceback" not in "".join(err), err
    got = _run(ws, "P1")  # without --strict: built, and the report's totals say what was left out
    totals, dropped = got["report"]["totals"], got["report"]["export_database"]["dropped"]
    assert dropped and totals["export_rows_dropped"] == sum(d["rows"] for d in dropped) > 0
    assert totals["export_images_dropped"] == sum(d["rows"] for d in dropped if d["table"] == "Image")


def test_strict_builds_files_that_leave_nothing_out(tmp_path: Path) -> None:
    db_ws, _ = _db_workspace(tmp_path, _csv_workspace(tmp_path, long_name=False), "P1", table_prefix="")
    got = _run(db_ws, "P1", strict=True)
    assert got["report"]["totals"]["export_rows_dropped"] == 0


def test_a_link_to_a_run_file_is_read_once_and_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A symlink beside the file it points to (found, not given) is read once, as that file, and named."""
    db_ws, files = _db_workspace(tmp_path, _csv_workspace(tmp_path, long_name=False), "P1", table_prefix="")
    expected = Path(_run(db_ws, "P1")["result"].outputs["profiles"]).read_bytes()
    link = Path(files[0]).with_name("zlink.sqlite")
    link.symlink_to(Path(files[0]).name)
    got = _run(db_ws, "P1", overwrite=True)
    not_read = got["report"]["export_database"]["files_not_read"]
    assert "zlink.sqlite" in not_read and Path(files[0]).name in not_read["zlink.sqlite"]
    assert got["report"]["totals"]["export_rows_dropped"] == 0
    assert Path(got["result"].outputs["profiles"]).read_bytes() == expected


def test_a_write_ahead_log_is_read_with_its_file_and_said_so(tmp_path: Path) -> None:
    """A run file left in WAL mode (rows in ``X.sqlite-wal``, not yet in the file): the rows are read, and the
    ``-wal``/``-shm`` files are named as part of that file, never as files not read."""
    import sqlite3

    db_ws, files = _db_workspace(tmp_path, _csv_workspace(tmp_path, long_name=False), "P1", table_prefix="")
    expected = Path(_run(db_ws, "P1")["result"].outputs["profiles"]).read_bytes()
    conn = sqlite3.connect(files[0])
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("UPDATE Per_Image SET ImageNumber = ImageNumber")  # every image page now lives in the log
        conn.commit()
        wal = Path(files[0] + "-wal")
        assert wal.stat().st_size > 0
        got = _run(db_ws, "P1", overwrite=True)
        conn.execute("UPDATE Per_Image SET ImageNumber = ImageNumber")  # the log changes, the file does not
        conn.commit()
        again = _run(db_ws, "P1")
    finally:
        conn.close()
    assert again["result"].status == "done", "a changed write-ahead log is a changed input: rebuilt, not skipped"
    not_read = got["report"]["export_database"]["files_not_read"]
    assert not_read[wal.name].startswith(f"part of {Path(files[0]).name}: its write-ahead log"), not_read
    assert all("part of" in why for name, why in not_read.items() if name.endswith(("-wal", "-shm"))), not_read
    assert got["report"]["totals"]["export_rows_dropped"] == 0
    assert Path(got["result"].outputs["profiles"]).read_bytes() == expected
