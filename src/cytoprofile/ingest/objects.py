"""Object CSVs as float64 arrays: the data lines parsed with Polars, keys checked as exact integers,
and the rows parsed matched against the lines of the file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np
import pyarrow as pa

from ..io import ragged_line
from .model import MAX_KEY, NULL_VALUES, ObjectFileProblem, Source
from .numbers import number_warnings
from .text import (
    after_lines,
    blank_whitespace_lines,
    drop_blank_lines,
    line_endings,
    line_of_row,
    read_bytes,
    record_problem,
    unterminated_last_row,
)

__all__ = [
    "read_objects",
]


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
        spaced = _spaced_numbers(data, skip, schema, columns)
        if spaced is not None:
            return spaced if spaced.columns == source.header else spaced.select(source.header)
        bad_line = ragged_line(raw, source.width)
        if bad_line is not None:
            raise ObjectFileProblem(f"{base}: a row has the wrong number of fields at line {bad_line} (cut-off or corrupt row)") from exc
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise ObjectFileProblem(f"{base} is not UTF-8 text") from exc
        problem = _first_non_number(data, start, source, keys, raw)
        if problem is None and isinstance(exc, pl.exceptions.SchemaError | pl.exceptions.ColumnNotFoundError):
            problem = (f"{base}: its rows cannot be read as the {source.width} columns of its header (a column name "
                       "holding a line break or an unclosed quote?); fix the header")
        raise ObjectFileProblem(problem or f"{base}: unparseable number ({str(exc).splitlines()[0][:160]})") from exc
    if frame.columns != source.header:
        frame = frame.select(source.header)
    return frame


def _spaced_numbers(data: bytes, skip: int, schema: dict[str, Any], columns: list[int] | None) -> Any:
    """The frame when the only fault is spaces after numbers (``5 ``: the parser takes ``' 5'`` but not
    ``'5 '``), read as text and converted; None when a value is no number even so."""
    import polars as pl

    text = {n: (pl.Utf8 if t == pl.Float64 else t) for n, t in schema.items()}
    try:
        frame = pl.read_csv(data, has_header=False, skip_lines=skip, schema=text, columns=columns,
                            null_values=NULL_VALUES, infer_schema_length=0)
        return frame.with_columns([pl.col(n).str.strip_chars().cast(pl.Float64, strict=True)
                                   for n in frame.columns if schema[n] == pl.Float64])
    except pl.exceptions.PolarsError:
        return None


def _first_non_number(data: bytes, start: int, source: Source, keys: set[int], raw: bytes) -> str | None:
    """The first cell (by line) of a measurement column that is not a number: file, line, column and value."""
    import polars as pl

    body = drop_blank_lines(data[start:])
    positions = source.positions if source.positions is not None else list(range(source.width))
    measured = [(p, c) for p, c in zip(positions, source.header) if p not in keys]
    if not measured:
        return None
    try:
        frame = pl.read_csv(body, has_header=False, schema={f"c{i}": pl.Utf8 for i in range(source.width)},
                            columns=sorted({p for p, _ in measured}), null_values=NULL_VALUES, infer_schema_length=0)
    except pl.exceptions.PolarsError:  # not even as text (a quoted name across lines in the header): no cell to name
        return None
    found: tuple[int, str, str] | None = None
    for p, column in measured:
        text = frame[f"c{p}"]
        bad = (text.is_not_null() & text.str.strip_chars().cast(pl.Float64, strict=False).is_null()).arg_true()
        if len(bad) and (found is None or bad[0] < found[0]):
            found = (int(bad[0]), column, str(text[int(bad[0])]))
    if found is None:
        return None
    line = line_of_row(raw, source.header_lines, found[0])
    return f"{source.name} line {line}, column {found[1]}: {found[2][:40]!r} is not a number"


def _check_fields(data: bytes, start: int, rows: int, source: Source, raw: bytes) -> None:
    """Every data line parsed into exactly one row of ``width`` fields, or the line that is not.

    Without quotes the parser makes one row per (non-blank) line, so the separator count
    proves the fields; with quotes the CSV module reads each record, which must be one line
    of ``width`` fields (the parser fills a short row with NULLs, and a stray quote pair
    swallows the lines between).
    """
    if data.find(b'"', start) < 0:
        if data.count(b",", start) == rows * (source.width - 1):
            return
        lines = -1
    else:
        lines, problem = record_problem(data[start:], source.width, first_line=(data.count(b"\n", 0, start) if start else source.header_lines) + 1)
        if problem is not None:
            raise ObjectFileProblem(f"{source.name}: {problem}")
        if rows == lines:
            return
    bad_line = ragged_line(raw, source.width)
    if bad_line is not None:
        nul = "; the file holds NUL bytes (left by a crash or a disk fault?): export or copy it again" if b"\x00" in raw else ""
        raise ObjectFileProblem(f"{source.name}: a row has the wrong number of fields at line {bad_line} "
                                f"(cut-off or corrupt row){nul}")
    raise ObjectFileProblem(f"{source.name}: {rows} rows parsed from {lines if lines >= 0 else 'more'} data lines; "
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
    if not bool(present.all()):  # an empty key: the object cannot be told apart, or its link is unknown (not 0)
        line = line_of_row(raw, header_lines, int(np.flatnonzero(~present.to_numpy())[0]))
        hint = " (CellProfiler writes 0 for an object without a parent)" if column.startswith("Parent_") else ""
        raise ObjectFileProblem(f"{base} line {line}: {column} is empty{hint}")
    bad = (ints.is_null() & present) | (ints < 0) | (ints > MAX_KEY)
    if bool(bad.any()):
        texts = values.to_list()
        for row in np.flatnonzero(bad.to_numpy()).tolist():
            exact = _exact_integer(texts[row])
            if exact is None or not 0 <= exact <= MAX_KEY:
                line = line_of_row(raw, header_lines, row)
                raise ObjectFileProblem(f"{base} line {line}: {column} {texts[row]!r} is not an integer key (0 to 2^53)")
        ints = pl.Series([_exact_integer(t) if t is not None else None for t in texts], dtype=pl.Int64)
    return ints.cast(pl.Float64)


def _suspect_key(values: Any, column: str) -> bool:
    """A key column the fast int64 parse could not vouch for: text, an empty key or link, or out of 0..2^53."""
    import polars as pl

    if values.dtype == pl.Utf8:
        return True
    if values.null_count():
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


def read_objects(source: Source, union: list[str], *, notes: list[str] | None = None,
                 warnings: list[str] | None = None,
                 text_union: Sequence[str] = ()) -> tuple[np.ndarray, list[str], pa.Table | None]:
    """Parse an object CSV as float64, laid out on the union columns (NaN where absent).

    Returns a column-major array (columns are what every consumer reads), the union columns
    the file lacks, and its text-family columns on ``text_union`` (None when the plate has none
    for this table). The header is ours (Polars reads only the data lines), blank lines are
    skipped, keys are checked as integers, and the rows parsed must equal the data lines of the
    file. CR line endings are read as such (a note in ``notes``); a last row without a line ending
    is a warning in ``warnings``.
    """
    raw = line_endings(read_bytes(source.path, identity=source.identity), source.name, notes=notes)
    cut = unterminated_last_row(raw, source.name, source.header_lines)
    if cut is not None and warnings is not None:
        warnings.append(cut)
    try:
        values, texts = _object_values(raw, source)
    except ObjectFileProblem:
        cleaned = blank_whitespace_lines(raw, after_lines(raw, source.header_lines))
        if cleaned is raw:
            raise
        values, texts = _object_values(cleaned, source)  # whitespace-only lines are skipped as blank lines are
    if warnings is not None:
        positions = source.positions if source.positions is not None else list(range(source.width))
        warnings.extend(number_warnings(source.name, source.header, positions, source.width, values, raw,
                                        source.header_lines))
    header = source.header
    if header == list(union):
        out = values if values.dtype == np.float64 else values.astype(np.float64, order="F")
    else:
        out = np.full((values.shape[0], len(union)), np.nan, dtype=np.float64, order="F")
        index = {c: i for i, c in enumerate(union)}
        for j, c in enumerate(header):
            out[:, index[c]] = values[:, j]
    present = set(header) | set(source.text_header)
    missing = [c for c in [*union, *text_union] if c not in present]
    return out, missing, _on_text_union(texts, text_union, len(out)) if text_union else None


def _on_text_union(texts: pa.Table | None, union: Sequence[str], rows: int) -> pa.Table:
    """Text columns on the plate's union of them (NULL where this file lacks one)."""
    have = set(texts.column_names) if texts is not None else set()
    arrays = [texts.column(c).cast(pa.string()) if texts is not None and c in have else pa.nulls(rows, pa.string())
              for c in union]
    return pa.table(arrays, names=list(union))


