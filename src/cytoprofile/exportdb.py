"""CellProfiler ExportToDatabase (SQLite) files as collate input.

ExportToDatabase writes one SQLite file per CellProfiler run: ``Per_Image`` (one row
per image, ``Image_``-prefixed columns) and either one ``Per_<Object>`` table per
object set or a single ``Per_Object`` table holding every set side by side, all
optionally behind a table prefix (``MyExpt_Per_Image``). ImageNumber is unique in a
file only. This module finds such files, checks them, streams them one image at a
time (SQLite cursors in batches, never a whole table in memory) and writes each
image of a plate as a site folder in the CSV layout (``PLATE-WELL-SITE/Image.csv``,
``Cells.csv``, …) with the TableNumber the site must get, so the CSV route
ingests, writes and reports it unchanged.

TableNumber of an image is CRC32 of ``"<source name>:<ImageNumber>"``, where the
source name is the file's path relative to the workspace (its base name when it lies
outside). Every row of every file is accounted for: written into a site folder,
left for another plate (rows are routed by ``Image_Metadata_Plate``), or named in
the report with its reason.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sqlite3
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.csv as pacsv

from . import io, workspace
from .errors import InputError
from .ingest import TABLE_NUMBER_FILE

if TYPE_CHECKING:
    from .collate import PlateResult

__all__ = [
    "EXPORT_SUFFIXES",
    "Dropped",
    "ExportFile",
    "ExportImage",
    "Materialised",
    "ObjectSource",
    "collate_export",
    "discover_export_files",
    "export_plates",
    "find_export_files",
    "materialise_plate",
    "open_export",
    "read_images",
    "table_number",
]

log = logging.getLogger("cytoprofile.exportdb")

EXPORT_SUFFIXES = (".sqlite", ".sqlite3", ".db")
_SQLITE_MAGIC = b"SQLite format 3\x00"
#: tables CellProfiler writes that hold no image or object rows
_RUN_TABLES = ("Per_Experiment", "Experiment", "Experiment_Properties", "Per_RelationshipTypes", "Per_Relationships")
#: CellProfiler's default limit on column names; longer names were shortened when written
_NAME_LIMIT = 64
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
Layout = Literal["per_object_table", "per_object"]


@dataclass(frozen=True)
class ObjectSource:
    """The columns of one object set in one SQL table, and their object-CSV names."""

    name: str
    table: str
    key: str
    columns: tuple[str, ...]
    csv_names: tuple[str, ...]


@dataclass
class ExportFile:
    """A checked ExportToDatabase file: which tables hold what."""

    path: str
    name: str
    prefix: str
    layout: Layout
    image_table: str
    image_columns: tuple[str, ...]
    image_csv_names: tuple[str, ...]
    image_types: tuple[str, ...]
    objects: list[ObjectSource]
    object_types: dict[str, tuple[str, ...]]
    #: tables read but not stored (run metadata, per-well summaries, views), with their rows
    not_stored: dict[str, int] = field(default_factory=dict)
    #: columns no object set owns (combined Per_Object only)
    unowned_columns: list[str] = field(default_factory=list)
    #: column names at CellProfiler's length limit, which it may have shortened
    long_names: list[str] = field(default_factory=list)


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


@dataclass
class Dropped:
    """Rows of a file that no site received, with the reason."""

    file: str
    table: str
    rows: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """The report's form."""
        return {"file": self.file, "table": self.table, "rows": self.rows, "reason": self.reason}


def table_number(source_name: str, image_number: int) -> int:
    """TableNumber of one image of an ExportToDatabase file: CRC32 of ``"NAME:IMAGENUMBER"``."""
    return zlib.crc32(f"{source_name}:{image_number}".encode()) & 0xFFFFFFFF


# ---------------------------------------------------------------------------- discovery


def find_export_files(path: str | os.PathLike[str]) -> list[str]:
    """ExportToDatabase files at ``path``: the file itself, or the SQLite files directly in a folder."""
    target = Path(path)
    if target.is_file():
        return [str(target)]
    if not target.is_dir():
        raise InputError(f"{target}: no such file or folder; give an ExportToDatabase .sqlite file or a folder of them")
    found = sorted(str(p) for p in target.iterdir() if p.is_file() and p.suffix.lower() in EXPORT_SUFFIXES)
    if not found:
        raise InputError(f"{target}: holds no ExportToDatabase file (*{', *'.join(EXPORT_SUFFIXES)})")
    return found


