"""Single-cell stores: write and read the SQLite (old layout) and Parquet backends.

The SQLite layout is the one existing readers expect: a bare-named ``Image`` table
and one table per object CSV with compartment-prefixed columns, ``TableNumber``
first, and the same indexes. Writers work on a temporary file and rename it into
place on ``close()``; ``abort()`` leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import InputError
from .ingest import IMAGE_TABLE, RESERVED_TABLES, PlateSchema, SiteTables
from .layout import parquet_table_path
from .vocabulary import KEY_COLUMNS, is_text_column

__all__ = [
    "BackendReader",
    "ParquetBackendWriter",
    "SQLiteBackendWriter",
    "open_backend",
    "object_column_name",
    "quote",
]

SQLITE_MAX_COLUMNS = 2000
#: SQLite's largest page: rows of thousands of features stay on one page, so any reader decodes them fast
SQLITE_PAGE_SIZE = 65536
_IMAGE_BATCH = 64
#: rows per row group of a Parquet backend's object tables, at most (whole sites): readers holding a
#: row group at a time (the single-cell join) then hold the same rows whatever the plate size
PARQUET_GROUP_ROWS = 1024
_INTEGER_COLUMN = re.compile(r"^(TableNumber|ImageNumber|ObjectNumber|Parent_.*|Children_.*_Count|Number_Object_Number)$")


def quote(name: str) -> str:
    """Quote an SQL identifier: any header from a file is just a name."""
    return '"' + name.replace('"', '""') + '"'


def object_column_name(table: str, column: str) -> str:
    """Backend name of an object CSV column: keys stay bare, the rest get the table prefix."""
    return column if column in KEY_COLUMNS else f"{table}_{column}"


def _tmp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")


def _arrow_sql_type(typ: pa.DataType) -> str:
    if pa.types.is_integer(typ) or pa.types.is_boolean(typ):
        return "INTEGER"
    if pa.types.is_floating(typ):
        return "FLOAT"
    if pa.types.is_null(typ):
        return "FLOAT"
    return "TEXT"


def _conform_image(image: pa.Table, columns: Sequence[str]) -> pa.Table:
    """Image rows on the union columns, NULL where this site lacks a column."""
    arrays = []
    names = set(image.column_names)
    for c in columns:
        arrays.append(image.column(c) if c in names else pa.nulls(image.num_rows))
    return pa.table(arrays, names=list(columns))


class SQLiteBackendWriter:
    """Streams sites into ``PLATE.sqlite`` in the old layout."""

    def __init__(self, path: str | os.PathLike[str], schema: PlateSchema) -> None:
        self.final = Path(path)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = _tmp_name(self.final)
        self.schema = schema
        for table, columns in schema.tables.items():
            width = len(columns) + 1 + len(schema.text_columns.get(table, []))  # TableNumber and the text columns too
            if width > SQLITE_MAX_COLUMNS:
                raise InputError(
                    f"{table} has {width} columns, more than SQLite's limit of {SQLITE_MAX_COLUMNS}; "
                    "use --backend parquet for this plate"
                )
        self.conn = sqlite3.connect(self.tmp, isolation_level=None)
        # before the first table: an object row at JUMP width (~15 KB) fits one page, no overflow chain
        self.conn.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
        self.conn.execute("PRAGMA journal_mode=OFF")
        self.conn.execute("PRAGMA synchronous=OFF")
        self.conn.execute("PRAGMA temp_store=MEMORY")
        self.conn.execute("BEGIN")
        self.image_columns = ["TableNumber", *[c for c in schema.tables[IMAGE_TABLE] if c != "TableNumber"]]
        self._image_created = False
        self._object_sql: dict[str, str] = {}
        for table in schema.object_tables:
            cols = ["TableNumber", *schema.tables[table]]
            names = [object_column_name(table, c) for c in cols]
            decl = ", ".join(f"{quote(n)} {'INTEGER' if _INTEGER_COLUMN.match(c) else 'FLOAT'}" for n, c in zip(names, cols))
            texts = schema.text_columns.get(table, [])
            decl += "".join(f", {quote(object_column_name(table, c))} TEXT" for c in texts)  # image metadata, as written
            self.conn.execute(f"CREATE TABLE {quote(table)} ({decl})")
            marks = ", ".join("?" * (len(cols) - 1 + len(texts)))
            self._object_sql[table] = f"INSERT INTO {quote(table)} VALUES ({{table_number}}, {marks})"

    def _create_image(self, image: pa.Table) -> None:
        """The Image table, typed from the first site; a column that site lacks (or has only NULLs in)
        is TEXT when of a text family, so ``007`` of a later site is never stored as ``7.0``."""
        types = {f.name: _arrow_sql_type(f.type) for f in image.schema if not pa.types.is_null(f.type)}
        decl = ", ".join(f"{quote(c)} {types.get(c, 'TEXT' if is_text_column(c) else 'FLOAT')}"
                         for c in self.image_columns)
        self.conn.execute(f"CREATE TABLE {quote(IMAGE_TABLE)} ({decl})")
        self._image_created = True

    def add(self, site: SiteTables) -> None:
        """Append one site's rows to every table."""
        if not self._image_created:
            self._create_image(site.image)
        image = _conform_image(site.image, self.image_columns)
        rows = list(zip(*[col.to_pylist() for col in image.columns]))
        marks = ", ".join("?" * len(self.image_columns))
        self.conn.executemany(f"INSERT INTO {quote(IMAGE_TABLE)} VALUES ({marks})", rows)
        for table, array in site.objects.items():
            if len(array):
                sql = self._object_sql[table].format(table_number=int(site.table_number))
                text = site.texts.get(table)
                values: Any = array.tolist()
                if text is not None and text.num_columns:
                    values = [(*r, *t) for r, t in zip(values, zip(*(c.to_pylist() for c in text.columns)))]
                self.conn.executemany(sql, values)

    def close(self) -> None:
        """Index like the old layout, commit and move into place."""
        if not self._image_created:
            decl = ", ".join(f"{quote(c)} FLOAT" for c in self.image_columns)
            self.conn.execute(f"CREATE TABLE {quote(IMAGE_TABLE)} ({decl})")
        self.conn.execute(f"CREATE INDEX IF NOT EXISTS table_image_idx ON {quote(IMAGE_TABLE)} (TableNumber, ImageNumber)")
        if {"Metadata_Plate", "Metadata_Well"} <= set(self.image_columns):
            self.conn.execute(f"CREATE INDEX IF NOT EXISTS plate_well_image_idx ON {quote(IMAGE_TABLE)} (Metadata_Plate, Metadata_Well)")
        for table in self.schema.object_tables:
            name = f"table_image_object_{table.lower()}_idx"
            self.conn.execute(f"CREATE INDEX IF NOT EXISTS {quote(name)} ON {quote(table)} (TableNumber, ImageNumber, ObjectNumber)")
        self.conn.execute("COMMIT")
        self.conn.close()
        os.replace(self.tmp, self.final)

    def abort(self) -> None:
        """Drop the temporary file."""
        with contextlib.suppress(Exception):
            self.conn.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


