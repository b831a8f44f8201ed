"""Streaming an ExportToDatabase file image by image (SQLite cursors in batches, never a whole table in memory)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from ..backend import quote
from ..errors import InputError
from .files import Dropped, ExportFile, connect, table_number

__all__ = [
    "ExportImage",
    "read_images",
]


@dataclass
class ExportImage:
    """One image of a file: its Image.csv row and its object-CSV rows, per object set."""

    file: str
    image_number: int
    table_number: int
    plate: str | None
    well: str | None
    site: str | None
    image: pa.Table
    objects: dict[str, pa.Table]

    def rows(self) -> dict[str, int]:
        """Rows per CSV table (Image and each object set)."""
        return {"Image": self.image.num_rows, **{k: t.num_rows for k, t in self.objects.items()}}


def _ident(value: Any) -> tuple[str, Any]:
    """Group identity of an ImageNumber value: 3 and 3.0 are different values here (only integers are keys)."""
    return (type(value).__name__, value)


def _valid(value: Any) -> bool:
    return type(value) is int


def _groups(cursor: sqlite3.Cursor, batch_rows: int, key: int = 0) -> Iterator[list[tuple[Any, ...]]]:
    """Consecutive rows with the same ImageNumber (column ``key``), read ``batch_rows`` at a time."""
    current: tuple[str, Any] | None = None
    rows: list[tuple[Any, ...]] = []
    while batch := cursor.fetchmany(batch_rows):
        for row in batch:
            ident = _ident(row[key])
            if ident != current and rows:
                yield rows
                rows = []
            current = ident
            rows.append(row)
    if rows:
        yield rows


def _fetch_rows(batch_rows: int, n_columns: int) -> int:
    """Rows per fetch: ``batch_rows``, fewer for wide tables (about a million values at a time)."""
    return max(1, min(batch_rows, 1_000_000 // max(1, n_columns)))


class _TableStream:
    """One SQL table's rows in ImageNumber order, handed out image by image."""

    def __init__(self, conn: sqlite3.Connection, table: str, columns: Sequence[str], batch_rows: int) -> None:
        self.table = table
        sql = f"SELECT {', '.join(quote(c) for c in columns)} FROM {quote(table)} ORDER BY ImageNumber"
        self._groups = _groups(conn.execute(sql), _fetch_rows(batch_rows, len(columns)))
        self.head = next(self._groups, None)

    def _advance(self) -> list[tuple[Any, ...]]:
        assert self.head is not None
        taken, self.head = self.head, next(self._groups, None)
        return taken

    def before(self, image_number: int) -> Iterator[list[tuple[Any, ...]]]:
        """Groups sorting before ``image_number`` or not integer: rows whose image is not in Per_Image."""
        while self.head is not None and (not _valid(self.head[0][0]) or self.head[0][0] < image_number):
            yield self._advance()

    def take(self, image_number: int) -> list[tuple[Any, ...]]:
        """The rows of ``image_number`` (none when the image has no objects here)."""
        if self.head is not None and _valid(self.head[0][0]) and self.head[0][0] == image_number:
            return self._advance()
        return []

    def rest(self) -> Iterator[list[tuple[Any, ...]]]:
        """Groups left after the last image."""
        while self.head is not None:
            yield self._advance()


def _arrow_type(declared: str) -> pa.DataType | None:
    d = declared.upper()
    if "INT" in d:
        return pa.int64()
    if any(x in d for x in ("CHAR", "CLOB", "TEXT")):
        return pa.string()
    if any(x in d for x in ("REAL", "FLOA", "DOUB")):
        return pa.float64()
    return None


def _array(values: list[Any], declared: str) -> pa.Array:
    """Values typed by the column's declared type; stored values of another kind stay as written, as text in a CSV would."""
    typ = _arrow_type(declared)
    if typ == pa.int64() and any(type(v) is not int and v is not None for v in values):
        typ = None  # pyarrow would truncate a REAL stored in an INTEGER column
    if typ is not None:
        try:
            return pa.array(values, type=typ)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            pass
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def _table(rows: Sequence[tuple[Any, ...]], positions: Sequence[int], names: Sequence[str], declared: Sequence[str]) -> pa.Table:
    columns = list(zip(*rows)) if rows else None
    arrays = [_array(list(columns[p]) if columns else [], d) for p, d in zip(positions, declared)]
    return pa.table(dict(zip(names, arrays))) if len(set(names)) == len(names) else pa.Table.from_arrays(arrays, names=list(names))


