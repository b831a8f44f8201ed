"""Per-site reads for the single-cell join: from an SQLite or Parquet backend on disk, or from
one site's arrays held in memory while collate runs; and the float matrices both hand over."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
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


class BackendSource:
    """Per-site reads of an SQLite (either old generation) or Parquet backend."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from ..backend import open_backend

        self.reader = open_backend(path)
        self.path = str(path)
        self.tables = {t: cols for t, cols in self.reader.tables.items() if t != OUTPUT_TABLE}
        self.image_table = self.reader.image_table
        self._parquet: dict[str, _ParquetTable] = {}
        self._arrow: Any = None  # an Arrow-native SQLite connection (ADBC), opened on the first site read
        self._sql: dict[tuple[str, tuple[str, ...]], str] = {}
        self._cursors: dict[str, Any] = {}
        self._numeric: dict[str, pa.Schema] = {}  # per query, the last schema found to be numbers only

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

    def read_site(self, table: str, table_number: Any, columns: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ImageNumber, ObjectNumber (int64) and the float64 ``columns`` of one site's rows."""
        if self.reader.kind == "sqlite":
            key = (table, tuple(columns))
            if key not in self._sql:
                cols = ", ".join(_quote(c) for c in ("ImageNumber", "ObjectNumber", *columns))
                self._sql[key] = f"SELECT {cols} FROM {_quote(table)} WHERE TableNumber = ?"
            sql = self._sql[key]
            got = self._arrow_site(sql, table_number)
            if got is not None:
                return (got.column(0).cast(pa.int64()).to_numpy(zero_copy_only=False),
                        got.column(1).cast(pa.int64()).to_numpy(zero_copy_only=False),
                        float_matrix(got.select(list(range(2, got.num_columns)))))
            rows = self.reader.conn.execute(sql, [table_number]).fetchall()
            if not rows:
                return np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, len(columns)))
            values = _float_rows(rows, table, ["ImageNumber", "ObjectNumber", *columns])
            return values[:, 0].astype(np.int64), values[:, 1].astype(np.int64), np.asfortranarray(values[:, 2:])
        return self._pq(table).read_site(table_number, columns)

    def _arrow_site(self, sql: str, table_number: Any) -> pa.Table | None:
        """One site's rows read straight into Arrow (no Python object per value), or None when a
        column holds text (old backends stored some) or the driver cannot read them: the
        ``sqlite3`` path then converts them, warning about values that are not numbers."""
        if self._arrow is None:
            self._arrow = _open_arrow_sqlite(self.path)
        if self._arrow is False:
            return None
        cursor = self._cursors.get(sql)
        if cursor is None:  # one cursor per query: the statement is prepared once, not once per site
            cursor = self._cursors[sql] = self._arrow.cursor()
        try:
            cursor.execute(sql, [table_number])
            got: pa.Table = cursor.fetch_arrow_table()
        except Exception as exc:  # noqa: BLE001 - any driver failure: the sqlite3 path reads the same rows
            log.debug("%s: Arrow read failed (%s); reading with sqlite3", self.path, exc)
            self._cursors.pop(sql).close()
            return None
        known = self._numeric.get(sql)
        if known is not None and got.schema.equals(known):
            return got
        if all(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t) for t in got.schema.types):
            self._numeric[sql] = got.schema
            return got
        return None

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
        """Release the backend."""
        for cursor in self._cursors.values():
            cursor.close()
        self._cursors = {}
        if self._arrow:
            self._arrow.close()
        self._arrow = None
        self.reader.close()


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

    def table_numbers(self) -> list[Any]:
        return list(self.ranges)

    def _group(self, index: int, columns: tuple[str, ...]) -> pa.Table:
        key = (index, columns)
        if key not in self._cache:
            if len(self._cache) > 2:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = self.file.read_row_group(index, columns=list(columns))
        return self._cache[key]

    def read_site(self, table_number: Any, columns: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def _open_arrow_sqlite(path: str) -> Any:
    """A read-only ADBC connection to an SQLite file (memory-mapped when its pages are small), or False without the driver."""
    try:
        import adbc_driver_sqlite.dbapi as adbc
    except ImportError:
        return False
    from urllib.parse import quote

    conn = adbc.connect(f"file:{quote(os.path.abspath(path))}?mode=ro")
    cursor = conn.cursor()
    try:
        cursor.execute("PRAGMA page_size")
        row = cursor.fetchone()
        if row is not None and int(row[0]) < _LARGE_PAGE:  # older backends: wide rows span overflow pages
            cursor.execute(f"PRAGMA mmap_size={_MMAP_BYTES}")
            cursor.fetchall()
    finally:
        cursor.close()
    return conn


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


