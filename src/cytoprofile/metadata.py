"""Plate maps, the barcode map and external metadata: loading and validation.

Mistakes in these hand-made files (a comma-separated plate map, a typo in a plate
map name, a duplicated well) otherwise surface late as a crash or, worse, as wells
silently dropped by the annotation join. ``validate_metadata`` reports every problem
at once, each as ``file:line: what is wrong; how to fix it``. The files must be
UTF-8 text (a byte-order mark is allowed); anything else is refused with the byte
offset of the first invalid byte rather than guessed at.
"""

from __future__ import annotations

import csv
import io as _stdio
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from . import io
from .errors import ConfigError, MetadataError, about
from .layout import Workspace
from .vocabulary import UNMATCHED_WELLS, well_name_problem

__all__ = [
    "BARCODE_COLUMNS",
    "PLATEMAP_COLUMNS",
    "load_barcode_platemap",
    "load_external_metadata",
    "load_platemap",
    "platemap_for_plate",
    "platemap_name_for_plate",
    "profiles_by_plate",
    "validate_annotation_inputs",
    "validate_metadata",
]

PathLike = str | os.PathLike[str]

BARCODE_COLUMNS: tuple[str, ...] = ("Assay_Plate_Barcode", "Plate_Map_Name")
PLATEMAP_COLUMNS: tuple[str, ...] = ("plate_map_name", "well_position")
_SHOW = 10  # how many wells to name in one message
_MAX_PER_FILE = 20  # problems listed per file; the rest are counted


@dataclass
class _Table:
    """A delimited text file parsed for checking: header, rows and their line numbers."""

    path: str
    header: list[str]
    rows: list[list[str]]
    lines: list[int]
    problems: list[str] = field(default_factory=list)

    def column(self, name: str) -> list[str]:
        i = self.header.index(name)
        return [r[i] if i < len(r) else "" for r in self.rows]


# ---------------------------------------------------------------- reading


