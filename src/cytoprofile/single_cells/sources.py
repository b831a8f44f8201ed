"""Per-site reads for the single-cell join: from an SQLite or Parquet backend on disk, or from
one site's arrays held in memory while collate runs; and the float matrices both hand over."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError
from ..ingest import SINGLE_CELL_TABLE

__all__ = ["OUTPUT_TABLE", "BackendSource", "SiteSource", "float_matrix", "float_columns"]

log = logging.getLogger("cytoprofile.single_cells")
#: table name the single-cell output takes beside a Parquet backend; never a backend table
OUTPUT_TABLE = SINGLE_CELL_TABLE
#: SQLite files with smaller pages (older backends) are read memory-mapped, up to this many bytes of the
#: file: rows of thousands of columns span chains of overflow pages, read twice as fast from the mapping
_MMAP_BYTES = 256 << 20
_LARGE_PAGE = 65536
#: sites read ahead per reading thread: a few sites' arrays in memory, whatever the plate size
_AHEAD_PER_THREAD = 2
#: rows per Arrow batch of the SQLite driver: its builders reserve this many rows of every column
_BATCH_ROWS = 128
#: row groups of a Parquet table held at once: the one being read and the one before (a site spanning both)
_GROUPS_HELD = 2
Site = tuple[np.ndarray, np.ndarray, np.ndarray]


class BackendSource:
    """Per-site reads of an SQLite (either old generation) or Parquet backend.

    SQLite sites can be read ahead in threads (:meth:`read_ahead`): each thread has its own
    connections and SQLite's decoding runs without the GIL, so the reads overlap the join
    and the write of the sites before them.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from ..backend import open_backend

        self.reader = open_backend(path)
        self.path = str(path)
        self.tables = {t: cols for t, cols in self.reader.tables.items() if t != OUTPUT_TABLE}
        self.image_table = self.reader.image_table
        self._parquet: dict[str, _ParquetTable] = {}
        self._sql: dict[tuple[str, tuple[str, ...]], str] = {}
        self._numeric: dict[str, pa.Schema] = {}  # per query, the last schema found to be numbers only
        self._local = threading.local()  # each thread's connections (_SqliteReads)
        self._opened: list[_SqliteReads] = []
        self._lock = threading.Lock()
        self._ahead: _ReadAhead | None = None

    def table(self, compartment: str) -> str:
        """The backend table of a compartment (case-insensitive), or an error listing the others."""
        return _table_of(self.path, self.tables, self.image_table, compartment)

    def image(self, columns: Sequence[str]) -> pd.DataFrame:
        """Only the asked Image columns (few), with an older backend's ``Image_`` prefix removed."""
        if self.reader.kind == "sqlite":
            cols = ", ".join(_quote(c) for c in columns)
            df = pd.read_sql_query(f"SELECT {cols} FROM {_quote(self.reader.image_table)}", self.reader.conn)
        else:
            from ..layout import parquet_table_path

            df = pq.read_table(parquet_table_path(self.reader.prefix, self.reader.image_table), columns=list(columns)).to_pandas()
        return df.rename(columns={c: c[len("Image_"):] for c in df.columns if c.startswith("Image_")})

    def table_numbers(self, table: str) -> list[Any]:
        """TableNumbers present in a table, in storage order."""
        if self.reader.kind == "sqlite":
            if not self._indexed(table):
                log.warning("%s: table %s has no index on TableNumber; each site is a full scan (slow on large backends)",
                            self.path, table)
            rows = self.reader.conn.execute(f"SELECT DISTINCT TableNumber FROM {_quote(table)}").fetchall()
            return [r[0] for r in rows]
        return self._pq(table).table_numbers()

    def read_ahead(self, order: Sequence[Any], reads: Sequence[tuple[str, Sequence[str]]], *, threads: int) -> None:
        """Start reading, for each site of ``order``, the ``(table, columns)`` reads in ``threads``
        threads, a few sites ahead of :meth:`read_site` (SQLite only; other kinds read when asked)."""
        self.stop_reading_ahead()
        if self.reader.kind == "sqlite" and threads > 0 and order and reads:
            self._ahead = _ReadAhead(self._read_sqlite, [(t, tn, tuple(c)) for tn in order for t, c in reads],
                                     threads=threads, window=threads * _AHEAD_PER_THREAD * len(reads))

    def stop_reading_ahead(self) -> None:
        """Cancel the reads not started and wait for the running ones."""
        if self._ahead is not None:
            self._ahead.close()
            self._ahead = None

    def read_site(self, table: str, table_number: Any, columns: Sequence[str]) -> Site:
        """ImageNumber, ObjectNumber (int64) and the float64 ``columns`` of one site's rows."""
        if self.reader.kind != "sqlite":
            return self._pq(table).read_site(table_number, columns)
        if self._ahead is not None:
            got = self._ahead.take((table, table_number, tuple(columns)))
            if got is not None:
                return got
        return self._read_sqlite(table, table_number, tuple(columns))

    def _read_sqlite(self, table: str, table_number: Any, columns: tuple[str, ...]) -> Site:
        """One site's rows straight into Arrow (no Python object per value); through ``sqlite3``
        when a column holds text (old backends stored some) or the driver cannot read them."""
        key = (table, columns)
        sql = self._sql.get(key)
        if sql is None:
            cols = ", ".join(_quote(c) for c in ("ImageNumber", "ObjectNumber", *columns))
            sql = self._sql[key] = f"SELECT {cols} FROM {_quote(table)} WHERE TableNumber = ?"
        conn = self._connections()
        got = conn.arrow(sql, table_number)
        if got is not None and self._all_numbers(sql, got):
            return (got.column(0).cast(pa.int64()).to_numpy(zero_copy_only=False),
                    got.column(1).cast(pa.int64()).to_numpy(zero_copy_only=False),
                    float_matrix(got.select(list(range(2, got.num_columns)))))
        rows = conn.rows(sql, table_number)
        if not rows:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, len(columns)))
        values = _float_rows(rows, table, ["ImageNumber", "ObjectNumber", *columns])
        return values[:, 0].astype(np.int64), values[:, 1].astype(np.int64), np.asfortranarray(values[:, 2:])

    def _all_numbers(self, sql: str, got: pa.Table) -> bool:
        known = self._numeric.get(sql)
        if known is not None and got.schema.equals(known):
            return True
        if all(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t) for t in got.schema.types):
            self._numeric[sql] = got.schema
            return True
        return False

    def _connections(self) -> _SqliteReads:
        """This thread's connections to the file, opened on its first read."""
        conn: _SqliteReads | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _SqliteReads(self.path)
            with self._lock:
                self._opened.append(conn)
        return conn

    def _indexed(self, table: str) -> bool:
        conn = self.reader.conn
        for row in conn.execute(f"PRAGMA index_list({_quote(table)})").fetchall():
            first = conn.execute(f"PRAGMA index_info({_quote(row[1])})").fetchone()
            if first is not None and first[2] == "TableNumber":
                return True
        return False

    def _pq(self, table: str) -> _ParquetTable:
        if table not in self._parquet:
            from ..layout import parquet_table_path

            self._parquet[table] = _ParquetTable(parquet_table_path(self.reader.prefix, table))
        return self._parquet[table]

    def close(self) -> None:
        """Stop reading ahead and release the backend."""
        self.stop_reading_ahead()
        with self._lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()
        self._local = threading.local()
        self.reader.close()


