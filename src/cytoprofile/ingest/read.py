"""The read pass: one site at a time (in threads, ahead of the consumer), its tables on the union
schema or its quarantine, with the rows of every file of the folder for the report.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputError
from .checks import absent_counts, object_metadata_warnings, set_aside_counts, site_checks
from .image import fill_metadata, parse_image
from .model import (
    IMAGE_TABLE,
    CountCheck,
    ObjectFileProblem,
    PlateSchema,
    Quarantine,
    SiteScan,
    SiteTables,
)
from .objects import read_objects
from .text import count_records, read_bytes

__all__ = [
    "image_numeric",
    "order_by_key",
    "read_sites",
]


def _rows_entry(path: str, header_lines: int) -> dict[str, Any]:
    """A file's data rows for the report (``rows`` None and why, when it cannot be read)."""
    try:
        raw = read_bytes(path)
        raw.decode("utf-8")  # rows of a file that is not text are not counted: there are none to name
        return {"rows": count_records(raw, header_lines), "tables": []}
    except UnicodeDecodeError as exc:
        return {"rows": None, "tables": [], "unreadable": f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"}
    except (ObjectFileProblem, OSError, EOFError, zlib.error) as exc:
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


def _read_site(scan: SiteScan, schema: PlateSchema, count_check: CountCheck = "error") -> SiteTables | Quarantine:
    if scan.problem is not None:
        return _quarantined(scan)
    image = scan.image if scan.image is not None else parse_image(scan)
    if image is None:
        return _quarantined(scan)
    image, _ = fill_metadata(image, scan.name, schema.plate)
    table_number = int(scan.table_number or 0)
    image = image.add_column(0, "TableNumber", pa.array([table_number] * image.num_rows, type=pa.int64()))
    missing: dict[str, list[str]] = {}
    image_cols = set(image.column_names)
    missing_image = [c for c in schema.tables[IMAGE_TABLE] if c not in image_cols and c != "TableNumber"]
    if missing_image:
        missing[IMAGE_TABLE] = missing_image
    key_by_image = dict(zip(scan.image_numbers, scan.keys))
    objects: dict[str, np.ndarray] = {}
    texts: dict[str, pa.Table] = {}
    row_keys: dict[str, list[tuple[str, ...]]] = {}
    notes = list(scan.notes)
    cut: list[str] = []
    for table in schema.object_tables:
        if table not in scan.sources:
            continue
        source = scan.sources[table]
        try:
            array, absent, text = read_objects(source, schema.tables[table], notes=notes, warnings=cut,
                                               text_union=schema.text_columns.get(table, ()))
        except ObjectFileProblem as exc:
            return _quarantined(scan, str(exc), source.path)
        if text is not None:
            texts[table] = text
            own = text.select([c for c in text.column_names if c in set(source.text_header)])  # not the plate's others
            cut.extend(object_metadata_warnings(source.name, own, array[:, 0], image))
        keys = _row_keys(array[:, 0], key_by_image)
        if isinstance(keys, int):
            return _quarantined(scan, f"{source.name} refers to ImageNumber {keys}, absent from Image.csv", source.path)
        if absent:
            missing[table] = absent
        objects[table] = array
        row_keys[table] = keys
    problem, warnings = site_checks(objects, schema.tables, image, scan.image_numbers, count_check)
    if problem is not None:
        return _quarantined(scan, problem[1], scan.sources[problem[0]].path)
    set_aside = set_aside_counts(scan.rejected, image) if count_check != "off" else []
    if set_aside and count_check == "error":  # as an absent or header-only file whose objects Image.csv counts
        return _quarantined(scan, set_aside[0], scan.sources[IMAGE_TABLE].path)
    warnings.extend(set_aside)
    absent = [t for t in schema.object_tables if t not in scan.sources and t.lower() not in scan.rejected]
    lacking = absent_counts(absent, image) if count_check != "off" else []
    if lacking and count_check == "error":
        return _quarantined(scan, lacking[0][1], scan.sources[IMAGE_TABLE].path)
    warnings.extend(f"{why}: they are in no table" for _, why in lacking)
    return SiteTables(name=scan.name, table_number=table_number, image=image, objects=objects, missing=missing,
                      row_keys=row_keys, keys=scan.keys, files=_site_files(scan, image, objects),
                      warnings=list(dict.fromkeys([*scan.warnings, *cut, *warnings])), notes=list(dict.fromkeys(notes)),
                      texts=texts)  # object.csv's compartments share one file: its warnings are said once


def _row_keys(image_numbers: np.ndarray, key_by_image: dict[int, tuple[str, ...]]) -> list[tuple[str, ...]] | int:
    """The grouping key of each object row, or the first ImageNumber absent from Image.csv."""
    unknown = set(np.unique(image_numbers).astype(np.int64).tolist()) - set(key_by_image)
    if unknown:
        return sorted(unknown)[0]
    if len(key_by_image) == 1:
        return [next(iter(key_by_image.values()))] * len(image_numbers)
    return [key_by_image[int(v)] for v in image_numbers]


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
            out[:, i] = pc.cast(col, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    return out
