"""``--strict`` on the ExportToDatabase route: rows of the files left out fail the plate, as quarantined sites do."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cytoprofile.cli import main
from cytoprofile.errors import QuarantineError
from cytoprofile.exportdb import collate_export

from . import faults
from .exportdb_builders import BATCH, csv_workspace, db_workspace, run_export

#: faults that leave rows of the files out of the backend (each named under export_database.dropped)
FAULTS = {
    "changed copy of a run": None,  # a second file repeating the images with other values
    "image without a well": 'UPDATE "Per_Image" SET Image_Metadata_Well = NULL WHERE ImageNumber = 1',
    "objects of no image": 'UPDATE "Per_Cells" SET ImageNumber = 999 WHERE rowid = 1',
}


def _faulty(tmp_path: Path, fault: str) -> Path:
    db_ws, files = db_workspace(tmp_path, csv_workspace(tmp_path, long_name=False), "P1", table_prefix="")
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
    got = run_export(ws, "P1")  # without --strict: built, and the report's totals say what was left out
    totals, dropped = got["report"]["totals"], got["report"]["export_database"]["dropped"]
    assert dropped and totals["export_rows_dropped"] == sum(d["rows"] for d in dropped) > 0
    assert totals["export_images_dropped"] == sum(d["rows"] for d in dropped if d["table"] == "Image")


def test_strict_builds_files_that_leave_nothing_out(tmp_path: Path) -> None:
    db_ws, _ = db_workspace(tmp_path, csv_workspace(tmp_path, long_name=False), "P1", table_prefix="")
    got = run_export(db_ws, "P1", strict=True)
    assert got["report"]["totals"]["export_rows_dropped"] == 0


def test_a_link_to_a_run_file_is_read_once_and_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A symlink beside the file it points to (found, not given) is read once, as that file, and named."""
    db_ws, files = db_workspace(tmp_path, csv_workspace(tmp_path, long_name=False), "P1", table_prefix="")
    expected = Path(run_export(db_ws, "P1")["result"].outputs["profiles"]).read_bytes()
    link = Path(files[0]).with_name("zlink.sqlite")
    link.symlink_to(Path(files[0]).name)
    got = run_export(db_ws, "P1", overwrite=True)
    not_read = got["report"]["export_database"]["files_not_read"]
    assert "zlink.sqlite" in not_read and Path(files[0]).name in not_read["zlink.sqlite"]
    assert got["report"]["totals"]["export_rows_dropped"] == 0
    assert Path(got["result"].outputs["profiles"]).read_bytes() == expected


def _wal_only(path: str, sql: str) -> None:
    """Leave ``path`` in WAL mode with ``sql``'s change in ``path-wal`` only (the file itself unchanged, no ``-shm``),
    as a CellProfiler run that was stopped before its last checkpoint leaves it."""
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute(sql)
        conn.commit()
        log = Path(path + "-wal").read_bytes()
        main_file = Path(path).read_bytes()
    finally:
        conn.close()  # checkpoints and removes the log: put the stopped run's files back
    Path(path).write_bytes(main_file)
    Path(path + "-wal").write_bytes(log)
    Path(path + "-shm").unlink(missing_ok=True)
    alone = sqlite3.connect(f"file:{path}?immutable=1", uri=True)  # immutable: the file without its log
    try:
        assert log and not alone.execute(sql.replace("UPDATE Per_Cells SET", "SELECT 1 FROM Per_Cells WHERE")).fetchall()
    finally:
        alone.close()