class _ReadAhead:
    """Reads of the sites to come, at most ``window`` of them in flight in a pool of threads."""

    def __init__(self, read: Callable[[str, Any, tuple[str, ...]], Site], todo: Sequence[tuple[str, Any, tuple[str, ...]]], *, threads: int, window: int) -> None:
        self._read = read
        self._todo: Iterator[tuple[str, Any, tuple[str, ...]]] = iter(todo)
        self._window = max(window, 1)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cytoprofile-sites")
        self._pending: dict[tuple[str, Any, tuple[str, ...]], Future[Site]] = {}
        self._fill()

    def _fill(self) -> None:
        while len(self._pending) < self._window:
            key = next(self._todo, None)
            if key is None:
                return
            self._pending[key] = self._pool.submit(self._read, key[0], key[1], key[2])

    def take(self, key: tuple[str, Any, tuple[str, ...]]) -> Site | None:
        """The read of ``key`` (waiting for it), or None when it was not planned."""
        future = self._pending.pop(key, None)
        if future is None:
            return None
        try:
            return future.result()
        finally:
            self._fill()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()


class _SqliteReads:
    """One thread's read-only connections to an SQLite file: Arrow-native (ADBC, statements
    prepared once per query), memory-mapped when its pages are small, and ``sqlite3`` for text."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._statements: dict[str, Any] = {}
        self._sqlite: sqlite3.Connection | None = None
        self._db, self._conn = _open_arrow_sqlite(path)

    def arrow(self, sql: str, param: Any) -> pa.Table | None:
        """The rows of ``sql`` bound to ``param`` as an Arrow table, or None without the driver or when it fails."""
        if self._conn is None:
            return None
        import adbc_driver_manager as adbc

        statement = self._statements.get(sql)
        try:
            if statement is None:
                statement = adbc.AdbcStatement(self._conn)
                statement.set_options(**{"adbc.sqlite.query.batch_rows": str(_BATCH_ROWS)})
                statement.set_sql_query(sql)
                statement.prepare()
                self._statements[sql] = statement
            statement.bind(pa.record_batch([pa.array([param])], names=["0"]))
            handle, _ = statement.execute_query()
            return pa.RecordBatchReader.from_stream(handle).read_all()
        except Exception as exc:  # noqa: BLE001 - any driver failure: the sqlite3 path reads the same rows
            log.debug("%s: Arrow read failed (%s); reading with sqlite3", self.path, exc)
            failed = self._statements.pop(sql, None)
            if failed is not None:
                failed.close()
            return None

    def rows(self, sql: str, param: Any) -> list[tuple[Any, ...]]:
        """The rows of ``sql`` bound to ``param`` through ``sqlite3`` (Python values)."""
        if self._sqlite is None:
            from urllib.parse import quote

            self._sqlite = sqlite3.connect(f"file:{quote(os.path.abspath(self.path))}?mode=ro", uri=True,
                                           check_same_thread=False)  # opened and used by one thread; closed by the owner
        return self._sqlite.execute(sql, [param]).fetchall()

    def close(self) -> None:
        for statement in self._statements.values():
            statement.close()
        self._statements = {}
        for handle in (self._conn, self._db):
            if handle is not None:
                handle.close()
        self._conn = self._db = None
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None


class _ParquetTable:
    """Row ranges of each site in one Parquet table; a site's row groups are read once."""

    def __init__(self, path: str) -> None:
        self.file = pq.ParquetFile(path)
        tn = self.file.read(columns=["TableNumber"]).column(0).to_numpy(zero_copy_only=False)
        self.ranges: dict[Any, list[tuple[int, int]]] = {}
        if len(tn):
            change = np.flatnonzero(tn[1:] != tn[:-1]) + 1
            starts = np.concatenate([[0], change])
            ends = np.concatenate([change, [len(tn)]])
            for s, e in zip(starts.tolist(), ends.tolist()):
                self.ranges.setdefault(tn[s].item() if hasattr(tn[s], "item") else tn[s], []).append((s, e))
        meta = self.file.metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._cache: dict[tuple[int, tuple[str, ...]], pa.Table] = {}
        self.peak_rows = 0  #: most rows held at once (row groups of the sites being read)

    def table_numbers(self) -> list[Any]:
        return list(self.ranges)

    def _group(self, index: int, columns: tuple[str, ...]) -> pa.Table:
        """A row group, kept while the next site may still need it: sites come in storage order, and
        a site spans at most the group before; so two are held, never the table."""
        key = (index, columns)
        if key not in self._cache:
            while len(self._cache) >= _GROUPS_HELD:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = self.file.read_row_group(index, columns=list(columns))
            self.peak_rows = max(self.peak_rows, sum(t.num_rows for t in self._cache.values()))
        return self._cache[key]

    def read_site(self, table_number: Any, columns: Sequence[str]) -> Site:
        cols = ("ImageNumber", "ObjectNumber", *columns)
        parts: list[pa.Table] = []
        for start, end in self.ranges.get(table_number, []):
            first = int(np.searchsorted(self.offsets, start, side="right") - 1)
            last = int(np.searchsorted(self.offsets, end, side="left") - 1)
            for g in range(first, last + 1):
                lo, hi = max(start, int(self.offsets[g])), min(end, int(self.offsets[g + 1]))
                parts.append(self._group(g, cols).slice(lo - int(self.offsets[g]), hi - lo))
        if not parts:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, len(columns)))
        got = pa.concat_tables(parts)
        return (got.column(0).cast(pa.int64()).to_numpy(zero_copy_only=False),
                got.column(1).cast(pa.int64()).to_numpy(zero_copy_only=False), float_matrix(got.select(list(columns))))


