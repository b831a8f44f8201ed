"""Writing the joined table: from a backend on disk (optionally with cell QC flags), or site by
site while collate runs; the output names beside a backend."""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from .. import io
from ..errors import CytoprofileError, InputError
from ..layout import single_cells_paths
from ..vocabulary import DEFAULT_COMPARTMENTS, SINGLE_CELL_FORMATS
from .join import DEFAULT_HUB, READ_THREADS, SingleCellJoin, SingleCellReport
from .sinks import ROW_GROUP_VALUES, AnnDataSink, ParquetSink, SiteSink
from .sources import SiteSource

__all__ = ["SingleCellFormat", "SingleCellStream", "write_plates_single_cells", "write_single_cells"]

log = logging.getLogger("cytoprofile.single_cells")
SingleCellFormat = Literal["parquet", "anndata"]


def _check_formats(formats: Sequence[str]) -> None:
    bad = [f for f in formats if f not in SINGLE_CELL_FORMATS]
    if bad or not formats:
        raise InputError(f"single-cell format {bad[0] if bad else 'none'}: choose parquet and/or anndata")


def _default_prefix(backend: str | os.PathLike[str]) -> str:
    text = str(backend)
    for suffix in (".sqlite", "_Image.parquet"):
        if text.endswith(suffix):
            return text[: -len(suffix)]
    return text


def write_single_cells(
    backend: str | os.PathLike[str],
    *,
    prefix: str | os.PathLike[str] | None = None,
    formats: Sequence[SingleCellFormat] = ("parquet",),
    compartments: Sequence[str] = DEFAULT_COMPARTMENTS,
    hub: str = DEFAULT_HUB,
    links: Mapping[str, str] | None = None,
    image_feature_categories: Sequence[str] = (),
    metadata: Sequence[str] | Literal["all"] | None = None,
    thresholds: Mapping[str, Mapping[str, float]] | None = None,
    row_group_values: int = ROW_GROUP_VALUES,
    threads: int = READ_THREADS,
    progress: Callable[[int, int], None] | None = None,
) -> SingleCellReport:
    """Stream the joined table of a backend to ``PREFIX_single_cells.parquet`` (and/or ``.h5ad``).

    Row groups hold whole sites (zstd; a new group after ``ROW_GROUP_ROWS`` rows or ``row_group_values``
    values, so the rows held do not grow with the plate);
    the AnnData ``X`` is float32, written in row blocks (one per site). With ``threads`` > 0
    an SQLite backend's sites are read ahead in that many threads and each site is written
    in a thread while the next is joined (0: all in this thread).
    With ``thresholds`` (cell QC sets) a first pass over the threshold features gives
    plate-wide z-scores and the flags become ``Metadata_cqc_<set>_is_outlier`` columns.
    Files appear atomically; the report (JSON, beside them) is written last.
    """
    _check_formats(formats)
    if threads < 0:
        raise InputError(f"threads {threads}: give 0 (all in this thread) or more")
    paths = single_cells_paths(prefix if prefix is not None else _default_prefix(backend))
    join = SingleCellJoin(backend, compartments=compartments, hub=hub, links=links,
                          image_feature_categories=image_feature_categories, metadata=metadata)
    writers: list[SiteSink] = []
    try:
        order = join.site_order()
        flags = _qc_flags(join, order, thresholds, threads=threads) if thresholds else None
        writers = [ParquetSink(paths["parquet"], row_group_values=row_group_values) if f == "parquet" else
                   AnnDataSink(paths["anndata"], join) for f in dict.fromkeys(formats)]
        join.read_ahead(order, threads=threads)
        with _Writes(writers, threaded=threads > 0) as writes:
            offset = 0
            for done, tn in enumerate(order, start=1):
                table = join.join_site(tn)
                if flags is not None:
                    table = _with_flags(table, join, flags, offset)
                offset += table.num_rows
                writes.put(table)
                if progress is not None:
                    progress(done, len(order))
        for w in writers:
            w.close()
        join.report.outputs = {f: paths[f] for f in dict.fromkeys(formats)}
    except BaseException:
        for w in writers:
            w.abort()
        raise
    finally:
        join.close()
    io.write_json(join.report.as_dict(), paths["report"])
    if join.report.lost:
        log.warning("%s: %d object(s) not linked into a cell (named in %s)", backend, join.report.lost, paths["report"])
    return join.report