def _read_text(path: PathLike) -> str:
    if not io.exists(path):
        raise MetadataError(f"{path}: file not found; check the workspace and batch names")
    fs, bare = io.filesystem(path)
    try:
        with fs.open(bare, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise MetadataError(f"{path}: cannot be read ({exc})") from exc
    try:
        return str(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
        offset = exc.start + bom
        line = data.count(b"\n", 0, offset) + 1
        bad = data[offset : offset + 1]
        source = "latin1"  # the usual other encoding; a UTF-16 file says so with its byte-order mark
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            source = "utf-16"
        raise MetadataError(
            f"{path}:{line}: not UTF-8 text (byte {bad!r} at byte offset {offset}"
            + ("; the file starts with a UTF-16 byte-order mark, as Excel's Unicode text" if source == "utf-16" else "")
            + f"); save the file as UTF-8 (e.g. `iconv -f {source} -t utf-8`), cytoprofile does not guess "
            "the encoding"
        ) from exc


def _parse(path: PathLike, text: str, sep: str, required: Sequence[str]) -> _Table:
    """Parse ``text`` split by ``sep``, noting separator, header and row-shape problems."""
    name = str(path)
    table = _Table(path=name, header=[], rows=[], lines=[])
    physical = text.splitlines()
    first = next((i for i, line in enumerate(physical) if line.strip()), None)
    if first is None:
        table.problems.append(
            f"{name}: the file is empty; it needs a header line with {', '.join(required)}"
        )
        return table
    head = physical[first]
    if sep not in head:
        found = next((s for s in ("\t", ",", ";") if s in head), None)
        want = "tabs" if sep == "\t" else "commas"
        if found is not None:
            label = {"\t": "tabs", ",": "commas", ";": "semicolons"}[found]
            table.problems.append(
                f"{name}:{first + 1}: columns are separated by {label}; use {want} "
                f"(the header must read {sep.join(required)}{sep}...)"
            )
            return table
        if len(required) > 1:
            table.problems.append(
                f"{name}:{first + 1}: the header has no {want}; separate the columns with {want} "
                f"(expected {sep.join(required)})"
            )
            return table
    reader = csv.reader(_stdio.StringIO(text), delimiter=sep)
    header: list[str] | None = None
    for record in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in record):
            continue
        if header is None:
            header = [cell.strip() for cell in record]
            continue
        if len(record) > len(header) and any(c.strip() for c in record[len(header) :]):
            table.problems.append(
                f"{name}:{line}: {len(record)} fields but the header has {len(header)}; "
                "remove the extra separators (or the stray value) on this line"
            )
        table.rows.append(record)
        table.lines.append(line)
    table.header = header or []
    short = [ln for r, ln in zip(table.rows, table.lines, strict=True) if len(r) < len(table.header)]
    if len(short) > len(table.rows) / 2:
        want = "tabs" if sep == "\t" else "commas"
        table.problems.append(
            f"{name}:{short[0]}: {len(short)} of {len(table.rows)} lines have fewer fields than "
            f"the header ({len(table.header)}); separate the columns of every line with {want}"
        )
        table.rows, table.lines = [], []
    missing = [c for c in required if c not in table.header]
    if missing:
        table.problems.append(
            f"{name}:{first + 1}: missing column(s) {', '.join(missing)}; the header must "
            f"include {', '.join(required)} (found: {', '.join(table.header) or 'nothing'})"
        )
    return table


def _frame(text: str, sep: str, str_columns: Sequence[str] | None) -> pd.DataFrame:
    dtype: object = str if str_columns is None else dict.fromkeys(str_columns, str)
    return pd.read_csv(_stdio.StringIO(text), sep=sep, dtype=dtype)  # type: ignore[call-overload]


def _capped(table: _Table) -> list[str]:
    """The table's problems, at most ``_MAX_PER_FILE`` of them spelled out."""
    if len(table.problems) <= _MAX_PER_FILE:
        return list(table.problems)
    rest = len(table.problems) - _MAX_PER_FILE
    return [*table.problems[:_MAX_PER_FILE], f"{table.path}: {rest} more problem(s) not shown"]


def _raise(problems: Sequence[str]) -> None:
    if problems:
        raise MetadataError("\n".join(problems))


def load_barcode_platemap(path: PathLike) -> pd.DataFrame:
    """Read ``barcode_platemap.csv`` (comma-separated; every column as text)."""
    text = _read_text(path)
    table = _parse(path, text, ",", BARCODE_COLUMNS)
    _raise(table.problems)
    return _frame(text, ",", None)


def load_platemap(path: PathLike) -> pd.DataFrame:
    """Read a plate map (tab-separated; plate_map_name and well_position as text).

    Raises ``MetadataError`` for the problems ``validate_metadata`` reports in it.
    """
    text = _read_text(path)
    table = _parse(path, text, "\t", PLATEMAP_COLUMNS)
    name = os.path.basename(str(path))
    _check_platemap(table, name[: -len(".txt")] if name.endswith(".txt") else name.rsplit(".", 1)[0])
    _raise(_capped(table))
    return _frame(text, "\t", PLATEMAP_COLUMNS)


def load_external_metadata(path: PathLike, *, merge_column: str | None = None) -> pd.DataFrame:
    """Read external metadata: tab-separated ``.tsv`` (a ``.csv`` file: comma-separated).

    Column types are inferred as for plate maps, so the merge keys compare alike.
    With ``merge_column``, a key on several rows with different values (which would
    repeat the wells that have it) is a ``MetadataError`` naming the lines.
    """
    sep = "," if str(path).lower().endswith(".csv") else "\t"
    text = _read_text(path)
    table = _parse(path, text, sep, [merge_column] if merge_column else [])
    _raise(table.problems)
    if merge_column:
        _repeated_keys(table, merge_column)
        _raise(_capped(table))
    return pd.read_csv(_stdio.StringIO(text), sep=sep)


# ---------------------------------------------------------------- checks


def _check_barcodes(table: _Table) -> dict[str, tuple[str, int]]:
    """Barcode -> (plate map name, line); records problems on ``table``."""
    out: dict[str, tuple[str, int]] = {}
    if any(c not in table.header for c in BARCODE_COLUMNS):
        return out
    barcodes = table.column("Assay_Plate_Barcode")
    names = table.column("Plate_Map_Name")
    for barcode, name, line in zip(barcodes, names, table.lines, strict=True):
        if not barcode.strip() or not name.strip():
            empty = "Assay_Plate_Barcode" if not barcode.strip() else "Plate_Map_Name"
            table.problems.append(
                f"{table.path}:{line}: {empty} is empty; fill it in or delete the row"
            )
            continue
        if barcode != barcode.strip() or name != name.strip():  # 'P1 ' would never match plate P1
            field_name = "Assay_Plate_Barcode" if barcode != barcode.strip() else "Plate_Map_Name"
            value = barcode if barcode != barcode.strip() else name
            table.problems.append(f"{table.path}:{line}: {field_name} {value!r} has spaces around it; remove them")
            continue
        if barcode in out:
            first_name, first_line = out[barcode]
            again = "again" if first_name == name else f"again with plate map {name!r}"
            table.problems.append(
                f"{table.path}:{line}: plate {barcode!r} is listed {again} (first on line "
                f"{first_line}); keep one row per plate"
            )
            continue
        out[barcode] = (name, line)
    return out


def _check_platemap(table: _Table, name: str) -> dict[str, int]:
    """Well -> line of a parsed plate map; records problems on ``table``."""
    wells: dict[str, int] = {}
    if any(c not in table.header for c in PLATEMAP_COLUMNS):
        return wells
    wrong_name: dict[str, list[int]] = {}
    for value, line in zip(table.column("plate_map_name"), table.lines, strict=True):
        if value != name:
            wrong_name.setdefault(value, []).append(line)
    for value, lines in wrong_name.items():
        more = f" (and {len(lines) - 1} more lines)" if len(lines) > 1 else ""
        table.problems.append(
            f"{table.path}:{lines[0]}: plate_map_name is {value!r}{more} but the file is "
            f"{name}.txt; they must be equal: fix the column or rename the file"
        )
    for well, line in zip(table.column("well_position"), table.lines, strict=True):
        problem = well_name_problem(well)
        if problem is not None:
            table.problems.append(f"{table.path}:{line}: {problem}")
            continue
        if well in wells:
            table.problems.append(
                f"{table.path}:{line}: well {well} appears again (first on line "
                f"{wells[well]}); each well may appear once per plate map"
            )
            continue
        wells[well] = line
    return wells


def _list(wells: Sequence[str]) -> str:
    shown = ", ".join(wells[:_SHOW])
    return shown + (f" ... ({len(wells)} in all)" if len(wells) > _SHOW else "")


def _profile_wells(df: pd.DataFrame, well_column: str) -> tuple[str, list[str]] | None:
    for col in (well_column, "Image_Metadata_Well"):
        if col in df.columns:
            return col, [str(w) for w in df[col].dropna().unique()]
    return None


def _missing_platemap_file(
    workspace: PathLike, batch: str, name: str, barcode: str, barcode_path: str, line: int
) -> str:
    path = Workspace(str(workspace)).platemap(batch, name)
    message = (
        f"{barcode_path}:{line}: plate {barcode!r} uses plate map {name!r} but {path} does "
        "not exist; add the plate map or fix Plate_Map_Name"
    )
    base = path[: -len(".txt")]
    for ext in (".tsv", ".csv", ".TXT"):
        if io.exists(base + ext):
            message += f" (found {os.path.basename(base + ext)}: plate maps must be tab-separated .txt files)"
            break
    return message


def profiles_by_plate(paths: Sequence[str]) -> dict[str, pd.DataFrame]:
    """The per-well profiles files ``paths``, split by ``Metadata_Plate`` (the plate naming their plate map);
    the rows of a plate found in several files are all kept, so each is checked."""
    parts: dict[str, list[pd.DataFrame]] = {}
    for path in paths:
        with about(path):
            table = io.read_table(path)
        if "Metadata_Plate" not in table.columns:
            raise MetadataError(f"{path}: no Metadata_Plate column; the profiles' plate names their plate map")
        for plate, part in table.groupby(table["Metadata_Plate"].astype(str), sort=False):
            parts.setdefault(str(plate), []).append(part)  # a plate in several files: every file's wells
    return {plate: pd.concat(frames, ignore_index=True) for plate, frames in parts.items()}


def validate_metadata(
    workspace: PathLike,
    batch: str,
    *,
    plates: Sequence[str] | None = None,
    profiles: Mapping[str, pd.DataFrame] | None = None,
    profile_files: Sequence[str] | None = None,
    external_metadata: PathLike | None = None,
    merge_column: str | None = None,
    well_column: str = "Metadata_Well",
    strict: bool = False,
    unmatched_wells: str = "error",
) -> list[str]:
    """Check a batch's metadata; raise ``MetadataError`` listing every error.

    Checks barcode_platemap.csv and the plate map of each plate in ``plates`` (all
    plates listed when None): mandatory columns, separators, plate_map_name equal to
    the file name, well names, duplicated wells, missing files; for plates given in
    ``profiles`` (plate -> per-well profiles), wells absent from the plate map (an
    error, or with ``unmatched_wells="drop"`` a warning, as annotation treats them);
    and the ``external_metadata`` file's ``merge_column``. ``profile_files`` are read
    into ``profiles`` first (plates from their ``Metadata_Plate``). Returns the warnings (plate
    map wells that have no profile), which count as errors when ``strict``.
    """
    if profile_files:
        profiles = {**(profiles or {}), **profiles_by_plate(profile_files)} or None
    if unmatched_wells not in UNMATCHED_WELLS:
        raise ConfigError(f"unmatched_wells must be 'error' or 'drop', got {unmatched_wells!r}")
    errors: list[str] = []
    warnings: list[str] = []
    bpath = Workspace(str(workspace)).barcode_platemap(batch)
    if not io.exists(bpath):
        raise MetadataError(
            f"{bpath}: file not found; create it with the header "
            "Assay_Plate_Barcode,Plate_Map_Name and one row per plate"
        )
    btable = _parse(bpath, _read_text(bpath), ",", BARCODE_COLUMNS)
    barcodes = _check_barcodes(btable)
    errors.extend(_capped(btable))

    wanted = list(plates) if plates is not None else list(barcodes)
    if profiles is not None:
        wanted += [p for p in profiles if p not in wanted]
    maps: dict[str, tuple[_Table, dict[str, int]] | None] = {}
    external_keys: set[str] | None = None
    if external_metadata is not None:
        external_keys = _check_external(external_metadata, merge_column, errors)

    for plate in wanted:
        if plate not in barcodes:
            if btable.header and not btable.problems:
                errors.append(
                    f"{bpath}: plate {plate!r} is not listed; add a line "
                    f"'{plate},<plate map name>'"
                )
            continue
        name, line = barcodes[plate]
        if name not in maps:
            maps[name] = _read_platemap(workspace, batch, name, plate, bpath, line, merge_column,
                                        external_keys, errors, warnings)
        parsed = maps[name]
        if parsed is None or profiles is None or plate not in profiles:
            continue
        table, wells = parsed
        if table.problems:
            continue
        _check_profile_wells(
            table, wells, plate, profiles[plate], well_column, unmatched_wells, errors, warnings
        )
    if strict:
        errors.extend(warnings)
    _raise(errors)
    return warnings


def _read_platemap(
    workspace: PathLike, batch: str, name: str, plate: str, bpath: str, line: int,
    merge_column: str | None, external_keys: set[str] | None, errors: list[str], warnings: list[str],
) -> tuple[_Table, dict[str, int]] | None:
    """A plate map checked (and its ``merge_column`` against the external keys), or None
    when it is missing or unreadable; the problems go to ``errors``/``warnings``."""
    path = Workspace(str(workspace)).platemap(batch, name)
    text = None
    if not io.exists(path):
        errors.append(_missing_platemap_file(workspace, batch, name, plate, bpath, line))
    else:
        try:
            text = _read_text(path)
        except MetadataError as exc:
            errors.append(str(exc))
    if text is None:
        return None
    table = _parse(path, text, "\t", PLATEMAP_COLUMNS)
    wells = _check_platemap(table, name)
    errors.extend(_capped(table))
    if merge_column and external_keys is not None:
        _check_merge_column(table, merge_column, external_keys, errors, warnings)
    return table, wells


def _check_profile_wells(
    table: _Table,
    wells: Mapping[str, int],
    plate: str,
    profiles: pd.DataFrame,
    well_column: str,
    unmatched_wells: str,
    errors: list[str],
    warnings: list[str],
) -> None:
    """Profile wells the plate map lacks (an error unless dropped) and unprofiled wells."""
    found = _profile_wells(profiles, well_column)
    if found is None:
        errors.append(
            f"profiles of plate {plate!r} have no {well_column} column; aggregate with "
            "the well as a stratum"
        )
        return
    col, profile_wells = found
    extra = sorted(w for w in profile_wells if w not in wells)
    if profiles[col].isna().any():
        extra.append(f"{int(profiles[col].isna().sum())} row(s) with no {col}")
    if extra and unmatched_wells == "drop":
        warnings.append(
            f"{table.path}: plate {plate!r} has profiles for {len(extra)} well(s) the "
            f"plate map lacks: {_list(extra)}; annotation drops them (unmatched_wells: drop)"
        )
    elif extra:
        errors.append(
            f"{table.path}: plate {plate!r} has profiles for {len(extra)} well(s) the plate "
            f"map lacks: {_list(extra)}; annotation would drop them: add them to the plate "
            f"map (or check that {col} uses names like A01), or drop them knowingly with "
            "unmatched_wells: drop"
        )
    present = set(profile_wells)
    absent = [w for w in wells if w not in present]
    if absent:
        warnings.append(
            f"{table.path}:{wells[absent[0]]}: plate {plate!r} has no profile for "
            f"{len(absent)} plate map well(s): {_list(absent)}; they will be missing from "
            "the annotated profiles (expected only for wells that were not imaged)"
        )


def validate_annotation_inputs(
    platemap: PathLike,
    *,
    external_metadata: PathLike | None = None,
    merge_column: str | None = None,
    profiles: pd.DataFrame | None = None,
    well_column: str = "Metadata_Well",
    unmatched_wells: str = "error",
) -> list[str]:
    """The checks ``validate_metadata`` makes, for one plate map file given by path.

    For annotating outside a workspace (the ``annotate`` command): the plate map's
    own problems, the external metadata (separator, repeated keys, its merge column
    in the plate map) and, with ``profiles``, their wells against the plate map.
    Raises ``MetadataError`` listing every error; returns the warnings.
    """
    if unmatched_wells not in UNMATCHED_WELLS:
        raise ConfigError(f"unmatched_wells must be 'error' or 'drop', got {unmatched_wells!r}")
    errors: list[str] = []
    warnings: list[str] = []
    external_keys = None
    if external_metadata is not None:
        external_keys = _check_external(external_metadata, merge_column, errors)
    table = _parse(platemap, _read_text(platemap), "\t", PLATEMAP_COLUMNS)
    base = os.path.basename(str(platemap))
    wells = _check_platemap(table, base[: -len(".txt")] if base.endswith(".txt") else base.rsplit(".", 1)[0])
    errors.extend(_capped(table))
    if merge_column and external_keys is not None:
        _check_merge_column(table, merge_column, external_keys, errors, warnings)
    if profiles is not None and not table.problems:
        plate = ", ".join(map(str, profiles["Metadata_Plate"].unique())) if "Metadata_Plate" in profiles else "?"
        _check_profile_wells(table, wells, plate, profiles, well_column, unmatched_wells, errors, warnings)
    _raise(errors)
    return warnings


def _check_external(path: PathLike, merge_column: str | None, errors: list[str]) -> set[str] | None:
    """Keys of the external metadata file; records problems in ``errors``."""
    if merge_column is None:
        errors.append(
            f"{path}: external metadata needs merge_column, the column it shares with the "
            "plate maps (e.g. broad_sample)"
        )
        return None
    try:
        text = _read_text(path)
    except MetadataError as exc:
        errors.append(str(exc))
        return None
    sep = "," if str(path).lower().endswith(".csv") else "\t"
    table = _parse(path, text, sep, [merge_column])
    if merge_column not in table.header:
        errors.extend(_capped(table))
        return None
    keys = _repeated_keys(table, merge_column)
    errors.extend(_capped(table))
    return keys


def _repeated_keys(table: _Table, merge_column: str) -> set[str]:
    """Keys of an external metadata table; a key repeated with other values is a problem."""
    keys: dict[str, tuple[int, list[str]]] = {}
    idx = table.header.index(merge_column)
    for row, line in zip(table.rows, table.lines, strict=True):
        key = row[idx] if idx < len(row) else ""
        if key in keys and keys[key][1] != row:
            table.problems.append(
                f"{table.path}:{line}: {merge_column} {key!r} appears again with other values "
                f"(first on line {keys[key][0]}); annotation would repeat the wells with this "
                "key: keep one row per key"
            )
        keys.setdefault(key, (line, row))
    return set(keys)


def _check_merge_column(
    table: _Table, merge_column: str, keys: set[str], errors: list[str], warnings: list[str]
) -> None:
    """The plate map must have the merge column; its values should have metadata."""
    if merge_column not in table.header:
        errors.append(
            f"{table.path}:1: the external metadata's merge column {merge_column!r} is not a "
            "column of this plate map; both files must name it the same"
        )
        return
    unknown: dict[str, int] = {}
    spaced = {k.strip(): k for k in keys if k != k.strip()}
    for value, line in zip(table.column(merge_column), table.lines, strict=True):
        if value.strip() and value not in keys:
            other = spaced.get(value.strip(), value.strip() if value.strip() in keys else None)
            if other is not None and value not in unknown:  # equal but for spaces: the wells would lose it
                unknown[value] = -1
                errors.append(f"{table.path}:{line}: {merge_column} {value!r} matches the external "
                              f"metadata's {other!r} only when spaces are ignored; remove the spaces")
                continue
            unknown.setdefault(value, line)
    unknown = {k: v for k, v in unknown.items() if v > 0}
    if unknown:
        first = next(iter(unknown.values()))
        warnings.append(
            f"{table.path}:{first}: {len(unknown)} {merge_column} value(s) have no row in the "
            f"external metadata: {_list(list(unknown))}; their external columns will be empty"
        )


# ---------------------------------------------------------------- lookup


def platemap_name_for_plate(workspace: PathLike, batch: str, plate: str) -> str:
    """The plate map name of ``plate`` according to barcode_platemap.csv."""
    path = Workspace(str(workspace)).barcode_platemap(batch)
    table = load_barcode_platemap(path)
    match = table.loc[table["Assay_Plate_Barcode"] == str(plate), "Plate_Map_Name"]
    if match.empty:
        raise MetadataError(
            f"{path}: plate {plate!r} is not listed; add a line '{plate},<plate map name>'"
        )
    names = match.unique()
    if len(names) > 1:
        raise MetadataError(
            f"{path}: plate {plate!r} is listed with several plate maps "
            f"({', '.join(map(str, names))}); keep one row per plate"
        )
    return str(names[0])


def platemap_for_plate(workspace: PathLike, batch: str, plate: str) -> pd.DataFrame:
    """The plate map of ``plate`` (barcode), read from the batch's metadata."""
    name = platemap_name_for_plate(workspace, batch, plate)
    path = Workspace(str(workspace)).platemap(batch, name)
    if not io.exists(path):
        raise MetadataError(
            f"{path}: plate map {name!r} of plate {plate!r} not found; add the tab-separated "
            "file or fix Plate_Map_Name in barcode_platemap.csv"
        )
    return load_platemap(path)