def discover_export_files(ws: str | os.PathLike[str], batch: str, plate: str) -> list[str]:
    """A plate's ExportToDatabase files in the workspace: ``analysis/BATCH/PLATE/*.sqlite`` (none: empty list)."""
    folder = Path(io.join(str(ws), "analysis", batch, plate))
    if not folder.is_dir():
        return []
    return sorted(str(p) for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXPORT_SUFFIXES)


def _source_name(path: str, root: str | os.PathLike[str] | None) -> str:
    resolved = os.path.realpath(path)
    if root is not None:
        base = os.path.realpath(root)
        if resolved.startswith(base + os.sep):
            return os.path.relpath(resolved, base)
    return os.path.basename(resolved)


# ---------------------------------------------------------------------------- validation


def _connect(path: str) -> sqlite3.Connection:
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from exc
    if magic != _SQLITE_MAGIC:
        raise InputError(f"{path}: not an SQLite file; give CellProfiler ExportToDatabase output (database type SQLite)")
    return sqlite3.connect(f"file:{Path(path).resolve().as_posix()}?mode=ro", uri=True, check_same_thread=False)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _columns(conn: sqlite3.Connection, table: str) -> list[tuple[str, str]]:
    return [(r[1], str(r[2] or "")) for r in conn.execute(f"PRAGMA table_info({_quote(table)})")]


def _detect_prefix(path: str, tables: Sequence[str], table_prefix: str | None) -> str:
    if table_prefix is not None:
        if f"{table_prefix}Per_Image" not in tables:
            raise InputError(f"{path}: no table {table_prefix}Per_Image (tables: {', '.join(sorted(tables)) or 'none'}); "
                             "check --table-prefix")
        return table_prefix
    prefixes = sorted(t[: -len("Per_Image")] for t in tables if t.endswith("Per_Image"))
    if not prefixes:
        raise InputError(f"{path}: no Per_Image table (tables: {', '.join(sorted(tables)) or 'none'}); "
                         "not a CellProfiler ExportToDatabase file, or give its table prefix with --table-prefix")
    if len(prefixes) > 1:
        raise InputError(f"{path}: several image tables ({', '.join(p + 'Per_Image' for p in prefixes)}); "
                         "pick one with --table-prefix")
    return prefixes[0]


def _strip(name: str, prefix: str) -> str:
    return name[len(prefix):] if name.startswith(prefix) and len(name) > len(prefix) else name


def _csv_names(columns: Sequence[str], prefix: str, fixed: dict[str, str]) -> tuple[str, ...]:
    """Object-CSV (or Image.csv) names: the set's prefix stripped; a clash keeps the database name."""
    names = [fixed.get(c, _strip(c, prefix)) for c in columns]
    counts = Counter(names)
    return tuple(n if c in fixed or counts[n] == 1 else c for n, c in zip(names, columns))


def _object_source(path: str, name: str, table: str, columns: Sequence[str], *, key: str) -> ObjectSource:
    if not _SAFE_NAME.match(name):
        raise InputError(f"{path}: object set name {name!r} in table {table} cannot be a file name; rename it in CellProfiler")
    number = f"{name}_Number_Object_Number"
    fixed = {"ImageNumber": "ImageNumber", key: "ObjectNumber"}
    cols = ["ImageNumber", key] + [c for c in columns if c not in ("ImageNumber", key, "ObjectNumber")]
    csv_names = list(_csv_names(cols, f"{name}_", fixed))
    if key == number:  # the object CSV carries both ObjectNumber and Number_Object_Number
        cols.insert(2, number)
        csv_names.insert(2, "Number_Object_Number")
    return ObjectSource(name=name, table=table, key=key, columns=tuple(cols), csv_names=tuple(csv_names))


def _split_combined(path: str, table: str, columns: Sequence[str]) -> tuple[list[ObjectSource], list[str]]:
    """Object sets of a single Per_Object table: each ``<Set>_Number_Object_Number`` names one; columns go to the longest prefix."""
    suffix = "_Number_Object_Number"
    names = sorted({c[: -len(suffix)] for c in columns if c.endswith(suffix) and len(c) > len(suffix)}, key=len, reverse=True)
    if not names:
        raise InputError(f"{path}: {table} has no <Object>_Number_Object_Number column, so its object sets are unknown")
    owned: dict[str, list[str]] = {n: [] for n in names}
    unowned = []
    for c in columns:
        if c in ("ImageNumber", "ObjectNumber"):
            continue
        owner = next((n for n in names if c.startswith(f"{n}_")), None)
        if owner is None:
            unowned.append(c)
        else:
            owned[owner].append(c)
    sources = [_object_source(path, n, table, owned[n], key=f"{n}{suffix}") for n in sorted(names)]
    return sources, unowned