#: the options of :func:`write_single_cells` that :func:`write_plates_single_cells` writes each plate with
_PLATE_OPTIONS = ("formats", "compartments", "hub", "links", "image_feature_categories", "metadata", "thresholds",
                  "threads")


def write_plates_single_cells(
    workspace: str | os.PathLike[str],
    batch: str,
    plates: Sequence[str],
    *,
    backend: str | None = None,
    strict: bool = False,
    done: Callable[[str, SingleCellReport], None] | None = None,
    **options: Any,
) -> list[SingleCellReport]:
    """The joined table of each plate's backend in a workspace, beside it (:func:`write_single_cells`).

    ``options`` are :func:`write_single_cells`' (``formats`` … ``threads``), with its names and defaults.
    ``backend`` picks the sqlite or parquet backend (default: parquet if present). Each plate
    is logged (cells, sites, rows read, objects not linked) and handed to ``done`` as it
    finishes; returns the reports in plate order. With ``strict``, objects not linked into cells in any plate are an error
    naming the plates, raised after every plate is written; without it they are a warning.
    """
    from ..layout import Workspace

    unknown = sorted(set(options) - set(_PLATE_OPTIONS))
    if unknown:
        raise TypeError(f"write_plates_single_cells() got an unexpected keyword argument {unknown[0]!r}")
    reports: list[tuple[str, SingleCellReport]] = []
    for plate in plates:
        path = Workspace(str(workspace)).find_backend(batch, plate, backend)
        start = time.perf_counter()
        report = write_single_cells(path, **options)
        log.info("single cells of %s done in %.2fs", plate, time.perf_counter() - start)
        log.info("%s: %d cells from %d sites; rows in %s; not linked %s", plate, report.cells_out, report.sites,
                 report.rows_in, report.unlinked or "none")
        if done is not None:
            done(plate, report)
        reports.append((plate, report))
    unlinked = [f"{plate} ({report.lost})" for plate, report in reports if report.lost]
    if unlinked and strict:
        raise CytoprofileError(f"objects not linked into cells (named in the reports): {', '.join(unlinked)}")
    return [report for _, report in reports]


# the options as keyword arguments in the signature (help(), the command's flags checked against it)
write_plates_single_cells.__signature__ = inspect.signature(write_plates_single_cells).replace(  # type: ignore[attr-defined]
    parameters=[*(p for p in inspect.signature(write_plates_single_cells).parameters.values()
                  if p.kind is not inspect.Parameter.VAR_KEYWORD),
                *(inspect.signature(write_single_cells).parameters[n] for n in _PLATE_OPTIONS)])