class ParquetBackendWriter:
    """Streams sites into one Parquet file per table, same columns as the SQLite layout."""

    def __init__(self, prefix: str | os.PathLike[str], schema: PlateSchema, *, flush_values: int = 2_000_000,
                 metadata: dict[str, str] | None = None) -> None:
        self.prefix = str(prefix)
        self.metadata = {k.encode(): v.encode() for k, v in (metadata or {}).items()} or None
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.flush_values = flush_values
        self.image_columns = ["TableNumber", *[c for c in schema.tables[IMAGE_TABLE] if c != "TableNumber"]]
        self._images: list[pa.Table] = []
        self._merged: list[pa.Table] = []
        self._writers: dict[str, pq.ParquetWriter] = {}
        self._arrow_schema: dict[str, pa.Schema] = {}
        self._buffers: dict[str, list[tuple[int, np.ndarray]]] = {}
        self._texts: dict[str, list[pa.Table]] = {}
        self._tmp: dict[str, Path] = {}
        for table in schema.object_tables:
            cols = ["TableNumber", *schema.tables[table]]
            fields = [pa.field(object_column_name(table, c), pa.int64() if c in KEY_COLUMNS else pa.float64()) for c in cols]
            fields += [pa.field(object_column_name(table, c), pa.string()) for c in schema.text_columns.get(table, [])]
            self._arrow_schema[table] = pa.schema(fields, metadata=self.metadata)
            final = Path(parquet_table_path(self.prefix, table))
            self._tmp[table] = _tmp_name(final)
            # float features rarely repeat: dictionary encoding costs time and saves nothing
            self._writers[table] = pq.ParquetWriter(
                self._tmp[table], self._arrow_schema[table], use_dictionary=False,
                write_statistics=list(KEY_COLUMNS))
            self._buffers[table] = []
            self._texts[table] = []

    def _flush(self, table: str) -> None:
        chunks = self._buffers[table]
        if not chunks:
            return
        schema = self._arrow_schema[table]
        # site arrays are column-major: each column slice is contiguous, so no transposing copy
        columns = [pa.chunked_array([pa.array(np.full(len(a), t, dtype=np.int64)) for t, a in chunks], type=pa.int64())]
        missing = [np.isnan(a) for _, a in chunks]  # NaN is written as NULL, as in the SQLite layout
        numeric = len(self.schema.tables[table])
        for i, f in enumerate(list(schema)[1 : 1 + numeric]):
            if f.type == pa.int64():
                parts = [pa.array(a[:, i].astype(np.int64)) for _, a in chunks]
            else:
                parts = [pa.array(a[:, i], mask=m[:, i]) for (_, a), m in zip(chunks, missing)]
            columns.append(pa.chunked_array(parts, type=f.type))
        texts = self._texts[table]
        for k in range(len(schema) - 1 - numeric):
            columns.append(pa.chunked_array([t.column(k) for t in texts], type=pa.string()))
        self._writers[table].write_table(pa.table(columns, schema=schema))
        self._buffers[table] = []
        self._texts[table] = []

    def add(self, site: SiteTables) -> None:
        """Buffer one site's rows; write a row group when the buffer is large."""
        self._images.append(_conform_image(site.image, self.image_columns))
        if len(self._images) >= _IMAGE_BATCH:
            # one table per site costs per-column overhead: merge every batch of sites
            self._merged.append(_unify_images(self._images, self.image_columns))
            self._images = []
        for table, array in site.objects.items():
            self._buffers[table].append((site.table_number, array))
            if table in self.schema.text_columns:
                self._texts[table].append(site.texts[table])
            buffered = self._buffers[table]
            if sum(a.size for _, a in buffered) >= self.flush_values or sum(len(a) for _, a in buffered) >= PARQUET_GROUP_ROWS:
                self._flush(table)

    def close(self) -> None:
        """Write the Image table and move every file into place."""
        for table in self._writers:
            self._flush(table)
            self._writers[table].close()
        image = _unify_images([*self._merged, *self._images], self.image_columns)
        if self.metadata:
            image = image.replace_schema_metadata(self.metadata)
        final_image = Path(parquet_table_path(self.prefix, IMAGE_TABLE))
        tmp_image = _tmp_name(final_image)
        pq.write_table(image, tmp_image)
        os.replace(tmp_image, final_image)
        for table, tmp in self._tmp.items():
            os.replace(tmp, parquet_table_path(self.prefix, table))

    def abort(self) -> None:
        """Drop every temporary file."""
        for writer in self._writers.values():
            with contextlib.suppress(Exception):
                writer.close()
        for tmp in self._tmp.values():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _unify_images(images: Sequence[pa.Table], columns: Sequence[str]) -> pa.Table:
    """One Image table: per column, text wins over numbers, float over int (NULL adapts)."""
    if not images:
        return pa.table({c: pa.array([], type=pa.float64()) for c in columns})
    arrays = []
    for c in columns:
        parts = [t.column(c) for t in images]
        types = {p.type for p in parts}
        if any(pa.types.is_string(t) or pa.types.is_large_string(t) for t in types):
            target: pa.DataType = pa.string()
        elif any(pa.types.is_floating(t) for t in types):
            target = pa.float64()
        elif any(pa.types.is_integer(t) for t in types):
            target = pa.int64()
        elif any(pa.types.is_boolean(t) for t in types):
            target = pa.bool_()
        else:
            target = pa.float64()
        arrays.append(pa.concat_arrays([c.cast(target) for p in parts for c in p.chunks]) if parts else pa.array([], type=target))
    return pa.table(arrays, names=list(columns))


