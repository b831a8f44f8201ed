"""The single-cell table read ahead and written in threads: the same file as in one thread, every
failure raised with no file and no thread left behind, and float columns that every reader opens."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest

from cytoprofile.collate import collate_plate
from cytoprofile.single_cells import single_cells, write_single_cells
from cytoprofile.single_cells.sinks import ParquetSink
from cytoprofile.single_cells.sources import BackendSource
from cytoprofile.synth import synth


def _sqlite_plate(tmp_path: Path, *, wells: int, sites: int, cells: int, features: int) -> Path:
    synth(tmp_path, plates=["P1"], wells=96, well_subset=wells, sites=sites, cells=cells, features=features, seed=3)
    return Path(collate_plate(tmp_path, "BATCH1", "P1", backend=("sqlite",)).outputs["sqlite"])


def _ours(prefix: Path) -> tuple[pd.DataFrame, dict[str, object]]:
    report = json.loads(Path(f"{prefix}_single_cells.report.json").read_text())
    report.pop("outputs")
    return pq.read_table(f"{prefix}_single_cells.parquet").to_pandas(), report


def _threads_left() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("cytoprofile-sites", "cytoprofile-write"))]


@pytest.mark.parametrize(("wells", "sites", "cells", "features", "threads"), [
    (2, 3, 6, 5, 1), (3, 2, 12, 9, 2), (1, 5, 3, 4, 4), (4, 1, 1, 3, 2)])
def test_threads_write_the_same_table_and_report_as_one_thread(tmp_path: Path, wells: int, sites: int, cells: int,
                                                               features: int, threads: int) -> None:
    backend = _sqlite_plate(tmp_path, wells=wells, sites=sites, cells=cells, features=features)
    write_single_cells(backend, prefix=tmp_path / "serial", threads=0, formats=["parquet", "anndata"], row_group_values=50)
    write_single_cells(backend, prefix=tmp_path / "threaded", threads=threads, formats=["parquet", "anndata"],
                       row_group_values=50)
    serial, serial_report = _ours(tmp_path / "serial")
    threaded, threaded_report = _ours(tmp_path / "threaded")
    pd.testing.assert_frame_equal(threaded, serial)
    assert threaded_report == serial_report
    a, b = (pq.ParquetFile(tmp_path / f"{n}_single_cells.parquet").metadata for n in ("serial", "threaded"))
    assert [a.row_group(g).num_rows for g in range(a.num_row_groups)] == [b.row_group(g).num_rows for g in range(b.num_row_groups)]
    with h5py.File(tmp_path / "serial_single_cells.h5ad") as x, h5py.File(tmp_path / "threaded_single_cells.h5ad") as y:
        np.testing.assert_array_equal(x["X"][:], y["X"][:])
    pd.testing.assert_frame_equal(single_cells(backend, threads=threads).to_pandas(), serial)
    assert not _threads_left()


def test_threads_with_cell_qc_flags_equal_one_thread(tmp_path: Path) -> None:
    """The QC pass reads other columns than the write: both read ahead, the flags are the same."""
    from cytoprofile.cell_qc import load_thresholds

    backend = _sqlite_plate(tmp_path, wells=3, sites=2, cells=15, features=8)
    sets = load_thresholds()
    write_single_cells(backend, prefix=tmp_path / "serial", threads=0, thresholds=sets)
    write_single_cells(backend, prefix=tmp_path / "threaded", threads=2, thresholds=sets)
    pd.testing.assert_frame_equal(_ours(tmp_path / "threaded")[0], _ours(tmp_path / "serial")[0])
    assert any(c.startswith("Metadata_cqc_") for c in _ours(tmp_path / "serial")[0].columns)


@pytest.mark.parametrize("failing_call", [1, 4, 9])
def test_a_failed_read_in_a_thread_is_raised_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               failing_call: int) -> None:
    backend = _sqlite_plate(tmp_path, wells=2, sites=3, cells=4, features=3)
    real = BackendSource._read_sqlite
    calls = {"n": 0}
    lock = threading.Lock()

    def failing(self: BackendSource, table: str, table_number: object, columns: tuple[str, ...]) -> object:
        with lock:
            calls["n"] += 1
            n = calls["n"]
        if n == failing_call:
            raise OSError("disk read error")
        return real(self, table, table_number, columns)

    monkeypatch.setattr(BackendSource, "_read_sqlite", failing)
    with pytest.raises(OSError, match="disk read error"):
        write_single_cells(backend, formats=["parquet", "anndata"], threads=2)
    assert not [p.name for p in backend.parent.iterdir() if "single_cells" in p.name]
    assert not _threads_left()


def test_a_failed_write_in_its_thread_is_raised_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = _sqlite_plate(tmp_path, wells=2, sites=3, cells=4, features=3)
    real = ParquetSink.write
    calls = {"n": 0}

    def failing(self: ParquetSink, table: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        real(self, table)  # type: ignore[arg-type]

    monkeypatch.setattr(ParquetSink, "write", failing)
    with pytest.raises(OSError, match="disk full"):
        write_single_cells(backend, threads=2, row_group_values=1)
    assert not [p.name for p in backend.parent.iterdir() if "single_cells" in p.name]
    assert not _threads_left()


def test_float_features_are_zstd_byte_stream_split_and_every_reader_reads_them_equal(tmp_path: Path) -> None:
    backend = _sqlite_plate(tmp_path, wells=2, sites=2, cells=10, features=6)
    write_single_cells(backend, prefix=tmp_path / "out", metadata="all")
    path = tmp_path / "out_single_cells.parquet"
    meta = pq.ParquetFile(path).metadata
    names = meta.schema.names
    feature = names.index(next(c for c in names if c.startswith("Cells_") and "Parent" not in c))
    chunk = meta.row_group(0).column(feature)
    assert chunk.compression == "ZSTD" and "BYTE_STREAM_SPLIT" in chunk.encodings
    assert "BYTE_STREAM_SPLIT" not in meta.row_group(0).column(names.index("Metadata_Well")).encodings
    expected = single_cells(backend, metadata="all", threads=0).to_pandas()
    pd.testing.assert_frame_equal(pd.read_parquet(path), expected)
    from_polars = pl.read_parquet(path)
    features = [c for c in expected.columns if not c.startswith("Metadata_")]
    np.testing.assert_array_equal(from_polars.select(features).to_numpy(), expected[features].to_numpy())


def test_small_sites_waiting_for_their_row_group_are_fused(tmp_path: Path) -> None:
    """Many small sites in one row group: held as a few fused tables (not an Arrow array per column
    and site, which outweighs small sites' values), written as one row group equal to the input."""
    import pyarrow as pa

    sites = [pa.table({"Metadata_TableNumber": [k] * 3, "Cells_A": np.arange(3.0) + k, "Cells_B": [None, 1.0, 2.0]})
             for k in range(40)]
    sink = ParquetSink(str(tmp_path / "out.parquet"), row_group_values=10**9)
    for site in sites:
        sink.write(site)
    assert len(sink.pending) <= 40 // 16 + 16 and all(c.num_chunks == 1 for c in sink.pending[0].columns)
    sink.close()
    got = pq.ParquetFile(tmp_path / "out.parquet")
    assert got.metadata.num_row_groups == 1
    assert got.read().equals(pa.concat_tables(sites).combine_chunks())


def test_the_last_sites_failed_write_fails_collate_before_a_backend_is_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """collate --single-cells: the single-cell write of the last site runs in a thread; its error (a full disk)
    fails the plate before any backend file is finished, and nothing is left under a final name."""
    from cytoprofile import backend
    from cytoprofile.errors import OutputError

    synth(tmp_path, plates=["P1"], wells=96, well_subset=2, sites=2, cells=4, features=3)
    real, closed = ParquetSink.write, []
    calls = {"n": 0}

    def failing(self: ParquetSink, table: object) -> None:
        calls["n"] += 1
        if calls["n"] == 4:  # the last of the plate's 4 sites
            raise OSError(28, "No space left on device")
        real(self, table)  # type: ignore[arg-type]

    monkeypatch.setattr(ParquetSink, "write", failing)
    monkeypatch.setattr(backend.SQLiteBackendWriter, "close", lambda self: closed.append(self))
    with pytest.raises(OutputError, match="no space left"):
        collate_plate(tmp_path, "BATCH1", "P1", single_cells=("parquet",))
    assert calls["n"] == 4
    assert closed == []
    assert not (tmp_path / "backend" / "BATCH1" / "P1").exists() or not any(
        (tmp_path / "backend" / "BATCH1" / "P1").iterdir())
