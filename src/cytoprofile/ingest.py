"""Site discovery, validation and schema union: CellProfiler CSVs to checked single-cell tables.

A plate is read in two passes. The scan reads every CSV header and each Image.csv
(small), so the schema is the union of every site's columns whatever sorts first,
and each site's wells are known before any cell is read. The read pass then parses
one site at a time (in threads, ahead of the consumer) and yields either the
site's tables, conformed to the union schema, or the reason it is quarantined.
Nothing here writes: the backend writers and the aggregator consume the stream.

What a site folder may hold, as CellProfiler exports are found in the wild:
``Image.csv`` and any number of object CSVs (upper- or lower-case extension,
gzip-compressed ``.csv.gz``, an ExportToSpreadsheet file-name prefix such as
``MyExpt_``), the run metadata ``Experiment.csv`` (not stored) and the old single
``object.csv`` with a two-row header (split per compartment). Every row read is
either returned or belongs to a quarantined site whose rows per file are counted.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io as _io
import logging
import os
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from .errors import InputError
from .io import ragged_line

__all__ = [
    "IMAGE_TABLE",
    "KEY_COLUMNS",
    "MAX_KEY",
    "NULL_VALUES",
    "RUN_METADATA_FILES",
    "SITE_NAME",
    "TEXT_IMAGE_FAMILIES",
    "CountCheck",
    "PlateSchema",
    "Quarantine",
    "SiteScan",
    "SiteTables",
    "GENERATION_TABLE",
    "RESERVED_TABLES",
    "SINGLE_CELL_TABLE",
    "Source",
    "TABLE_NUMBER_FILE",
    "canonical_order",
    "discover_sites",
    "image_numeric",
    "normalise_well",
    "order_by_key",
    "plan_schema",
    "read_sites",
    "reader_opens",
    "scan_sites",
]

IMAGE_TABLE = "Image"
#: CellProfiler run metadata, not measurements: never an object table (any case, any prefix).
RUN_METADATA_FILES = ("Experiment.csv",)
KEY_COLUMNS = ("TableNumber", "ImageNumber", "ObjectNumber")
#: what CellProfiler writes for a missing number: NULL in a numeric column (``inf`` stays infinite). Any other
#: word there (``NA``, ``None``, ``null``) is a non-number; a text column keeps every token as written, and an
#: empty text field is NULL.
NULL_VALUES = ["", "nan", "NaN"]
SITE_NAME = re.compile(r"^(?P<plate>.+)-(?P<well>[A-Za-z]{1,2}\d{1,3}|[rR]\d{1,2}[cC]\d{1,2})-(?P<site>\d+)$")
#: Image.csv columns of these families are text (ImageSet_ holds CellProfiler's encoded image set); every other one is numeric.
TEXT_IMAGE_FAMILIES = ("Metadata_", "FileName_", "PathName_", "URL_", "MD5Digest_", "ImageSet_")
#: Largest key (ImageNumber, ObjectNumber, Parent_*) accepted: every integer up to it is exact in float64.
MAX_KEY = 2**53
CountCheck = Literal["error", "warn", "off"]
#: the backend table holding the build's generation id
GENERATION_TABLE = "cytoprofile_run"
#: the joined single-cell table written beside a backend
SINGLE_CELL_TABLE = "single_cells"
#: table names the backend uses itself: never an object table, never read as one
RESERVED_TABLES = (GENERATION_TABLE, SINGLE_CELL_TABLE)
#: a site folder written from an ExportToDatabase file holds its TableNumber here (not a table: no .csv)
TABLE_NUMBER_FILE = ".cytoprofile-table-number"
_ROW_LETTERS = [chr(65 + i) for i in range(26)] + [f"A{chr(65 + i)}" for i in range(26)]
_WELL = re.compile(r"^(?P<row>[A-Za-z]{1,2})(?P<col>\d{1,3})$")
_PHENIX_WELL = re.compile(r"^[rR](?P<row>\d{1,2})[cC](?P<col>\d{1,2})$")
_CSV_SUFFIXES = (".csv", ".csv.gz")
#: a file of a site folder that is macOS Finder metadata, not a table (``._Cells.csv``)
_APPLE_DOUBLE = "._"

log = logging.getLogger("cytoprofile.ingest")


@dataclass
class Source:
    """Where one table's rows come from: a file, the columns read from it and their names."""

    name: str
    path: str
    header: list[str]
    #: positions of the file's fields read into ``header`` (None: every field, in order)
    positions: list[int] | None = None
    header_lines: int = 1
    width: int = 0
    #: indexes into ``header`` of the key columns (computed on first read)
    key_index: list[int] | None = field(default=None, repr=False, compare=False)

    def keys(self) -> list[int]:
        """Indexes into ``header`` of ImageNumber, ObjectNumber and Parent_* columns."""
        if self.key_index is None:
            self.key_index = [j for j, c in enumerate(self.header) if _is_key(c)]
        return self.key_index


@dataclass
class SiteScan:
    """What the first pass learned about one site folder."""

    name: str
    path: str
    files: dict[str, str] = field(default_factory=dict)
    headers: dict[str, list[str]] = field(default_factory=dict)
    sources: dict[str, Source] = field(default_factory=dict)
    keys: list[tuple[str, ...]] = field(default_factory=list)
    image_numbers: list[int] = field(default_factory=list)
    filled_columns: list[str] = field(default_factory=list)
    problem: str | None = None
    problem_file: str | None = None
    #: every CSV of the folder: (file name, path, header lines), for row accounting
    csv_files: list[tuple[str, str, int]] = field(default_factory=list)
    #: CSVs read but not stored, with the reason (run metadata, outside the file-name prefix, not a table)
    not_stored: dict[str, str] = field(default_factory=dict)
    #: files of the folder not read at all, with the reason (not a CSV, AppleDouble, in a subfolder)
    not_read: dict[str, str] = field(default_factory=dict)
    #: tables whose file was set aside as not stored, by lower-case name: (the reason, naming the file; its path)
    rejected: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: the folder name disagreeing with Image.csv (kept, and listed with the site)
    warnings: list[str] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    table_number: int | None = None
    digest: str | None = None
    real_path: str | None = None
    #: Image.csv as parsed by the scan (read once: the read pass uses it)
    image: pa.Table | None = field(default=None, repr=False, compare=False)

    def quarantine(self, reason: str, file: str | None) -> None:
        """Mark the site untrusted (the first reason found is kept)."""
        if self.problem is None:
            self.problem = reason
            self.problem_file = file


@dataclass
class Quarantine:
    """A site left out whole, with the file, the reason and the rows each of its files held."""

    name: str
    reason: str
    file: str | None
    keys: list[tuple[str, ...]]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class PlateSchema:
    """Union of columns over the plate's trusted sites, per table, in canonical order."""

    tables: dict[str, list[str]]
    strata: list[str]
    plate: str
    #: object tables stored only (not among the compartments) that some trusted sites lack
    partial: dict[str, list[str]] = field(default_factory=dict)

    @property
    def object_tables(self) -> list[str]:
        """Object tables (every table but Image), sorted."""
        return sorted(t for t in self.tables if t != IMAGE_TABLE)


@dataclass
class SiteTables:
    """One trusted site: its Image rows and its object rows, on the union schema."""

    name: str
    table_number: int
    image: pa.Table
    #: per object table, a column-major float64 array on the union columns (ImageNumber, ObjectNumber first)
    objects: dict[str, np.ndarray]
    #: per table, the union columns this site lacked (filled with NULL)
    missing: dict[str, list[str]]
    #: grouping key of every object row, per object table
    row_keys: dict[str, list[tuple[str, ...]]]
    keys: list[tuple[str, ...]]
    #: per input file, its data rows and the tables they went to
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def discover_sites(plate_dir: str | os.PathLike[str]) -> list[str]:
    """Site folders of a plate: each immediate subfolder (broken links included, to be named), sorted."""
    path = Path(plate_dir)
    if not path.is_dir():
        raise InputError(f"{path}: no such folder; expected analysis/BATCH/PLATE/analysis/ with one folder per site")
    sites = sorted(str(p) for p in path.iterdir() if p.is_dir() or (p.is_symlink() and not p.exists()))
    if not sites:
        raise InputError(f"{path}: holds no site folders; expected one folder per site (PLATE-WELL-SITE)")
    return sites


