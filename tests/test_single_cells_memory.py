"""The single-cell table holds a bounded number of rows at once, whatever the plate size.

Counted, not timed: the rows the output waits to write (:attr:`ParquetSink.peak_rows`),
the rows of the Parquet backend's row groups the reader holds (``_ParquetTable.peak_rows``),
and the row-group layout of the files, for a small and a four times larger plate read
from each input (Parquet backend, SQLite backend, site CSVs during collate).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from cytoprofile import backend as backend_module
from cytoprofile.collate import collate_plate
from cytoprofile.single_cells import sinks, sources, write, write_single_cells
from cytoprofile.synth import synth

from .reference import pycytominer_merge
from .test_single_cells import assert_same_cells

SINK_ROWS = 50  # rows per output row group (whole sites)
BACKEND_ROWS = 40  # rows per row group of the Parquet backend's object tables (whole sites)


def _spies(monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], list[Any]]:
    """Every output sink and Parquet table reader made, with small row groups so small plates span many."""
    made_sinks: list[Any] = []
    made_readers: list[Any] = []

    class Sink(sinks.ParquetSink):
        def __init__(self, path: str, **kw: Any) -> None:
            super().__init__(path, **{**kw, "row_group_rows": SINK_ROWS})
            made_sinks.append(self)

    class Reader(sources._ParquetTable):
        def __init__(self, path: str) -> None:
            super().__init__(path)
            made_readers.append(self)

    monkeypatch.setattr(write, "ParquetSink", Sink)
    monkeypatch.setattr(sources, "_ParquetTable", Reader)
    monkeypatch.setattr(backend_module, "PARQUET_GROUP_ROWS", BACKEND_ROWS)
    return made_sinks, made_readers


def _row_groups(path: Path) -> list[int]:
    meta = pq.ParquetFile(path).metadata
    return [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]


@pytest.mark.parametrize("source", ["parquet", "sqlite", "csv"])
def test_rows_held_at_once_do_not_grow_with_the_plate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    made_sinks, made_readers = _spies(monkeypatch)
    for wells in (6, 24):
        ws = tmp_path / f"w{wells}"
        synth(ws, plates=["P1"], wells=96, well_subset=wells, sites=2, cells=12, features=4, seed=wells)
        made_sinks.clear()
        made_readers.clear()
        if source == "csv":
            result = collate_plate(ws, "BATCH1", "P1", backend=("sqlite",), single_cells=["parquet"])
            db = Path(result.outputs["sqlite"])
            out = db.with_name("P1_single_cells.parquet")
        else:
            result = collate_plate(ws, "BATCH1", "P1", backend=("sqlite", "parquet"))
            db = Path(result.outputs["sqlite"])
            backend = db if source == "sqlite" else db.with_name("P1_Image.parquet")
            write_single_cells(backend, prefix=tmp_path / f"out{wells}", threads=2)
            out = tmp_path / f"out{wells}_single_cells.parquet"
        got = pd.read_parquet(out)
        site = int(got.groupby("Metadata_TableNumber").size().max())  # every object of these plates is in a cell
        if source != "csv":
            for table in ("Cells", "Cytoplasm", "Nuclei"):
                groups = _row_groups(db.with_name(f"P1_{table}.parquet"))
                assert len(groups) > 1 and max(groups) < BACKEND_ROWS + site
        assert [s.peak_rows for s in made_sinks] and all(s.peak_rows < SINK_ROWS + site for s in made_sinks)
        assert max(_row_groups(out)) < SINK_ROWS + site
        if source == "parquet":
            assert len(made_readers) == 3
            assert all(r.peak_rows < 2 * (BACKEND_ROWS + site) for r in made_readers)
        else:
            assert not made_readers
        if wells == 24:  # the large plate: far more rows than held, and still the reference merge's table
            assert len(got) > 4 * (SINK_ROWS + site)
            ref = pycytominer_merge(db, ["Metadata_Plate", "Metadata_Well"], ["TableNumber", "ImageNumber", "Metadata_Site"])
            assert_same_cells(got, ref)


def test_cli_threads_reach_the_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--threads N`` is the function's ``threads=N`` (0: one thread, the same file); a negative count is refused."""
    from cytoprofile.cli import main

    ws = tmp_path / "ws"
    synth(ws, plates=["P1"], wells=96, well_subset=2, sites=2, cells=10, features=5)
    collate_plate(ws, "BATCH1", "P1", backend=("sqlite",))
    seen: list[int] = []
    real = write.write_single_cells

    def spy(*args: Any, **kw: Any) -> Any:
        seen.append(kw["threads"])
        return real(*args, **kw)

    monkeypatch.setattr(write, "write_single_cells", spy)  # what write_plates_single_cells calls
    out = ws / "backend/BATCH1/P1/P1_single_cells.parquet"
    tables = []
    for argv in (["--threads", "0"], [], ["--threads", "3"]):
        assert main(["single-cells", str(ws), "BATCH1", "P1", "-q", *argv]) == 0
        tables.append(pq.read_table(out))
    assert seen == [0, 2, 3]
    assert tables[0].equals(tables[1]) and tables[0].equals(tables[2])
    assert main(["single-cells", str(ws), "BATCH1", "P1", "-q", "--threads", "-1"]) == 1
