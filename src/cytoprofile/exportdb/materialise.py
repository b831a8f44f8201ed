"""A plate's images of ExportToDatabase files written as CSV site folders, every row accounted for."""

from __future__ import annotations

import logging
import os
import re
import shutil
import sqlite3
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from ..backend import quote
from ..digest import file_digest
from ..errors import AccountingError, InputError
from ..ingest import TABLE_NUMBER_FILE, normalise_site
from ..vocabulary import distinct_strata, is_text_column, normalise_well
from .files import (
    Dropped,
    ExportFile,
    connect,
    database_problem,
    open_export,
    side_file,
    source_name,
    table_number,
)
from .stream import ExportImage, read_images

__all__ = [
    "Materialised",
    "folder_part",
    "materialise_plate",
]


def _text_as_written(table: pa.Table) -> pa.Table:
    """Numbers stored in text-family columns (``Metadata_PositionX`` as REAL) as ExportToSpreadsheet writes them
    (Python's shortest form: ``0.0``, ``-4e-06``), so they reach the backend as the CSV route stores them."""
    for i, name in enumerate(table.column_names):
        if is_text_column(name) and pa.types.is_floating(table.column(i).type):
            text = pa.array([None if v is None else repr(float(v)) for v in table.column(i).to_pylist()], pa.string())
            table = table.set_column(i, name, text)
    return table


def _write_csv(table: pa.Table, path: str) -> None:
    """A CSV as ExportToSpreadsheet writes it: bare header and values; quotes only when a value needs them."""
    table = _text_as_written(table)
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
        frame = pl.from_arrow(_text_as_written(table))
    except pl.exceptions.PolarsError:
        _write_csv(table, path)
        return
    assert isinstance(frame, pl.DataFrame)
    frame.write_csv(path)


def folder_part(value: str) -> str:
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
    #: per file and site CSV (``Image``, ``Cells``, …), the database column of each CSV field
    columns: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)

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


log = logging.getLogger("cytoprofile.exportdb")


def _copies(exports: Sequence[ExportFile]) -> dict[str, str]:
    """Files that are byte-for-byte copies of an earlier one (a run exported twice): name -> the earlier name.

    A file's write-ahead log is part of it: two files equal on disk but not in their ``-wal`` (one copied
    without its log) hold different rows, so they are no copies."""
    by_size: dict[tuple[int, int], list[ExportFile]] = {}
    for e in exports:
        by_size.setdefault((os.path.getsize(e.path), _log_size(e.path)), []).append(e)
    out: dict[str, str] = {}
    for (_, log_size), same in ((key, group) for key, group in by_size.items() if len(group) > 1):
        first: dict[tuple[str, str | None], str] = {}
        for e in same:
            # streamed: a run's file can be many GB
            digest = (file_digest(e.path), file_digest(side_file(e.path, "-wal")) if log_size else None)
            if digest in first:
                out[e.name] = first[digest]
            else:
                first[digest] = e.name
    return out


def _log_size(path: str) -> int:
    """Bytes of the file's write-ahead log, beside the file itself (0: none, or empty)."""
    try:
        return os.path.getsize(side_file(path, "-wal"))
    except OSError:
        return 0


def _guarded(export: ExportFile, images: Iterator[ExportImage]) -> Iterator[ExportImage]:
    """The images of a file; SQLite failing part way (a damaged page, text that is not UTF-8) is a user error."""
    try:
        yield from images
    except sqlite3.DatabaseError as exc:
        raise database_problem(export.path, exc) from exc


def _file_rows(export: ExportFile) -> dict[str, int]:
    """Rows each table of the file holds, counted by SQL (independent of the stream)."""
    try:
        return _count_rows(export)
    except sqlite3.DatabaseError as exc:
        raise database_problem(export.path, exc) from exc


def _any_value(columns: Sequence[str]) -> str:
    """SQL true when any of ``columns`` is not NULL (nested COALESCE: SQLite limits arguments and depth)."""
    exprs = [quote(c) for c in columns]
    while len(exprs) > 1:
        exprs = [f"COALESCE({', '.join(part)})" if len(part) > 1 else part[0]
                 for part in (exprs[i:i + 100] for i in range(0, len(exprs), 100))]
    return f"{exprs[0]} IS NOT NULL"


def _count_rows(export: ExportFile) -> dict[str, int]:
    """Per object set of a single Per_Object table, rows holding its number or any of its values (a row whose number
    is NULL beside values is read, and named); ``Per_Object``: rows holding no object set's number or value."""
    conn = connect(export.path)
    try:
        out = {"Image": conn.execute(f"SELECT COUNT(*) FROM {quote(export.image_table)}").fetchone()[0]}
        table = export.combined_table
        owned: list[str] = []
        for obj in export.objects:
            columns = [c for c in obj.columns if c != "ImageNumber"]
            where = f" WHERE {_any_value(columns)}" if obj.table == table else ""
            out[obj.name] = conn.execute(f"SELECT COUNT(*) FROM {quote(obj.table)}{where}").fetchone()[0]
            owned += columns if obj.table == table else []
        if owned and table is not None:
            empty = f"NOT ({_any_value(owned)})"
            out["Per_Object"] = conn.execute(f"SELECT COUNT(*) FROM {quote(table)} WHERE {empty}").fetchone()[0]
        return out
    finally:
        conn.close()


