"""ExportToDatabase files: finding them, checking them and describing which tables hold what."""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..backend import quote
from ..errors import InputError
from ..ingest import is_reserved_table
from ..layout import Workspace

__all__ = [
    "Dropped",
    "EXPORT_SUFFIXES",
    "ExportFile",
    "ObjectSource",
    "connect",
    "database_problem",
    "files_read_with",
    "side_file",
    "discover_export_files",
    "entries_not_read",
    "export_files_in",
    "export_plates",
    "find_export_files",
    "open_export",
    "source_name",
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


#: how a file stores its objects: one table per object set, or one Per_Object table for all
TableLayout = Literal["per_object_table", "per_object"]


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
    layout: TableLayout
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
    #: object tables not stored because their object set's name is one the backend keeps for itself: table -> why
    reserved: dict[str, str] = field(default_factory=dict)
    #: the single Per_Object table (or view) holding every object set, as the file spells it (None: one table a set)
    combined_table: str | None = None


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


def find_export_files(path: str | os.PathLike[str]) -> list[str]:
    """ExportToDatabase files at ``path``: the file itself, or the SQLite files directly in a folder (a ``.db``
    file of another program, such as Thumbs.db, is not one: :func:`export_files_in` names it)."""
    target = Path(path)
    if target.is_file():
        return [str(target)]
    if not target.is_dir():
        raise InputError(f"{target}: no such file or folder; give an ExportToDatabase .sqlite file or a folder of them")
    found, _ = _listed(target)
    if not found:
        raise InputError(f"{target}: holds no ExportToDatabase file (*{', *'.join(EXPORT_SUFFIXES)})")
    return found


def discover_export_files(ws: str | os.PathLike[str], batch: str, plate: str) -> list[str]:
    """A plate's ExportToDatabase files in the workspace: ``analysis/BATCH/PLATE/*.sqlite`` (none: empty list)."""
    folder = Path(Workspace(str(ws)).analysis_plate(batch, plate))
    return _listed(folder)[0] if folder.is_dir() else []


def export_files_in(folder: str | os.PathLike[str]) -> tuple[list[str], dict[str, str]]:
    """The SQLite files directly in ``folder`` and the ``.db`` files of other programs beside them (name -> why not
    read), listed once; a folder that does not exist holds neither."""
    return _listed(Path(folder)) if Path(folder).is_dir() else ([], {})


def entries_not_read(folder: str | os.PathLike[str], *, read: Sequence[str], file_why: str, folder_why: str,
                     export_why: str | None = None, label: str = "") -> dict[str, str]:
    """What lies directly in ``folder`` and is not read (name -> why), so nothing beside the inputs is skipped silently:
    ExportToDatabase files not in ``read`` (``export_why``; None: named as other files), ``.db`` files of other
    programs, other files (``file_why``) and non-empty folders holding nothing read (``folder_why``, named
    ``NAME/``). ``read`` are the files and folders read; names start with ``label`` (``../`` from a sites folder)."""
    if not os.path.isdir(folder):
        return {}
    exports, foreign = export_files_in(folder)
    done, given = {os.path.realpath(p) for p in read}, {os.path.abspath(p) for p in read}
    names = {os.path.realpath(p): p for p in read}
    out = {f"{label}{os.path.basename(p)}": export_why for p in exports if export_why and os.path.realpath(p) not in done}
    out.update({f"{label}{name}": why for name, why in foreign.items()})
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        real = os.path.realpath(path)
        if os.path.isfile(path):
            if _sqlite_side_file(path, done) is not None:
                continue  # read with its database: see files_read_with
            if f"{label}{entry}" not in out and real not in done:
                out[f"{label}{entry}"] = file_why
            elif real in done and os.path.abspath(path) not in given:  # a link to a file read: named, read once
                out[f"{label}{entry}"] = f"the same file as {os.path.basename(names[real])} (a link to it): read once, as that"
        elif os.path.isdir(path) and os.listdir(path) and os.path.abspath(path) not in given \
                and not any(d.startswith(real + os.sep) for d in done):
            out[f"{label}{entry}/"] = folder_why
    return out


def files_read_with(folder: str | os.PathLike[str], *, read: Sequence[str]) -> dict[str, str]:
    """The ``-wal`` and ``-shm`` files directly in ``folder`` that belong to a database of ``read`` (name -> what
    each is): read with it, so named apart from the files :func:`entries_not_read` lists."""
    if not os.path.isdir(folder):
        return {}
    done = {os.path.realpath(p) for p in read}
    found = ((entry, _sqlite_side_file(os.path.join(folder, entry), done)) for entry in sorted(os.listdir(folder)))
    return {entry: what for entry, what in found if what is not None}


def _sqlite_side_file(path: str, done: set[str]) -> str | None:
    """What a ``-wal`` or ``-shm`` file beside a database read is: part of it, read with it (SQLite reads the
    rows committed to the write-ahead log but not yet copied into the file), never a file not read."""
    for suffix, what in (("-wal", "its write-ahead log (rows committed to it are read with the file)"),
                         ("-shm", "the index of its write-ahead log (used while reading the file)")):
        base = path[: -len(suffix)] if path.endswith(suffix) else None
        beside = base is not None and side_file(base, suffix) == os.path.realpath(path)  # not beside a link
        if base is not None and beside and os.path.realpath(base) in done:
            return f"part of {os.path.basename(base)}: {what}"
    return None


def _listed(folder: Path) -> tuple[list[str], dict[str, str]]:
    """The SQLite files directly in ``folder``, and the ``.db`` files of other programs beside them."""
    candidates = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXPORT_SUFFIXES)
    foreign = [p for p in candidates if _foreign_db(p)]
    return ([str(p) for p in candidates if p not in foreign],
            {p.name: "not an SQLite file (a .db file of another program, such as Thumbs.db): not read" for p in foreign})


