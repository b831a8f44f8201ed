"""Image.csv: column-family types (text families as written, every other column numeric), and its
rows checked: ImageNumbers, this plate, every stratum filled, the folder name compared.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ..vocabulary import (
    IMAGE_FILE_FAMILIES,
    SITE_NAME,
    distinct_strata,
    normalise_well,
    spelling_note,
)
from .model import (
    FOLDER_WARNING,
    IMAGE_TABLE,
    MAX_KEY,
    NULL_VALUES,
    ObjectFileProblem,
    SiteScan,
    Source,
    is_text_image_column,
    normalise_site,
)
from .numbers import number_warnings
from .text import (
    after_lines,
    blank_whitespace_lines,
    line_endings,
    line_of_row,
    parse_problem,
    read_bytes,
)

__all__ = [
    "check_image",
    "fill_metadata",
    "parse_image",
]


def _has(table: pa.Table, name: str) -> bool:
    """Whether the table has a column ``name``: a lookup, not a list of a wide Image.csv's 2,000 names."""
    return table.schema.get_field_index(name) >= 0


def check_image(scan: SiteScan, image: pa.Table, strata: Sequence[str], plate: str) -> None:
    """Image rows: at least one, unique ImageNumbers, this plate, every stratum filled."""
    path = scan.sources[IMAGE_TABLE].path
    base = scan.sources[IMAGE_TABLE].name
    if image.num_rows == 0:
        scan.quarantine(f"{base} has a header but no data row", path)
        return
    had_plate = _has(image, "Metadata_Plate")
    before = set(image.column_names)
    disagreements = _folder_disagreements(image, scan.name, plate)
    image, problem = fill_metadata(image, scan.name, plate, notes=scan.notes, warnings=scan.warnings)
    if problem:
        scan.quarantine(problem, path)
        return
    scan.filled_columns = [c for c in image.column_names if c not in before]
    missing = [s for s in strata if not _has(image, s)]
    if missing:
        scan.quarantine(f"{base} lacks the strata column(s) {', '.join(missing)}", path)
        return
    if not _has(image, "ImageNumber"):  # objects cannot be matched to their image, nor counts checked
        scan.quarantine(f"{base} has no ImageNumber column", path)
        return
    numbers = image.column("ImageNumber").to_pylist()
    repeated = sorted(n for n, k in Counter(numbers).items() if k > 1 and n is not None)
    if repeated:
        scan.quarantine(f"{base} has {Counter(numbers)[repeated[0]]} rows with ImageNumber {repeated[0]}", path)
        return
    scan.image_numbers = [int(v) for v in numbers if v is not None]
    if had_plate:
        plates = image.column("Metadata_Plate").to_pylist()
        empty = [i for i, v in enumerate(plates) if v is None or str(v).strip() == ""]
        if empty:
            scan.quarantine(f"{base}: Metadata_Plate is empty in data row {empty[0] + 1}", path)
            return
        others = sorted({str(v) for v in plates} - {plate})
        if others:
            note = spelling_note(others[0], plate)
            scan.quarantine(f"{base} names plate {others[0]!r}, not {plate!r}" + (note or " (a site of another plate?)"),
                            path)
            return
    for column in strata:
        values = image.column(column).to_pylist()
        empty = [i for i, v in enumerate(values) if v is None or str(v).strip() == ""]
        if empty:
            scan.quarantine(f"{base}: {column} is empty in data row {empty[0] + 1}", path)
            return
    scan.keys = _row_keys(image, strata)
    scan.site_keys = _site_keys(image, distinct_strata(strata))
    twice = _site_twice(scan.site_keys, scan.image_numbers)
    if twice:
        scan.quarantine(f"{base}: {twice}; which row is right is unknown (an image set processed twice?)", path)
        return
    scan.image_files = _image_files(image)
    scan.warnings.extend(disagreements)


def _site_keys(image: pa.Table, distinct_by: Sequence[str]) -> list[tuple[str, ...]]:
    """(well, site, the other strata's values) of each image row, normalised as wells are (none without
    Metadata_Site): images of one site at two time points (a ``--strata`` column) are two sites."""
    if not _has(image, "Metadata_Site"):
        return []
    wells = image.column("Metadata_Well").to_pylist()
    extra = list(zip(*(map(str, image.column(c).to_pylist()) for c in distinct_by))) or [()] * image.num_rows
    return [(normalise_well(str(w)), normalise_site(s), *more)
            for w, s, more in zip(wells, image.column("Metadata_Site").to_pylist(), extra)
            if w is not None and s is not None and str(s).strip()]


def _site_twice(keys: Sequence[tuple[str, ...]], numbers: Sequence[int]) -> str | None:
    """Two image rows of one Image.csv with one (well, site, other strata), as the two folders of a re-run are:
    its cells would be counted twice in the well (None: every site once)."""
    first: dict[tuple[str, ...], int] = {}
    for k, key in enumerate(keys):
        if key in first:
            said = (f"ImageNumber {numbers[first[key]]} and ImageNumber {numbers[k]}" if len(numbers) == len(keys)
                    else "two of its rows")
            return f"site {'/'.join(key)} is both {said}"
        first[key] = k
    return None


