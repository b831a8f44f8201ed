"""Re-runs of the ExportToDatabase route: scratch folders of killed runs go, changed files are said."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cytoprofile.exportdb import collate_export

from .exportdb_builders import BATCH, csv_workspace, db_workspace, run_export

#: a collate of the plate that stops inside its scratch folder (after writing the site folders) until killed
_KILLED_RUN = """
import sys, time
import cytoprofile.collate as collate
def hang(*args, **kwargs):
    print("inside", flush=True)
    time.sleep(120)
collate.collate_plate = hang
from cytoprofile.exportdb import collate_export
collate_export(sys.argv[1], sys.argv[2], "P1", tmp_dir=sys.argv[3], overwrite=sys.argv[4] == "1")
"""


def _kill_mid_run(ws: Path, scratch: Path, *, overwrite: bool) -> list[Path]:
    """Run a collate in a subprocess, SIGKILL it inside its scratch folder: the folders it left."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, str(ws), BATCH, str(scratch), "1" if overwrite else "0"],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "inside"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    left = sorted(scratch.iterdir())
    assert left and all(p.name.startswith("cytoprofile-export-") for p in left)
    assert any((p / "analysis").exists() for p in left)
    return left


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_killed_run_s_scratch_folder_is_removed_by_the_next_run(tmp_path: Path, overwrite: bool) -> None:
    """The next run removes it whether it rebuilds (a first run was killed) or is skipped (a killed
    ``--overwrite`` of a finished plate leaves the finished outputs current)."""
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, _ = db_workspace(tmp_path, csv_ws, "P1", files=1)
    scratch = tmp_path / "scratch"
    if overwrite:
        assert collate_export(db_ws, BATCH, "P1", tmp_dir=str(scratch)).status == "done"
    _kill_mid_run(db_ws, scratch, overwrite=overwrite)
    again = collate_export(db_ws, BATCH, "P1", tmp_dir=str(scratch))
    assert again.status == ("skipped" if overwrite else "done"), again.message
    assert list(scratch.iterdir()) == []


def _messages(caplog: pytest.LogCaptureFixture, plate: str) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if "replacing" in r.getMessage()
            and r.getMessage().startswith(f"{plate}:")]


