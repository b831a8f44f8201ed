"""A plate on object storage is read exactly as the same plate on disk (a real S3 server, moto, on loopback).

Each fixture shape is built locally, collated locally, uploaded unchanged and collated
from S3; the reports (tables, rows, sites, quarantines, files not stored), the backends
and the profiles must be the same.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cytoprofile import io
from cytoprofile.collate import collate, collate_plate
from cytoprofile.synth import synth

from . import faults
from .loopback import make_bucket, upload_tree

BACKENDS = ("sqlite", "parquet")


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    """A fresh bucket of the S3 server, as the workspace URL ``s3://BUCKET/ws``."""
    return f"s3://{make_bucket(s3_endpoint)}/ws"


# --- shapes: each mutates a small synthetic plate's analysis folder in place -------------


def _gzip(plate_dir: Path) -> None:
    faults.drop_rows(faults.site(plate_dir, "A02", 1), "Cells", 1)  # Count_Cells disagrees: quarantined, named
    for folder in sorted(plate_dir.iterdir()):
        faults.rename_files(folder, lambda n: n + ".gz", compress=True)


def _gzip_upper(plate_dir: Path) -> None:
    for folder in sorted(plate_dir.iterdir()):
        faults.rename_files(folder, lambda n: n.upper() + ".GZ", compress=True)


def _upper(plate_dir: Path) -> None:
    for folder in sorted(plate_dir.iterdir()):
        faults.rename_files(folder, str.upper)


def _prefix(plate_dir: Path) -> None:
    for folder in sorted(plate_dir.iterdir()):
        faults.rename_files(folder, lambda n: f"MyExpt_{n}")
        (folder / "MyExpt_Experiment.csv").write_text("Key,Value\nCellProfiler_Version,4.2.6\n")


def _extra_tables(plate_dir: Path) -> None:
    for folder in sorted(plate_dir.iterdir()):
        faults.add_object_table(folder, "Cells_Cellpose3", like="Cells")
        faults.add_object_table(folder, "preNuclei_Cellpose3", rows=0)  # header-only, Count_ says 0
    faults.add_object_table(faults.site(plate_dir, "A02", 2), "Cells - Copy", like="Cells", count=False)
    faults.add_object_table(faults.site(plate_dir, "A01", 1), "Speckles", count=True)


def _object_csv(plate_dir: Path) -> None:
    for folder in sorted(plate_dir.iterdir()):
        faults.to_object_csv(folder)


def _experiment_and_images(plate_dir: Path) -> None:
    for folder in sorted(plate_dir.iterdir()):
        (folder / "experiment.csv").write_text("Key,Value\nCellProfiler_Version,4.2.6\nRun,7\n")
        (folder / "illum_DNA.npy").write_bytes(b"\x93NUMPY" + bytes(4096))  # a file the reader never opens
    faults.drop_rows(faults.site(plate_dir, "A01", 2), "Nuclei", 1)  # Count_Nuclei disagrees: quarantined


SHAPES: dict[str, Callable[[Path], None]] = {
    "gzip": _gzip,
    "gzip-upper": _gzip_upper,
    "upper": _upper,
    "prefix": _prefix,
    "extra-tables": _extra_tables,
    "object-csv": _object_csv,
    "experiment-images": _experiment_and_images,
}
QUARANTINING = {"gzip", "experiment-images"}


def _comparable(report: dict[str, Any]) -> dict[str, Any]:
    """A report without what differs between any two runs (timings, generation ids)."""
    out = {k: v for k, v in report.items() if k not in ("seconds", "generation", "outputs", "inputs", "input_files")}
    out["outputs"] = sorted(report["outputs"])
    # the same files and sizes; what stands for their content differs by design (digests on disk, ETags on S3)
    out["input_sizes"] = {rel: entry[0] for rel, entry in (report.get("input_files") or {}).get("files", {}).items()}
    if "export_database" in out:  # the files' modification times: the copy's on disk, the object's on S3
        section = dict(out["export_database"])
        section["sources"] = [entry[:2] for entry in section["sources"]]
        out["export_database"] = section
    return out


def _tables(path: str) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(path)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'") if r[0] != "cytoprofile_run"]
        return {n: sorted(conn.execute(f'SELECT * FROM "{n}"').fetchall(), key=repr) for n in names}
    finally:
        conn.close()


def _fetch(url: str, to: Path) -> Path:
    io.download([url], [str(to)])
    return to