def _foreign_db(path: Path) -> bool:
    """A ``.db`` file whose first bytes are not SQLite's header (``.sqlite`` files are always tried)."""
    if path.suffix.lower() != ".db":
        return False
    try:
        with open(path, "rb") as fh:
            return fh.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC
    except OSError:
        return False  # unreadable: opening it names the fault


def source_name(path: str, root: str | os.PathLike[str] | None) -> str:
    resolved = os.path.realpath(path)
    if root is not None:
        base = os.path.realpath(root)
        if resolved.startswith(base + os.sep):
            return os.path.relpath(resolved, base)
    return os.path.basename(resolved)


def connect(path: str) -> sqlite3.Connection:
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from exc
    if magic != _SQLITE_MAGIC:
        raise InputError(f"{path}: not an SQLite file; give CellProfiler ExportToDatabase output (database type SQLite)")
    where = Path(path).resolve().as_posix()
    if not _has_log(path):  # every row is in the file: read it as it is, writing nothing beside it
        return sqlite3.connect(f"file:{where}?immutable=1", uri=True, check_same_thread=False)
    return sqlite3.connect(f"file:{where}?mode=ro", uri=True, check_same_thread=False)


def side_file(path: str, suffix: str) -> str:
    """A database's ``-wal``, ``-shm`` or ``-journal``: beside the file itself, where SQLite looks for it (not
    beside a link to the file)."""
    return os.path.realpath(path) + suffix


def _has_log(path: str) -> bool:
    """Whether rows may wait outside the file: a non-empty ``-wal`` or a ``-journal`` beside it. Without one,
    SQLite would still create ``-wal`` and ``-shm`` to open a WAL-mode file (in the input folder, and the next
    run would see a changed input), so the file is opened immutable instead."""
    return any(os.path.isfile(f) and os.path.getsize(f) for f in (side_file(path, "-wal"), side_file(path, "-journal")))


def database_problem(path: str, exc: sqlite3.DatabaseError) -> InputError:
    """A file SQLite cannot read to the end (a damaged page, a TEXT value that is not UTF-8) as a one-line user error
    naming the file, the column where SQLite names one, and the fix."""
    text = str(exc)
    if ("unable to open database file" in text and os.path.isfile(side_file(path, "-wal"))
            and not os.path.isfile(side_file(path, "-shm"))):
        folder = os.path.dirname(os.path.abspath(path))
        return InputError(f"{path}: left in WAL mode ({os.path.basename(path)}-wal beside it) in a folder SQLite cannot "
                          f"write its index ({os.path.basename(path)}-shm) to; make {folder} writable, or copy the "
                          "file with its -wal file to a writable folder and read it there")
    if "attempt to write a readonly database" in text and os.path.isfile(side_file(path, "-journal")):
        return InputError(f"{path}: a writer of it stopped part way ({os.path.basename(path)}-journal beside it holds "
                          "what its unfinished change overwrote), so the file must be rolled back before it can be "
                          f"read; open it once with the sqlite3 command (sqlite3 {path} 'PRAGMA quick_check'), which "
                          "rolls the change back, then collate again")
    if "Could not decode to UTF-8" in text:
        where = text.split(" with text ")[0].replace("Could not decode to UTF-8 column", "column")
        return InputError(f"{path}: {where} holds a TEXT value that is not UTF-8; re-export the file from CellProfiler "
                          "or correct the value")
    return InputError(f"{path}: not a readable SQLite database ({text}); the file is damaged, or still being written "
                      "(let its CellProfiler run finish): copy the file again (or re-export it)")