@pytest.mark.parametrize("change", ["added", "removed", "changed"])
def test_changed_run_files_are_said_like_changed_csvs(tmp_path: Path, change: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, files = db_workspace(tmp_path, csv_ws, "P1", files=2)
    spare = tmp_path / "run2.sqlite"
    if change == "added":
        shutil.move(files[1], spare)
    run_export(db_ws, "P1")
    if change == "added":
        shutil.move(spare, files[1])
    elif change == "removed":
        Path(files[1]).unlink()
    else:
        with open(files[1], "ab") as fh:  # a file copied again, longer
            fh.write(b"\0" * 512)
    with caplog.at_level(logging.INFO, logger="cytoprofile"):
        run_export(db_ws, "P1")
    said = _messages(caplog, "P1")
    name = os.path.relpath(files[1], db_ws)
    assert said == [(logging.WARNING, "P1: the plate's input files changed since the last build (files added, removed "
                     f"or changed): {name} {change}; replacing " + said[0][1].split("; replacing ", 1)[1])]
    assert "--overwrite" not in said[0][1]


def test_overwrite_of_the_same_files_still_says_overwrite(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, _ = db_workspace(tmp_path, csv_ws, "P1", files=1)
    run_export(db_ws, "P1")
    with caplog.at_level(logging.INFO, logger="cytoprofile"):
        run_export(db_ws, "P1", overwrite=True)
    said = _messages(caplog, "P1")
    assert len(said) == 1 and said[0][0] == logging.INFO and said[0][1].startswith("P1: --overwrite; replacing ")


def test_another_user_s_scratch_folder_is_left_alone(tmp_path: Path) -> None:
    """In a shared temporary folder, another user's scratch folders (a killed run's, lock free) are theirs:
    a run neither removes them nor fails on them (unreadable to it, they stopped every run with a
    'cannot write' naming their folder)."""
    import os

    from cytoprofile.workspace import scratch_dir

    scratch = tmp_path / "scratch"
    theirs = scratch / "cytoprofile-export-P1-theirs"
    theirs.mkdir(parents=True)
    (theirs / ".cytoprofile-scratch.lock").write_text("")
    (theirs / "data.csv").write_text("x\n")
    if os.geteuid() != 0:
        pytest.skip("only root can make a folder owned by another user")
    os.chown(theirs, 65534, 65534)
    os.chown(theirs / ".cytoprofile-scratch.lock", 65534, 65534)
    theirs.chmod(0o700)
    with scratch_dir(str(scratch), "cytoprofile-export-P1-") as mine:
        assert Path(mine).is_dir()
    assert (theirs / "data.csv").exists()
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, _ = db_workspace(tmp_path, csv_ws, "P1", files=1)
    assert collate_export(db_ws, BATCH, "P1", tmp_dir=str(scratch)).status == "done"
    assert theirs.exists()


@pytest.mark.parametrize("damage", ["emptied profiles", "another build's backend"])
def test_an_output_the_report_does_not_vouch_for_is_rebuilt(tmp_path: Path, damage: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """An emptied P1.csv, or a P1.sqlite of another build, is not a complete output: the plate is rebuilt, as
    on the CSV route (before: "skipped: complete outputs exist", exit 0, the damage kept)."""
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, _ = db_workspace(tmp_path, csv_ws, "P1", files=1)
    first = run_export(db_ws, "P1")
    profiles = Path(first["result"].outputs["profiles"])
    intact = profiles.read_bytes()
    if damage == "emptied profiles":
        profiles.write_bytes(b"")
    else:
        other = tmp_path / "other"
        shutil.copytree(db_ws, other)
        run_export(other, "P1", overwrite=True)  # the same plate built again: another generation id
        shutil.copy(Path(str(first["sqlite"]).replace(str(db_ws), str(other))), first["sqlite"])
    with caplog.at_level(logging.INFO, logger="cytoprofile"):
        again = collate_export(db_ws, BATCH, "P1")
    assert again.status == "done", again.message
    assert profiles.read_bytes() == intact
    said = _messages(caplog, "P1")
    assert said and said[0][0] == logging.WARNING and "does not match the plate's report" in said[0][1], said
    assert collate_export(db_ws, BATCH, "P1").status == "skipped"


def test_a_changed_table_prefix_is_said_as_a_changed_option(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Files holding two prefixes' tables, read with one and then the other: the rebuild names the option at
    WARNING (before: "--overwrite", which was never given, at INFO)."""
    import sqlite3

    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, files = db_workspace(tmp_path, csv_ws, "P1", files=1)
    with sqlite3.connect(files[0]) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        prefix = next(t for t in tables if t.endswith("Per_Image"))[: -len("Per_Image")]
        for t in tables:
            if t.startswith(prefix):
                db.execute(f'CREATE TABLE "Other_{t[len(prefix):]}" AS SELECT * FROM "{t}"')
    run_export(db_ws, "P1", table_prefix=prefix)
    with caplog.at_level(logging.INFO, logger="cytoprofile"):
        run_export(db_ws, "P1", table_prefix="Other_")
    said = _messages(caplog, "P1")
    assert said and said[0][0] == logging.WARNING and "options changed since the last build (table_prefix)" in said[0][1], said


def test_a_kept_parquet_table_removed_on_the_database_route_is_rebuilt(tmp_path: Path) -> None:
    """Built with both backends, re-run with SQLite only, then a kept Parquet table removed: skipped as complete
    (exit 0) with the report listing the missing table; every listed output is checked now."""
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, _ = db_workspace(tmp_path, csv_ws, "P1", files=1)
    first = run_export(db_ws, "P1", backend=("sqlite", "parquet"))
    collate_export(db_ws, BATCH, "P1")  # SQLite asked for: the Parquet tables stay listed
    table = Path(first["sqlite"]).parent / "P1_Nuclei.parquet"
    assert table.name in json.loads(Path(first["result"].outputs["report"]).read_text())["outputs"]
    assert collate_export(db_ws, BATCH, "P1").status == "skipped"
    table.unlink()
    assert collate_export(db_ws, BATCH, "P1").status == "done"
    assert collate_export(db_ws, BATCH, "P1").status == "skipped"
