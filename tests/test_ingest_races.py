"""Input that changes while collate reads it (CellProfiler still writing the plate): what was read is in the
outputs, what came later is named and rebuilt by the next run, never recorded as read."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cytoprofile.collate import collate_plate
from cytoprofile.collate import plate as plate_module
from cytoprofile.errors import InputError

from . import faults
from .faults import BATCH, PLATE


def _during_build(monkeypatch: pytest.MonkeyPatch, change: Callable[[], None]) -> None:
    """Run ``change`` once the build has scanned and read the plate (before its outputs are committed)."""
    real = plate_module.build_plate

    def build(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        change()
        return out

    monkeypatch.setattr(plate_module, "build_plate", build)


@pytest.mark.parametrize("late", ["site", "table"])
def test_a_file_that_arrives_during_the_first_build_is_named_and_rebuilt(
        tmp_path: Path, late: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    analysis = faults.small_plate(tmp_path / "ws", wells=2, sites=2)
    moving = faults.site(analysis, "A02", 2)
    held = tmp_path / "held"
    source = moving if late == "site" else moving / "Cells.csv"
    shutil.move(source, held)
    _during_build(monkeypatch, lambda: shutil.move(held, source))
    first = collate_plate(tmp_path / "ws", BATCH, PLATE)
    assert first.status == "done"
    said = [r.getMessage() for r in caplog.records if "appeared while the plate was read" in r.getMessage()]
    assert said and moving.name in said[0], [r.getMessage() for r in caplog.records]
    monkeypatch.undo()
    second = collate_plate(tmp_path / "ws", BATCH, PLATE)
    assert second.status == "done", second.message  # not "skipped": the late file was never read
    sites = {s["site"]: s["status"] for s in second.report["sites"]}
    assert sites[moving.name] == "ok" and len(sites) == 4
    faults.assert_rows_accounted(second, analysis)
    third = collate_plate(tmp_path / "ws", BATCH, PLATE)
    assert third.status == "skipped"


@pytest.mark.parametrize("how", ["replaced", "rewritten"])
def test_an_object_file_changed_between_scan_and_read_fails_the_plate(
        tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The header comes from the scan, the rows from the later read: two versions would swap measurements."""
    from cytoprofile.ingest import objects

    analysis = faults.small_plate(tmp_path / "ws", wells=2, sites=2)
    target = faults.site(analysis, "A02", 2) / "Cells.csv"
    rows = faults.read_rows(target)
    swapped = [[r[1], r[0], *r[2:]] if r else r for r in rows]  # two columns swapped, header and data
    real = objects.read_bytes

    def read(path: str, **kw: Any) -> bytes:
        if path == str(target) and not target.with_suffix(".done").exists():
            target.with_suffix(".done").touch()
            if how == "replaced":
                faults.write_rows(target.with_suffix(".new"), swapped)
                target.with_suffix(".new").replace(target)
            else:
                faults.write_rows(target, swapped + [swapped[-1]])
        return real(path, **kw)

    monkeypatch.setattr(objects, "read_bytes", read)
    with pytest.raises(InputError, match="changed while collate read the plate") as caught:
        collate_plate(tmp_path / "ws", BATCH, PLATE)
    assert str(target) in str(caught.value)
    assert not (tmp_path / "ws" / "backend" / BATCH / PLATE / f"{PLATE}.report.json").exists()
    monkeypatch.undo()
    target.with_suffix(".done").unlink()
    again = collate_plate(tmp_path / "ws", BATCH, PLATE)
    assert again.status == "done", again.message
    faults.assert_rows_accounted(again, analysis)
