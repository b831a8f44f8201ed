"""Site discovery, validation and schema union: CellProfiler CSVs to checked single-cell tables.

A plate is read in two passes. The scan reads every CSV header and each Image.csv
(small), so the schema is the union of every site's columns whatever sorts first,
and each site's wells are known before any cell is read. The read pass then parses
one site at a time (in threads, ahead of the consumer) and yields either the
site's tables, conformed to the union schema, or the reason it is quarantined.
Nothing here writes: the backend writers and the aggregator consume the stream.
"""

from __future__ import annotations

import csv
import os
import re
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from .errors import InputError
from .io import ragged_line

__all__ = [
    "IMAGE_TABLE",
    "KEY_COLUMNS",
    "NULL_VALUES",
    "PlateSchema",
    "Quarantine",
    "SiteScan",
    "SiteTables",
    "SITE_NAME",
    "RUN_METADATA_FILES",
    "TABLE_NUMBER_FILE",
    "discover_sites",
    "plan_schema",
    "read_sites",
    "scan_sites",
]

IMAGE_TABLE = "Image"
#: CellProfiler run metadata, not measurements: never an object table.
RUN_METADATA_FILES = ("Experiment.csv",)
KEY_COLUMNS = ("TableNumber", "ImageNumber", "ObjectNumber")
NULL_VALUES = ["", "nan", "NaN", "NAN", "NA", "null", "NULL", "None"]
SITE_NAME = re.compile(r"^(?P<plate>.+)-(?P<well>[A-Za-z]{1,2}\d{1,3})-(?P<site>\d+)$")
_TEXT_IMAGE_COLUMNS = ("Metadata_Plate", "Metadata_Well")
#: a site folder written from an ExportToDatabase file holds its TableNumber here (not a table: no .csv)
TABLE_NUMBER_FILE = ".cytoprofile-table-number"


@dataclass
class SiteScan:
    """What the first pass learned about one site folder."""

    name: str
    path: str
    files: dict[str, str] = field(default_factory=dict)
    headers: dict[str, list[str]] = field(default_factory=dict)
    keys: list[tuple[str, ...]] = field(default_factory=list)
    image_numbers: list[int] = field(default_factory=list)
    filled_columns: list[str] = field(default_factory=list)
    problem: str | None = None
    problem_file: str | None = None

    def quarantine(self, reason: str, file: str | None) -> None:
        """Mark the site untrusted (the first reason found is kept)."""
        if self.problem is None:
            self.problem = reason
            self.problem_file = file


@dataclass
class Quarantine:
    """A site left out whole, with the file and the reason."""

    name: str
    reason: str
    file: str | None
    keys: list[tuple[str, ...]]


@dataclass
class PlateSchema:
    """Union of columns over the plate's trusted sites, per table, in canonical order."""

    tables: dict[str, list[str]]
    strata: list[str]
    plate: str

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


def discover_sites(plate_dir: str | os.PathLike[str]) -> list[str]:
    """Site folders of a plate: each immediate subfolder, sorted by name."""
    path = Path(plate_dir)
    if not path.is_dir():
        raise InputError(f"{path}: no such folder; expected analysis/BATCH/PLATE/analysis/ with one folder per site")
    sites = sorted(str(p) for p in path.iterdir() if p.is_dir())
    if not sites:
        raise InputError(f"{path}: holds no site folders; expected one folder per site (PLATE-WELL-SITE)")
    return sites


def canonical_order(columns: Sequence[str]) -> list[str]:
    """Keys first, then the rest sorted, as CellProfiler writes them: independent of file order."""
    keys = [k for k in KEY_COLUMNS if k in columns]
    return keys + sorted(c for c in set(columns) if c not in KEY_COLUMNS)


def _read_header(path: str) -> list[str]:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        line = fh.readline()
    row = next(csv.reader([line]), [])
    return [c.strip() for c in row]