def _assert_same_plate(local: Any, remote: Any, tmp_path: Path) -> None:
    assert remote.status == local.status == "done", (local.message, remote.message)
    assert _comparable(remote.report) == _comparable(local.report)
    profiles = _fetch(remote.outputs["profiles"], tmp_path / "remote.csv")
    assert profiles.read_bytes() == Path(local.outputs["profiles"]).read_bytes()
    backend = _fetch(remote.outputs["sqlite"], tmp_path / "remote.sqlite")
    assert _tables(str(backend)) == _tables(local.outputs["sqlite"])


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_s3_plate_is_read_as_the_local_plate(bucket: str, tmp_path: Path, shape: str) -> None:
    ws = tmp_path / "ws"
    plate_dir = faults.small_plate(ws, wells=2, sites=2)
    SHAPES[shape](plate_dir)
    local = collate_plate(ws, faults.BATCH, faults.PLATE, backend=BACKENDS)
    faults.assert_rows_accounted(local, plate_dir)
    assert local.report["totals"]["sites_quarantined"] == (1 if shape in QUARANTINING else 0)
    upload_tree(ws, bucket, under="analysis")
    remote = collate_plate(bucket, faults.BATCH, faults.PLATE, backend=BACKENDS, tmp_dir=str(tmp_path / "scratch"))
    _assert_same_plate(local, remote, tmp_path)
    assert list((tmp_path / "scratch").iterdir()) == []