def _polars_types(declared: Sequence[str]) -> list[Any] | None:
    import polars as pl

    kinds = {pa.int64(): pl.Int64, pa.float64(): pl.Float64, pa.string(): pl.String}
    types = [kinds.get(_arrow_type(d)) for d in declared]  # type: ignore[call-overload]
    return None if any(t is None for t in types) else types


def _fast_frame(rows: Sequence[tuple[Any, ...]], types: list[Any] | None) -> Any:
    """One table's rows of an image as a Polars frame (columns ``c0``, ``c1``, …); None when a value is not of its column's type.

    Polars would truncate a REAL stored in an INTEGER column, so those columns are checked first.
    """
    import polars as pl

    if types is None:
        return None
    ints = [i for i, t in enumerate(types) if t == pl.Int64]
    if any(type(r[i]) is not int and r[i] is not None for r in rows for i in ints):
        return None
    try:
        return pl.DataFrame(rows, schema={f"c{i}": t for i, t in enumerate(types)}, orient="row")
    except (pl.exceptions.PolarsError, TypeError, OverflowError):
        return None


@dataclass
class _Plan:
    """How one file's SQL tables map onto object sets: per table its columns and each set's positions."""

    streams: dict[str, list[str]]
    positions: dict[str, list[int]]
    #: the single Per_Object table, when the file has one (its rows hold several object sets)
    combined: str | None
    #: declared SQL type of each stream column
    declared: dict[str, list[str]]
    #: the Polars types they map to (None: some column's type is unknown)
    polars: dict[str, list[Any] | None] = field(default_factory=dict)


def _plan(export: ExportFile) -> _Plan:
    streams: dict[str, list[str]] = {}
    positions: dict[str, list[int]] = {}
    declared: dict[str, list[str]] = {}
    index: dict[str, dict[str, int]] = {}
    for obj in export.objects:
        cols = streams.setdefault(obj.table, ["ImageNumber"])
        types = declared.setdefault(obj.table, ["INTEGER"])
        at = index.setdefault(obj.table, {"ImageNumber": 0})
        for c, t in zip(obj.columns, export.object_types[obj.name]):
            if c not in at:
                at[c] = len(cols)
                cols.append(c)
                types.append(t)
        positions[obj.name] = [at[c] for c in obj.columns]
    combined = export.combined_table if export.layout == "per_object" else None
    return _Plan(streams, positions, combined, declared, {t: _polars_types(d) for t, d in declared.items()})


def _holders(export: ExportFile, plan: _Plan, table: str) -> list[tuple[str, int, list[int]]]:
    """Per object set of ``table``: its name, its number's position and its other values' positions."""
    out = []
    for obj in (o for o in export.objects if o.table == table):
        where = plan.positions[obj.name]
        out.append((obj.name, where[1], sorted({p for c, p in zip(obj.columns, where) if c not in ("ImageNumber", obj.key)})))
    return out


def _holds(row: tuple[Any, ...], key: int, values: Sequence[int]) -> bool:
    """A Per_Object row holds an object of a set when the set's number, or any of its values, is not NULL."""
    return row[key] is not None or any(row[p] is not None for p in values)


def _orphans(export: ExportFile, plan: _Plan, table: str, rows: list[tuple[Any, ...]], dropped: list[Dropped], why: str) -> None:
    """Name the object rows of ``table`` that no image of the file takes."""
    holders = _holders(export, plan, table)
    for name, key, values in holders:
        n = sum(1 for r in rows if _holds(r, key, values)) if table == plan.combined else len(rows)
        if n:
            dropped.append(Dropped(export.name, name, n, f"{table}: {why}"))
    if table == plan.combined:
        empty = sum(1 for r in rows if not any(_holds(r, k, v) for _, k, v in holders))
        if empty:
            dropped.append(Dropped(export.name, "Per_Object", empty, f"{table}: {why}; the rows hold no object"))


def _drop_empty(export: ExportFile, plan: _Plan, table: str, found: dict[str, list[tuple[Any, ...]]],
                dropped: list[Dropped], image_number: int) -> None:
    """Per_Object rows of an image holding no object set's number or value hold no object; a set's values on a row
    whose ``<Set>_Number_Object_Number`` is NULL are an object without its number: both named."""
    holders = _holders(export, plan, table)
    rows = found[table]
    for name, key, values in holders:
        unnumbered = sum(1 for r in rows if r[key] is None and any(r[p] is not None for p in values))
        if unnumbered:
            dropped.append(Dropped(export.name, name, unnumbered,
                                   f"{table}: rows of ImageNumber {image_number} with {name}_Number_Object_Number NULL "
                                   f"but {name}_ values; an object without its number cannot be stored"))
    kept = [r for r in rows if any(_holds(r, k, v) for _, k, v in holders)]
    if len(kept) < len(rows):
        dropped.append(Dropped(export.name, "Per_Object", len(rows) - len(kept),
                               f"{table}: rows of ImageNumber {image_number} with every <Object>_Number_Object_Number and value NULL"))
        found[table] = kept