def _open_arrow_sqlite(path: str) -> tuple[Any, Any]:
    """A read-only ADBC database and connection to an SQLite file (memory-mapped when its pages
    are small), or (None, None) without the driver. The driver's low-level API: its DB-API
    module would import a dataframe library on every run."""
    try:
        import adbc_driver_manager as adbc
        import adbc_driver_sqlite
    except ImportError:
        return None, None
    from urllib.parse import quote

    db = adbc_driver_sqlite.connect(f"file:{quote(os.path.abspath(path))}?mode=ro")
    conn = adbc.AdbcConnection(db)
    page = _scalar(conn, "PRAGMA page_size")
    if page is not None and int(page) < _LARGE_PAGE:  # older backends: wide rows span overflow pages
        _scalar(conn, f"PRAGMA mmap_size={_MMAP_BYTES}")
    return db, conn


def _scalar(conn: Any, sql: str) -> Any:
    """The first value of a statement's result (None when it has no row)."""
    import adbc_driver_manager as adbc

    statement = adbc.AdbcStatement(conn)
    try:
        statement.set_sql_query(sql)
        handle, _ = statement.execute_query()
        got = pa.RecordBatchReader.from_stream(handle).read_all()
    finally:
        statement.close()
    return got.column(0)[0].as_py() if got.num_rows and got.num_columns else None


