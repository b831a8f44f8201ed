"""The first pass over a plate: site folders, which file is which table, their headers (duplicate
column names, the old two-row ``object.csv``), Image.csv read once, duplicate sites.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..vocabulary import is_text_column
from .image import check_image, parse_image
from .model import (
    APPLE_DOUBLE,
    FOLDER_WARNING,
    IMAGE_TABLE,
    RUN_METADATA_FILES,
    TABLE_NUMBER_FILE,
    ObjectFileProblem,
    SiteScan,
    Source,
    csv_stem,
    is_reserved_table,
)
from .repeats import mark_duplicates, mark_repeated_sites, mark_shared_files
from .text import (
    after_lines,
    drop_blank_lines,
    file_identity,
    is_gzip_data,
    is_utf16,
    line_endings,
    padded_names,
    read_bytes,
    read_header,
    undecodable_name,
    unterminated_last_row,
)

__all__ = [
    "case_clash",
    "discover_sites",
    "files_beside_sites",
    "scan_sites",
    "settle_duplicates",
]

log = logging.getLogger("cytoprofile.ingest")


def discover_sites(plate_dir: str | os.PathLike[str]) -> list[str]:
    """Site folders of a plate: each immediate subfolder (broken links included, to be named), sorted."""
    path = Path(plate_dir)
    if not path.is_dir():
        raise InputError(f"{path}: no such folder; expected analysis/BATCH/PLATE/analysis/ with one folder per site"
                         + _databases_below(path.parent))
    sites = sorted(str(p) for p in path.iterdir() if p.is_dir() or (p.is_symlink() and not p.exists()))
    if not sites:
        raise InputError(f"{path}: holds no site folders; expected one folder per site (PLATE-WELL-SITE)")
    return sites


def _databases_below(plate: Path) -> str:
    """What to add to "no such folder" when the plate folder holds ExportToDatabase files deeper than
    ``PLATE/*.sqlite`` (one folder per run), which are not looked for there."""
    found = sorted(plate.glob("*/**/*.sqlite")) if plate.is_dir() else []
    if not found:
        return ""
    return (f"; {len(found)} ExportToDatabase file(s) are in subfolders of {plate} (first: {found[0].relative_to(plate)}), "
            "where they are not looked for: give them with --export-db PATH (a file or folder), or move them to analysis/BATCH/PLATE/")


def files_beside_sites(plate_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Files directly in the plate's analysis folder (not in a site folder), which are not read: name -> why."""
    path = Path(plate_dir)
    return {p.name: "beside the site folders, not in one: not read (each site is a folder PLATE-WELL-SITE)"
            for p in sorted(path.iterdir()) if not p.is_dir() and not (p.is_symlink() and not p.exists())}


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

    raw = line_endings(read_bytes(path), os.path.basename(path))
    body = drop_blank_lines(raw[after_lines(raw, header_lines):])
    if not body.strip():
        return {p: [] for p in positions}
    names = [f"c{i}" for i in range(width)]
    frame = pl.read_csv(body, has_header=False, schema=dict.fromkeys(names, pl.Utf8), columns=sorted(set(positions)),
                        infer_schema_length=0)
    return {p: frame[names[p]].to_list() for p in positions}


#: columns whose two differing copies leave a row's identity unknown: the site is quarantined
_IDENTITY_COLUMNS = ("ImageNumber", "ObjectNumber", "TableNumber", "Metadata_Plate", "Metadata_Well", "Metadata_Site")


def _identity(column: str, table: str) -> bool:
    """A key column (or Image.csv's ``Count_<Object>``, which the count check reads): a differing copy is a conflict."""
    return (column in _IDENTITY_COLUMNS or column.startswith("Parent_")
            or (table == IMAGE_TABLE and column.startswith("Count_")))


def _dedupe(source: Source, table: str, scan: SiteScan) -> None:
    """Columns named twice: each repeat is recorded with its field position and whether its values equal an earlier
    occurrence's, under a name unique in the file (the plate's name is given by :func:`settle_duplicates`). A
    differing copy of a key column (or of Image.csv's ``Count_<Object>``) quarantines the site: which is right is
    unknown."""
    header = source.header
    counts = Counter(header)
    if all(n == 1 for n in counts.values()):
        return
    repeated = [i for i, c in enumerate(header) if counts[c] > 1]
    text = _column_text(source.path, source.header_lines, source.width, repeated)
    taken = set(header)
    names = list(header)
    earlier: dict[str, list[int]] = {}
    for i, column in enumerate(header):
        before = earlier.setdefault(column, [])
        if before:
            k = len(before) + 1
            while f"{column}_{k}" in taken:
                k += 1
            names[i] = f"{column}_{k}"
            taken.add(names[i])
            identical = any(text[j] == text[i] for j in before)
            if not identical and _identity(column, table):
                scan.quarantine(f"{source.name}: column {column} is in the header twice (fields {before[0] + 1} and "
                                f"{i + 1}) with different values; which is right is unknown", source.path)
            scan.duplicates.append({"file": source.name, "table": table, "column": column, "occurrence": len(before) + 1,
                                    "field": i + 1, "identical": identical, "stored_as": names[i]})
        before.append(i)
    source.header = names


def settle_duplicates(scans: Sequence[SiteScan]) -> None:
    """Name each repeat the same in every site, then drop a repeat from every site when each trusted site holding it
    has it equal to an earlier occurrence; keep it in every site otherwise (so its name means the same column across
    the plate)."""
    _plate_names(scans)
    kept = {(d["table"], d["stored_as"]) for s in scans if s.problem is None for d in s.duplicates if not d["identical"]}
    for scan in scans:
        for entry in scan.duplicates:
            if entry["stored_as"] is None or (entry["table"], entry["stored_as"]) in kept:
                continue
            _drop_column(scan, entry["table"], entry["stored_as"])
            entry["stored_as"] = None


def _plate_names(scans: Sequence[SiteScan]) -> None:
    """The k-th occurrence of ``X`` in a file is ``X_k`` in every site, or the next ``X_j`` that is no column of the
    table as written in any site: one name, one column, across the plate."""
    written: dict[str, set[str]] = {}
    for scan in scans:
        repeats = {(d["table"], d["stored_as"]) for d in scan.duplicates}
        for table, source in scan.sources.items():
            written.setdefault(table, set()).update(
                c for c in (*source.header, *source.text_header) if (table, c) not in repeats)
    final: dict[tuple[str, str, int], str] = {}
    for table, column, k in sorted({(d["table"], d["column"], d["occurrence"]) for s in scans for d in s.duplicates}):
        used = written.setdefault(table, set())
        j = k
        while f"{column}_{j}" in used:
            j += 1
        final[(table, column, k)] = f"{column}_{j}"
        used.add(f"{column}_{j}")
    for scan in scans:
        for table in {d["table"] for d in scan.duplicates}:
            mapping = {d["stored_as"]: final[(table, d["column"], d["occurrence"])] for d in scan.duplicates
                       if d["table"] == table}
            _rename_columns(scan, table, mapping)
        for d in scan.duplicates:
            d["stored_as"] = final[(d["table"], d["column"], d["occurrence"])]


def _rename_columns(scan: SiteScan, table: str, mapping: dict[str, str]) -> None:
    """Rename a site's repeated columns of ``table`` (header, text header and the parsed Image.csv) at once."""
    if all(a == b for a, b in mapping.items()):
        return
    source = scan.sources.get(table)
    if source is not None:
        source.header = [mapping.get(c, c) for c in source.header]
        source.text_header = [mapping.get(c, c) for c in source.text_header]
        source.key_index = None
        if table in scan.headers:
            scan.headers[table] = source.header
        if table in scan.text_headers:
            scan.text_headers[table] = source.text_header
    if table == IMAGE_TABLE and scan.image is not None:
        scan.image = scan.image.rename_columns([mapping.get(c, c) for c in scan.image.column_names])


def _drop_column(scan: SiteScan, table: str, name: str) -> None:
    source = scan.sources.get(table)
    if source is None:
        return
    if name in source.header:
        positions = source.positions if source.positions is not None else list(range(source.width))
        j = source.header.index(name)
        source.header = source.header[:j] + source.header[j + 1:]
        source.positions = positions[:j] + positions[j + 1:]
        source.key_index = None
        if table in scan.headers:
            scan.headers[table] = source.header
    elif name in source.text_header:
        j = source.text_header.index(name)
        source.text_header = source.text_header[:j] + source.text_header[j + 1:]
        source.text_positions = source.text_positions[:j] + source.text_positions[j + 1:]
        scan.text_headers[table] = source.text_header


def _object_sources(entry: str, path: str, table: str, scan: SiteScan) -> dict[str, Source]:
    """One object CSV as its table(s): the old ``object.csv`` has a compartment row above the feature row."""
    identity = file_identity(path)
    first, second = read_header(path, 2)
    if "ImageNumber" in first or "ImageNumber" not in second or len(first) != len(second):
        return {table: Source(entry, path, first, width=len(first), identity=identity)}
    labels = {lab for lab in first if lab and lab != IMAGE_TABLE}
    image_cols = [i for i, lab in enumerate(first) if lab == IMAGE_TABLE]
    if [second[i] for i in image_cols] != ["ImageNumber"] or "ObjectNumber" not in second:
        scan.quarantine(f"{entry}: a two-row header whose Image columns are not just ImageNumber, or no ObjectNumber", path)
        return {}
    image_at, object_at = second.index("ImageNumber"), second.index("ObjectNumber")
    blank = [i for i, lab in enumerate(first) if not lab.strip() and i not in (image_at, object_at)]
    if blank:
        scan.quarantine(f"{entry}: column {blank[0] + 1} ({second[blank[0]]}) has a blank compartment label in the first "
                        f"header row ({len(blank)} such column(s)); which table it belongs to is unknown: fill in the label",
                        path)  # the labelled tables are still described: the file's rows are counted under 2 header lines
    out = {}
    for label in sorted(labels):
        mine = [i for i, lab in enumerate(first) if lab == label and i not in (image_at, object_at)]
        positions = [image_at, object_at, *mine]
        out[label] = Source(entry, path, [second[i] for i in positions], positions, header_lines=2, width=len(second),
                            identity=identity)
    return out


def _classify(scan: SiteScan, entries: Sequence[str], file_prefix: str | None) -> None:
    """Which file is the Image table, which are object tables, which are run metadata, which are not read."""
    stems = _csv_entries(scan, entries)
    prefix = _prefix(list(stems.values()), file_prefix)
    if prefix is None:
        _prefix_unknown(scan, stems)
        return
    for entry, stem in stems.items():
        path = os.path.join(scan.path, entry)
        reason = _not_stored_by_name(stem, prefix)
        if reason is not None:
            scan.csv_files.append((entry, path, 1))
            scan.not_stored[entry] = reason
            continue
        name = stem[len(prefix):]
        table = IMAGE_TABLE if name.lower() == "image" else name
        _add_table_file(scan, entry, path, table)


def _prefix_unknown(scan: SiteScan, stems: dict[str, str]) -> None:
    """No prefix every CSV shares: the site is quarantined naming a file that lacks the Image file's prefix."""
    for entry in stems:
        scan.csv_files.append((entry, os.path.join(scan.path, entry), 1))
    images = sorted((e for e, s in stems.items() if s.lower().endswith("image")), key=len, reverse=True)
    if not images:
        return

    def lacking(image: str) -> list[str]:
        return sorted(e for e, s in stems.items() if not s.startswith(stems[image][: -len("image")]))

    image = min(images, key=lambda e: len(lacking(e)))  # the Image file most CSVs agree with (longest prefix on a tie)
    first = lacking(image)[0]
    more = len(lacking(image)) - 1
    scan.quarantine(f"cannot tell the file-name prefix: {first}{f' (and {more} more)' if more else ''} does not start "
                    f"with {stems[image][: -len('image')]!r}, the prefix of {image}; pass --file-prefix",
                    os.path.join(scan.path, first))


def _csv_entries(scan: SiteScan, entries: Sequence[str]) -> dict[str, str]:
    """The folder's CSVs (entry → name without the extension); every other file is named as not read."""
    stems: dict[str, str] = {}
    for entry in entries:
        path = os.path.join(scan.path, entry)
        stem = csv_stem(entry)
        if entry == TABLE_NUMBER_FILE:
            continue
        if os.path.isdir(path):
            scan.not_read.update(_subfolder_files(scan.path, entry))
        elif entry.startswith(APPLE_DOUBLE) and stem is not None:
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
    if is_reserved_table(table):
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
        sources = {IMAGE_TABLE: Source(entry, path, read_header(path)[0])} if table == IMAGE_TABLE else _object_sources(entry, path, table, scan)
    except ObjectFileProblem as exc:
        scan.csv_files.append((entry, path, 1))
        scan.quarantine(str(exc), path)
        return
    except (UnicodeDecodeError, OSError, EOFError, zlib.error) as exc:
        scan.csv_files.append((entry, path, 1))
        reason = "is not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else f"cannot be read ({exc})"
        name = undecodable_name(path) if isinstance(exc, UnicodeDecodeError) else None
        if name is not None:  # a column name, not a value
            reason = f"has a column name that is not UTF-8 text: {name}; rename that column (save the file as UTF-8)"
        elif isinstance(exc, UnicodeDecodeError) and is_utf16(path):
            convert = (f"zcat {entry} | iconv -f UTF-16 -t UTF-8 | gzip" if entry.lower().endswith(".gz")
                       else f"iconv -f UTF-16 -t UTF-8 {entry}")
            reason = f"is UTF-16 text (CellProfiler writes UTF-8): re-export it from CellProfiler or convert it ({convert})"
        if not entry.lower().endswith(".gz") and is_gzip_data(path):
            reason = f"is gzip-compressed but not named .gz; rename it to {entry}.gz"
        scan.quarantine(f"{entry} {reason}", path)
        return
    header_lines = 1
    scan.notes.extend(padded_names(path, entry, lines=next(iter(sources.values())).header_lines if sources else 1))
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
            blank = not read_bytes(source.path).strip()
            _set_aside(scan, table, source, "no header row (blank lines only)" if blank else "no header row (line 1 is blank)")
        return
    other = next((name for mark, name in (("\t", "tab"), (";", "semicolon")) if mark in header[0]), None)
    if len(header) == 1 and other:  # a spreadsheet's export; CellProfiler's names hold neither character
        why = (f"{other}-delimited; CellProfiler writes commas: re-export it from CellProfiler or convert the "
               f"{other}s to commas")
        if table == IMAGE_TABLE:
            scan.quarantine(f"{source.name} is {why}", source.path)
        else:
            _set_aside(scan, table, source, why)
        return
    if "" in header:
        scan.quarantine(f"{source.name}: column {header.index('') + 1} of the header has no name (a trailing comma?)", source.path)
        return
    if table != IMAGE_TABLE and not {"ImageNumber", "ObjectNumber"} <= set(header):
        _set_aside(scan, table, source, _not_a_table(table, header))
        return
    _dedupe(source, table, scan)
    reserved, clash = _header_names(tuple(source.header))
    if reserved:  # the backend adds TableNumber to every table
        scan.quarantine(f"{source.name} has a column named TableNumber, which the backend reserves for the site key", source.path)
        return
    if clash:
        scan.quarantine(f"{source.name}: columns {clash[0]!r} and {clash[1]!r} differ only in case "
                        "(SQLite cannot hold both); rename one", source.path)
        return
    if table != IMAGE_TABLE:
        _split_text_columns(source)
        if source.text_header:
            scan.text_headers[table] = source.text_header
    scan.headers[table] = source.header


@functools.lru_cache(maxsize=256)
def _header_names(header: tuple[str, ...]) -> tuple[bool, tuple[str, str] | None]:
    """Whether a column is named TableNumber (in any case), and two names equal but for case: once a header,
    as the sites of a plate share their headers."""
    return any(c.lower() == "tablenumber" for c in header), case_clash(header)


@functools.lru_cache(maxsize=256)
def _text_columns(header: tuple[str, ...]) -> tuple[int, ...]:
    """Positions of a header's text-family columns."""
    return tuple(j for j, c in enumerate(header) if is_text_column(c))


def _split_text_columns(source: Source) -> None:
    """An object CSV's text-family columns (ExportToSpreadsheet's "add image metadata / file and folder names"
    options repeat the image's ``Metadata_*``, ``FileName_*``, ``PathName_*`` in every object row) are read as
    text apart from the numeric ones: stored, never features."""
    positions = source.positions if source.positions is not None else list(range(source.width))
    text = _text_columns(tuple(source.header))
    if not text:
        return
    source.text_header = [source.header[j] for j in text]
    source.text_positions = [positions[j] for j in text]
    texts = set(text)
    numeric = [j for j in range(len(source.header)) if j not in texts]
    source.header = [source.header[j] for j in numeric]
    source.positions = [positions[j] for j in numeric]
    source.key_index = None


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


def case_clash(columns: Iterable[str]) -> tuple[str, str] | None:
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


def _image_missing(site_dir: str, entries: list[str], file_prefix: str | None) -> tuple[str, str]:
    """Why a site has no Image file, and the path expected: with a file prefix given, the prefixed name
    (and, when an Image file of another prefix or none is there, a question about the prefix)."""
    if not file_prefix:
        return "Image.csv is missing", os.path.join(site_dir, "Image.csv")
    wanted = f"{file_prefix}Image.csv"
    others = [e for e in entries if e.lower().endswith(("image.csv", "image.csv.gz"))]
    hint = f" ({others[0]} is there: is --file-prefix {file_prefix!r} right?)" if others else ""
    return f"{wanted} is missing{hint}", os.path.join(site_dir, wanted)


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
        scan.quarantine(*_image_missing(site_dir, entries, file_prefix))
        return scan
    for table, source in list(scan.sources.items()):
        try:
            _check_header(scan, table, source)
        except ObjectFileProblem as exc:
            scan.quarantine(str(exc), source.path)
        except Exception as exc:  # a header that parses but whose columns cannot be compared
            scan.quarantine(f"{source.name} cannot be parsed ({str(exc).splitlines()[0][:160]})", source.path)
    if scan.problem is not None:
        return scan
    try:  # a .gz object CSV is checked whole when it is read (one decompression); Image.csv is small
        raw = read_bytes(scan.sources[IMAGE_TABLE].path)
    except ObjectFileProblem as exc:
        scan.quarantine(str(exc), scan.sources[IMAGE_TABLE].path)
        return scan
    scan.table_number = _site_table_number(site_dir, raw)
    scan.digest = hashlib.blake2b(raw, digest_size=16).hexdigest()
    try:
        raw = line_endings(raw, scan.sources[IMAGE_TABLE].name, notes=scan.notes)
    except ObjectFileProblem as exc:
        scan.quarantine(str(exc), scan.sources[IMAGE_TABLE].path)
        return scan
    cut = unterminated_last_row(raw, scan.sources[IMAGE_TABLE].name, scan.sources[IMAGE_TABLE].header_lines)
    if cut is not None:
        scan.warnings.append(cut)
    image = parse_image(scan, raw)
    if image is None:
        return scan
    check_image(scan, image, strata, plate)
    scan.image = image
    return scan


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
    mark_duplicates(scans)
    mark_shared_files(scans)
    mark_repeated_sites(scans, plate)
    disagreeing = [s for s in scans if s.problem is None and any(w.startswith(FOLDER_WARNING) for w in s.warnings)]
    if disagreeing:
        log.warning("%s: %d site folder name(s) disagree with Image.csv (listed in the report); first: %s", plate,
                    len(disagreeing), next(w for w in disagreeing[0].warnings if w.startswith(FOLDER_WARNING)))
    return scans