def open_export(path: str | os.PathLike[str], *, name: str | None = None, table_prefix: str | None = None) -> ExportFile:
    """Check an ExportToDatabase file and describe its tables; a fault raises ``InputError`` naming the file and the fix."""
    path = str(path)
    conn = _connect(path)
    try:
        try:
            kinds = dict(conn.execute("SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view')").fetchall())
        except sqlite3.DatabaseError as exc:
            raise InputError(f"{path}: not a readable SQLite database ({exc}); copy the file again") from exc
        tables = [t for t, k in kinds.items() if k == "table"]
        prefix = _detect_prefix(path, tables, table_prefix)
        return _describe(conn, path, name or os.path.basename(path), prefix, tables, kinds)
    finally:
        conn.close()


def _describe(conn: sqlite3.Connection, path: str, name: str, prefix: str, tables: list[str], kinds: dict[str, str]) -> ExportFile:
    image_table = f"{prefix}Per_Image"
    image_cols = _columns(conn, image_table)
    if "ImageNumber" not in [c for c, _ in image_cols]:
        raise InputError(f"{path}: {image_table} has no ImageNumber column; not a CellProfiler image table")
    objects: list[ObjectSource] = []
    not_stored: dict[str, int] = {}
    unowned: list[str] = []
    types: dict[str, dict[str, str]] = {}
    layout: Layout = "per_object_table"
    for table in sorted(tables):
        if table == image_table:
            continue
        cols = _columns(conn, table)
        types[table] = dict(cols)
        names = [c for c, _ in cols]
        own = table[len(prefix):] if table.startswith(prefix) else None
        if own == "Per_Object":
            layout = "per_object"
            found, unowned = _split_combined(path, table, names)
            objects += found
        elif own is not None and own.startswith("Per_") and own not in _RUN_TABLES and "ImageNumber" in names:
            set_name = own[len("Per_"):]
            key = f"{set_name}_Number_Object_Number" if f"{set_name}_Number_Object_Number" in names else "ObjectNumber"
            if key not in names:
                raise InputError(f"{path}: {table} has ImageNumber but no {set_name}_Number_Object_Number or ObjectNumber "
                                 "column; its objects cannot be numbered")
            objects.append(_object_source(path, set_name, table, names, key=key))
        else:
            not_stored[table] = conn.execute(f"SELECT COUNT(*) FROM {_quote(table)}").fetchone()[0]
    not_stored.update({f"{v} (view)": 0 for v, k in kinds.items() if k == "view"})
    clash = [n for n, k in Counter(o.name for o in objects).items() if k > 1]
    if clash:
        raise InputError(f"{path}: object set {clash[0]} is stored twice (in Per_Object and its own table); remove one")
    if not objects:
        log.warning("%s: no object tables; only image rows will be read", path)
    image_names = [c for c, _ in image_cols]
    long_names = sorted(c for c in image_names + [c for t in types.values() for c in t] if len(c) >= _NAME_LIMIT)
    return ExportFile(
        path=path, name=name, prefix=prefix, layout=layout, image_table=image_table,
        image_columns=tuple(image_names), image_csv_names=_csv_names(image_names, "Image_", {}),
        image_types=tuple(t for _, t in image_cols), objects=objects,
        object_types={o.name: tuple(types[o.table].get(c, "") for c in o.columns) for o in objects},
        not_stored=not_stored, unowned_columns=unowned, long_names=long_names,
    )


def export_plates(sources: Sequence[str | os.PathLike[str]], *, table_prefix: str | None = None) -> dict[str, int]:
    """Images per ``Image_Metadata_Plate`` over the files (a file without the column counts under ``""``)."""
    plates: Counter[str] = Counter()
    for path in sources:
        export = open_export(path, table_prefix=table_prefix)
        column = next((c for c, n in zip(export.image_columns, export.image_csv_names) if n == "Metadata_Plate"), None)
        conn = _connect(str(path))
        try:
            if column is None:
                plates[""] += conn.execute(f"SELECT COUNT(*) FROM {_quote(export.image_table)}").fetchone()[0]
                continue
            sql = f"SELECT {_quote(column)}, COUNT(*) FROM {_quote(export.image_table)} GROUP BY 1"
            for value, n in conn.execute(sql):
                plates["" if value is None else str(value)] += n
        finally:
            conn.close()
    return dict(plates)