def _scan_one(site_dir: str, strata: Sequence[str], plate: str) -> SiteScan:
    name = os.path.basename(site_dir.rstrip("/"))
    scan = SiteScan(name=name, path=site_dir)
    try:
        entries = sorted(os.listdir(site_dir))
    except OSError as exc:
        scan.quarantine(f"cannot list the folder ({exc})", site_dir)
        return scan
    for entry in entries:
        if not entry.lower().endswith(".csv") or entry in RUN_METADATA_FILES:
            continue
        table = IMAGE_TABLE if entry.lower() == "image.csv" else entry[:-4]
        scan.files[table] = os.path.join(site_dir, entry)
    image_path = scan.files.get(IMAGE_TABLE)
    if image_path is None:
        scan.quarantine("Image.csv is missing", os.path.join(site_dir, "Image.csv"))
        return scan
    for table, path in scan.files.items():
        if os.path.getsize(path) == 0:
            scan.quarantine(f"{os.path.basename(path)} is empty (0 bytes)", path)
            continue
        try:
            header = _read_header(path)
        except UnicodeDecodeError:
            scan.quarantine(f"{os.path.basename(path)} is not UTF-8 text", path)
            continue
        if not header or header == [""]:
            scan.quarantine(f"{os.path.basename(path)} has no header row", path)
            continue
        dupes = sorted(c for c, n in Counter(header).items() if n > 1)
        if dupes:
            scan.quarantine(f"{os.path.basename(path)} repeats column(s) {', '.join(dupes[:5])}", path)
            continue
        if table != IMAGE_TABLE and not {"ImageNumber", "ObjectNumber"} <= set(header):
            scan.quarantine(f"{os.path.basename(path)} lacks ImageNumber/ObjectNumber columns; not a CellProfiler object table", path)
            continue
        scan.headers[table] = header
    if scan.problem is not None:
        return scan
    image = _parse_image(image_path, scan.headers[IMAGE_TABLE], scan)
    if image is None:
        return scan
    if image.num_rows == 0:
        scan.quarantine("Image.csv has a header but no data row", image_path)
        return scan
    before = set(image.column_names)
    image, _ = _fill_metadata(image, name, plate)
    scan.filled_columns = [c for c in image.column_names if c not in before]
    missing = [s for s in strata if s not in image.column_names]
    if missing:
        scan.quarantine(f"Image.csv lacks the strata column(s) {', '.join(missing)}", image_path)
        return scan
    scan.keys = _row_keys(image, strata)
    if "ImageNumber" in image.column_names:
        scan.image_numbers = [int(v) for v in image.column("ImageNumber").to_pylist() if v is not None]
    return scan


def _row_keys(image: pa.Table, strata: Sequence[str]) -> list[tuple[str, ...]]:
    cols = [image.column(s).to_pylist() for s in strata]
    return [tuple("" if v is None else str(v) for v in row) for row in zip(*cols)]


def _fill_metadata(image: pa.Table, site: str, plate: str) -> tuple[pa.Table, bool]:
    """Fill Metadata_Plate/Well/Site from the folder name ``PLATE-WELL-SITE`` when Image.csv lacks them."""
    match = SITE_NAME.match(site)
    fills: dict[str, object] = {
        "Metadata_Plate": match.group("plate") if match else plate,
        "Metadata_Well": match.group("well") if match else site,
    }
    if match:
        fills["Metadata_Site"] = int(match.group("site"))
    filled = False
    for column, value in fills.items():
        if column in image.column_names:
            continue
        typ = pa.int64() if column == "Metadata_Site" else pa.string()
        image = image.append_column(pa.field(column, typ), pa.array([value] * image.num_rows, type=typ))
        filled = True
    return image, filled


def _parse_image(path: str, header: list[str], scan: SiteScan) -> pa.Table | None:
    types = {c: pa.string() for c in _TEXT_IMAGE_COLUMNS if c in header}
    try:
        table = _read_image_csv(path, types)
        # dates and times stay text, as written (SQLite has no such types)
        temporal = [f.name for f in table.schema if pa.types.is_temporal(f.type)]
        if temporal:
            table = _read_image_csv(path, {**types, **dict.fromkeys(temporal, pa.string())})
    except pa.ArrowInvalid as exc:
        scan.quarantine(_parse_problem(path, len(header), exc), path)
        return None
    binary = [f.name for f in table.schema if pa.types.is_binary(f.type)]
    if binary:
        scan.quarantine(f"Image.csv is not UTF-8 text (column {binary[0]})", path)
        return None
    return table