class BackendReader:
    """Reads an existing backend, SQLite (both old generations) or Parquet, well by well."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self.kind = "parquet" if self.path.endswith(".parquet") or Path(self.path).is_dir() else "sqlite"
        if self.kind == "sqlite":
            if not Path(self.path).is_file():
                raise InputError(f"{self.path}: backend not found; run `cytoprofile collate` first")
            try:
                self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
                names = [r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                         if r[0] not in RESERVED_TABLES]
            except sqlite3.DatabaseError as exc:
                raise InputError(f"{self.path}: not an SQLite database ({exc})") from exc
            self.tables = {n: [r[1] for r in self.conn.execute(f"PRAGMA table_info({quote(n)})")] for n in names}
        else:
            if not Path(self.path).exists():
                raise InputError(f"{self.path}: backend not found; run `cytoprofile collate --backend parquet` first")
            self.prefix = self.path[: -len("_Image.parquet")] if self.path.endswith("_Image.parquet") else self.path
            self.tables = {}
            parent = Path(self.prefix).parent
            stem = Path(self.prefix).name + "_"
            for p in sorted(parent.glob(f"{stem}*.parquet")):
                name = p.name[len(stem) : -len(".parquet")]
                if name not in RESERVED_TABLES:  # e.g. the joined single-cell table beside the backend
                    with _damage_said(str(p)):
                        self.tables[name] = pq.read_schema(p).names
        image_name = next((n for n in self.tables if n.lower() == "image"), None)
        if image_name is None:
            raise InputError(f"{self.path}: has no Image table; is this a cytoprofile or cytominer-database backend?")
        self.image_table = image_name

    def image(self) -> pd.DataFrame:
        """The Image table with ``Image_`` prefixes of older backends removed from metadata/feature names."""
        with _damage_said(self.path):
            return self._image()

    def _image(self) -> pd.DataFrame:
        if self.kind == "sqlite":
            df = pd.read_sql_query(f"SELECT * FROM {quote(self.image_table)}", self.conn)
        else:
            df = pq.read_table(parquet_table_path(self.prefix, self.image_table)).to_pandas()
        rename = {c: c[len("Image_") :] for c in df.columns if c.startswith("Image_") and c[len("Image_") :] not in df.columns}
        return df.rename(columns=rename)

    def object_tables(self) -> list[str]:
        """Every table but Image."""
        return [t for t in self.tables if t != self.image_table]

    def read_objects(self, table: str, columns: Sequence[str], images: Sequence[tuple[object, object]]) -> np.ndarray:
        """Rows of ``table`` for the given (TableNumber, ImageNumber) pairs, as float64 ``columns``."""
        with _damage_said(self.path if self.kind == "sqlite" else parquet_table_path(self.prefix, table)):
            return self._read_objects(table, columns, images)

    def _read_objects(self, table: str, columns: Sequence[str], images: Sequence[tuple[object, object]]) -> np.ndarray:
        if not images:
            return np.empty((0, len(columns)))
        if self.kind == "sqlite":
            cols = ", ".join(quote(c) for c in columns) or "NULL"  # a compartment without features still counts rows
            out = []
            by_table: dict[object, list[object]] = {}
            for t, i in images:
                by_table.setdefault(t, []).append(i)
            for t, numbers in by_table.items():
                marks = ", ".join("?" * len(numbers))
                sql = f"SELECT {cols} FROM {quote(table)} WHERE TableNumber = ? AND ImageNumber IN ({marks})"
                rows = self.conn.execute(sql, [t, *numbers]).fetchall()
                if rows:
                    out.append(_as_float(rows, table, columns) if columns else np.empty((len(rows), 0)))
            return np.concatenate(out) if out else np.empty((0, len(columns)))
        import pyarrow.compute as pc
        import pyarrow.dataset as ds

        dataset = ds.dataset(parquet_table_path(self.prefix, table))
        tns = sorted({str(t) if isinstance(t, str) else int(t) for t, _ in images}, key=str)  # type: ignore[call-overload]
        filt = pc.field("TableNumber").isin(tns)
        got = dataset.to_table(columns=["TableNumber", "ImageNumber", *columns], filter=filt)
        pairs = set(images)
        keep = [(t, i) in pairs for t, i in zip(got.column(0).to_pylist(), got.column(1).to_pylist())]
        got = got.filter(pa.array(keep, type=pa.bool_()))
        values = np.full((got.num_rows, len(columns)), np.nan)
        for k, c in enumerate(columns):
            values[:, k] = got.column(c).cast(pa.float64()).to_numpy(zero_copy_only=False)
        return values

    def close(self) -> None:
        """Close the connection."""
        if self.kind == "sqlite":
            self.conn.close()


@contextlib.contextmanager
def _damage_said(path: str) -> Iterator[None]:
    """A backend file that fails while read (a malformed SQLite page, a cut or foreign Parquet file, a missing
    key column): one line naming it and the fix, not a traceback."""
    try:
        yield
    except (sqlite3.DatabaseError, pa.ArrowException, OSError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, pa.ArrowException) and exc.errno is not None:
            raise InputError(f"{path}: cannot be read ({exc.strerror}); check the file's permissions and the disk") from exc
        raise InputError(f"{path}: the backend cannot be read ({str(exc).splitlines()[0][:200]}); it is damaged or not "
                         "a backend: rebuild it with `cytoprofile collate --overwrite`") from exc


def _as_float(rows: list[tuple[Any, ...]], table: str, columns: Sequence[str]) -> np.ndarray:
    """Rows as float64; text that is not a number (old backends stored some) becomes NaN, with a warning."""
    try:
        return np.array(rows, dtype=np.float64)
    except (ValueError, TypeError):
        frame = pd.DataFrame(rows, columns=list(columns))
        converted = frame.apply(pd.to_numeric, errors="coerce")
        bad = [c for c in frame.columns if (converted[c].isna() & frame[c].notna()).any()]
        import logging

        logging.getLogger("cytoprofile.backend").warning(
            "%s: non-numeric values in %s read as missing", table, ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""))
        return converted.to_numpy(dtype=np.float64)


def open_backend(path: str | os.PathLike[str]) -> BackendReader:
    """Open a backend for reading."""
    return BackendReader(path)