class _SiteWriter:
    """Writes a plate's images as site folders; the same plate/well/site twice (and the same values of
    the other strata, such as a time point) leaves both out, named."""

    def __init__(self, out: Materialised, *, distinct_by: Sequence[str] = ()) -> None:
        self.out = out
        self.distinct_by = list(distinct_by)  # strata beyond plate, well and site: a time point, a z-plane
        self.by_key: dict[tuple[str, ...], str] = {}
        self.poisoned: set[tuple[str, ...]] = set()
        self.numbers: set[int] = set()

    def _distinct(self, img: ExportImage) -> list[str]:
        """The image's values of the strata that tell images of one well and site apart."""
        names = set(img.image.column_names)
        return [str(img.image.column(c)[0].as_py()) if c in names and img.image.num_rows else "" for c in self.distinct_by]

    def add(self, img: ExportImage, plate: str) -> None:
        assert img.well is not None
        site = normalise_site(img.site) if img.site is not None else f"{img.file}:{img.image_number}"
        key = (plate, normalise_well(img.well), site, *self._distinct(img))  # A1 and A01 are one well, 1 and 1.0 one site
        where = f"image {img.image_number} of {img.file}"
        if key in self.poisoned or key in self.by_key:
            first = self.by_key.pop(key, None)
            if first is not None:
                gone = self.out.sites.pop(first)
                log.warning("%s: site %s is both image %s of %s and %s; both are left out (named in the report)",
                            plate, "/".join(key), gone["image_number"], gone["file"], where)
                shutil.rmtree(os.path.join(self.out.analysis_dir, first))
                self.drop(gone["file"], gone["rows"], f"site {'/'.join(key)} is also {where}; which copy is right is unknown")
            self.poisoned.add(key)
            self.drop(img.file, img.rows(), f"site {'/'.join(key)} ({where}) appears more than once in the files")
            return
        name = "-".join(folder_part(p) for p in (plate, img.well, img.site or f"image{img.image_number}"))
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
    strata: Sequence[str] = (),
) -> Materialised:
    """Write the images of ``plate`` in ExportToDatabase files as CSV site folders under ``out_dir``.

    Each site folder (``PLATE-WELL-SITE``) holds ``Image.csv``, one CSV per object set
    and the site's TableNumber in ``TABLE_NUMBER_FILE``. Images of other plates are
    counted, not written; a file without ``Image_Metadata_Plate`` belongs to ``plate``.
    ``root`` (the workspace) makes source names relative paths, as TableNumbers use them.
    ``strata`` other than plate, well and site (``Metadata_Timepoint``) tell apart images of
    one site, as they tell apart the rows of one site's Image.csv on the CSV route.
    """
    exports = [open_export(p, name=source_name(str(p), root), table_prefix=table_prefix) for p in sources]
    if not exports:
        raise InputError(f"{plate}: no ExportToDatabase files given")
    names = Counter(e.name for e in exports)
    twice = [n for n, k in names.items() if k > 1]
    if twice:
        raise InputError(f"two ExportToDatabase files are both named {twice[0]}; TableNumbers would repeat; "
                         "rename one or place both inside the workspace")
    out = Materialised(plate=plate, analysis_dir=str(out_dir))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    writer = _SiteWriter(out, distinct_by=distinct_strata(strata))
    copies = _copies(exports)
    for export in exports:
        if export.name in copies:  # read once: its images would otherwise repeat and both copies be dropped
            out.files.append({"file": export.name, "table_prefix": export.prefix, "layout": export.layout, "rows": {},
                              "not_read": f"a copy of {copies[export.name]} (identical bytes): read once",
                              "rows_not_read": _file_rows(export)})
            log.warning("%s: %s is a copy of %s (identical bytes): read once", plate, export.name, copies[export.name])
            continue
        if "Metadata_Well" not in export.image_csv_names:
            raise InputError(f"{export.path}: {export.image_table} has no Image_Metadata_Well column, so wells are unknown; "
                             "extract the well in CellProfiler's Metadata module and export again")
        expected = _file_rows(export)
        out.columns[export.name] = {"Image": export.image_columns, **{o.name: o.columns for o in export.objects}}
        out.files.append({"file": export.name, "table_prefix": export.prefix, "layout": export.layout, "rows": expected,
                          "tables": {"Image": export.image_table, **{o.name: o.table for o in export.objects}},
                          "not_stored": export.not_stored, "unowned_columns": export.unowned_columns,
                          "long_names": export.long_names, "reserved": export.reserved})
        for table, why in export.reserved.items():
            log.warning("%s: table %s of %s (%d rows) is not stored: %s (see export_database.files[].reserved in the "
                        "report)", plate, table, export.name, export.not_stored.get(table, 0), why)
        if export.unowned_columns:  # values no table can hold: said, not only listed
            log.warning("%s: %d column(s) of the Per_Object table of %s belong to no object set (no "
                        "<Set>_Number_Object_Number) and are not stored: %s; see unowned_columns in the report", plate,
                        len(export.unowned_columns), export.name, ", ".join(export.unowned_columns[:5]))
        file_dropped: list[Dropped] = []
        got: Counter[str] = Counter()
        for img in _guarded(export, read_images(export, dropped=file_dropped, batch_rows=batch_rows)):
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
            raise AccountingError(f"{export.path}: rows streamed {dict(got)} differ from rows in the file {expected}")
    return out