def _columns(conn: sqlite3.Connection, table: str, *, path: str) -> list[tuple[str, str]]:
    """Name and declared type of each column of ``table`` (a name that is not UTF-8 is refused, naming its position).

    ``imagenumber`` in any case is ``ImageNumber``: SQLite's names are case-blind, so it is the same column."""
    try:
        return [("ImageNumber" if r[1].lower() == "imagenumber" else r[1], str(r[2] or ""))
                for r in conn.execute(f"PRAGMA table_info({quote(table)})")]
    except sqlite3.OperationalError as exc:
        if "Could not decode to UTF-8" not in str(exc):
            raise
    conn.text_factory = bytes  # find the name (a column name, not a value) that does not decode
    try:
        names = [r[1] for r in conn.execute(f"PRAGMA table_info({quote(table)})")]
    finally:
        conn.text_factory = str
    for position, name in enumerate(names, start=1):
        try:
            name.decode("utf-8")
        except UnicodeDecodeError:
            shown = name.decode("utf-8", errors="backslashreplace")
            raise InputError(f"{path}: table {table} has a column name that is not UTF-8 text: column {position} "
                             f"({shown!r}); rename that column in a copy of the file") from None
    raise InputError(f"{path}: table {table} has a column name or type that is not UTF-8 text; rename it in a copy of the file")


def _detect_prefix(path: str, tables: Sequence[str], table_prefix: str | None) -> tuple[str, str]:
    """The file's table prefix and its image table, as the file spells them (SQLite names are case-insensitive, so
    ``myexpt_per_image`` is ``MyExpt_Per_Image``)."""
    if table_prefix is not None:
        found = [t for t in tables if t.lower() == f"{table_prefix}Per_Image".lower()]
        if not found:
            raise InputError(f"{path}: no table {table_prefix}Per_Image (tables: {', '.join(sorted(tables)) or 'none'}); "
                             "check --table-prefix")
        return found[0][: -len("Per_Image")], found[0]
    images = sorted(t for t in tables if t.lower().endswith("per_image"))
    if not images:
        raise InputError(f"{path}: no Per_Image table (tables: {', '.join(sorted(tables)) or 'none'}); "
                         "not a CellProfiler ExportToDatabase file, or give its table prefix with --table-prefix")
    if len(images) > 1:
        raise InputError(f"{path}: several image tables ({', '.join(images)}); pick one with --table-prefix")
    return images[0][: -len("Per_Image")], images[0]


def _strip(name: str, prefix: str) -> str:
    return name[len(prefix):] if name.startswith(prefix) and len(name) > len(prefix) else name