# ---------------------------------------------------------------------------- streaming


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
        sql = f"SELECT {', '.join(_quote(c) for c in columns)} FROM {_quote(table)} ORDER BY ImageNumber"
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
    combined = f"{export.prefix}Per_Object" if export.layout == "per_object" else None
    return _Plan(streams, positions, combined, declared, {t: _polars_types(d) for t, d in declared.items()})


def _orphans(export: ExportFile, plan: _Plan, table: str, rows: list[tuple[Any, ...]], dropped: list[Dropped], why: str) -> None:
    """Name the object rows of ``table`` that no image of the file takes."""
    for obj in (o for o in export.objects if o.table == table):
        key = plan.positions[obj.name][1]
        n = sum(1 for r in rows if r[key] is not None) if table == plan.combined else len(rows)
        if n:
            dropped.append(Dropped(export.name, obj.name, n, f"{table}: {why}"))
    if table == plan.combined:
        keys = [plan.positions[o.name][1] for o in export.objects if o.table == table]
        empty = sum(1 for r in rows if all(r[k] is None for k in keys))
        if empty:
            dropped.append(Dropped(export.name, "Per_Object", empty, f"{table}: {why}; the rows hold no object"))


def _drop_empty(export: ExportFile, plan: _Plan, table: str, found: dict[str, list[tuple[Any, ...]]],
                dropped: list[Dropped], image_number: int) -> None:
    """Per_Object rows of an image whose every object number is NULL hold no object: name them."""
    keys = [plan.positions[o.name][1] for o in export.objects if o.table == table]
    rows = found[table]
    empty = sum(1 for r in rows if all(r[k] is None for k in keys))
    if empty:
        dropped.append(Dropped(export.name, "Per_Object", empty,
                               f"{table}: rows of ImageNumber {image_number} with every <Object>_Number_Object_Number NULL"))
        found[table] = [r for r in rows if not all(r[k] is None for k in keys)]


def _why_orphan(value: Any) -> str:
    if value is None:
        return "rows with no ImageNumber"
    if not _valid(value):
        return f"rows with ImageNumber {value!r}, not an integer"
    return f"rows of ImageNumber {value}, which is not in Per_Image"


def read_images(export: ExportFile, *, dropped: list[Dropped], batch_rows: int = 2000) -> Iterator[ExportImage]:
    """Stream a file image by image (ImageNumber order); rows no image can take are appended to ``dropped``."""
    plan = _plan(export)
    conn = _connect(export.path)
    try:
        streams = [_TableStream(conn, t, cols, batch_rows) for t, cols in plan.streams.items()]
        image_sql = (f"SELECT {', '.join(_quote(c) for c in export.image_columns)} "
                     f"FROM {_quote(export.image_table)} ORDER BY ImageNumber")
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


def _build_image(export: ExportFile, plan: _Plan, row: tuple[Any, ...], found: dict[str, list[tuple[Any, ...]]]) -> ExportImage:
    image = _table([row], range(len(row)), export.image_csv_names, export.image_types)
    values = dict(zip(export.image_csv_names, row))
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


# ---------------------------------------------------------------------------- materialising


def _write_csv(table: pa.Table, path: str) -> None:
    """A CSV as ExportToSpreadsheet writes it: bare header and values; quotes only when a value needs them."""
    header = ",".join(n if re.fullmatch(r"[^,\"\r\n]*", n) else '"' + n.replace('"', '""') + '"' for n in table.column_names)
    body = pa.BufferOutputStream()
    try:
        pacsv.write_csv(table, body, write_options=pacsv.WriteOptions(quoting_style="none", include_header=False))
    except pa.ArrowInvalid:
        body = pa.BufferOutputStream()
        pacsv.write_csv(table, body, write_options=pacsv.WriteOptions(quoting_style="needed", include_header=False))
    with open(path, "wb") as fh:
        fh.write((header + "\n").encode())
        fh.write(body.getvalue().to_pybytes())