def _why_orphan(value: Any) -> str:
    if value is None:
        return "rows with no ImageNumber"
    if not _valid(value):
        return f"rows with ImageNumber {value!r}, not an integer"
    return f"rows of ImageNumber {value}, which is not in Per_Image"


def read_images(export: ExportFile, *, dropped: list[Dropped], batch_rows: int = 2000) -> Iterator[ExportImage]:
    """Stream a file image by image (ImageNumber order); rows no image can take are appended to ``dropped``."""
    plan = _plan(export)
    conn = connect(export.path)
    try:
        streams = [_TableStream(conn, t, cols, batch_rows) for t, cols in plan.streams.items()]
        image_sql = (f"SELECT {', '.join(quote(c) for c in export.image_columns)} "
                     f"FROM {quote(export.image_table)} ORDER BY ImageNumber")
        at = export.image_columns.index("ImageNumber")
        for rows in _groups(conn.execute(image_sql), _fetch_rows(batch_rows, len(export.image_columns)), at):
            value = rows[0][at]
            if not _valid(value):
                dropped.append(Dropped(export.name, "Image", len(rows), f"{export.image_table}: {_why_orphan(value)}"))
                continue
            found: dict[str, list[tuple[Any, ...]]] = {}
            for stream in streams:
                for group in stream.before(value):
                    _orphans(export, plan, stream.table, group, dropped, _why_orphan(group[0][0]))
                found[stream.table] = stream.take(value)
                if stream.table == plan.combined:
                    _drop_empty(export, plan, stream.table, found, dropped, value)
            if len(rows) > 1:
                why = f"ImageNumber {value} is on {len(rows)} rows of {export.image_table}; which image its objects belong to is unknown"
                dropped.append(Dropped(export.name, "Image", len(rows), why))
                for table, group in found.items():
                    _orphans(export, plan, table, group, dropped, why)
                continue
            yield _build_image(export, plan, rows[0], found)
        for stream in streams:
            for group in stream.rest():
                _orphans(export, plan, stream.table, group, dropped, _why_orphan(group[0][0]))
    finally:
        conn.close()


def _no_blobs(export: ExportFile, table: str, names: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
    """A binary (BLOB) value has no CSV form: refused, naming the file, table and column."""
    key = list(names).index("ImageNumber")
    for row in rows:
        at = next((j for j, v in enumerate(row) if isinstance(v, bytes)), None)
        if at is not None:
            raise InputError(f"{export.path}: {table} column {names[at]} holds a binary (BLOB) value (ImageNumber "
                             f"{row[key]}); cytoprofile stores numbers and text: re-export without that measurement, "
                             "or drop the column")


def _build_image(export: ExportFile, plan: _Plan, row: tuple[Any, ...], found: dict[str, list[tuple[Any, ...]]]) -> ExportImage:
    _no_blobs(export, export.image_table, export.image_columns, [row])
    image = _table([row], range(len(row)), export.image_csv_names, export.image_types)
    values: dict[str, Any] = {}
    for name, value in zip(export.image_csv_names, row):
        values.setdefault(name, value)  # a name given twice: the first is the measurement (Image_ prefixed)
    import polars as pl

    frames = {t: _fast_frame(rows, plan.polars[t]) for t, rows in found.items()}
    objects = {}
    for obj in export.objects:
        where = plan.positions[obj.name]
        frame = frames.get(obj.table)
        if frame is not None and len(set(obj.csv_names)) == len(obj.csv_names):
            if obj.table == plan.combined:
                frame = frame.filter(pl.col(f"c{where[1]}").is_not_null())
            objects[obj.name] = frame.select([pl.col(f"c{p}").alias(n) for p, n in zip(where, obj.csv_names)]).to_arrow()
            continue
        rows = found.get(obj.table, [])
        _no_blobs(export, obj.table, plan.streams[obj.table], rows)
        if obj.table == plan.combined:
            rows = [r for r in rows if r[where[1]] is not None]
        objects[obj.name] = _table(rows, where, obj.csv_names, export.object_types[obj.name])
    number = int(values["ImageNumber"])

    def text(name: str) -> str | None:
        v = values.get(name)
        return None if v is None or str(v).strip() == "" else str(v).strip()

    return ExportImage(file=export.name, image_number=number, table_number=table_number(export.name, number),
                       plate=text("Metadata_Plate"), well=text("Metadata_Well"), site=text("Metadata_Site"),
                       image=image, objects=objects)