def _csv_names(columns: Sequence[str], prefix: str, fixed: dict[str, str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Columns in CSV order and their object-CSV (or Image.csv) names: the set's prefix stripped.

    A stripped name never takes over another column's: names that clash stay equal, the key column first, then the
    prefixed column (the measurement), then an unprefixed stray, so the CSV route reads them as a column named twice
    (the later copy is ``X_2`` and named under ``duplicate_columns``; a differing copy of a key quarantines the site).
    """
    names = [fixed.get(c, _strip(c, prefix)) for c in columns]
    counts = Counter(names)

    def rank(i: int) -> int:
        if counts[names[i]] == 1 or columns[i] in fixed:
            return 0
        return 1 if columns[i].startswith(prefix) else 2

    order = sorted(range(len(columns)), key=rank)
    return tuple(columns[i] for i in order), tuple(names[i] for i in order)


def _object_source(path: str, name: str, table: str, columns: Sequence[str], *, key: str) -> ObjectSource:
    if not _SAFE_NAME.match(name):
        raise InputError(f"{path}: object set name {name!r} in table {table} cannot be a file name; rename it in CellProfiler")
    number = f"{name}_Number_Object_Number"
    fixed = {"ImageNumber": "ImageNumber", key: "ObjectNumber"}
    # a stray ObjectNumber beside <Set>_Number_Object_Number is a second copy of the key (the CSV route compares them)
    ordered, names = _csv_names(["ImageNumber", key] + [c for c in columns if c not in ("ImageNumber", key)],
                                f"{name}_", fixed)
    cols, csv_names = list(ordered), list(names)
    if key.lower() == number.lower():  # the object CSV carries both ObjectNumber and Number_Object_Number
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
    """Check an ExportToDatabase file and describe its tables; a fault raises ``InputError`` naming the file and the fix.

    Views are read as tables are (a ``Per_Cells`` view is the Cells object set), except a view whose object sets
    tables of the file already hold (CellProfiler's "single object view" ``Per_Object``): it is listed, not read
    twice. Table names match in any case, as SQLite's do.
    """
    path = str(path)
    conn = connect(path)
    try:
        try:
            kinds = dict(conn.execute("SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view')").fetchall())
        except sqlite3.DatabaseError as exc:
            raise database_problem(path, exc) from exc
        prefix, image_table = _detect_prefix(path, list(kinds), table_prefix)
        try:
            return _describe(conn, path, name or os.path.basename(path), prefix, image_table, kinds)
        except sqlite3.DatabaseError as exc:
            raise database_problem(path, exc) from exc
    finally:
        conn.close()


def _own_name(table: str, prefix: str) -> str | None:
    """``table`` without the file's prefix, in any case (None: another prefix)."""
    return table[len(prefix):] if table.lower().startswith(prefix.lower()) else None


def _set_name(own: str, names: Sequence[str]) -> tuple[str, str | None]:
    """The object set of a ``Per_<Set>`` table and its key column, spelled as its columns are (``per_cells`` holding
    ``Cells_Number_Object_Number`` is Cells); the key is None when the table has neither key column."""
    guess = own[len("Per_"):]
    number = next((c for c in names if c.lower() == f"{guess}_number_object_number".lower()), None)
    if number is not None:  # the set as its measurements spell it: a key renamed in another case renames nothing
        spelled = number[: -len("_Number_Object_Number")]
        used = Counter(c[: len(spelled)] for c in names if c.lower().startswith(spelled.lower() + "_") and c != number)
        return (used.most_common(1)[0][0] if used else spelled), number
    return guess, "ObjectNumber" if "ObjectNumber" in names else None


def _not_stored(conn: sqlite3.Connection, table: str, *, view: bool) -> dict[str, int]:
    """A table the backend does not store, as the report names it, with its rows counted once (a view: 0, its rows
    are a table's)."""
    if view:
        return {f"{table} (view)": 0}
    return {table: conn.execute(f"SELECT COUNT(*) FROM {quote(table)}").fetchone()[0]}


def _describe(conn: sqlite3.Connection, path: str, name: str, prefix: str, image_table: str,
              kinds: dict[str, str]) -> ExportFile:
    image_cols = _columns(conn, image_table, path=path)
    if "ImageNumber" not in [c for c, _ in image_cols]:
        raise InputError(f"{path}: {image_table} has no ImageNumber column; not a CellProfiler image table")
    objects: list[ObjectSource] = []
    not_stored: dict[str, int] = {}
    unowned: list[str] = []
    reserved: dict[str, str] = {}
    types: dict[str, dict[str, str]] = {}
    layout: TableLayout = "per_object_table"
    combined: str | None = None
    run_tables = {t.lower() for t in _RUN_TABLES}
    tables = sorted(t for t, k in kinds.items() if k == "table") + sorted(v for v, k in kinds.items() if k == "view")
    for table in tables:
        if table == image_table:
            continue
        view = kinds[table] == "view"
        own = _own_name(table, prefix)
        if own is None or not own.lower().startswith("per_") or own.lower() in run_tables:
            not_stored |= _not_stored(conn, table, view=view)
            continue
        cols = _columns(conn, table, path=path)
        names = [c for c, _ in cols]
        held = {o.name.lower() for o in objects}
        if own.lower() == "per_object":
            found, spare = _split_combined(path, table, names)
            if view and all(o.name.lower() in held for o in found):
                not_stored[f"{table} (view)"] = 0  # a view of the object tables read: read once
                continue
            _no_reserved_set(path, table, found)
            types[table], layout, combined, unowned = dict(cols), "per_object", table, spare
            objects += found
        elif "ImageNumber" in names:
            set_name, key = _set_name(own, names)
            if view and set_name.lower() in held:
                not_stored[f"{table} (view)"] = 0
                continue
            if is_reserved_table(set_name):
                not_stored |= _not_stored(conn, table, view=False)  # a view too: its rows counted, by its name
                reserved[table] = (f"object set {set_name!r} is a name the backend keeps for its own table; rename "
                                   f"{table} in a copy of the file (ALTER TABLE ... RENAME TO ...) to store it")
                continue
            if key is None and view:  # a view holds no rows of its own (e.g. a subset of Per_Cells): named, not stored
                not_stored |= _not_stored(conn, table, view=True)
                continue
            if key is None:
                raise InputError(f"{path}: {table} has ImageNumber but no {set_name}_Number_Object_Number or ObjectNumber "
                                 f"column; its objects cannot be numbered: drop the table from a copy of the file "
                                 f"(DROP TABLE {table}) or name its object-number column {set_name}_Number_Object_Number")
            types[table] = dict(cols)
            objects.append(_object_source(path, set_name, table, names, key=key))
        else:
            not_stored |= _not_stored(conn, table, view=view)
    _no_set_twice(path, objects)
    if not objects:
        log.warning("%s: no object tables; only image rows will be read", path)
    image_names, image_csv = _csv_names([c for c, _ in image_cols], "Image_", {"ImageNumber": "ImageNumber"})
    image_type = dict(image_cols)
    long_names = sorted(c for c in [*image_names] + [c for t in types.values() for c in t] if len(c) >= _NAME_LIMIT)
    return ExportFile(
        path=path, name=name, prefix=prefix, layout=layout, image_table=image_table,
        image_columns=image_names, image_csv_names=image_csv,
        image_types=tuple(image_type[c] for c in image_names), objects=objects,
        object_types={o.name: tuple(types[o.table].get(c, "") for c in o.columns) for o in objects},
        not_stored=not_stored, unowned_columns=unowned, long_names=long_names, combined_table=combined,
        reserved=reserved,
    )


def _no_reserved_set(path: str, table: str, found: Sequence[ObjectSource]) -> None:
    """An object set of a single Per_Object table named as a backend table (``cytoprofile_run``) is refused."""
    bad = next((o.name for o in found if is_reserved_table(o.name)), None)
    if bad is not None:
        raise InputError(f"{path}: {table} holds object set {bad!r}, a name the backend keeps for its own table; rename "
                         f"its {bad}_ columns in a copy of the file to store them")


def _no_set_twice(path: str, objects: Sequence[ObjectSource]) -> None:
    """One object set in two tables (Per_Object and its own table, or names differing only in case) is refused."""
    by_name: dict[str, list[ObjectSource]] = {}
    for o in objects:
        by_name.setdefault(o.name.lower(), []).append(o)
    twice = next((same for same in by_name.values() if len(same) > 1), None)
    if twice is not None:
        where = " and ".join(f"{o.name} in {o.table}" for o in twice)
        raise InputError(f"{path}: object set {twice[0].name} is stored twice ({where}; object set names match in any "
                         "case, as SQLite's table names do); remove or rename one")


def export_plates(sources: Sequence[str | os.PathLike[str]], *, table_prefix: str | None = None) -> dict[str, int]:
    """Images per ``Image_Metadata_Plate`` over the files (a file without the column counts under ``""``)."""
    plates: Counter[str] = Counter()
    for path in sources:
        export = open_export(path, table_prefix=table_prefix)
        column = next((c for c, n in zip(export.image_columns, export.image_csv_names) if n == "Metadata_Plate"), None)
        conn = connect(str(path))
        try:
            if column is None:
                plates[""] += conn.execute(f"SELECT COUNT(*) FROM {quote(export.image_table)}").fetchone()[0]
                continue
            sql = f"SELECT {quote(column)}, COUNT(*) FROM {quote(export.image_table)} GROUP BY 1"
            for value, n in conn.execute(sql):
                plates["" if value is None else str(value)] += n
        finally:
            conn.close()
    return dict(plates)