def _write_object_csv(table: pa.Table, path: str) -> None:
    """An object CSV, written by Polars (fast); numbers read back identically, integral floats as ``1.0``."""
    import polars as pl

    try:
        frame = pl.from_arrow(table)
    except pl.exceptions.PolarsError:
        _write_csv(table, path)
        return
    assert isinstance(frame, pl.DataFrame)
    frame.write_csv(path)


def _folder_part(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "_", value).strip(".") or "_"


@dataclass
class Materialised:
    """One plate of ExportToDatabase files written as CSV site folders, and where every row went."""

    plate: str
    analysis_dir: str
    #: site folder name -> source file, ImageNumber, TableNumber, rows per table
    sites: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    #: rows left for other plates: plate -> table -> rows
    other_plates: dict[str, dict[str, int]] = field(default_factory=dict)

    def rows(self) -> dict[str, dict[str, int]]:
        """Per table: rows read, written to sites, left for other plates, dropped (read = the other three)."""
        out: dict[str, dict[str, int]] = {}

        def add(table: str, kind: str, n: int) -> None:
            out.setdefault(table, {"read": 0, "sites": 0, "other_plates": 0, "dropped": 0})[kind] += n

        for f in self.files:
            for t, n in f["rows"].items():
                add(t, "read", n)
        for s in self.sites.values():
            for t, n in s["rows"].items():
                add(t, "sites", n)
        for per in self.other_plates.values():
            for t, n in per.items():
                add(t, "other_plates", n)
        for d in self.dropped:
            add(d.table, "dropped", d.rows)
        return out

    def report(self) -> dict[str, Any]:
        """The plate report's ``export_database`` section."""
        return {"files": self.files, "sites": self.sites, "dropped": [d.as_dict() for d in self.dropped],
                "other_plates": self.other_plates, "rows": self.rows()}


def _file_rows(export: ExportFile) -> dict[str, int]:
    """Rows each table of the file holds, counted by SQL (independent of the stream)."""
    conn = _connect(export.path)
    try:
        out = {"Image": conn.execute(f"SELECT COUNT(*) FROM {_quote(export.image_table)}").fetchone()[0]}
        table = f"{export.prefix}Per_Object"
        keys = []
        for obj in export.objects:
            where = f" WHERE {_quote(obj.key)} IS NOT NULL" if obj.table == table else ""
            out[obj.name] = conn.execute(f"SELECT COUNT(*) FROM {_quote(obj.table)}{where}").fetchone()[0]
            keys += [obj.key] if obj.table == table else []
        if keys:
            empty = " AND ".join(f"{_quote(k)} IS NULL" for k in keys)
            out["Per_Object"] = conn.execute(f"SELECT COUNT(*) FROM {_quote(table)} WHERE {empty}").fetchone()[0]
        return out
    finally:
        conn.close()


class _SiteWriter:
    """Writes a plate's images as site folders; the same plate/well/site twice leaves both out, named."""

    def __init__(self, out: Materialised) -> None:
        self.out = out
        self.by_key: dict[tuple[str, ...], str] = {}
        self.poisoned: set[tuple[str, ...]] = set()
        self.numbers: set[int] = set()

    def add(self, img: ExportImage, plate: str) -> None:
        assert img.well is not None
        key = (plate, img.well, img.site if img.site is not None else f"{img.file}:{img.image_number}")
        where = f"image {img.image_number} of {img.file}"
        if key in self.poisoned or key in self.by_key:
            first = self.by_key.pop(key, None)
            if first is not None:
                gone = self.out.sites.pop(first)
                shutil.rmtree(os.path.join(self.out.analysis_dir, first))
                self.drop(gone["file"], gone["rows"], f"site {'/'.join(key)} is also {where}; which copy is right is unknown")
            self.poisoned.add(key)
            self.drop(img.file, img.rows(), f"site {'/'.join(key)} ({where}) appears more than once in the files")
            return
        name = "-".join(_folder_part(p) for p in (plate, img.well, img.site or f"image{img.image_number}"))
        base, k = name, 1
        while name in self.out.sites or os.path.exists(os.path.join(self.out.analysis_dir, name)):
            k += 1
            name = f"{base}.{k}"
        number, salt = img.table_number, 0
        while number in self.numbers:  # CRC32 collision within the plate: re-hash deterministically
            salt += 1
            number = table_number(f"{img.file}#{salt}", img.image_number)
        self.numbers.add(number)
        folder = os.path.join(self.out.analysis_dir, name)
        os.makedirs(folder)
        _write_csv(img.image, os.path.join(folder, "Image.csv"))
        for obj, table in img.objects.items():
            _write_object_csv(table, os.path.join(folder, f"{obj}.csv"))
        Path(folder, TABLE_NUMBER_FILE).write_text(f"{number}\n")
        self.by_key[key] = name
        self.out.sites[name] = {"file": img.file, "image_number": img.image_number, "table_number": number, "rows": img.rows()}

    def drop(self, file: str, rows: dict[str, int], reason: str) -> None:
        for table, n in rows.items():
            if n:
                self.out.dropped.append(Dropped(file, table, n, reason))