def _parse_text(data: bytes, start: int, source: Source, rows: int) -> pa.Table:
    """The text-family columns of the data lines, every token as written (an empty field is NULL)."""
    import polars as pl

    names = [f"\x00{i}" for i in range(source.width)]
    skip = data.count(b"\n", 0, start)
    frame = pl.read_csv(data, has_header=False, skip_lines=skip, schema=dict.fromkeys(names, pl.Utf8),
                        columns=sorted(set(source.text_positions)), infer_schema_length=0)
    if frame.height != rows:
        raise ObjectFileProblem(f"{source.name}: {frame.height} rows of text columns but {rows} rows of numbers; "
                                 "the file cannot be read faithfully")
    frame = frame.select([pl.col(names[p]).alias(c) for p, c in zip(source.text_positions, source.text_header)])
    return frame.to_arrow()


def _object_values(raw: bytes, source: Source) -> tuple[np.ndarray, pa.Table | None]:
    """The data rows of an object CSV in the file's header order, checked (see ``read_objects``), and its text
    columns (None when it has none)."""
    data, start = raw, after_lines(raw, source.header_lines)
    if raw.startswith((b"\n", b"\r\n"), start):  # a blank line under the header (later ones show as NULL rows)
        data, start = drop_blank_lines(raw[start:]), 0
    header = source.header
    if not _NON_SPACE.search(data, start):
        return np.empty((0, len(header)), dtype=np.float64, order="F"), None
    positions = source.positions if source.positions is not None else range(source.width)
    keys = source.keys()
    key_positions = {positions[j] for j in keys}
    frame = _parse_body(data, start, source, key_positions, raw)
    if "ImageNumber" in header and frame["ImageNumber"].null_count() and _has_blank_line(raw, start):
        # a blank line parses as a row of NULLs: skip blank lines as the Image.csv reader does
        data, start = drop_blank_lines(raw[start:]), 0
        frame = _parse_body(data, start, source, key_positions, raw)
    _check_fields(data, start, frame.height, source, raw)
    suspect = [header[j] for j in keys if _suspect_key(frame[header[j]], header[j])]
    if suspect:
        frame = frame.with_columns([_key_column(frame[c], c, source.name, source.header_lines, raw).alias(c)
                                    for c in suspect])
    texts = _parse_text(data, start, source, frame.height) if source.text_header else None
    return frame.to_numpy(order="fortran"), texts