def _read_image_csv(path: str, types: dict[str, pa.DataType]) -> pa.Table:
    return pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(use_threads=False, block_size=1 << 24),
        convert_options=pacsv.ConvertOptions(column_types=types, null_values=NULL_VALUES, strings_can_be_null=True),
    )


def _parse_problem(path: str, n_fields: int, exc: Exception) -> str:
    """Turn a parser error into a reason with the line number where one can be found."""
    base = os.path.basename(path)
    text = str(exc)
    if "Expected" in text and "columns" in text:
        with open(path, "rb") as fh:
            line = ragged_line(fh.read(), n_fields)
        where = f" at line {line}" if line else ""
        return f"{base}: a row has the wrong number of fields{where} (cut-off or corrupt row: {text.splitlines()[0][:120]})"
    if "conversion error" in text or "invalid value" in text:
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
) -> list[SiteScan]:
    """First pass over every site: files, headers, Image.csv rows and their wells."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        scans = list(pool.map(lambda d: _scan_one(d, strata, plate), sorted(site_dirs)))
    return scans


def plan_schema(scans: Sequence[SiteScan], *, plate: str, strata: Sequence[str]) -> PlateSchema:
    """Union schema over the trusted sites; quarantine sites that lack an object table others have."""
    object_tables = sorted({t for s in scans if s.problem is None for t in s.files if t != IMAGE_TABLE})
    for scan in scans:
        if scan.problem is not None:
            continue
        for table in object_tables:
            if table not in scan.files:
                scan.quarantine(f"{table}.csv is missing (other sites have it)", os.path.join(scan.path, f"{table}.csv"))
                break
    tables: dict[str, list[str]] = {}
    for table in [IMAGE_TABLE, *object_tables]:
        columns: set[str] = set()
        for scan in scans:
            if scan.problem is None:
                columns.update(scan.headers.get(table, []))
        if table == IMAGE_TABLE:
            columns.update(c for s in scans if s.problem is None for c in s.filled_columns)
        tables[table] = canonical_order(sorted(columns))
    return PlateSchema(tables=tables, strata=list(strata), plate=plate)


class _ObjectFileProblem(Exception):
    """An object CSV that cannot be trusted; the message is the reason."""


def _read_objects(path: str, header: list[str], union: list[str]) -> tuple[np.ndarray, list[str]]:
    """Parse an object CSV as float64, laid out on the union columns (NaN where absent).

    Returns a column-major array (columns are what every consumer reads). Polars parses;
    a cut-off row, which Polars would fill with NULLs, is caught by counting separators.
    """
    import polars as pl

    with open(path, "rb") as fh:
        raw = fh.read()
    base = os.path.basename(path)
    try:
        # types by position: the names come from our own header parse, not the parser's
        frame = pl.read_csv(raw, schema_overrides=[pl.Float64] * len(header), null_values=NULL_VALUES,
                            infer_schema_length=0)
    except pl.exceptions.NoDataError as exc:
        raise _ObjectFileProblem(f"{base} is empty") from exc
    except pl.exceptions.PolarsError as exc:
        bad_line = ragged_line(raw, len(header))
        if bad_line is not None:
            raise _ObjectFileProblem(f"{base}: a row has the wrong number of fields at line {bad_line} (cut-off or corrupt row)") from exc
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _ObjectFileProblem(f"{base} is not UTF-8 text") from exc
        raise _ObjectFileProblem(f"{base}: unparseable number ({str(exc).splitlines()[0][:160]})") from exc
    # every data row has exactly len(header) - 1 separators unless one was cut short
    newline = raw.find(b"\n")
    body = raw[newline + 1 :] if newline >= 0 else b""
    if b'"' in body or body.count(b",") != frame.height * (len(header) - 1):
        bad_line = ragged_line(raw, len(header))
        if bad_line is not None:
            raise _ObjectFileProblem(f"{base}: a row has the wrong number of fields at line {bad_line} (cut-off or corrupt row)")
    if frame.width != len(header):
        raise _ObjectFileProblem(f"{base}: {frame.width} columns parsed under a {len(header)}-column header")
    values = frame.to_numpy(order="fortran")
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


def _site_table_number(site_dir: str, image_bytes: bytes) -> int:
    """CRC32 of Image.csv, or the number bound to the site in ``TABLE_NUMBER_FILE`` (ExportToDatabase input)."""
    bound = os.path.join(site_dir, TABLE_NUMBER_FILE)
    if os.path.exists(bound):
        text = Path(bound).read_text().strip()
        if not text.isdigit() or int(text) >= 1 << 32:
            raise InputError(f"{bound}: {text[:20]!r} is not a TableNumber; remove the file")
        return int(text)
    return zlib.crc32(image_bytes) & 0xFFFFFFFF


def _read_site(scan: SiteScan, schema: PlateSchema) -> SiteTables | Quarantine:
    if scan.problem is not None:
        return Quarantine(scan.name, scan.problem, scan.problem_file, scan.keys)
    image_path = scan.files[IMAGE_TABLE]
    with open(image_path, "rb") as fh:
        raw = fh.read()
    table_number = _site_table_number(scan.path, raw)
    image = _parse_image(image_path, scan.headers[IMAGE_TABLE], scan)
    if image is None:
        return Quarantine(scan.name, scan.problem or "unreadable Image.csv", scan.problem_file, scan.keys)
    image, _ = _fill_metadata(image, scan.name, schema.plate)
    image = image.add_column(0, "TableNumber", pa.array([table_number] * image.num_rows, type=pa.int64()))
    missing: dict[str, list[str]] = {}
    image_cols = set(image.column_names)
    missing_image = [c for c in schema.tables[IMAGE_TABLE] if c not in image_cols and c != "TableNumber"]
    if missing_image:
        missing[IMAGE_TABLE] = missing_image
    key_by_image = dict(zip(scan.image_numbers, scan.keys))
    objects: dict[str, np.ndarray] = {}
    row_keys: dict[str, list[tuple[str, ...]]] = {}
    for table in schema.object_tables:
        path = scan.files[table]
        try:
            array, absent = _read_objects(path, scan.headers[table], schema.tables[table])
        except _ObjectFileProblem as exc:
            return Quarantine(scan.name, str(exc), path, scan.keys)
        image_numbers = array[:, 0]
        if np.isnan(image_numbers).any() or np.isnan(array[:, 1]).any():
            return Quarantine(scan.name, f"{table}.csv has rows with no ImageNumber or ObjectNumber", path, scan.keys)
        unknown = set(np.unique(image_numbers).astype(np.int64).tolist()) - set(key_by_image)
        if unknown:
            return Quarantine(
                scan.name,
                f"{table}.csv refers to ImageNumber {sorted(unknown)[0]}, absent from Image.csv",
                path,
                scan.keys,
            )
        if absent:
            missing[table] = absent
        objects[table] = array
        if len(key_by_image) == 1:
            only = next(iter(key_by_image.values()))
            row_keys[table] = [only] * len(array)
        else:
            row_keys[table] = [key_by_image[int(v)] for v in image_numbers]
    return SiteTables(
        name=scan.name,
        table_number=table_number,
        image=image,
        objects=objects,
        missing=missing,
        row_keys=row_keys,
        keys=scan.keys,
    )


def read_sites(
    scans: Sequence[SiteScan],
    schema: PlateSchema,
    *,
    threads: int = 2,
    prefetch: int = 4,
) -> Iterator[SiteTables | Quarantine]:
    """Read sites in the given order, parsing up to ``prefetch`` sites ahead in threads."""
    order = list(scans)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        pending: list = []
        position = 0
        while position < len(order) or pending:
            while position < len(order) and len(pending) < max(1, prefetch):
                pending.append(pool.submit(_read_site, order[position], schema))
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