def _route(img: ExportImage, export: ExportFile, plate: str) -> str | None:
    """The plate an image belongs to (``plate`` when the file has no plate column); None when its value is empty."""
    if "Metadata_Plate" not in export.image_csv_names:
        return plate
    return img.plate


def materialise_plate(
    sources: Sequence[str | os.PathLike[str]],
    *,
    plate: str,
    out_dir: str | os.PathLike[str],
    table_prefix: str | None = None,
    root: str | os.PathLike[str] | None = None,
    batch_rows: int = 2000,
) -> Materialised:
    """Write the images of ``plate`` in ExportToDatabase files as CSV site folders under ``out_dir``.

    Each site folder (``PLATE-WELL-SITE``) holds ``Image.csv``, one CSV per object set
    and the site's TableNumber in ``TABLE_NUMBER_FILE``. Images of other plates are
    counted, not written; a file without ``Image_Metadata_Plate`` belongs to ``plate``.
    ``root`` (the workspace) makes source names relative paths, as TableNumbers use them.
    """
    exports = [open_export(p, name=_source_name(str(p), root), table_prefix=table_prefix) for p in sources]
    if not exports:
        raise InputError(f"{plate}: no ExportToDatabase files given")
    names = Counter(e.name for e in exports)
    twice = [n for n, k in names.items() if k > 1]
    if twice:
        raise InputError(f"two ExportToDatabase files are both named {twice[0]}; TableNumbers would repeat; "
                         "rename one or place both inside the workspace")
    out = Materialised(plate=plate, analysis_dir=str(out_dir))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    writer = _SiteWriter(out)
    for export in exports:
        if "Metadata_Well" not in export.image_csv_names:
            raise InputError(f"{export.path}: {export.image_table} has no Image_Metadata_Well column, so wells are unknown; "
                             "extract the well in CellProfiler's Metadata module and export again")
        expected = _file_rows(export)
        out.files.append({"file": export.name, "table_prefix": export.prefix, "layout": export.layout, "rows": expected,
                          "not_stored": export.not_stored, "unowned_columns": export.unowned_columns,
                          "long_names": export.long_names})
        file_dropped: list[Dropped] = []
        got: Counter[str] = Counter()
        for img in read_images(export, dropped=file_dropped, batch_rows=batch_rows):
            got.update(img.rows())
            target = _route(img, export, plate)
            if target is None or img.well is None:
                missing = "Image_Metadata_Plate" if target is None else "Image_Metadata_Well"
                writer.drop(export.name, img.rows(), f"image {img.image_number}: {missing} is empty")
            elif target != plate:
                per = out.other_plates.setdefault(target, {})
                for t, n in img.rows().items():
                    per[t] = per.get(t, 0) + n
            else:
                writer.add(img, plate)
        for d in file_dropped:
            got[d.table] += d.rows
        out.dropped.extend(file_dropped)
        if {t: n for t, n in got.items() if n} != {t: n for t, n in expected.items() if n}:  # pragma: no cover - a bug
            raise RuntimeError(f"{export.path}: rows streamed {dict(got)} differ from rows in the file {expected}")
    return out


# ---------------------------------------------------------------------------- collate


def _fingerprint(paths: Sequence[str], root: str) -> list[list[Any]]:
    out = []
    for p in sorted(paths):
        st = os.stat(p)
        out.append([_source_name(p, root), st.st_size, st.st_mtime_ns])
    return out


def _previous_run(report_path: str) -> dict[str, Any]:
    """The ``export_database`` record of the plate's last report ({} when there is none)."""
    try:
        return dict(io.read_json(report_path).get("export_database") or {})
    except Exception:  # noqa: BLE001 - an unreadable report means: rebuild
        return {}