def test_s3_rerun_rebuilds_when_the_input_files_changed(bucket: str, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    plate_dir = faults.small_plate(ws, wells=2, sites=2)
    upload_tree(ws, bucket, under="analysis")
    first = collate_plate(bucket, faults.BATCH, faults.PLATE)
    assert first.status == "done"
    assert collate_plate(bucket, faults.BATCH, faults.PLATE).status == "skipped"
    added = faults.copy_site(plate_dir, faults.site(plate_dir, "A01", 2), f"{faults.PLATE}-A01-3")
    for path in sorted(added.iterdir()):
        io.upload(path, io.join(bucket, path.relative_to(ws).as_posix()))
    again = collate_plate(bucket, faults.BATCH, faults.PLATE)
    assert again.status == "done", again.message
    assert again.report is not None and first.report is not None
    assert again.report["inputs"] != first.report["inputs"]
    assert again.report["totals"]["sites"] == 5
    files = again.report["input_files"]["files"]
    assert sorted(files) == sorted(p.relative_to(plate_dir).as_posix() for p in plate_dir.rglob("*") if p.is_file())
    assert all(len(entry) == 2 and entry[1] for entry in files.values())  # size and ETag from the listing


def test_s3_rerun_rebuilds_after_a_same_size_edit(bucket: str, tmp_path: Path) -> None:
    """On object storage the listing's ETag stands for the content: an edit keeping the size is seen."""
    ws = tmp_path / "ws"
    plate_dir = faults.small_plate(ws, wells=2, sites=1)
    upload_tree(ws, bucket, under="analysis")
    assert collate_plate(bucket, faults.BATCH, faults.PLATE).status == "done"
    cells = faults.site(plate_dir, "A01", 1) / "Cells.csv"
    rows = faults.read_rows(cells)
    j = rows[0].index("AreaShape_Area")
    rows[1][j] = ("9" if rows[1][j][0] != "9" else "1") + rows[1][j][1:]
    size = cells.stat().st_size
    faults.write_rows(cells, rows)
    assert cells.stat().st_size == size
    io.upload(cells, io.join(bucket, cells.relative_to(ws).as_posix()))
    again = collate_plate(bucket, faults.BATCH, faults.PLATE)
    assert again.status == "done", "the edited file rebuilds the plate"
    assert collate_plate(bucket, faults.BATCH, faults.PLATE).status == "skipped"


def test_s3_files_no_reader_opens_are_not_downloaded(bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = tmp_path / "ws"
    plate_dir = faults.small_plate(ws, wells=1, sites=1)
    folder = faults.site(plate_dir, "A01", 1)
    (folder / "DNA.tiff").write_bytes(os.urandom(2048))
    (folder / "old").mkdir()
    faults.write_rows(folder / "old" / "Cells.csv.gz", faults.read_rows(folder / "Cells.csv"))
    upload_tree(ws, bucket, under="analysis")
    fetched: list[str] = []
    real = io.download

    def _spy(urls: list[str], local_paths: list[str], **kw: Any) -> None:
        fetched.extend(urls)
        real(urls, local_paths, **kw)

    monkeypatch.setattr(io, "download", _spy)
    result = collate_plate(bucket, faults.BATCH, faults.PLATE)
    assert result.status == "done", result.message
    names = sorted(u.rsplit("/", 2)[-2] + "/" + u.rsplit("/", 1)[-1] if "/old/" in u else u.rsplit("/", 1)[-1] for u in fetched)
    assert names == ["Cells.csv", "Cytoplasm.csv", "Image.csv", "Nuclei.csv", "old/Cells.csv.gz"]
    assert result.report is not None
    assert f"{folder.name}/DNA.tiff" in result.report["input_files"]["files"]  # listed, not fetched


@pytest.mark.parametrize("given", ["found", "option"])
def test_s3_export_database_is_read_as_locally(bucket: str, tmp_path: Path, given: str) -> None:
    ws = tmp_path / "ws"
    synth(ws, batch=faults.BATCH, plates=[faults.PLATE], wells=96, well_subset=3, sites=2, cells=5, features=4,
          export="database", export_files=2)
    files = sorted((ws / "analysis" / faults.BATCH / faults.PLATE).glob("*.sqlite"))
    assert files
    export_db = [str(f) for f in files] if given == "option" else []
    [local] = collate(ws, faults.BATCH, [faults.PLATE], export_db=export_db)
    upload_tree(ws, bucket, under="analysis")
    remote_db = [io.join(bucket, f.relative_to(ws).as_posix()) for f in files] if given == "option" else []
    [remote] = collate(bucket, faults.BATCH, [faults.PLATE], export_db=remote_db, tmp_dir=str(tmp_path / "scratch"))
    _assert_same_plate(local, remote, tmp_path)
    [again] = collate(bucket, faults.BATCH, [faults.PLATE], export_db=remote_db, tmp_dir=str(tmp_path / "scratch"))
    assert again.status == "skipped", again.message
    assert list((tmp_path / "scratch").iterdir()) == []


def _ours(names: list[str]) -> list[str]:
    return sorted(n for n in names if n.startswith(faults.PLATE) and not n.startswith("."))


def test_s3_aggregate_only_keeps_and_removes_outputs_as_locally(bucket: str, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    faults.small_plate(ws, wells=2, sites=2)
    upload_tree(ws, bucket, under="analysis")
    built = {w: collate_plate(w, faults.BATCH, faults.PLATE, backend=BACKENDS) for w in (str(ws), bucket)}
    assert {r.status for r in built.values()} == {"done"}
    again = {w: collate_plate(w, faults.BATCH, faults.PLATE, backend=("sqlite",), profile_format="parquet",
                              aggregate_only=True, operation="mean") for w in (str(ws), bucket)}
    local, remote = again[str(ws)], again[bucket]
    assert remote.status == local.status == "done", (local.message, remote.message)
    assert remote.report is not None and local.report is not None
    assert sorted(remote.report["outputs"]) == sorted(local.report["outputs"])
    folder = ws / "backend" / faults.BATCH / faults.PLATE
    remote_names = [u.rsplit("/", 1)[-1] for u in io.list_files(io.join(bucket, "backend", faults.BATCH, faults.PLATE))]
    assert _ours(remote_names) == _ours(os.listdir(folder))
    profiles = _fetch(remote.outputs["profiles"], tmp_path / "remote.parquet")
    assert io.read_table(profiles).equals(io.read_table(local.outputs["profiles"]))


_HOLD_SCRATCH = """
import sys, time
from cytoprofile.workspace import scratch_dir
with scratch_dir(sys.argv[1], sys.argv[2]) as folder:
    open(folder + "/half-written.csv", "w").write("a,b\\n")
    print(folder, flush=True)
    time.sleep(600)
"""


def _hold_scratch(parent: Path, prefix: str) -> tuple[subprocess.Popen[str], Path]:
    """A process inside a scratch folder of ``parent`` (to be killed, or left running)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_SCRATCH, str(parent), prefix], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_s3_run_scratch_of_killed_runs_is_removed(bucket: str, tmp_path: Path) -> None:
    import signal

    from cytoprofile.config import config_template
    from cytoprofile.errors import InputError
    from cytoprofile.pipeline import run

    ws = tmp_path / "ws"
    synth(ws, batch="B1", plates=["P1"], wells=96, well_subset=8, sites=1, cells=6, features=4)
    for path in sorted(p for p in ws.rglob("*") if p.is_file()):
        io.upload(path, io.join(bucket, path.relative_to(ws).as_posix()))
    assert collate_plate(bucket, "B1", "P1").status == "done"
    config = tmp_path / "config.yml"
    config.write_text(config_template(workspace=bucket, batch="B1", plates=["P1"]))
    scratch = tmp_path / "scratch"
    live, busy = _hold_scratch(scratch, "run-P1")
    try:
        killed, leftover = _hold_scratch(scratch, "run-P1")  # a live run's folder is not cleaned
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        assert leftover.is_dir() and busy.is_dir()
        result = run(config, tmp_dir=str(scratch))
        assert result.outputs
        assert not leftover.exists(), "the killed run's scratch folder is removed by the next run"
        assert sorted(scratch.iterdir()) == [busy], "only the live run's folder is left"
        for url in io.list_files(io.join(bucket, "backend", "B1", "P1")):
            io.remove(url)
        with pytest.raises(InputError, match="P1"):
            run(config, tmp_dir=str(scratch), force=True)
        assert sorted(scratch.iterdir()) == [busy], "a failed run leaves no scratch folder"
    finally:
        live.kill()
        live.wait(timeout=30)


def test_export_database_scratch_of_killed_runs_is_removed(tmp_path: Path) -> None:
    import signal

    ws = tmp_path / "ws"
    synth(ws, batch=faults.BATCH, plates=[faults.PLATE], wells=96, well_subset=2, sites=1, cells=4, features=4,
          export="database", export_files=1)
    scratch = tmp_path / "scratch"
    killed, leftover = _hold_scratch(scratch, f"export-{faults.PLATE}")
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert leftover.is_dir()
    [result] = collate(ws, faults.BATCH, [faults.PLATE], tmp_dir=str(scratch))
    assert result.status == "done", result.message
    assert list(scratch.iterdir()) == []
