"""Something in the way of an output (a file where a folder goes, a folder where a file goes): one line naming
it, exit 1, and nothing published; a re-run's last build is left whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from cytoprofile.cli import main
from cytoprofile.synth import synth

OBSTACLES = {
    "file at backend": ("backend", "file"),
    "file at the batch folder": ("backend/BATCH1", "file"),
    "file at the plate folder": ("backend/BATCH1/P1", "file"),
    "folder at the SQLite file": ("backend/BATCH1/P1/P1.sqlite", "folder"),
    "folder at the profiles": ("backend/BATCH1/P1/P1.csv", "folder"),
    "folder at an output of another format": ("backend/BATCH1/P1/P1.parquet", "folder"),
}


def _workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    synth(ws, plates=["P1"], wells=96, well_subset=2, sites=1, cells=5, features=4)
    return ws


def _block(ws: Path, where: str, kind: str) -> Path:
    path = ws / where
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "file":
        path.write_text("in the way\n")
    else:
        (path / "x").mkdir(parents=True)
    return path


def _fails_in_one_line(ws: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    capsys.readouterr()
    assert main(["collate", str(ws), "BATCH1", "P1", "-q", *extra]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error") == 1, err
    return err


@pytest.mark.parametrize("obstacle", sorted(OBSTACLES))
def test_a_first_build_with_something_in_the_way(tmp_path: Path, obstacle: str, capsys: pytest.CaptureFixture[str]) -> None:
    ws = _workspace(tmp_path)
    where, kind = OBSTACLES[obstacle]
    path = _block(ws, where, kind)
    err = _fails_in_one_line(ws, capsys)
    assert str(path) in " ".join(err.split()) and "move it away" in err, err
    plate = ws / "backend/BATCH1/P1"
    published = sorted(p.name for p in plate.iterdir()) if plate.is_dir() else []
    assert set(published) <= {path.name}, f"outputs under final names: {published}"


@pytest.mark.parametrize("name", ["P1.csv", "P1.sqlite"])
def test_a_rebuild_with_a_folder_in_the_way_keeps_the_last_build(tmp_path: Path, name: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    ws = _workspace(tmp_path)
    assert main(["collate", str(ws), "BATCH1", "P1", "-q"]) == 0
    plate = ws / "backend/BATCH1/P1"
    before = {p.name: p.read_bytes() for p in plate.iterdir() if p.is_file() and p.name != name}
    (plate / name).unlink()
    _block(ws, f"backend/BATCH1/P1/{name}", "folder")
    _fails_in_one_line(ws, capsys, "--overwrite")
    after = {p.name: p.read_bytes() for p in plate.iterdir() if p.is_file()}
    assert after == before, "the last build's files (its report included) are left as they were"


@pytest.mark.parametrize("name", ["P1.csv", "P1.csv.generation", "P1.parquet"])
def test_an_aggregate_only_rerun_with_a_folder_in_the_way_keeps_the_last_build(
        tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``--aggregate-only --overwrite`` with a folder at the profiles' name (or its sidecar's, or a stale
    profile's): one line naming that folder, not a temporary file, and the last build kept, report included
    (before: the report was deleted first, then the write failed)."""
    ws = _workspace(tmp_path)
    assert main(["collate", str(ws), "BATCH1", "P1", "-q"]) == 0
    plate = ws / "backend/BATCH1/P1"
    before = {p.name: p.read_bytes() for p in plate.iterdir() if p.is_file() and p.name != name}
    if (plate / name).exists():
        (plate / name).unlink()
    path = _block(ws, f"backend/BATCH1/P1/{name}", "folder")
    err = _fails_in_one_line(ws, capsys, "--aggregate-only", "--overwrite")
    assert str(path) in " ".join(err.split()) and ".tmp" not in err, err
    after = {p.name: p.read_bytes() for p in plate.iterdir() if p.is_file()}
    assert after == before, "the last build's files (its report included) are left as they were"


@pytest.mark.parametrize("target", ["a file of the user's", "nothing"])
def test_a_link_at_the_lock_file_is_refused_and_its_target_left_alone(tmp_path: Path, target: str) -> None:
    """A link where the plate's lock file goes: one line, exit 1 (before: a link to nothing made collate
    retry forever; a link to a file had that file emptied and overwritten with a process id)."""
    import subprocess
    import sys

    ws = _workspace(tmp_path)
    victim = tmp_path / "precious.txt"
    if target != "nothing":
        victim.write_text("precious data\n")
    lock = ws / "backend/BATCH1/.P1.lock"
    lock.parent.mkdir(parents=True)
    lock.symlink_to(victim)
    run = subprocess.run([sys.executable, "-m", "cytoprofile", "collate", str(ws), "BATCH1", "P1", "-q"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    assert "is a link where cytoprofile keeps its lock file" in run.stderr and "Traceback" not in run.stderr
    assert (victim.read_text() == "precious data\n") if target != "nothing" else not victim.exists()
    assert lock.is_symlink(), "the user's link is left for the user to remove"