def _call_record(options: dict[str, Any], table_prefix: str | None) -> Any:
    """The options that shape the outputs, as JSON stores them (compared on re-runs)."""
    shaping = {k: v for k, v in options.items() if k not in ("overwrite", "progress", "threads", "tmp_dir")}
    return json.loads(json.dumps({**shaping, "table_prefix": table_prefix}, sort_keys=True, default=list))


def collate_export(
    ws: str | os.PathLike[str],
    batch: str,
    plate: str,
    *,
    sources: Sequence[str | os.PathLike[str]] | None = None,
    table_prefix: str | None = None,
    tmp_dir: str | None = None,
    **options: Any,
) -> PlateResult:
    """Collate one plate from ExportToDatabase files into ``backend/BATCH/PLATE`` like the CSV route.

    ``sources`` are files or folders of them (default ``analysis/BATCH/PLATE/*.sqlite``).
    The plate's images are written as CSV site folders in a scratch workspace (under
    ``tmp_dir``), collated there by :func:`cytoprofile.collate.collate_plate` (``options``
    are its options) with the outputs in ``ws``; the report gains an ``export_database``
    section naming every row not in the backend. A re-run with the same files and
    options is skipped; changed files rebuild.
    """
    from .collate import PlateResult, collate_plate, plate_outputs

    if io.is_remote(ws):
        raise InputError(f"{ws}: ExportToDatabase input is read from a local workspace; copy the files locally first")
    root = str(ws)
    if options.get("aggregate_only"):
        return collate_plate(root, batch, plate, **options)  # the backend exists: nothing to read from the files
    paths = [f for s in sources for f in find_export_files(s)] if sources else discover_export_files(root, batch, plate)
    if not paths:
        raise InputError(f"{io.join(root, 'analysis', batch, plate)}: no ExportToDatabase files (*.sqlite) found; "
                         "give them with --export-db")
    fingerprint, call = _fingerprint(paths, root), _call_record(options, table_prefix)
    outputs = plate_outputs(root, batch, plate, backend=options.get("backend", ("sqlite",)),
                            profile_format=options.get("profile_format", "csv"))
    previous = _previous_run(outputs["report"]) if Path(outputs["report"]).exists() else {}
    if previous.get("sources") == fingerprint and previous.get("call") == call and not options.get("overwrite") \
            and all(Path(p).exists() for p in outputs.values()):
        return PlateResult(batch, plate, "skipped", "complete outputs exist (use --overwrite to rebuild)", outputs)
    options["overwrite"] = True  # other files or options: the outputs are rebuilt
    with workspace.scratch_dir(tmp_dir, f"export-{_folder_part(plate)}") as scratch:
        done = materialise_plate(paths, plate=plate, out_dir=workspace.analysis_dir(scratch, batch, plate),
                                 table_prefix=table_prefix, root=root)
        if not done.sites:
            raise InputError(_no_sites(done, paths, plate, table_prefix))
        Path(root, "backend").mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.realpath(os.path.join(root, "backend")), os.path.join(scratch, "backend"))
        result = collate_plate(scratch, batch, plate, **options)
        result.outputs = {k: os.path.join(root, os.path.relpath(v, scratch)) for k, v in result.outputs.items()}
        if result.status == "done" and result.report is not None:
            section = {**done.report(), "sources": fingerprint, "call": call}
            result.report = _amend_report(result.report, done, section, outputs["report"])
        return result


def _no_sites(done: Materialised, paths: Sequence[str], plate: str, table_prefix: str | None) -> str:
    files = ", ".join(os.path.basename(p) for p in paths)
    images = [d for d in done.dropped if d.table == "Image"]
    if images:
        return (f"{plate}: every image of this plate in {files} was left out ({sum(d.rows for d in images)}); "
                f"first: {images[0].file}: {images[0].reason}")
    found = export_plates(paths, table_prefix=table_prefix)
    return f"{plate}: no image of this plate in {files}; plates there: {', '.join(sorted(p or '(none)' for p in found))}"


def _amend_report(report: dict[str, Any], done: Materialised, section: dict[str, Any], path: str) -> dict[str, Any]:
    """Name each site's source image and add where every row of the files went; rewritten atomically."""
    for site in report.get("sites", []):
        source = done.sites.get(site["site"])
        if source is not None and site.get("file"):
            site["file"] = f"{source['file']} (image {source['image_number']}; {os.path.basename(site['file'])})"
    report["export_database"] = section
    io.write_json(report, path)
    return report