def float_matrix(table: pa.Table) -> np.ndarray:
    """A table's columns as one column-major float64 array (nulls as NaN), converted in one call, not per column."""
    if table.num_columns == 0 or table.num_rows == 0:
        return np.empty((table.num_rows, table.num_columns), order="F")
    batch = table.combine_chunks().to_batches()[0]
    try:  # integer columns (links, counts) become float64 in the same call
        tensor = batch.to_tensor(null_to_nan=True, row_major=False)
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError, pa.ArrowInvalid):  # e.g. an all-NULL column
        batch = pa.record_batch([c if pa.types.is_float64(c.type) else c.cast(pa.float64()) for c in batch.columns],
                                names=batch.schema.names)
        tensor = batch.to_tensor(null_to_nan=True, row_major=False)
    return np.asarray(tensor).astype(np.float64, copy=False)


def float_columns(values: np.ndarray) -> list[pa.Array]:
    """Arrow arrays over the columns of a float64 matrix: one buffer, no per-column conversion."""
    values = np.asfortranarray(values, dtype=np.float64)
    n = values.shape[0]
    buf = pa.py_buffer(values) if values.size else None
    if buf is None:
        return [pa.array(np.empty(n)) for _ in range(values.shape[1])]
    return [pa.Array.from_buffers(pa.float64(), n, [None, buf], offset=k * n) for k in range(values.shape[1])]


def _table_of(where: str, tables: Mapping[str, Sequence[str]], image_table: str, compartment: str) -> str:
    """The table of a compartment (case-insensitive), or an error listing the others."""
    names = {t.lower(): t for t in tables if t != image_table}
    if compartment.lower() not in names:
        raise InputError(f"{where}: no {compartment} table; object tables: {', '.join(sorted(names.values())) or 'none'}")
    return names[compartment.lower()]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _float_rows(rows: list[tuple[Any, ...]], table: str, columns: Sequence[str]) -> np.ndarray:
    """Rows as float64; text that is not a number (old backends stored some) becomes NaN, with a warning."""
    try:
        return np.array(rows, dtype=np.float64)
    except (ValueError, TypeError):
        raw = np.array(rows, dtype=object).reshape(len(rows), len(columns))
        converted = np.vectorize(_number, otypes=[np.float64])(raw)  # float() of the text: exact, as above
        lost = np.isnan(converted) & ~np.vectorize(_missing, otypes=[bool])(raw)
        bad = [c for c, hit in zip(columns, lost.any(axis=0)) if hit]
        log.warning("%s: non-numeric values in %s read as missing", table, ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""))
        return converted


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _missing(value: Any) -> bool:
    """NULL, or a value that is itself NaN (a float or its text): missing before conversion."""
    return value is None or _number(value) != _number(value) and str(value).strip().lower() == "nan"


class SiteSource:
    """The same reads as :class:`BackendSource`, from one site's arrays held in memory (the collate pass)."""

    image_table = "Image"

    def __init__(self, tables: Mapping[str, Sequence[str]], *, where: str) -> None:
        self.tables = {t: list(c) for t, c in tables.items()}
        self.path = where
        self._site: tuple[Any, pd.DataFrame, Mapping[str, np.ndarray]] | None = None

    def set_site(self, table_number: Any, image: pd.DataFrame, objects: Mapping[str, np.ndarray]) -> None:
        """The site to read next: its Image rows and per table an array on the table's columns after TableNumber."""
        self._site = (table_number, image, objects)

    def table(self, compartment: str) -> str:
        return _table_of(self.path, self.tables, self.image_table, compartment)

    def image(self, columns: Sequence[str]) -> pd.DataFrame:
        assert self._site is not None
        frame = self._site[1]
        out = pd.DataFrame({c: frame[c] if c in frame.columns else pd.Series([None] * len(frame), dtype=object) for c in columns})
        if "TableNumber" in columns and "TableNumber" not in frame.columns:
            out["TableNumber"] = self._site[0]
        return out

    def table_numbers(self, table: str) -> list[Any]:
        return [] if self._site is None else [self._site[0]]

    def read_site(self, table: str, table_number: Any, columns: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        assert self._site is not None and table_number == self._site[0]
        array = self._site[2].get(table)
        names = self.tables[table][1:]  # after TableNumber
        if array is None or not len(array):
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, len(columns)))
        at = {c: k for k, c in enumerate(names)}
        picked = np.asfortranarray(array[:, [at[c] for c in columns]]) if columns else np.empty((len(array), 0))
        return array[:, at["ImageNumber"]].astype(np.int64), array[:, at["ObjectNumber"]].astype(np.int64), picked

    def close(self) -> None:
        self._site = None