class _Writes:
    """Sites handed to the sinks, each written in one background thread while the next is joined
    (Parquet encoding, zstd and HDF5 run without the GIL); at most one site is waiting. Leaving
    the block waits for the last write, so the sinks are never closed under a running write."""

    def __init__(self, writers: Sequence[SiteSink], *, threaded: bool = True) -> None:
        self.writers = list(writers)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cytoprofile-write") if threaded else None
        self._pending: Future[None] | None = None

    def put(self, table: pa.Table) -> None:
        """Write ``table`` to every sink (raising the error of the write before it, if any)."""
        if self._pool is None:
            self._write(table)
            return
        self.wait()
        self._pending = self._pool.submit(self._write, table)

    def _write(self, table: pa.Table) -> None:
        for w in self.writers:
            w.write(table)

    def wait(self) -> None:
        """Wait for the write in flight; its error is raised here."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> _Writes:
        return self

    def close(self, *, wait: bool = True) -> None:
        """Let the last write finish (``wait``: and raise its error) and end the thread."""
        try:
            if wait:
                self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __exit__(self, kind: object, error: object, tb: object) -> None:
        self.close(wait=kind is None)


class SingleCellStream:
    """The joined table written while sites arrive, without reading a backend back (the collate pass).

    ``tables`` are the backend's column names per table (``TableNumber`` first, object
    columns prefixed; ``Image`` bare); :meth:`add` takes one site: its TableNumber, its
    Image rows, and per object table an array on that table's columns after
    ``TableNumber``. ``join`` are :class:`SingleCellJoin`'s options (compartments, hub, links,
    image feature categories, metadata), as :func:`write_single_cells` takes them. Cell QC needs
    plate-wide z-scores: run :func:`cytoprofile.cell_qc.flag_single_cells` on the finished file.
    """

    def __init__(
        self,
        prefix: str | os.PathLike[str],
        tables: Mapping[str, Sequence[str]],
        *,
        formats: Sequence[SingleCellFormat] = ("parquet",),
        file_metadata: Mapping[str, str] | None = None,
        **join: Any,
    ) -> None:
        _check_formats(formats)
        self.paths = single_cells_paths(prefix)
        image = list(tables.get("Image", []))
        columns = {**tables, "Image": [*[k for k in ("TableNumber", "ImageNumber") if k not in image], *image]}
        self.source = SiteSource(columns, where=str(prefix))
        self.join = SingleCellJoin(self.source, **join)
        self.formats = list(dict.fromkeys(formats))
        self.writers: list[SiteSink] = [ParquetSink(self.paths["parquet"], metadata=file_metadata) if f == "parquet" else
                                       AnnDataSink(self.paths["anndata"], self.join) for f in self.formats]
        self._writes = _Writes(self.writers)

    def add(self, table_number: Any, image: pd.DataFrame, objects: Mapping[str, np.ndarray]) -> None:
        """Join one site and hand it to every output (written in a thread while collate goes on)."""
        self.source.set_site(table_number, image, objects)
        self.join.site_order()
        self._writes.put(self.join.join_site(table_number))

    def finish_writes(self) -> None:
        """Wait for the site being written; its error (a full disk) is raised here, before anything is closed."""
        self._writes.wait()

    def close(self, *, write_report: bool = True) -> SingleCellReport:
        """Move the outputs into place and write the report (last; ``write_report=False``
        when the caller carries it in its own report, as collate does)."""
        self._writes.close()
        for w in self.writers:
            w.close()
        self.join.report.outputs = {f: self.paths[f] for f in self.formats}
        if write_report:
            io.write_json(self.join.report.as_dict(), self.paths["report"])
        return self.join.report

    def abort(self) -> None:
        """Drop the temporary files (after the write in flight ends)."""
        self._writes.close(wait=False)
        for w in self.writers:
            w.abort()


def _qc_flags(join: SingleCellJoin, order: Sequence[Any], thresholds: Mapping[str, Mapping[str, float]], *,
              threads: int) -> dict[str, np.ndarray]:
    """First pass: only the threshold features of every joined cell, then the plate-wide flags."""
    from ..cell_qc import flag_summary, outlier_flags

    needed = sorted({f for conditions in thresholds.values() for f in conditions})
    missing = [f for f in needed if f not in join.feature_columns]
    if missing:
        raise InputError(f"cell QC threshold feature(s) {', '.join(missing)} are not in the single-cell table")
    features = {c: [f for f in join.features[c] if f in needed] for c in join.compartments}
    join.read_ahead(order, threads=threads, features=features)
    parts = [join.join_site(tn, features=features, count=False) for tn in order]
    table = pa.concat_tables(parts) if parts else pa.table({f: pa.array([], pa.float64()) for f in needed})
    values = {f: table.column(f).to_numpy(zero_copy_only=False).astype(np.float64) for f in needed}
    flags = outlier_flags(values, thresholds)
    keys = [c for c in ("Metadata_Plate", "Metadata_Well") if c in table.column_names]
    join.report.cell_qc = {"thresholds": {k: dict(v) for k, v in thresholds.items()}, **flag_summary(table, keys, flags)}
    return flags


def _with_flags(table: pa.Table, join: SingleCellJoin, flags: Mapping[str, np.ndarray], offset: int) -> pa.Table:
    """Flag columns after the other metadata columns."""
    from ..cell_qc import flag_column

    at = len(join.metadata_columns)
    for k, (name, values) in enumerate(flags.items()):
        table = table.add_column(at + k, flag_column(name), pa.array(values[offset: offset + table.num_rows]))
    return table


