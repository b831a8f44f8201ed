"""Numbers float64 cannot hold as written: a value beyond its range (``1e400`` becomes inf), one too small for it
(``1e-400`` becomes 0) and an integer above 2^53 (rounded to the nearest float64). Both are kept as float64 gives them and named: file, column, count, first
value and line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from .model import MAX_KEY
from .text import after_lines, drop_blank_lines, line_of_row

__all__ = [
    "number_warnings",
    "suspect_columns",
]

_INTEGER = re.compile(r"^\s*[+-]?\d+\s*$")
_INF_WORDS = ("inf", "infinity")
#: an exponent of -300 or below somewhere in a file: only then are its zeros checked for underflow. One
#: pattern per case, each with a literal prefix the regex engine finds fast (a class first scans every byte,
#: ten times slower, holding the GIL that the backend writer needs)
_TINY = tuple(re.compile(e + rb"-0*(?:[3-9]\d\d|\d{4,})") for e in (b"e", b"E"))
_NONZERO_MANTISSA = re.compile(r"^[^eE]*[1-9]")


def suspect_columns(values: np.ndarray) -> list[int]:
    """Columns (of a rows × columns float64 array) holding an infinity or a magnitude of 2^53 or more (NaN ignored)."""
    if not values.size:
        return []
    with np.errstate(invalid="ignore"):
        high = np.fmax.reduce(values, axis=0)
        low = np.fmin.reduce(values, axis=0)
    return np.flatnonzero((high >= MAX_KEY) | (low <= -MAX_KEY)).tolist()


def _is_inf_word(text: str) -> bool:
    return text.strip().lstrip("+-").lower() in _INF_WORDS


def _column_warnings(file: str, column: str, texts: Sequence[str | None], values: np.ndarray,
                    raw: bytes, header_lines: int) -> list[str]:
    """The warnings of one column: values that overflowed to inf, integers rounded."""
    overflow: list[int] = []
    rounded: list[int] = []
    underflow: list[int] = []
    for row, (text, value) in enumerate(zip(texts, values.tolist())):
        if text is None or value != value:
            continue
        if value == 0:
            if _NONZERO_MANTISSA.match(text.strip()):
                underflow.append(row)
        elif np.isinf(value):
            if not _is_inf_word(text):
                overflow.append(row)
        elif abs(value) >= MAX_KEY and _INTEGER.match(text) and int(text) != int(value):
            rounded.append(row)
    out = []
    if overflow:
        row = overflow[0]
        out.append(f"{file}: column {column}: {len(overflow)} value(s) beyond float64's range (first {texts[row]!r}, "
                   f"line {line_of_row(raw, header_lines, row)}) stored as {values[row]}; CellProfiler writes no such "
                   "number: check the file")
    if underflow:
        row = underflow[0]
        out.append(f"{file}: column {column}: {len(underflow)} value(s) too small for float64 (first {texts[row]!r}, "
                   f"line {line_of_row(raw, header_lines, row)}) stored as 0; CellProfiler writes no such number: "
                   "check the file")
    if rounded:
        row = rounded[0]
        out.append(f"{file}: column {column}: {len(rounded)} integer(s) above 2^53 (first {texts[row]!r}, line "
                   f"{line_of_row(raw, header_lines, row)}) stored rounded to the nearest float64 ({int(values[row])}); "
                   "measurements are float64")
    return out


def number_warnings(file: str, header: Sequence[str], positions: Sequence[int], width: int, values: np.ndarray,
                    raw: bytes, header_lines: int) -> list[str]:
    """Warnings for the columns of a parsed CSV (``values`` in ``header`` order, fields at ``positions``) whose
    numbers float64 cannot hold as written; the text is read again only for such columns."""
    suspect = suspect_columns(values)
    if values.size and any(p.search(raw) for p in _TINY):  # a zero may be an underflow: columns holding one are checked too
        suspect = sorted(set(suspect) | set(np.flatnonzero((values == 0).any(axis=0)).tolist()))
    if not suspect:
        return []
    import polars as pl

    body = drop_blank_lines(raw[after_lines(raw, header_lines):])
    names = [f"c{i}" for i in range(width)]
    frame = pl.read_csv(body, has_header=False, schema=dict.fromkeys(names, pl.Utf8),
                        columns=sorted({positions[j] for j in suspect}), infer_schema_length=0)
    out: list[str] = []
    for j in suspect:
        texts = frame[names[positions[j]]].to_list()
        if len(texts) == len(values):
            out.extend(_column_warnings(file, header[j], texts, values[:, j], raw, header_lines))
    return out