def canonical_order(columns: Sequence[str]) -> list[str]:
    """Keys first, then the rest sorted, as CellProfiler writes them: independent of file order."""
    keys = [k for k in KEY_COLUMNS if k in columns]
    return keys + sorted(c for c in set(columns) if c not in KEY_COLUMNS)


def normalise_well(value: str) -> str:
    """``A1``, ``a01`` and Phenix ``r01c01`` as ``A01``; other names unchanged."""
    text = value.strip()
    match = _WELL.match(text)
    if match:
        return f"{match.group('row').upper()}{int(match.group('col')):02d}"
    match = _PHENIX_WELL.match(text)
    if match and 1 <= int(match.group("row")) <= len(_ROW_LETTERS):
        return f"{_ROW_LETTERS[int(match.group('row')) - 1]}{int(match.group('col')):02d}"
    return value


def _is_key(column: str) -> bool:
    return column.startswith("Parent_") or column == "ImageNumber" or column == "ObjectNumber"


def _is_text_image_column(column: str) -> bool:
    return column.startswith(TEXT_IMAGE_FAMILIES)


def _csv_stem(entry: str) -> str | None:
    lower = entry.lower()
    for suffix in _CSV_SUFFIXES:
        if lower.endswith(suffix):
            return entry[: -len(suffix)]
    return None


def reader_opens(name: str) -> bool:
    """Whether reading a site opens a file of this name (its tables, its TableNumber note).

    Other files in a site folder (images, logs) are listed and named, never read; object
    storage fetches only the files this admits.
    """
    return _csv_stem(name) is not None or name == TABLE_NUMBER_FILE


class _ObjectFileProblem(Exception):
    """A CSV that cannot be trusted; the message is the reason, naming the file."""


def _read_bytes(path: str) -> bytes:
    """A CSV's bytes, decompressed in one pass when gzip: a cut-off or corrupt ``.gz`` is a named problem."""
    with open(path, "rb") as fh:
        raw = fh.read()
    if path.lower().endswith(".gz"):
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise _ObjectFileProblem(f"{os.path.basename(path)}: {_gzip_problem(exc)}; copy the file again") from exc
    return raw


def _is_gzip_data(path: str) -> bool:
    """Whether a file holds gzip data (its magic bytes) whatever its name says."""
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _gzip_problem(exc: BaseException) -> str:
    return "truncated gzip (the file ends early)" if isinstance(exc, EOFError) else f"not a valid gzip file ({exc})"


_LONE_CR = re.compile(rb"\r(?!\n)")


def _line_endings(raw: bytes, name: str, notes: list[str] | None = None) -> bytes:
    """``raw`` with LF line endings: a file with no LF at all ends its lines with CR (classic Mac, some
    spreadsheet saves), unambiguously, and is read so (noted); a CR ending a line among LF ones is
    ambiguous (a row's end or a byte of a value) and the file is refused, naming the line and the fix."""
    if b"\r" not in raw:
        return raw
    if b"\n" not in raw:
        if notes is not None:
            notes.append(f"{name} read with CR line endings")
        return raw.replace(b"\r", b"\n")
    for match in _LONE_CR.finditer(raw):
        start = raw.rfind(b"\n", 0, match.start()) + 1
        end = raw.find(b"\n", match.end())
        if raw[start : len(raw) if end < 0 else end].strip():  # not a whitespace-only line (skipped as blank)
            line = raw.count(b"\n", 0, match.start()) + 1
            raise _ObjectFileProblem(f"{name} mixes CR line endings with LF ones (a CR alone ends line {line}); "
                                     "convert the CRs to LF (e.g. with mac2unix) or save the file again with one kind of line ending")
    return raw


def _read_header(path: str, lines: int = 1) -> list[list[str]]:
    """The header row(s). CellProfiler writes names bare: a quote that CSV rules would read as
    opening a field is taken literally when that is what makes the header as wide as the rows."""
    opener: Any = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:
        text = [fh.readline() for _ in range(lines + 1)]
    rows = [[c.strip() for c in next(csv.reader([line]), [])] for line in text[:lines]]
    first_data = text[lines].rstrip("\r\n")
    if first_data and '"' not in first_data:
        width = first_data.count(",") + 1
        for i, line in enumerate(text[:lines]):
            bare = [c.strip() for c in line.rstrip("\r\n").split(",")]
            parsed_fits = len(rows[i]) == width and "" not in rows[i]
            if '"' in line and not parsed_fits and len(bare) == width:
                rows[i] = bare
    return rows


def _after_lines(raw: bytes, lines: int) -> int:
    """Offset just past the first ``lines`` lines."""
    position = 0
    for _ in range(lines):
        newline = raw.find(b"\n", position)
        if newline < 0:
            return len(raw)
        position = newline + 1
    return position


def _drop_blank_lines(body: bytes) -> bytes:
    """The lines holding something: empty and whitespace-only lines (spaces, tabs, a lone ``\\r``) go."""
    return b"".join(line for line in body.splitlines(keepends=True) if line.strip())


_WHITESPACE_LINE = re.compile(rb"(?m)^[ \t\r\f\v]+$")


def _blank_whitespace_lines(raw: bytes, start: int) -> bytes:
    """``raw`` with every whitespace-only line after byte ``start`` made empty, so it is skipped as a blank line
    is; line numbers stay those of the file."""
    body = raw[start:]
    cleaned = _WHITESPACE_LINE.sub(b"", body)
    return raw if cleaned == body else raw[:start] + cleaned


def _count_records(raw: bytes, header_lines: int) -> int:
    """Data rows of a CSV: records after the header that hold something (quoted newlines kept in their record)."""
    text = _io.StringIO(raw.decode("utf-8", errors="replace"), newline="")
    n = sum(1 for row in csv.reader(text) if row and (len(row) > 1 or row[0].strip()))
    return max(0, n - header_lines)