def _image_files(image: pa.Table) -> list[tuple[tuple[str, str], ...]]:
    """Each image row's file names, folders, URLs, frames and series: what tells a copy of a site apart
    when Image.csv names no site."""
    columns = sorted(c for c in image.column_names if c.startswith(IMAGE_FILE_FAMILIES))
    values = [[str(v) for v in image.column(c).to_pylist()] for c in columns]
    return [tuple(zip(columns, row)) for row in zip(*values)] if columns else []


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
        if not _has(image, column):
            if column == "Metadata_Plate" and folder_value != plate:
                out.append(f"{FOLDER_WARNING}{site} says Metadata_Plate {folder_value!r}, but it is in plate folder {plate!r} "
                           f"(Metadata_Plate {plate!r} is used)")
            continue
        values = [v for v in dict.fromkeys(image.column(column).to_pylist()) if v is not None and str(v).strip()]
        other = [v for v in values if not _same_key(column, str(v), folder_value)]
        if other:
            out.append(f"{FOLDER_WARNING}{site} says {column} {folder_value!r}, Image.csv says {str(other[0])!r} "
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


def fill_metadata(image: pa.Table, site: str, plate: str, *, notes: list[str] | None = None,
                  warnings: list[str] | None = None) -> tuple[pa.Table, str | None]:
    """Normalise well names; fill Metadata_Well/Site from the folder name ``PLATE-WELL-SITE`` and Metadata_Plate from the
    plate folder when Image.csv lacks them."""
    if _has(image, "Metadata_Well"):
        wells = image.column("Metadata_Well").to_pylist()
        fixed = [normalise_well(w) if isinstance(w, str) else w for w in wells]
        if fixed != wells:
            if notes is not None:
                notes.extend(sorted({f"well {a!r} read as {b!r}" for a, b in zip(wells, fixed) if a != b}))
            image = image.set_column(image.schema.get_field_index("Metadata_Well"), "Metadata_Well", pa.array(fixed, type=pa.string()))
    match = SITE_NAME.match(site)
    if not _has(image, "Metadata_Well") and not match:
        return image, f"Image.csv has no Metadata_Well and the folder name {site!r} is not PLATE-WELL-SITE"
    fills: dict[str, str] = {"Metadata_Plate": plate}  # the plate folder's name, whatever the site folder says
    if match:
        fills["Metadata_Well"] = normalise_well(match.group("well"))
        fills["Metadata_Site"] = match.group("site")
    for column, value in fills.items():
        if not _has(image, column):
            image = image.append_column(pa.field(column, pa.string()), pa.array([value] * image.num_rows, type=pa.string()))
    return _fill_empty_sites(image, fills.get("Metadata_Site"), notes, warnings), None


def _fill_empty_sites(image: pa.Table, folder_site: str | None, notes: list[str] | None,
                      warnings: list[str] | None) -> pa.Table:
    """An empty Metadata_Site takes the folder name's site, said in the notes: left empty, the site could
    not be told from another copy of it (a re-run's folder), whose cells would then count twice."""
    if not _has(image, "Metadata_Site"):
        return image
    values = image.column("Metadata_Site").to_pylist()
    empty = [i for i, v in enumerate(values) if v is None or (isinstance(v, str) and not v.strip())]
    if not empty:
        return image
    kind = image.schema.field("Metadata_Site").type
    kind = pa.string() if pa.types.is_null(kind) else kind  # a column empty in every row
    where = f"data row {empty[0] + 1}" + (f" and {len(empty) - 1} more" if len(empty) > 1 else "")
    try:
        filled = None if folder_site is None else pa.array([folder_site], type=pa.string()).cast(kind)[0].as_py()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        filled = None
    if filled is None or image.num_rows > 1:  # the folder names one site; several images are several sites
        why = "the folder name gives no site" if filled is None else f"it holds {image.num_rows} images"
        if warnings is not None:
            warnings.append(f"Metadata_Site is empty in Image.csv ({where}) and {why}: another copy of this "
                            "site cannot be found (fill Metadata_Site)")
        return image
    if notes is not None:
        notes.append(f"Metadata_Site is empty in Image.csv ({where}): the folder name's {folder_site!r} is used")
    for i in empty:
        values[i] = filled
    return image.set_column(image.schema.get_field_index("Metadata_Site"), "Metadata_Site", pa.array(values, type=kind))


def parse_image(scan: SiteScan, raw: bytes | None = None) -> pa.Table | None:
    """Image.csv with column-family types: text families as text (kept as written; empty is NULL), every
    other column numeric (empty, ``nan`` and ``NaN`` are NULL; any other word is a non-number)."""
    source = scan.sources[IMAGE_TABLE]
    try:
        raw = line_endings(read_bytes(source.path), source.name) if raw is None else raw
    except ObjectFileProblem as exc:
        scan.quarantine(str(exc), source.path)
        return None
    try:
        table = _read_image_csv(raw, source)
    except pa.ArrowInvalid as exc:
        cleaned = blank_whitespace_lines(raw, after_lines(raw, source.header_lines))
        if cleaned is raw:  # no whitespace-only line to skip: the file is at fault
            scan.quarantine(parse_problem(source.name, raw, source.width, exc), source.path)
            return None
        return parse_image(scan, cleaned)
    empties = _may_hold_empty_fields(raw)
    for i, column in enumerate(table.schema):  # set_column keeps positions: the schema read once stays valid
        if is_text_image_column(column.name):
            table = _empty_text_as_null(table, i) if empties else table
            continue
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            continue
        table, problem = _numeric_image_column(table, i, raw, source)
        if problem:
            scan.quarantine(problem, source.path)
            return None
    table = _wide_integers_as_floats(table)
    scan.warnings.extend(_number_warnings(table, raw, source))
    if _has(table, "ImageNumber"):
        problem = _image_number_problem(table.column("ImageNumber"), source.name)
        if problem:
            scan.quarantine(problem, source.path)
            return None
        table = table.set_column(table.schema.get_field_index("ImageNumber"), "ImageNumber", table.column("ImageNumber").cast(pa.int64()))
    return table


def _wide_integers_as_floats(table: pa.Table) -> pa.Table:
    """Integer measurement columns holding a value above 2^53 as float64, as every measurement is stored:
    the rounding is then named like any other (an int64 column would fail to join the plate's floats)."""
    if not table.num_rows:
        return table
    integers = [(i, f.name) for i, f in enumerate(table.schema) if pa.types.is_integer(f.type) and f.name != "ImageNumber"]
    for i, name in integers:
        column = table.column(i)
        extremes = pc.min_max(column)
        low, high = extremes["min"].as_py(), extremes["max"].as_py()
        if low is not None and max(abs(low), abs(high)) > MAX_KEY:
            table = table.set_column(i, name, pc.cast(column, pa.float64(), safe=False))
    return table


def _number_warnings(table: pa.Table, raw: bytes, source: Source) -> list[str]:
    """Image.csv's float columns holding numbers float64 cannot hold as written (``1e400``, integers above 2^53)."""
    floats = [f.name for f in table.schema if pa.types.is_floating(f.type) and not is_text_image_column(f.name)]
    if not floats or not table.num_rows:
        return []
    values = _float_matrix(table.select(floats))
    positions = source.positions if source.positions is not None else list(range(source.width))
    where = {c: positions[j] for j, c in enumerate(source.header)}
    return number_warnings(source.name, floats, [where[c] for c in floats], source.width, values, raw,
                           source.header_lines)


def _float_matrix(table: pa.Table) -> np.ndarray:
    """A table of float columns as one rows × columns float64 array, joined in one copy (a wide Image.csv has
    2,000 columns: one conversion each would cost more than reading the file)."""
    chunks = [chunk.cast(pa.float64()) if chunk.type != pa.float64() else chunk
              for column in table.columns for chunk in column.chunks]
    flat = pa.chunked_array(chunks, type=pa.float64()).to_numpy()
    return flat.reshape(table.num_columns, table.num_rows).T


def _read_image_csv(raw: bytes, source: Source) -> pa.Table:
    positions = source.positions if source.positions is not None else list(range(source.width))
    field_names = [f"c{i}" for i in range(source.width)]
    text_types = {field_names[p]: pa.string() for p, c in zip(positions, source.header) if is_text_image_column(c)}
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


def _may_hold_empty_fields(raw: bytes) -> bool:
    """Whether any field of the file can be empty: two separators side by side, one at a line's start or end,
    or ``""``. Most Image.csv files have none, and their text columns need no look for empty values."""
    marks = (b",,", b",\n", b",\r", b"\n,", b'""')
    return raw.startswith(b",") or raw.endswith(b",") or any(mark in raw for mark in marks)


def _empty_text_as_null(table: pa.Table, i: int) -> pa.Table:
    column = table.column(i)
    empty = pc.equal(column, "")
    if not pc.any(empty).as_py():
        return table
    return table.set_column(i, table.schema.field(i).name, pc.if_else(empty, pa.scalar(None, pa.string()), column))


def _numeric_image_column(table: pa.Table, i: int, raw: bytes, source: Source) -> tuple[pa.Table, str | None]:
    """A measurement column as numbers, or the first cell that is not one (line and column named)."""
    typ = table.schema.field(i).type
    column = table.schema.field(i).name
    if pa.types.is_null(typ):
        return table.set_column(i, column, table.column(i).cast(pa.float64())), None
    if pa.types.is_integer(typ) or pa.types.is_floating(typ):
        return table, None
    values = [None if v is None else str(v) for v in table.column(i).to_pylist()]  # strings, dates, times
    bad = next((k for k, v in enumerate(values) if v is not None and v.strip() not in NULL_VALUES and not _is_number(v)), None)
    if bad is None:  # numbers the CSV reader did not take (e.g. padded): read each
        floats = [float(v) if v is not None and v.strip() not in NULL_VALUES else None for v in values]
        return table.set_column(i, column, pa.array(floats, type=pa.float64())), None
    line = line_of_row(raw, source.header_lines, bad)
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
