"""Re-runs see every change of an input file, a same-size edit included, without hashing unchanged files again."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from cytoprofile import io
from cytoprofile.collate import collate_plate, plan
from cytoprofile.digest import file_digest

from . import faults
from .faults import BATCH, PLATE


def _age(root: Path, seconds: float = 3600) -> None:
    """Every file as written ``seconds`` ago (inputs copied in before a run, not while it records them)."""
    then = time.time() - seconds
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (then, then))


def _edit_keeping_size(path: Path, column: str) -> None:
    """Change the first digit of ``column`` in every data row (1 -> 9, other digits -> 1): same byte size."""
    lines = path.read_text().splitlines()
    j = lines[0].split(",").index(column)
    out = [lines[0]]
    for line in lines[1:]:
        fields = line.split(",")
        fields[j] = re.sub(r"\d", lambda m: "9" if m.group() == "1" else "1", fields[j], count=1)
        out.append(",".join(fields))
    size = path.stat().st_size
    path.write_text("\n".join(out) + "\n")
    assert path.stat().st_size == size


def _counting(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"hashed": 0}
    real = plan.file_digest

    def digest(path: str) -> str:
        calls["hashed"] += 1
        return real(path)

    monkeypatch.setattr(plan, "file_digest", digest)
    return calls


def _files(plate_dir: Path) -> int:
    return sum(1 for p in plate_dir.rglob("*") if p.is_file())


def test_a_same_size_edit_rebuilds_the_plate(tmp_path: Path) -> None:
    plate_dir = faults.small_plate(tmp_path / "ws", wells=2, sites=2, cells=5)
    first = collate_plate(tmp_path / "ws", BATCH, PLATE)
    assert first.status == "done"
    before = io.read_table(first.outputs["profiles"])
    cells = faults.site(plate_dir, "A01", 1) / "Cells.csv"
    _edit_keeping_size(cells, "AreaShape_Area")
    again = collate_plate(tmp_path / "ws", BATCH, PLATE)
    assert again.status == "done", "a changed file rebuilds the plate"
    after = io.read_table(again.outputs["profiles"])
    assert after.loc[0, "Cells_AreaShape_Area"] != before.loc[0, "Cells_AreaShape_Area"]
    assert after.loc[1, "Cells_AreaShape_Area"] == before.loc[1, "Cells_AreaShape_Area"]
    shutil.copytree(tmp_path / "ws" / "analysis", tmp_path / "fresh" / "analysis")
    fresh = collate_plate(tmp_path / "fresh", BATCH, PLATE)
    pd.testing.assert_frame_equal(after, io.read_table(fresh.outputs["profiles"]))
    assert collate_plate(tmp_path / "ws", BATCH, PLATE).status == "skipped"


@pytest.mark.parametrize("how", ["touch -d", "replaced by a copy"])
def test_a_same_size_edit_that_puts_the_mtime_back_rebuilds_the_plate(tmp_path: Path, how: str) -> None:
    """An edit keeping the size whose old mtime is put back (``touch -d``, ``cp -p`` of another version) once
    reused the recorded digest: the re-run skipped the plate and kept the old profiles."""
    plate_dir = faults.small_plate(tmp_path, wells=2, sites=2, cells=5)
    _age(tmp_path / "analysis")
    first = collate_plate(tmp_path, BATCH, PLATE)
    assert first.status == "done"
    before = io.read_table(first.outputs["profiles"])
    cells = faults.site(plate_dir, "A01", 1) / "Cells.csv"
    st = cells.stat()
    if how == "touch -d":
        _edit_keeping_size(cells, "AreaShape_Area")
    else:
        copy = cells.with_name("Cells.csv.new")
        shutil.copy(cells, copy)
        _edit_keeping_size(copy, "AreaShape_Area")
        copy.replace(cells)
    os.utime(cells, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (cells.stat().st_size, cells.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    again = collate_plate(tmp_path, BATCH, PLATE)
    assert again.status == "done", "the edit is seen"
    after = io.read_table(again.outputs["profiles"])
    assert after.loc[0, "Cells_AreaShape_Area"] != before.loc[0, "Cells_AreaShape_Area"]
    assert collate_plate(tmp_path, BATCH, PLATE).status == "skipped"


def test_an_unchanged_rerun_skips_without_hashing_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plate_dir = faults.small_plate(tmp_path, wells=2, sites=2, cells=5)
    _age(tmp_path / "analysis")
    calls = _counting(monkeypatch)
    first = collate_plate(tmp_path, BATCH, PLATE)
    # a first build takes its input record from the bytes the read pass read: no file is read again to hash it
    assert first.status == "done" and calls["hashed"] == 0
    recorded = first.report["input_files"]["files"]
    assert len(recorded) == _files(plate_dir)
    assert all(len(entry) == 5 and isinstance(entry[2], str) for entry in recorded.values())
    assert {rel: e[2] for rel, e in recorded.items()} == {rel: file_digest(str(plate_dir / rel)) for rel in recorded}
    calls["hashed"] = 0
    assert collate_plate(tmp_path, BATCH, PLATE).status == "skipped"
    assert calls["hashed"] == 0, "files with their recorded size and mtime are not read again"
    touched = faults.site(plate_dir, "A02", 2) / "Nuclei.csv"
    os.utime(touched, (time.time() - 60, time.time() - 60))  # a new mtime, the same content
    assert collate_plate(tmp_path, BATCH, PLATE).status == "skipped"
    assert calls["hashed"] == 1


def test_a_file_changed_right_after_it_was_recorded_is_hashed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An mtime too close to the recording may hide a same-size edit within the filesystem's time resolution."""
    plate_dir = faults.small_plate(tmp_path, wells=1, sites=1, cells=4)
    calls = _counting(monkeypatch)
    assert collate_plate(tmp_path, BATCH, PLATE).status == "done"
    calls["hashed"] = 0
    assert collate_plate(tmp_path, BATCH, PLATE).status == "skipped"
    assert calls["hashed"] == _files(plate_dir)  # just written: none of the records is trusted


