"""What ingest works with: the table and key names, where a table's rows come from, what the scan
learned of a site, and the read pass's results (a site's tables or its quarantine).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from ..vocabulary import CSV_NULL_VALUES, KEY_COLUMNS, TEXT_FAMILIES

__all__ = [
    "FOLDER_WARNING",
    "APPLE_DOUBLE",
    "CountCheck",
    "GENERATION_TABLE",
    "IMAGE_TABLE",
    "MAX_KEY",
    "NULL_VALUES",
    "ObjectFileProblem",
    "PlateSchema",
    "Quarantine",
    "RESERVED_TABLES",
    "is_reserved_table",
    "RUN_METADATA_FILES",
    "SINGLE_CELL_TABLE",
    "SiteScan",
    "SiteTables",
    "Source",
    "TABLE_NUMBER_FILE",
    "TEXT_IMAGE_FAMILIES",
    "canonical_order",
    "csv_stem",
    "is_text_image_column",
    "normalise_site",
    "reader_opens",
]

IMAGE_TABLE = "Image"
#: how a site warning about its folder's name disagreeing with Image.csv begins (the scan says them per plate)
FOLDER_WARNING = "folder "
#: CellProfiler run metadata, not measurements: never an object table (any case, any prefix).
RUN_METADATA_FILES = ("Experiment.csv",)
#: What CellProfiler writes for a missing number (:data:`~cytoprofile.vocabulary.CSV_NULL_VALUES`), as the list
#: the CSV readers take.
NULL_VALUES = list(CSV_NULL_VALUES)
#: Columns of these families are text (ImageSet_ holds CellProfiler's encoded image set; Objects* name saved object
#: masks), in Image.csv and in object CSVs alike; every other one is numeric.
TEXT_IMAGE_FAMILIES = TEXT_FAMILIES
#: Largest key (ImageNumber, ObjectNumber, Parent_*) accepted: every integer up to it is exact in float64 (a
#: measurement integer beyond it is named as rounded: see numbers).
MAX_KEY = 2**53
CountCheck = Literal["error", "warn", "off"]
#: the backend table holding the build's generation id
GENERATION_TABLE = "cytoprofile_run"
#: the joined single-cell table written beside a backend
SINGLE_CELL_TABLE = "single_cells"
#: table names the backend uses itself: never an object table, never read as one
RESERVED_TABLES = (GENERATION_TABLE, SINGLE_CELL_TABLE)


def is_reserved_table(name: str) -> bool:
    """Whether ``name`` is a table name the backend keeps for itself (any case) or SQLite's own (``sqlite_``)."""
    return name.lower() in RESERVED_TABLES or name.lower().startswith("sqlite_")


#: a site folder written from an ExportToDatabase file holds its TableNumber here (not a table: no .csv)
TABLE_NUMBER_FILE = ".cytoprofile-table-number"
_CSV_SUFFIXES = (".csv", ".csv.gz")
#: a file of a site folder that is macOS Finder metadata, not a table (``._Cells.csv``)
APPLE_DOUBLE = "._"


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
    #: text-family columns of an object CSV (image metadata and file names it repeats) and their field positions
    text_header: list[str] = field(default_factory=list)
    text_positions: list[int] = field(default_factory=list)
    #: indexes into ``header`` of the key columns (computed on first read)
    key_index: list[int] | None = field(default=None, repr=False, compare=False)
    #: the file as the scan saw it (inode, size, mtime_ns): read later, it must be the same file
    identity: tuple[int, int, int] | None = field(default=None, repr=False, compare=False)

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
    #: per object table, its text-family columns (stored as text, never features)
    text_headers: dict[str, list[str]] = field(default_factory=dict)
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
    #: (Metadata_Well, Metadata_Site, other strata) of each image, normalised (empty when Image.csv gives no site)
    site_keys: list[tuple[str, ...]] = field(default_factory=list)
    #: per image row, its (column, value) pairs of the image-file families
    image_files: list[tuple[tuple[str, str], ...]] = field(default_factory=list)
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
    #: per object table, the union of its text-family columns (stored after ``tables[t]``, never features)
    text_columns: dict[str, list[str]] = field(default_factory=dict)

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
    #: per object table with text columns, those columns (row-aligned with ``objects``) on the union text columns
    texts: dict[str, pa.Table] = field(default_factory=dict)


def canonical_order(columns: Sequence[str]) -> list[str]:
    """Keys first, then the rest sorted, as CellProfiler writes them: independent of file order."""
    keys = [k for k in KEY_COLUMNS if k in columns]
    return keys + sorted(c for c in set(columns) if c not in KEY_COLUMNS)


def normalise_site(value: object) -> str:
    """A site number as text: ``1``, ``1.0`` and ``01`` as ``1``; other values stripped."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def _is_key(column: str) -> bool:
    return column.startswith("Parent_") or column == "ImageNumber" or column == "ObjectNumber"


def is_text_image_column(column: str) -> bool:
    return column.startswith(TEXT_IMAGE_FAMILIES)


def csv_stem(entry: str) -> str | None:
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
    return csv_stem(name) is not None or name == TABLE_NUMBER_FILE


class ObjectFileProblem(Exception):
    """A CSV that cannot be trusted; the message is the reason, naming the file."""
