"""An empty Metadata_Site: filled from the site folder's name (and said), or warned about when the name gives none."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cytoprofile.collate import collate_plate

from . import faults
from .faults import BATCH, PLATE


def _sites_stored(result: object) -> list[object]:
    with sqlite3.connect(result.outputs["sqlite"]) as db:  # type: ignore[attr-defined]
        return [r[0] for r in db.execute("SELECT Metadata_Site FROM Image ORDER BY ImageNumber, TableNumber")]


@pytest.mark.parametrize("empty", ["", " "])
def test_an_empty_site_takes_the_folder_name_s_site(tmp_path: Path, empty: str) -> None:
    plate_dir = faults.small_plate(tmp_path / "ws")
    faults.set_image_value(faults.site(plate_dir, "A01", 2), "Metadata_Site", empty)
    result = collate_plate(tmp_path / "ws", BATCH, PLATE)
    assert result.status == "done", result.message
    assert None not in _sites_stored(result) and empty not in _sites_stored(result)
    entry = next(s for s in result.report["sites"] if s["site"] == f"{PLATE}-A01-2")  # type: ignore[index]
    assert any("Metadata_Site is empty" in n and "'2' is used" in n for n in entry.get("notes", [])), entry
    faults.assert_rows_accounted(result, plate_dir)


def test_a_copy_of_a_site_with_empty_sites_is_found_or_warned_about(tmp_path: Path) -> None:
    """A re-run's copy of a site beside it, both with Metadata_Site emptied: the copy, whose folder name gives
    no site, is warned about (its copies cannot be found by site) and found by its image files: quarantined with
    the original, never silently stored twice (before: both stored, the well's cells counted twice, no word)."""
    plate_dir = faults.small_plate(tmp_path / "ws")
    original = faults.site(plate_dir, "A01", 1)
    copy = faults.copy_site(plate_dir, original, f"{PLATE}-A01-1 (rerun)")
    faults.set_image_value(copy, "ExecutionTime_01Module", "9.5")
    for folder in (original, copy):
        faults.set_image_value(folder, "Metadata_Site", "")
    result = collate_plate(tmp_path / "ws", BATCH, PLATE)
    entry = next(s for s in result.report["sites"] if s["site"] == copy.name)  # type: ignore[index]
    assert entry["status"] == "quarantined" and "same image files" in entry["reason"], entry
    faults.assert_rows_accounted(result, plate_dir)


def test_an_empty_site_of_one_image_among_several_is_warned_about_not_filled(tmp_path: Path) -> None:
    """An Image.csv holding two images, the second with Metadata_Site empty: the folder's one site is not
    given to both images (before: two images stored as the same site, a note only)."""
    plate_dir = faults.small_plate(tmp_path / "ws")
    folder = faults.site(plate_dir, "A01", 1)
    faults.repeat_row(folder, "Image.csv")
    rows = faults.read_rows(folder / "Image.csv")
    header = rows[0]
    rows[2][header.index("ImageNumber")] = str(int(rows[1][header.index("ImageNumber")]) + 1000)
    rows[2][header.index("Metadata_Site")] = ""
    for k, name in enumerate(header):
        if name.startswith("Count_"):
            rows[2][k] = "0"  # an image with no objects: the object files stay as they are
    faults.write_rows(folder / "Image.csv", rows)
    result = collate_plate(tmp_path / "ws", BATCH, PLATE)
    entry = next(s for s in result.report["sites"] if s["site"] == folder.name)  # type: ignore[index]
    assert any("holds 2 images" in w for w in entry.get("warnings", [])), entry
    assert not any("is used" in n for n in entry.get("notes", [])), entry


@pytest.mark.parametrize("copy_name", [f"{PLATE}-A01-1 (rerun)", "rerun of A01 field 1"])
def test_a_copy_of_a_site_without_any_site_column_is_found_by_its_image_files(tmp_path: Path, copy_name: str) -> None:
    """Image.csv without a Metadata_Site column and a re-run's copy of a site under a folder name that gives no
    site: the two folders name the same image files, so both are quarantined naming each other (before: both
    stored, the well's cells counted twice, exit status 0, no word)."""
    plate_dir = faults.small_plate(tmp_path / "ws", sites=3)
    original = faults.site(plate_dir, "A01", 1)
    copy = faults.copy_site(plate_dir, original, copy_name)
    faults.set_image_value(copy, "ExecutionTime_01Module", "9.5")
    for folder in [f for f in plate_dir.iterdir() if f.is_dir()]:
        faults.keep_columns(folder, "Image", lambda c: c != "Metadata_Site")
    result = collate_plate(tmp_path / "ws", BATCH, PLATE)
    bad = {s["site"]: s["reason"] for s in result.report["sites"] if s["status"] == "quarantined"}  # type: ignore[index]
    assert set(bad) == {original.name, copy.name}, bad
    assert "same image files" in bad[copy.name] and original.name in bad[copy.name]
    faults.assert_rows_accounted(result, plate_dir)


def test_sites_sharing_only_an_illumination_file_are_not_taken_for_copies(tmp_path: Path) -> None:
    """A file column alike in every image (an illumination function) and no Metadata_Site: nothing is refused."""
    plate_dir = faults.small_plate(tmp_path / "ws", sites=3)
    for folder in [f for f in plate_dir.iterdir() if f.is_dir()]:
        faults.keep_columns(folder, "Image", lambda c: c != "Metadata_Site" and not c.startswith("FileName_Orig"))
        faults.add_image_column(folder, "FileName_IllumDNA", "illum_DNA.npy")
    result = collate_plate(tmp_path / "ws", BATCH, PLATE)
    bad = [s for s in result.report["sites"] if s["status"] != "ok"]  # type: ignore[index]
    assert result.status == "done" and not bad, bad


def test_one_site_twice_in_one_image_csv_is_quarantined(tmp_path: Path) -> None:
    """An Image.csv holding the same (well, site) under two ImageNumbers (an image set processed twice), each
    with its objects: the site is quarantined naming both (before: stored, the well's cells counted twice, exit
    status 0), as two folders of one site and the database route already are."""
    plate_dir = faults.small_plate(tmp_path / "ws")
    folder = faults.site(plate_dir, "A01", 1)
    for name in ("Image.csv", "Cells.csv", "Cytoplasm.csv", "Nuclei.csv"):
        rows = faults.read_rows(folder / name)
        at = rows[0].index("ImageNumber")
        faults.write_rows(folder / name, rows + [[("7" if k == at else v) for k, v in enumerate(r)] for r in rows[1:]])
    result = collate_plate(tmp_path / "ws", BATCH, PLATE)
    entry = next(s for s in result.report["sites"] if s["site"] == folder.name)  # type: ignore[index]
    assert entry["status"] == "quarantined" and "is both ImageNumber" in entry["reason"] and "7" in entry["reason"], entry
    faults.assert_rows_accounted(result, plate_dir)