def test_a_write_ahead_log_is_read_with_its_file_and_said_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A run file left in WAL mode (a change in ``X.sqlite-wal``, not yet in the file): the change is in the
    profiles, the ``-wal``/``-shm`` files are named as read with that file (never as files not read), and a
    change of the log alone is a changed input (rebuilt, not skipped)."""
    import logging

    import pandas as pd

    db_ws, files = db_workspace(tmp_path, csv_workspace(tmp_path, long_name=False), "P1", table_prefix="")
    plain = pd.read_csv(run_export(db_ws, "P1")["result"].outputs["profiles"])
    assert (plain["Cells_AreaShape_Area"] != 12345).all()
    _wal_only(files[0], "UPDATE Per_Cells SET Cells_AreaShape_Area = 12345")
    with caplog.at_level(logging.WARNING, logger="cytoprofile"):
        got = run_export(db_ws, "P1", overwrite=True)
    profiles = pd.read_csv(got["result"].outputs["profiles"])
    changed = profiles["Cells_AreaShape_Area"] == 12345
    assert changed.any() and (profiles.loc[~changed, "Cells_AreaShape_Area"] != 12345).all()  # run1's wells only
    section = got["report"]["export_database"]
    wal = Path(files[0] + "-wal").name
    assert section["files_read_with"][wal].startswith(f"part of {Path(files[0]).name}: its write-ahead log")
    assert not any(n.endswith(("-wal", "-shm")) for n in section.get("files_not_read", {})), section
    assert not [r for r in caplog.records if "not read" in r.getMessage()], "the log is read: no warning says not"
    assert got["report"]["totals"]["export_rows_dropped"] == 0
    _wal_only(files[0], "UPDATE Per_Cells SET Cells_AreaShape_Area = 54321")  # the log changes again
    again = run_export(db_ws, "P1")
    assert again["result"].status == "done", "a changed write-ahead log is a changed input: rebuilt, not skipped"
    assert (pd.read_csv(again["result"].outputs["profiles"])["Cells_AreaShape_Area"] == 54321).sum() == changed.sum()


def test_a_write_ahead_log_in_a_read_only_folder_is_named_with_the_fix(tmp_path: Path) -> None:
    """SQLite cannot open a WAL-mode file whose folder it cannot write its ``-shm`` index to: one line naming the
    file and the fix, exit 1, never "the file is damaged". The folder is a read-only bind mount in a private
    mount namespace (read-only even for root)."""
    import os
    import shutil
    import subprocess
    import sys

    db_ws, files = db_workspace(tmp_path, csv_workspace(tmp_path, long_name=False), "P1", table_prefix="")
    _wal_only(files[0], "UPDATE Per_Cells SET Cells_AreaShape_Area = 12345")
    folder = Path(files[0]).parent
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed: cannot mount a read-only folder")
    readonly = f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder}"
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"{readonly} && ! touch {folder}/probe"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"a read-only bind mount is not allowed here: {probe.stderr.decode().strip()}")
    script = (f"{readonly} && {sys.executable} -m cytoprofile collate {db_ws} {BATCH} P1 -q --tmp-dir {tmp_path}; "
              "echo status=$?")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    err = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert "status=1" in done.stdout, done.stdout + done.stderr
    assert len(err) == 1 and "left in WAL mode" in err[0] and f"make {folder} writable" in err[0], err
    assert "damaged" not in done.stderr and "Traceback" not in done.stderr
    assert not list((db_ws / "backend").rglob("P1.*")), "nothing under a final name"
    assert not Path(files[0] + "-shm").exists()


def test_a_copy_without_its_write_ahead_log_is_no_copy(tmp_path: Path) -> None:
    """Two run files equal on disk, one with committed rows in its ``-wal``: they hold different rows, so neither
    is read once as a copy of the other (the log's rows were lost, exit 0); their images are named as clashing."""
    import sqlite3

    db_ws, files = db_workspace(tmp_path, csv_workspace(tmp_path, long_name=False), "P1", table_prefix="")
    conn = sqlite3.connect(files[0])
    conn.execute("PRAGMA journal_mode=WAL")  # in WAL mode, nothing pending: closing leaves the file alone
    conn.close()
    logged = Path(files[0]).with_name("zlogged.sqlite")
    shutil.copyfile(files[0], logged)
    _wal_only(str(logged), "UPDATE Per_Cells SET Cells_AreaShape_Area = 12345")
    assert logged.read_bytes() == Path(files[0]).read_bytes() and Path(str(logged) + "-wal").stat().st_size
    got = run_export(db_ws, "P1")
    section = got["report"]["export_database"]
    assert not [f for f in section.get("files", []) if "copy" in str(f.get("not_read", ""))], section.get("files")
    dropped = {d["file"] for d in section["dropped"]}
    assert any("zlogged.sqlite" in f for f in dropped) and any(Path(files[0]).name in f for f in dropped)
    assert got["report"]["totals"]["export_rows_dropped"] > 0  # named, not lost


def test_a_wal_mode_file_without_a_log_is_read_without_writing_beside_it(tmp_path: Path) -> None:
    """A run file in WAL mode whose log was checkpointed away: reading it creates no ``-wal``/``-shm`` in the
    input folder, so the next run sees the same inputs and skips the plate."""
    import sqlite3

    db_ws, files = db_workspace(tmp_path, csv_workspace(tmp_path, long_name=False), "P1", table_prefix="")
    conn = sqlite3.connect(files[0])
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    folder = Path(files[0]).parent
    before = sorted(p.name for p in folder.iterdir())
    first = run_export(db_ws, "P1")
    assert first["result"].status == "done"
    assert sorted(p.name for p in folder.iterdir()) == before, "nothing written into the input folder"
    assert collate_export(db_ws, BATCH, "P1").status == "skipped"


def test_an_interrupted_writer_s_journal_is_named_with_the_fix(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A hot ``-journal`` (a writer killed inside a transaction) must be rolled back before the file is read:
    one line naming the file and how, exit 1, nothing written, the input untouched."""
    import os
    import sqlite3

    db_ws, files = db_workspace(tmp_path, csv_workspace(tmp_path, long_name=False), "P1", table_prefix="")
    pid = os.fork()
    if pid == 0:  # a writer killed part way: more changed pages than its cache holds, so some reach the file
        conn = sqlite3.connect(files[0])
        conn.execute("PRAGMA cache_size=2")
        conn.execute("BEGIN")
        conn.execute("UPDATE Per_Cells SET Cells_AreaShape_Area = Cells_AreaShape_Area + 1")
        os._exit(0)
    os.waitpid(pid, 0)
    journal = Path(files[0] + "-journal")
    assert journal.stat().st_size > 0
    kept = Path(files[0]).read_bytes(), journal.read_bytes()
    capsys.readouterr()
    assert main(["collate", str(db_ws), BATCH, "P1", "-q"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "-journal beside it" in err[0] and "PRAGMA quick_check" in err[0], err
    assert "damaged" not in err[0] and "copy the file again" not in err[0]
    assert (Path(files[0]).read_bytes(), journal.read_bytes()) == kept, "the input is left as it was"
    assert not list((db_ws / "backend").rglob("P1.*"))


def _linked_elsewhere(tmp_path: Path, path: str) -> Path:
    """Move a run file out of the plate folder, leaving a symlink to it in its place; the target's path."""
    target = tmp_path / "elsewhere" / Path(path).name
    target.parent.mkdir(exist_ok=True)
    shutil.move(path, target)
    Path(path).symlink_to(target)
    return target


def test_the_write_ahead_log_of_a_linked_run_file_is_read_beside_its_target(tmp_path: Path) -> None:
    """A run file reached through a symlink has its ``-wal`` beside the file itself, where SQLite reads it: its rows
    are read (they were lost, exit 0, the file opened as if it had no log), and a change of it is seen."""
    import pandas as pd

    db_ws, files = db_workspace(tmp_path, csv_workspace(tmp_path, long_name=False), "P1", table_prefix="")
    target = _linked_elsewhere(tmp_path, files[0])
    _wal_only(str(target), "UPDATE Per_Cells SET Cells_AreaShape_Area = 12345")
    assert not Path(files[0] + "-wal").exists() and Path(str(target) + "-wal").stat().st_size
    got = run_export(db_ws, "P1")
    changed = (pd.read_csv(got["result"].outputs["profiles"])["Cells_AreaShape_Area"] == 12345).sum()
    assert changed > 0 and got["report"]["totals"]["export_rows_dropped"] == 0
    _wal_only(str(target), "UPDATE Per_Cells SET Cells_AreaShape_Area = 54321")
    again = run_export(db_ws, "P1")  # the log changed: a changed input, rebuilt
    assert (pd.read_csv(again["result"].outputs["profiles"])["Cells_AreaShape_Area"] == 54321).sum() == changed


def test_a_hot_journal_beside_a_linked_run_file_s_target_is_refused(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The journal of an interrupted writer beside the file a link points to: the file is refused (its
    unfinished change was stored, exit 0)."""
    import os
    import sqlite3

    db_ws, files = db_workspace(tmp_path, csv_workspace(tmp_path, long_name=False), "P1", table_prefix="")
    target = _linked_elsewhere(tmp_path, files[0])
    pid = os.fork()
    if pid == 0:
        conn = sqlite3.connect(target)
        conn.execute("PRAGMA cache_size=2")
        conn.execute("BEGIN")
        conn.execute("UPDATE Per_Cells SET Cells_AreaShape_Area = Cells_AreaShape_Area * 1000")
        os._exit(0)
    os.waitpid(pid, 0)
    assert Path(str(target) + "-journal").stat().st_size > 0
    capsys.readouterr()
    assert main(["collate", str(db_ws), BATCH, "P1", "-q"]) == 1
    assert "-journal beside it" in capsys.readouterr().err
    assert not list((db_ws / "backend").rglob("P1.*"))


def test_strict_fails_a_current_build_that_left_rows_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Built without --strict (rows left out, reported), a --strict re-run fails rather than skipping with exit 0
    (the route reads its files again on every run)."""
    ws = _faulty(tmp_path, "objects of no image")
    run_export(ws, "P1")
    capsys.readouterr()
    assert main(["collate", str(ws), BATCH, "P1", "--strict", "-q"]) == 1
    err = capsys.readouterr().err
    assert "ImageNumber 999" in err and "drop --strict" in err and "Traceback" not in err