def test_added_removed_and_broken_files_change_the_state(tmp_path: Path) -> None:
    plate_dir = faults.small_plate(tmp_path, wells=1, sites=2, cells=4)
    _age(tmp_path / "analysis")
    base = plan.input_state(tmp_path, BATCH, PLATE)
    extra = faults.site(plate_dir, "A01", 1) / "notes.txt"
    extra.write_text("x")
    added = plan.input_state(tmp_path, BATCH, PLATE, report=base.record())
    assert added.digest != base.digest and added.hashed == 1
    extra.unlink()
    (faults.site(plate_dir, "A01", 1) / "gone.csv").symlink_to(tmp_path / "nowhere.csv")
    broken = plan.input_state(tmp_path, BATCH, PLATE, report=base.record())
    assert broken.digest not in (base.digest, added.digest)
    assert broken.files["P1-A01-1/gone.csv"] == [-1, None, None]


def test_report_keeps_what_the_skip_compares(tmp_path: Path) -> None:
    faults.small_plate(tmp_path, wells=1, sites=1, cells=3)
    result = collate_plate(tmp_path, BATCH, PLATE)
    report: dict[str, Any] = result.report
    state = plan.input_state(tmp_path, BATCH, PLATE)
    assert report["inputs"] == state.digest
    assert {k: v[::2] for k, v in report["input_files"]["files"].items()} == {k: v[::2] for k, v in state.files.items()}


def test_object_storage_without_etags_says_re_runs_compare_sizes_only(monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    root = "s3://bucket/ws/analysis/B1/P1/analysis"
    listing = {f"{root}/P1-A01-1/Image.csv": (120, ""), f"{root}/P1-A01-1/Cells.csv": (900, "abc")}
    monkeypatch.setattr(plan, "list_etags", lambda prefix: listing)
    with caplog.at_level("WARNING", logger="cytoprofile.collate"):
        state = plan.remote_state("s3://bucket/ws", "B1", "P1")
    assert state.files == {"P1-A01-1/Image.csv": [120, ""], "P1-A01-1/Cells.csv": [900, "abc"]}
    assert ("P1: 1 input file(s) on object storage have no ETag (first: P1-A01-1/Image.csv); a re-run compares them "
            "by size only") in caplog.text


def test_a_file_changed_after_the_build_read_it_is_recorded_as_read(tmp_path: Path) -> None:
    """The record of a first build is what it read: a file changed since then differs from it, so the next run
    rebuilds."""
    plate_dir = faults.small_plate(tmp_path, wells=1, sites=1, cells=4)
    _age(tmp_path / "analysis")
    cells = faults.site(plate_dir, "A01", 1) / "Cells.csv"
    st = cells.stat()
    read = {os.path.abspath(cells): (st.st_size, st.st_mtime_ns, time.time_ns(), "digest-of-what-was-read",
                                     st.st_ctime_ns, st.st_ino)}
    cells.write_text(cells.read_text() + cells.read_text().splitlines()[1] + "\n")
    state = plan.input_state(tmp_path, BATCH, PLATE, read=read)
    rel = os.path.relpath(cells, plate_dir)
    assert state.files[rel] == [st.st_size, st.st_mtime_ns, "digest-of-what-was-read", st.st_ctime_ns, st.st_ino]
    again = plan.input_state(tmp_path, BATCH, PLATE, report=state.record())
    assert again.digest != state.digest and again.hashed >= 1