def _rows_entry(path: str, header_lines: int) -> dict[str, Any]:
    """A file's data rows for the report (``rows`` None and why, when it cannot be read)."""
    try:
        raw = _read_bytes(path)
        raw.decode("utf-8")  # rows of a file that is not text are not counted: there are none to name
        return {"rows": _count_records(raw, header_lines), "tables": []}
    except UnicodeDecodeError as exc:
        return {"rows": None, "tables": [], "unreadable": f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"}
    except (_ObjectFileProblem, OSError, EOFError, zlib.error) as exc:
        return {"rows": None, "tables": [], "unreadable": str(exc).split(": ")[-1][:200]}


def _file_rows(scan: SiteScan) -> dict[str, dict[str, Any]]:
    """Rows per CSV of a quarantined site (none of them stored), and the files not read."""
    out = {name: _rows_entry(path, header_lines) for name, path, header_lines in scan.csv_files}
    out.update(_not_read_entries(scan))
    return out


def _not_read_entries(scan: SiteScan) -> dict[str, dict[str, Any]]:
    return {name: {"rows": None, "tables": [], "not_read": reason} for name, reason in scan.not_read.items()}


def _quarantined(scan: SiteScan, reason: str | None = None, file: str | None = None) -> Quarantine:
    if reason is not None:
        scan.quarantine(reason, file)
    return Quarantine(scan.name, scan.problem or "untrusted", scan.problem_file, scan.keys, _file_rows(scan))


def _prefix(stems: Sequence[str], file_prefix: str | None) -> str | None:
    """The site's file-name prefix: P when ``P`` + Image.csv exists and every CSV starts with P."""
    if file_prefix is not None:
        return file_prefix
    candidates = [s[: -len("image")] for s in stems if s.lower().endswith("image")]
    passing = [p for p in candidates if all(s.startswith(p) for s in stems)]
    return max(passing, key=len) if passing else None


def _column_text(path: str, header_lines: int, width: int, positions: Sequence[int]) -> dict[int, list[Any]]:
    """The raw text of some columns of a CSV (to compare columns that share a name)."""
    import polars as pl

    raw = _line_endings(_read_bytes(path), os.path.basename(path))
    body = _drop_blank_lines(raw[_after_lines(raw, header_lines):])
    if not body.strip():
        return {p: [] for p in positions}
    names = [f"c{i}" for i in range(width)]
    frame = pl.read_csv(body, has_header=False, schema=dict.fromkeys(names, pl.Utf8), columns=sorted(set(positions)),
                        infer_schema_length=0)
    return {p: frame[names[p]].to_list() for p in positions}


def _dedupe(source: Source, table: str, scan: SiteScan) -> None:
    """Columns named twice: identical values keep one, differing ones become ``X_2``, ``X_3``."""
    header = source.header
    counts = Counter(header)
    if all(n == 1 for n in counts.values()):
        return
    repeated = [i for i, c in enumerate(header) if counts[c] > 1]
    text = _column_text(source.path, source.header_lines, source.width, repeated)
    taken = set(header)
    names = list(header)
    kept_of: dict[str, list[int]] = {}
    keep: list[int] = []
    for i, column in enumerate(header):
        if counts[column] == 1 or column not in kept_of:
            kept_of.setdefault(column, []).append(i)
            keep.append(i)
            continue
        if any(text[j] == text[i] for j in kept_of[column]):
            scan.duplicates.append({"file": source.name, "table": table, "column": column, "identical": True, "stored_as": None})
            continue
        k = 2
        while f"{column}_{k}" in taken:
            k += 1
        names[i] = f"{column}_{k}"
        taken.add(names[i])
        kept_of[column].append(i)
        keep.append(i)
        scan.duplicates.append({"file": source.name, "table": table, "column": column, "identical": False, "stored_as": names[i]})
    base = source.positions if source.positions is not None else list(range(source.width))
    source.positions = [base[i] for i in keep]
    source.header = [names[i] for i in keep]


def _object_sources(entry: str, path: str, table: str, scan: SiteScan) -> dict[str, Source]:
    """One object CSV as its table(s): the old ``object.csv`` has a compartment row above the feature row."""
    first, second = _read_header(path, 2)
    if "ImageNumber" in first or "ImageNumber" not in second or len(first) != len(second):
        return {table: Source(entry, path, first, width=len(first))}
    labels = {lab for lab in first if lab and lab != IMAGE_TABLE}
    image_cols = [i for i, lab in enumerate(first) if lab == IMAGE_TABLE]
    if [second[i] for i in image_cols] != ["ImageNumber"] or "ObjectNumber" not in second:
        scan.quarantine(f"{entry}: a two-row header whose Image columns are not just ImageNumber, or no ObjectNumber", path)
        return {}
    image_at, object_at = second.index("ImageNumber"), second.index("ObjectNumber")
    out = {}
    for label in sorted(labels):
        mine = [i for i, lab in enumerate(first) if lab == label and i not in (image_at, object_at)]
        positions = [image_at, object_at, *mine]
        out[label] = Source(entry, path, [second[i] for i in positions], positions, header_lines=2, width=len(second))
    return out


def _classify(scan: SiteScan, entries: Sequence[str], file_prefix: str | None) -> None:
    """Which file is the Image table, which are object tables, which are run metadata, which are not read."""
    stems = _csv_entries(scan, entries)
    prefix = _prefix(list(stems.values()), file_prefix)
    for entry, stem in stems.items():
        path = os.path.join(scan.path, entry)
        if prefix is None:
            scan.csv_files.append((entry, path, 1))
            if any(s.lower().endswith("image") for s in stems.values()):
                scan.quarantine(f"cannot tell the file-name prefix ({entry} does not share it with the Image file); "
                                "pass --file-prefix", path)
            continue
        reason = _not_stored_by_name(stem, prefix)
        if reason is not None:
            scan.csv_files.append((entry, path, 1))
            scan.not_stored[entry] = reason
            continue
        name = stem[len(prefix):]
        table = IMAGE_TABLE if name.lower() == "image" else name
        _add_table_file(scan, entry, path, table)


def _csv_entries(scan: SiteScan, entries: Sequence[str]) -> dict[str, str]:
    """The folder's CSVs (entry → name without the extension); every other file is named as not read."""
    stems: dict[str, str] = {}
    for entry in entries:
        path = os.path.join(scan.path, entry)
        stem = _csv_stem(entry)
        if entry == TABLE_NUMBER_FILE:
            continue
        if os.path.isdir(path):
            scan.not_read.update(_subfolder_files(scan.path, entry))
        elif entry.startswith(_APPLE_DOUBLE) and stem is not None:
            scan.not_read[entry] = "AppleDouble file (macOS Finder metadata), not CellProfiler output"
        elif not os.path.isfile(path):
            scan.not_read[entry] = "a broken link" if os.path.islink(path) else "not a regular file"
        elif stem is None:
            scan.not_read[entry] = "not a CSV file (only .csv and .csv.gz files are read)"
        else:
            stems[entry] = stem
    return stems


def _subfolder_files(site_dir: str, entry: str) -> dict[str, str]:
    """Every file under a subfolder of a site folder (CellProfiler writes none there): named, not read."""
    out: dict[str, str] = {}
    for folder, dirs, names in os.walk(os.path.join(site_dir, entry)):
        dirs.sort()
        rel = os.path.relpath(folder, site_dir)
        for d in dirs:
            if os.path.islink(os.path.join(folder, d)):
                out[f"{rel}/{d}/"] = "a link to a folder inside a subfolder (not followed)"
        for name in sorted(names):
            out[f"{rel}/{name}"] = "in a subfolder"
    return out


def _not_stored_by_name(stem: str, prefix: str) -> str | None:
    """Why a CSV is read but not stored, from its name alone (None: a table)."""
    if not stem.startswith(prefix):
        return f"does not start with the file-name prefix {prefix!r}"
    name = stem[len(prefix):]
    if name.lower() + ".csv" in (f.lower() for f in RUN_METADATA_FILES):
        return "run metadata"
    table = IMAGE_TABLE if name.lower() == "image" else name
    if table.lower() in RESERVED_TABLES or table.lower().startswith("sqlite_"):
        return f"{table!r} is a name the backend reserves; rename the file to store it"
    return None


def _holder(scan: SiteScan, table: str) -> str | None:
    """The file already holding ``table`` (object table names compared in any case)."""
    for known, path in scan.files.items():
        if known == table or (IMAGE_TABLE not in (known, table) and known.lower() == table.lower()):
            return os.path.basename(path)
    return None


def _add_table_file(scan: SiteScan, entry: str, path: str, table: str) -> None:
    """Register the table(s) of one CSV (the old ``object.csv`` holds several); a table held twice quarantines."""
    if os.path.getsize(path) == 0:  # holds no row: a stray copy is set aside, Image.csv or a compartment is needed
        scan.csv_files.append((entry, path, 1))
        if table == IMAGE_TABLE:
            scan.quarantine(f"{entry} is empty (0 bytes)", path)
        else:
            scan.not_stored[entry] = "empty file (0 bytes)"
            scan.rejected.setdefault(table.lower(), (f"{entry} is empty (0 bytes)", path))
        return
    held = _holder(scan, table)
    if held is not None:
        scan.csv_files.append((entry, path, 1))
        scan.quarantine(f"{entry} and {held} hold the same table {table}", path)
        return
    try:
        sources = {IMAGE_TABLE: Source(entry, path, _read_header(path)[0])} if table == IMAGE_TABLE else _object_sources(entry, path, table, scan)
    except (UnicodeDecodeError, OSError, EOFError, zlib.error) as exc:
        scan.csv_files.append((entry, path, 1))
        reason = "is not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else f"cannot be read ({exc})"
        if not entry.lower().endswith(".gz") and _is_gzip_data(path):
            reason = f"is gzip-compressed but not named .gz; rename it to {entry}.gz"
        scan.quarantine(f"{entry} {reason}", path)
        return
    header_lines = 1
    for t, source in sources.items():
        held = _holder(scan, t) if t != table else None
        if held is not None:  # a compartment of object.csv that a file of its own also holds
            scan.quarantine(f"{entry} and {held} hold the same table {t}", path)
            continue
        source.width = source.width or len(source.header)
        header_lines = source.header_lines
        scan.files[t] = path
        scan.sources[t] = source
    scan.csv_files.append((entry, path, header_lines))


def _check_header(scan: SiteScan, table: str, source: Source) -> None:
    header = source.header
    if not header or header == [""]:
        if table == IMAGE_TABLE:
            scan.quarantine(f"{source.name} has no header row", source.path)
        else:
            blank = not _read_bytes(source.path).strip()
            _set_aside(scan, table, source, "no header row (blank lines only)" if blank else "no header row (line 1 is blank)")
        return
    if "" in header:
        scan.quarantine(f"{source.name}: column {header.index('') + 1} of the header has no name (a trailing comma?)", source.path)
        return
    if table != IMAGE_TABLE and not {"ImageNumber", "ObjectNumber"} <= set(header):
        _set_aside(scan, table, source, _not_a_table(table, header))
        return
    _dedupe(source, table, scan)
    if table != IMAGE_TABLE and any(c.lower() == "tablenumber" for c in source.header):
        scan.quarantine(f"{source.name} has a column named TableNumber, which the backend reserves for the site key", source.path)
        return
    clash = _case_clash(source.header)
    if clash:
        scan.quarantine(f"{source.name}: columns {clash[0]!r} and {clash[1]!r} differ only in case "
                        "(SQLite cannot hold both); rename one", source.path)
        return
    scan.headers[table] = source.header


def _not_a_table(table: str, header: Sequence[str]) -> str:
    """Why a CSV without the object keys is not stored: run metadata under another name, or not CellProfiler's."""
    if "ImageNumber" not in header and table.lower().endswith("experiment"):
        return "run metadata"
    missing = " or ".join(k for k in ("ImageNumber", "ObjectNumber") if k not in header)
    return f"not a CellProfiler object table (no {missing} column)"


def _set_aside(scan: SiteScan, table: str, source: Source, reason: str) -> None:
    """A CSV of the folder that is not a table: its rows are named as not stored; the site is kept."""
    scan.not_stored[source.name] = reason
    scan.rejected[table.lower()] = (f"{source.name}: {reason}", source.path)
    scan.sources.pop(table, None)
    scan.files.pop(table, None)
    scan.headers.pop(table, None)


def _case_clash(columns: Iterable[str]) -> tuple[str, str] | None:
    """Two column names equal but for case, if any."""
    seen: dict[str, str] = {}
    for c in columns:
        other = seen.setdefault(c.lower(), c)
        if other != c:
            return other, c
    return None


def _site_table_number(site_dir: str, image_bytes: bytes) -> int:
    """CRC32 of Image.csv, or the number bound to the site in ``TABLE_NUMBER_FILE`` (ExportToDatabase input)."""
    bound = os.path.join(site_dir, TABLE_NUMBER_FILE)
    if os.path.exists(bound):
        text = Path(bound).read_text().strip()
        if not text.isdigit() or int(text) >= 1 << 32:
            raise InputError(f"{bound}: {text[:20]!r} is not a TableNumber; remove the file")
        return int(text)
    return zlib.crc32(image_bytes) & 0xFFFFFFFF


def _scan_one(site_dir: str, strata: Sequence[str], plate: str, file_prefix: str | None = None) -> SiteScan:
    name = os.path.basename(site_dir.rstrip("/"))
    scan = SiteScan(name=name, path=site_dir)
    if os.path.islink(site_dir) and not os.path.exists(site_dir):
        scan.quarantine(f"the site folder is a broken link (to {os.readlink(site_dir)})", site_dir)
        return scan
    scan.real_path = os.path.realpath(site_dir)
    try:
        entries = sorted(os.listdir(site_dir))
    except OSError as exc:
        scan.quarantine(f"cannot list the folder ({exc})", site_dir)
        return scan
    _classify(scan, entries, file_prefix)
    if IMAGE_TABLE not in scan.sources:
        scan.quarantine("Image.csv is missing", os.path.join(site_dir, "Image.csv"))
        return scan
    for table, source in list(scan.sources.items()):
        try:
            _check_header(scan, table, source)
        except _ObjectFileProblem as exc:
            scan.quarantine(str(exc), source.path)
        except Exception as exc:  # a header that parses but whose columns cannot be compared
            scan.quarantine(f"{source.name} cannot be parsed ({str(exc).splitlines()[0][:160]})", source.path)
    if scan.problem is not None:
        return scan
    try:  # a .gz object CSV is checked whole when it is read (one decompression); Image.csv is small
        raw = _read_bytes(scan.sources[IMAGE_TABLE].path)
    except _ObjectFileProblem as exc:
        scan.quarantine(str(exc), scan.sources[IMAGE_TABLE].path)
        return scan
    scan.table_number = _site_table_number(site_dir, raw)
    scan.digest = hashlib.blake2b(raw, digest_size=16).hexdigest()
    try:
        raw = _line_endings(raw, scan.sources[IMAGE_TABLE].name, scan.notes)
    except _ObjectFileProblem as exc:
        scan.quarantine(str(exc), scan.sources[IMAGE_TABLE].path)
        return scan
    image = _parse_image(scan, raw)
    if image is None:
        return scan
    _check_image(scan, image, strata, plate)
    scan.image = image
    return scan


def _check_image(scan: SiteScan, image: pa.Table, strata: Sequence[str], plate: str) -> None:
    """Image rows: at least one, unique ImageNumbers, this plate, every stratum filled."""
    path = scan.sources[IMAGE_TABLE].path
    base = scan.sources[IMAGE_TABLE].name
    if image.num_rows == 0:
        scan.quarantine(f"{base} has a header but no data row", path)
        return
    had_plate = "Metadata_Plate" in image.column_names
    before = set(image.column_names)
    disagreements = _folder_disagreements(image, scan.name, plate)
    image, problem = _fill_metadata(image, scan.name, plate, scan.notes)
    if problem:
        scan.quarantine(problem, path)
        return
    scan.filled_columns = [c for c in image.column_names if c not in before]
    missing = [s for s in strata if s not in image.column_names]
    if missing:
        scan.quarantine(f"{base} lacks the strata column(s) {', '.join(missing)}", path)
        return
    if "ImageNumber" in image.column_names:
        numbers = image.column("ImageNumber").to_pylist()
        repeated = sorted(n for n, k in Counter(numbers).items() if k > 1 and n is not None)
        if repeated:
            scan.quarantine(f"{base} has {Counter(numbers)[repeated[0]]} rows with ImageNumber {repeated[0]}", path)
            return
        scan.image_numbers = [int(v) for v in numbers if v is not None]
    if had_plate:
        others = sorted({str(v) for v in image.column("Metadata_Plate").to_pylist()} - {plate})
        if others:
            scan.quarantine(f"{base} names plate {others[0]!r}, not {plate!r} (a site of another plate?)", path)
            return
    for column in strata:
        values = image.column(column).to_pylist()
        empty = [i for i, v in enumerate(values) if v is None or str(v).strip() == ""]
        if empty:
            scan.quarantine(f"{base}: {column} is empty in data row {empty[0] + 1}", path)
            return
    scan.keys = _row_keys(image, strata)
    scan.warnings.extend(disagreements)


def _folder_disagreements(image: pa.Table, site: str, plate: str) -> list[str]:
    """Where a ``PLATE-WELL-SITE`` folder name and Image.csv disagree. Image.csv's well and site are used (they
    are the rows' keys); the plate is the plate folder's (Image.csv naming another plate is refused elsewhere)."""
    match = SITE_NAME.match(site)
    if not match:
        return []
    out = []
    said = {"Metadata_Plate": match.group("plate"), "Metadata_Well": normalise_well(match.group("well")),
            "Metadata_Site": match.group("site")}
    for column, folder_value in said.items():
        if column not in image.column_names:
            if column == "Metadata_Plate" and folder_value != plate:
                out.append(f"folder {site} says Metadata_Plate {folder_value!r}, but it is in plate folder {plate!r} "
                           f"(Metadata_Plate {plate!r} is used)")
            continue
        values = [v for v in dict.fromkeys(image.column(column).to_pylist()) if v is not None and str(v).strip()]
        other = [v for v in values if not _same_key(column, str(v), folder_value)]
        if other:
            out.append(f"folder {site} says {column} {folder_value!r}, Image.csv says {str(other[0])!r} "
                       "(Image.csv's value is used)")
    return out


def _same_key(column: str, value: str, folder_value: str) -> bool:
    if column == "Metadata_Well":
        return normalise_well(value) == folder_value
    if column == "Metadata_Site":
        try:
            return float(value) == float(folder_value)
        except ValueError:
            return value.strip() == folder_value
    return value.strip() == folder_value


def _row_keys(image: pa.Table, strata: Sequence[str]) -> list[tuple[str, ...]]:
    cols = [image.column(s).to_pylist() for s in strata]
    return [tuple("" if v is None else str(v) for v in row) for row in zip(*cols)]


def _fill_metadata(image: pa.Table, site: str, plate: str, notes: list[str] | None = None) -> tuple[pa.Table, str | None]:
    """Normalise well names; fill Metadata_Well/Site from the folder name ``PLATE-WELL-SITE`` and Metadata_Plate from the
    plate folder when Image.csv lacks them."""
    if "Metadata_Well" in image.column_names:
        wells = image.column("Metadata_Well").to_pylist()
        fixed = [normalise_well(w) if isinstance(w, str) else w for w in wells]
        if fixed != wells:
            if notes is not None:
                notes.extend(sorted({f"well {a!r} read as {b!r}" for a, b in zip(wells, fixed) if a != b}))
            image = image.set_column(image.column_names.index("Metadata_Well"), "Metadata_Well", pa.array(fixed, type=pa.string()))
    match = SITE_NAME.match(site)
    if "Metadata_Well" not in image.column_names and not match:
        return image, f"Image.csv has no Metadata_Well and the folder name {site!r} is not PLATE-WELL-SITE"
    fills: dict[str, str] = {"Metadata_Plate": plate}  # the plate folder's name, whatever the site folder says
    if match:
        fills["Metadata_Well"] = normalise_well(match.group("well"))
        fills["Metadata_Site"] = match.group("site")
    for column, value in fills.items():
        if column not in image.column_names:
            image = image.append_column(pa.field(column, pa.string()), pa.array([value] * image.num_rows, type=pa.string()))
    return image, None


def _parse_image(scan: SiteScan, raw: bytes | None = None) -> pa.Table | None:
    """Image.csv with column-family types: text families as text (kept as written; empty is NULL), every
    other column numeric (empty, ``nan`` and ``NaN`` are NULL; any other word is a non-number)."""
    source = scan.sources[IMAGE_TABLE]
    try:
        raw = _line_endings(_read_bytes(source.path), source.name) if raw is None else raw
    except _ObjectFileProblem as exc:
        scan.quarantine(str(exc), source.path)
        return None
    try:
        table = _read_image_csv(raw, source)
    except pa.ArrowInvalid as exc:
        cleaned = _blank_whitespace_lines(raw, _after_lines(raw, source.header_lines))
        if cleaned is raw:  # no whitespace-only line to skip: the file is at fault
            scan.quarantine(_parse_problem(source.name, raw, source.width, exc), source.path)
            return None
        return _parse_image(scan, cleaned)
    for i, column in enumerate(table.schema):  # set_column keeps positions: the schema read once stays valid
        if _is_text_image_column(column.name):
            table = _empty_text_as_null(table, i)
            continue
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            continue
        table, problem = _numeric_image_column(table, i, raw, source)
        if problem:
            scan.quarantine(problem, source.path)
            return None
    if "ImageNumber" in table.column_names:
        problem = _image_number_problem(table.column("ImageNumber"), source.name)
        if problem:
            scan.quarantine(problem, source.path)
            return None
        table = table.set_column(table.column_names.index("ImageNumber"), "ImageNumber", table.column("ImageNumber").cast(pa.int64()))
    return table


def _read_image_csv(raw: bytes, source: Source) -> pa.Table:
    positions = source.positions if source.positions is not None else list(range(source.width))
    field_names = [f"c{i}" for i in range(source.width)]
    text_types = {field_names[p]: pa.string() for p, c in zip(positions, source.header) if _is_text_image_column(c)}
    table = pacsv.read_csv(
        pa.BufferReader(raw),
        read_options=pacsv.ReadOptions(use_threads=False, block_size=1 << 24, column_names=field_names,
                                       skip_rows=source.header_lines),
        # null tokens apply to numeric columns only; no word is read as a boolean
        convert_options=pacsv.ConvertOptions(column_types=text_types, null_values=NULL_VALUES, strings_can_be_null=False,
                                             true_values=[], false_values=[],
                                             include_columns=[field_names[p] for p in positions]),
    )
    return table.rename_columns(source.header)


def _empty_text_as_null(table: pa.Table, i: int) -> pa.Table:
    column = table.column(i)
    empty = pc.equal(column, "")
    if not pc.any(empty).as_py():
        return table
    return table.set_column(i, table.column_names[i], pc.if_else(empty, pa.scalar(None, pa.string()), column))


def _numeric_image_column(table: pa.Table, i: int, raw: bytes, source: Source) -> tuple[pa.Table, str | None]:
    """A measurement column as numbers, or the first cell that is not one (line and column named)."""
    typ = table.schema.field(i).type
    column = table.column_names[i]
    if pa.types.is_null(typ):
        return table.set_column(i, column, table.column(i).cast(pa.float64())), None
    if pa.types.is_integer(typ) or pa.types.is_floating(typ):
        return table, None
    values = [None if v is None else str(v) for v in table.column(i).to_pylist()]  # strings, dates, times
    bad = next((k for k, v in enumerate(values) if v is not None and v.strip() not in NULL_VALUES and not _is_number(v)), None)
    if bad is None:  # numbers the CSV reader did not take (e.g. padded): read each
        floats = [float(v) if v is not None and v.strip() not in NULL_VALUES else None for v in values]
        return table.set_column(i, column, pa.array(floats, type=pa.float64())), None
    line = _line_of_row(raw, source.header_lines, bad)
    return table, f"{source.name} line {line}, column {column}: {str(values[bad])[:40]!r} is not a number"


def _is_number(value: object) -> bool:
    """A number as CellProfiler writes one (ASCII digits, a point, an exponent; ``inf``), not Python's wider syntax."""
    text = str(value).strip()
    if not text.isascii() or "_" in text:
        return False
    try:
        float(text)
    except ValueError:
        return False
    return True


def _image_number_problem(column: pa.ChunkedArray, base: str) -> str | None:
    values = [v for v in column.to_pylist() if v is not None]
    if len(values) != len(column):
        return f"{base}: an Image row has no ImageNumber"
    for v in values:
        if not (float(v).is_integer() and 0 <= v <= MAX_KEY):
            return f"{base}: ImageNumber {v!r} is not an integer key (0 to 2^53)"
    return None


def _line_of_row(raw: bytes, header_lines: int, row: int) -> int:
    """1-based line number in the file of data row ``row`` (0-based), blank lines skipped."""
    seen = -1
    for number, line in enumerate(raw.splitlines(), start=1):
        if number <= header_lines or not line.strip():
            continue
        seen += 1
        if seen == row:
            return number
    return header_lines + row + 1


def _parse_problem(base: str, raw: bytes, n_fields: int, exc: Exception) -> str:
    """Turn a parser error into a reason with the line number where one can be found."""
    text = str(exc)
    if "Expected" in text and "columns" in text:
        line = ragged_line(raw, n_fields)
        where = f" at line {line}" if line else ""
        return f"{base}: a row has the wrong number of fields{where} (cut-off or corrupt row: {text.splitlines()[0][:120]})"
    if "conversion error" in text or "invalid value" in text:
        if "UTF8" in text or "utf-8" in text.lower():
            return f"{base} is not UTF-8 text"
        return f"{base}: unparseable number ({text.splitlines()[0][:160]})"
    if "Empty CSV" in text:
        return f"{base} is empty"
    if "UTF8" in text or "utf-8" in text.lower():
        return f"{base} is not UTF-8 text"
    return f"{base} cannot be parsed as CSV ({text.splitlines()[0][:160]})"


def scan_sites(
    site_dirs: Sequence[str],
    *,
    plate: str,
    strata: Sequence[str] = ("Metadata_Plate", "Metadata_Well"),
    threads: int = 2,
    file_prefix: str | None = None,
) -> list[SiteScan]:
    """First pass over every site: files, headers, Image.csv rows and their wells; duplicate sites marked."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        scans = list(pool.map(lambda d: _scan_one(d, strata, plate, file_prefix), sorted(site_dirs)))
    _mark_duplicates(scans)
    disagreeing = [s for s in scans if s.warnings and s.problem is None]
    if disagreeing:
        log.warning("%s: %d site folder name(s) disagree with Image.csv (listed in the report); first: %s", plate,
                    len(disagreeing), disagreeing[0].warnings[0])
    return scans


def _mark_duplicates(scans: Sequence[SiteScan]) -> None:
    """The same site reached twice (a link, a copy) or two sites sharing a TableNumber: the later one is refused."""
    by_path: dict[str, str] = {}
    by_digest: dict[str, str] = {}
    by_number: dict[int, str] = {}
    for scan in sorted(scans, key=lambda s: s.name):
        image = scan.files.get(IMAGE_TABLE)
        if scan.real_path is not None and scan.real_path in by_path:
            scan.problem = None
            scan.quarantine(f"the same folder as site {by_path[scan.real_path]} (reached twice through a link)", scan.path)
        elif scan.digest is not None and scan.digest in by_digest:
            scan.problem = None
            scan.quarantine(f"a copy of site {by_digest[scan.digest]} (identical Image.csv)", image)
        elif scan.table_number is not None and scan.table_number in by_number:
            scan.problem = None
            scan.quarantine(f"its TableNumber (CRC32 of Image.csv) {scan.table_number} equals site {by_number[scan.table_number]}'s", image)
        if scan.real_path is not None:
            by_path.setdefault(scan.real_path, scan.name)
        if scan.digest is not None:
            by_digest.setdefault(scan.digest, scan.name)
        if scan.table_number is not None and scan.problem is None:
            by_number.setdefault(scan.table_number, scan.name)


def plan_schema(scans: Sequence[SiteScan], *, plate: str, strata: Sequence[str], compartments: Sequence[str] = ()) -> PlateSchema:
    """Union schema over the trusted sites.

    Table names that differ only in case are one table (a compartment's own spelling,
    else the most common one). A site lacking a compartment table other sites have is
    quarantined (also when its file is there but not an object table); other object tables are
    stored for the sites that have them.
    """
    _unify_table_names(scans, compartments)
    object_tables = sorted({t for s in scans if s.problem is None for t in s.files if t != IMAGE_TABLE})
    for scan in scans:
        if scan.problem is None:
            _require_compartments(scan, compartments, object_tables)
    partial = {t: sorted(s.name for s in scans if s.problem is None and t not in s.files) for t in object_tables}
    tables: dict[str, list[str]] = {}
    for table in [IMAGE_TABLE, *object_tables]:
        columns: set[str] = set()
        for scan in scans:
            if scan.problem is None:
                columns.update(scan.headers.get(table, []))
        if table == IMAGE_TABLE:
            columns.update(c for s in scans if s.problem is None for c in s.filled_columns)
        clash = _case_clash(sorted(columns))
        if clash:
            raise InputError(f"{plate}: {table} columns {clash[0]!r} and {clash[1]!r} differ only in case between "
                             "sites (SQLite cannot hold both); rename one in the CSVs")
        tables[table] = canonical_order(sorted(columns))
    return PlateSchema(tables=tables, strata=list(strata), plate=plate, partial={t: v for t, v in partial.items() if v})


def _require_compartments(scan: SiteScan, compartments: Sequence[str], object_tables: Sequence[str]) -> None:
    """Quarantine a site whose compartment file is there but not a table (empty, no keys), or that lacks a
    compartment other sites have."""
    held = {t.lower() for t in scan.files}
    wanted = {c.lower() for c in compartments}
    for table in sorted({*compartments, *object_tables}, key=str.lower):
        if table.lower() in held or table.lower() not in wanted:
            continue
        if table.lower() in scan.rejected:  # its file is there but not an object table
            why, path = scan.rejected[table.lower()]
            scan.quarantine(f"{why}; {table} is one of the compartments", path)
            return
        if table in object_tables:
            old_export = scan.rejected.get("object")  # the single object.csv that would have held it
            scan.quarantine(f"{table}.csv is missing (other sites have it)" + (f"; {old_export[0]}" if old_export else ""),
                            old_export[1] if old_export else os.path.join(scan.path, f"{table}.csv"))
            return


def _unify_table_names(scans: Sequence[SiteScan], compartments: Sequence[str]) -> None:
    spellings: dict[str, Counter[str]] = {}
    for scan in scans:
        for table in scan.files:
            if table != IMAGE_TABLE:
                spellings.setdefault(table.lower(), Counter())[table] += 1
    chosen = {c.lower(): c for c in compartments}
    for lower, counter in spellings.items():
        chosen.setdefault(lower, sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[0][0])
    for scan in scans:
        for table in list(scan.files):
            target = chosen.get(table.lower(), table) if table != IMAGE_TABLE else table
            if target != table:
                scan.files[target] = scan.files.pop(table)
                scan.sources[target] = scan.sources.pop(table)
                if table in scan.headers:
                    scan.headers[target] = scan.headers.pop(table)
                for entry in scan.duplicates:
                    if entry["table"] == table:
                        entry["table"] = target


def _parse_body(data: bytes, start: int, source: Source, keys: set[int], raw: bytes, *, text_keys: bool = False) -> Any:
    """Polars parse of the data lines (from byte ``start``): features as float64, keys as int64.

    Keys that are not plain integers (``1.5``, ``1.0``, beyond int64) are read again as text,
    to be checked one by one.
    """
    import polars as pl

    base = source.name
    positions = source.positions if source.positions is not None else list(range(source.width))
    # the file's fields by position: ours where read, placeholders for fields left out
    names = [f"\x00{i}" for i in range(source.width)]
    for p, c in zip(positions, source.header):
        names[p] = c
    key_type = pl.Utf8 if text_keys else pl.Int64
    schema = {n: (key_type if i in keys else pl.Float64) for i, n in enumerate(names)}
    columns = sorted(set(positions)) if source.positions is not None else None
    skip = data.count(b"\n", 0, start)
    try:
        frame = pl.read_csv(data, has_header=False, skip_lines=skip, schema=schema, columns=columns,
                            null_values=NULL_VALUES, infer_schema_length=0)
    except pl.exceptions.PolarsError as exc:
        if not text_keys and keys:
            return _parse_body(data, start, source, keys, raw, text_keys=True)
        bad_line = ragged_line(raw, source.width)
        if bad_line is not None:
            raise _ObjectFileProblem(f"{base}: a row has the wrong number of fields at line {bad_line} (cut-off or corrupt row)") from exc
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise _ObjectFileProblem(f"{base} is not UTF-8 text") from exc
        problem = _first_non_number(data, start, source, keys, raw)
        raise _ObjectFileProblem(problem or f"{base}: unparseable number ({str(exc).splitlines()[0][:160]})") from exc
    if frame.columns != source.header:
        frame = frame.select(source.header)
    return frame


def _first_non_number(data: bytes, start: int, source: Source, keys: set[int], raw: bytes) -> str | None:
    """The first cell (by line) of a measurement column that is not a number: file, line, column and value."""
    import polars as pl

    body = _drop_blank_lines(data[start:])
    positions = source.positions if source.positions is not None else list(range(source.width))
    measured = [(p, c) for p, c in zip(positions, source.header) if p not in keys]
    if not measured:
        return None
    frame = pl.read_csv(body, has_header=False, schema={f"c{i}": pl.Utf8 for i in range(source.width)},
                        columns=sorted({p for p, _ in measured}), null_values=NULL_VALUES, infer_schema_length=0)
    found: tuple[int, str, str] | None = None
    for p, column in measured:
        text = frame[f"c{p}"]
        bad = (text.is_not_null() & text.str.strip_chars().cast(pl.Float64, strict=False).is_null()).arg_true()
        if len(bad) and (found is None or bad[0] < found[0]):
            found = (int(bad[0]), column, str(text[int(bad[0])]))
    if found is None:
        return None
    line = _line_of_row(raw, source.header_lines, found[0])
    return f"{source.name} line {line}, column {found[1]}: {found[2][:40]!r} is not a number"


def _check_fields(data: bytes, start: int, rows: int, source: Source, raw: bytes) -> None:
    """Every data line parsed into exactly one row of ``width`` fields, or the line that is not.

    Without quotes the parser makes one row per (non-blank) line, so the separator count
    proves the fields; with quotes the CSV module counts the records.
    """
    if data.find(b'"', start) < 0:
        if data.count(b",", start) == rows * (source.width - 1):
            return
        lines = -1
    else:
        lines = _count_records(data[start:], 0)
        if rows == lines:
            return
    bad_line = ragged_line(raw, source.width)
    if bad_line is not None:
        raise _ObjectFileProblem(f"{source.name}: a row has the wrong number of fields at line {bad_line} (cut-off or corrupt row)")
    raise _ObjectFileProblem(f"{source.name}: {rows} rows parsed from {lines if lines >= 0 else 'more'} data lines; "
                             "the file cannot be read faithfully")


_NON_SPACE = re.compile(rb"\S")


def _has_blank_line(raw: bytes, start: int) -> bool:
    return raw.find(b"\n\n", start - 1) >= 0 or raw.find(b"\n\r\n", start - 1) >= 0 or raw.endswith(b"\n\r")


def _key_column(values: Any, column: str, base: str, header_lines: int, raw: bytes) -> Any:
    """A key column (text) as exact integers in float64; a fraction, a negative or a value above 2^53 is refused."""
    import polars as pl

    values = values.cast(pl.Utf8)
    ints = values.str.strip_chars().str.to_integer(strict=False)
    present = values.is_not_null()
    if column in ("ImageNumber", "ObjectNumber") and not bool(present.all()):
        raise _ObjectFileProblem(f"{base} has rows with no ImageNumber or ObjectNumber")
    bad = (ints.is_null() & present) | (ints < 0) | (ints > MAX_KEY)
    if bool(bad.any()):
        texts = values.to_list()
        for row in np.flatnonzero(bad.to_numpy()).tolist():
            exact = _exact_integer(texts[row])
            if exact is None or not 0 <= exact <= MAX_KEY:
                line = _line_of_row(raw, header_lines, row)
                raise _ObjectFileProblem(f"{base} line {line}: {column} {texts[row]!r} is not an integer key (0 to 2^53)")
        ints = pl.Series([_exact_integer(t) if t is not None else None for t in texts], dtype=pl.Int64)
    return ints.cast(pl.Float64)


def _suspect_key(values: Any, column: str) -> bool:
    """A key column the fast int64 parse could not vouch for: text, missing keys, or out of 0..2^53."""
    import polars as pl

    if values.dtype == pl.Utf8:
        return True
    if values.null_count() and column in ("ImageNumber", "ObjectNumber"):
        return True
    low, high = values.min(), values.max()
    return low is not None and (low < 0 or high > MAX_KEY)


def _exact_integer(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        return None
    if not value.is_finite() or value != value.to_integral_value():
        return None
    return int(value)


def _read_objects(source: Source, union: list[str], notes: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Parse an object CSV as float64, laid out on the union columns (NaN where absent).

    Returns a column-major array (columns are what every consumer reads). The header is
    ours (Polars reads only the data lines), blank lines are skipped, keys are checked
    as integers, and the rows parsed must equal the data lines of the file. CR line endings are
    read as such (a note in ``notes``).
    """
    raw = _line_endings(_read_bytes(source.path), source.name, notes)
    try:
        values = _object_values(raw, source)
    except _ObjectFileProblem:
        cleaned = _blank_whitespace_lines(raw, _after_lines(raw, source.header_lines))
        if cleaned is raw:
            raise
        values = _object_values(cleaned, source)  # whitespace-only lines are skipped as blank lines are
    header = source.header
    if header == list(union):
        out = values if values.dtype == np.float64 else values.astype(np.float64, order="F")
    else:
        out = np.full((values.shape[0], len(union)), np.nan, dtype=np.float64, order="F")
        index = {c: i for i, c in enumerate(union)}
        for j, c in enumerate(header):
            out[:, index[c]] = values[:, j]
    present = set(header)
    missing = [c for c in union if c not in present]
    return out, missing


def _object_values(raw: bytes, source: Source) -> np.ndarray:
    """The data rows of an object CSV in the file's header order, checked (see ``_read_objects``)."""
    data, start = raw, _after_lines(raw, source.header_lines)
    if raw.startswith((b"\n", b"\r\n"), start):  # a blank line under the header (later ones show as NULL rows)
        data, start = _drop_blank_lines(raw[start:]), 0
    header = source.header
    if not _NON_SPACE.search(data, start):
        return np.empty((0, len(header)), dtype=np.float64, order="F")
    positions = source.positions if source.positions is not None else range(source.width)
    keys = source.keys()
    key_positions = {positions[j] for j in keys}
    frame = _parse_body(data, start, source, key_positions, raw)
    if "ImageNumber" in header and frame["ImageNumber"].null_count() and _has_blank_line(raw, start):
        # a blank line parses as a row of NULLs: skip blank lines as the Image.csv reader does
        data, start = _drop_blank_lines(raw[start:]), 0
        frame = _parse_body(data, start, source, key_positions, raw)
    _check_fields(data, start, frame.height, source, raw)
    suspect = [header[j] for j in keys if _suspect_key(frame[header[j]], header[j])]
    if suspect:
        frame = frame.with_columns([_key_column(frame[c], c, source.name, source.header_lines, raw).alias(c)
                                    for c in suspect])
    return frame.to_numpy(order="fortran")


def _pair_keys(images: np.ndarray, objects: np.ndarray, numbers: np.ndarray, span: int) -> np.ndarray:
    """One integer per (ImageNumber, ObjectNumber) pair of a site: image position × span + object."""
    where = np.searchsorted(numbers, images.astype(np.int64))
    if len(numbers) * span < 2**62:
        return where * span + objects.astype(np.int64)
    return where.astype(object) * span + objects.astype(np.int64).astype(object)


def _site_checks(objects: dict[str, np.ndarray], union: dict[str, list[str]], image: pa.Table,
                 image_numbers: Sequence[int], mode: CountCheck) -> tuple[tuple[str, str] | None, list[str]]:
    """Unique object keys always; with ``mode``, rows vs Image.csv ``Count_<Object>`` and ``Parent_<X>`` links."""
    numbers = np.unique(np.asarray(image_numbers, dtype=np.int64))
    span = 1
    for table, a in objects.items():
        cols = [j for j, c in enumerate(union[table]) if c.startswith("Parent_") or c == "ObjectNumber"]
        if len(a) and not np.isnan(a[:, cols]).all():
            span = max(span, 1 + int(np.nanmax(a[:, cols])))
    composite = {t: _pair_keys(a[:, 0], a[:, 1], numbers, span) for t, a in objects.items()}
    for table, keys in composite.items():
        unique, counts = np.unique(keys, return_counts=True)
        if len(unique) != len(keys):
            row = int(np.flatnonzero(np.isin(keys, unique[counts > 1]))[0])
            a = objects[table]
            return (table, f"{table}: ImageNumber {int(a[row, 0])}, ObjectNumber {int(a[row, 1])} appears {int(counts.max())} times"), []
    if mode == "off":
        return None, []
    problems: list[tuple[str, str]] = []
    names = set(image.column_names)
    for table, a in objects.items():
        count = f"Count_{table}"
        if count not in names:
            continue
        expected = dict(zip(image.column("ImageNumber").to_pylist(), image.column(count).to_pylist()))
        found = Counter(a[:, 0].astype(np.int64).tolist())
        for number, want in expected.items():
            if want is not None and not (isinstance(want, float) and np.isnan(want)) and found.get(number, 0) != want:
                problems.append((table, f"{table} has {found.get(number, 0)} rows for ImageNumber {number} but Image.csv "
                                        f"{count} says {want:g}"))
                break
    for table, a in objects.items():
        for j, column in enumerate(union[table]):
            other = column[len("Parent_"):] if column.startswith("Parent_") else None
            if other is None or other not in objects:
                continue
            parents = a[:, j]
            linked = ~np.isnan(parents) & (parents != 0)
            if not linked.any():
                continue
            wanted = _pair_keys(a[linked, 0], parents[linked], numbers, span)
            missing = ~np.isin(wanted, composite[other])
            if missing.any():
                row = np.flatnonzero(linked)[np.flatnonzero(missing)[0]]
                problems.append((table, f"{table} row with ObjectNumber {int(a[row, 1])} (ImageNumber {int(a[row, 0])}) has "
                                        f"{column} {int(parents[row])}, but {other} has no such object in that image "
                                        f"({int(missing.sum())} such link(s))"))
    if mode == "error" and problems:
        return problems[0], []
    return None, [p for _, p in problems]


def _read_site(scan: SiteScan, schema: PlateSchema, count_check: CountCheck = "error") -> SiteTables | Quarantine:
    if scan.problem is not None:
        return _quarantined(scan)
    image = scan.image if scan.image is not None else _parse_image(scan)
    if image is None:
        return _quarantined(scan)
    image, _ = _fill_metadata(image, scan.name, schema.plate)
    table_number = int(scan.table_number or 0)
    image = image.add_column(0, "TableNumber", pa.array([table_number] * image.num_rows, type=pa.int64()))
    missing: dict[str, list[str]] = {}
    image_cols = set(image.column_names)
    missing_image = [c for c in schema.tables[IMAGE_TABLE] if c not in image_cols and c != "TableNumber"]
    if missing_image:
        missing[IMAGE_TABLE] = missing_image
    key_by_image = dict(zip(scan.image_numbers, scan.keys))
    objects: dict[str, np.ndarray] = {}
    row_keys: dict[str, list[tuple[str, ...]]] = {}
    notes = list(scan.notes)
    for table in schema.object_tables:
        if table not in scan.sources:
            continue
        source = scan.sources[table]
        try:
            array, absent = _read_objects(source, schema.tables[table], notes)
        except _ObjectFileProblem as exc:
            return _quarantined(scan, str(exc), source.path)
        image_numbers = array[:, 0]
        unknown = set(np.unique(image_numbers).astype(np.int64).tolist()) - set(key_by_image)
        if unknown:
            return _quarantined(scan, f"{source.name} refers to ImageNumber {sorted(unknown)[0]}, absent from Image.csv", source.path)
        if absent:
            missing[table] = absent
        objects[table] = array
        if len(key_by_image) == 1:
            only = next(iter(key_by_image.values()))
            row_keys[table] = [only] * len(array)
        else:
            row_keys[table] = [key_by_image[int(v)] for v in image_numbers]
    problem, warnings = _site_checks(objects, schema.tables, image, scan.image_numbers, count_check)
    if problem is not None:
        return _quarantined(scan, problem[1], scan.sources[problem[0]].path)
    return SiteTables(name=scan.name, table_number=table_number, image=image, objects=objects, missing=missing,
                      row_keys=row_keys, keys=scan.keys, files=_site_files(scan, image, objects),
                      warnings=[*scan.warnings, *warnings], notes=list(dict.fromkeys(notes)))


def _site_files(scan: SiteScan, image: pa.Table, objects: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Rows per input file of a trusted site and the tables they went to (none when not stored, with the reason),
    and the files not read."""
    files: dict[str, dict[str, Any]] = {scan.sources[IMAGE_TABLE].name: {"rows": image.num_rows, "tables": [IMAGE_TABLE]}}
    for table, array in objects.items():
        entry = files.setdefault(scan.sources[table].name, {"rows": len(array), "tables": []})
        entry["tables"].append(table)
    for name, path, header_lines in scan.csv_files:
        if name in scan.not_stored:
            files[name] = {**_rows_entry(path, header_lines), "not_stored": scan.not_stored[name]}
    files.update(_not_read_entries(scan))
    return files


def read_sites(
    scans: Sequence[SiteScan],
    schema: PlateSchema,
    *,
    threads: int = 2,
    prefetch: int = 4,
    count_check: CountCheck = "error",
) -> Iterator[SiteTables | Quarantine]:
    """Read sites in the given order, parsing up to ``prefetch`` sites ahead in threads."""
    if count_check not in ("error", "warn", "off"):
        raise InputError(f"count check {count_check!r}: choose error, warn or off")
    order = list(scans)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        pending: list = []
        position = 0
        while position < len(order) or pending:
            while position < len(order) and len(pending) < max(1, prefetch):
                pending.append(pool.submit(_read_site, order[position], schema, count_check))
                position += 1
            yield pending.pop(0).result()


def order_by_key(scans: Sequence[SiteScan]) -> list[SiteScan]:
    """Sites ordered so that the sites of a well come together (quarantined ones first)."""
    return sorted(scans, key=lambda s: (min(s.keys) if s.keys else (), s.name))


def image_numeric(image: pa.Table, columns: Sequence[str]) -> np.ndarray:
    """Image columns as float64 (NaN where absent, NULL or not numeric)."""
    out = np.full((image.num_rows, len(columns)), np.nan)
    names = set(image.column_names)
    for i, c in enumerate(columns):
        if c not in names:
            continue
        col = image.column(c)
        if pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type):
            out[:, i] = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
    return out
