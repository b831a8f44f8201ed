"""A CSV as bytes and lines: gzip decompressed once, line endings, the header row(s), blank and
whitespace-only lines, records and the file's own line numbers for reasons.
"""

from __future__ import annotations

import csv
import gzip
import io as _io
import os
import re
import time
import zlib
from typing import Any

from ..digest import note_read
from ..errors import InputError
from ..io import ragged_line
from .model import ObjectFileProblem

__all__ = [
    "utf16_kind",
    "file_identity",
    "is_utf16",
    "unterminated_last_row",
    "after_lines",
    "blank_whitespace_lines",
    "count_records",
    "record_problem",
    "drop_blank_lines",
    "is_gzip_data",
    "line_endings",
    "line_of_row",
    "parse_problem",
    "read_bytes",
    "padded_names",
    "read_header",
    "undecodable_name",
]


def file_identity(path: str) -> tuple[int, int, int]:
    """What tells a file from its replacement or a rewrite: inode, size, modification time."""
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def read_bytes(path: str, *, identity: tuple[int, int, int] | None = None) -> bytes:
    """A CSV's bytes, decompressed in one pass when gzip: a cut-off or corrupt ``.gz`` is a named problem.

    With ``identity`` (:func:`file_identity` when the scan read the header), a file changed since is an
    ``InputError`` failing the plate: its header and its rows would come from two versions of it."""
    with open(path, "rb") as fh:
        read_ns, st = time.time_ns(), os.fstat(fh.fileno())
        if identity is not None and (st.st_ino, st.st_size, st.st_mtime_ns) != identity:
            raise InputError(f"{path} changed while collate read the plate (is CellProfiler still writing it?); "
                             "run collate again when the export has finished")
        raw = fh.read()
    note_read(path, st, raw, read_ns)  # a first build's input record takes this digest (the bytes are read once)
    if path.lower().endswith(".gz"):
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise ObjectFileProblem(f"{os.path.basename(path)}: {_gzip_problem(exc)}; copy the file again") from exc
    return raw


def is_gzip_data(path: str) -> bool:
    """Whether a file holds gzip data (its magic bytes) whatever its name says."""
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _gzip_problem(exc: BaseException) -> str:
    return "truncated gzip (the file ends early)" if isinstance(exc, EOFError) else f"not a valid gzip file ({exc})"


_LONE_CR = re.compile(rb"\r(?!\n)")
#: a quoted field (opened at a field's start, ``""`` inside it a quote): a CR in it is a byte of the value
_QUOTED_FIELD = re.compile(rb'(?:^|(?<=[,\r\n]))"[^"]*(?:""[^"]*)*"')


def _quoted_spans(raw: bytes) -> list[tuple[int, int]]:
    """Byte ranges of the quoted fields of ``raw`` (none when it holds no quote)."""
    return [m.span() for m in _QUOTED_FIELD.finditer(raw)] if b'"' in raw else []


def _lone_crs(raw: bytes) -> list[int]:
    """Offsets of the CRs ending a line on their own (not before an LF, not inside a quoted value)."""
    lone = [m.start() for m in _LONE_CR.finditer(raw)]
    if not lone:  # CRLF files: no quoted field to look for
        return []
    spans, out, at = _quoted_spans(raw), [], 0
    for cr in lone:
        while at < len(spans) and spans[at][1] <= cr:
            at += 1
        if not (at < len(spans) and spans[at][0] <= cr):
            out.append(cr)
    return out


def line_endings(raw: bytes, name: str, *, notes: list[str] | None = None) -> bytes:
    """``raw`` with LF line endings: a file with no LF at all ends its lines with CR (classic Mac, some
    spreadsheet saves), unambiguously, and is read so (noted); a CR ending a line among LF ones is
    ambiguous (a row's end or a byte of a value) and the file is refused, naming the line and the fix.
    A CR inside a quoted value (CSV writers quote a value holding one) is a byte of that value, kept."""
    if b"\r" not in raw:
        return raw
    lone = _lone_crs(raw)
    if not lone:
        return raw
    if b"\n" not in raw:
        if notes is not None:
            notes.append(f"{name} read with CR line endings")
        out = bytearray(raw)
        for at in lone:
            out[at] = 0x0A
        return bytes(out)
    for at in lone:
        start = raw.rfind(b"\n", 0, at) + 1
        end = raw.find(b"\n", at + 1)
        if raw[start : len(raw) if end < 0 else end].strip():  # not a whitespace-only line (skipped as blank)
            line = raw.count(b"\n", 0, at) + 1
            raise ObjectFileProblem(f"{name} mixes CR line endings with LF ones (a CR alone ends line {line}); "
                                     "convert the CRs to LF (e.g. with mac2unix) or save the file again with one kind of line ending")
    return raw


def unterminated_last_row(raw: bytes, name: str, header_lines: int) -> str | None:
    """A warning when the last data row has no line ending: CellProfiler ends every row with one, so the
    file may have been cut while copied, and that row's last value may be short (``1`` for ``10``)."""
    if not raw or raw.endswith((b"\n", b"\r")) or not raw[after_lines(raw, header_lines):].strip():
        return None
    return (f"{name} ends without a line ending after its last row: if the file was cut while copied, the last "
            "value of that row may be short; copy the file again (CellProfiler ends every row with one)")


#: characters that show as nothing (zero-width space and joiners, word joiner, a byte-order mark inside a line)
_INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff"


def clean_names(names: list[str]) -> list[str]:
    """:func:`clean_name` of each name; the usual row of plain names (no first or last character a space or
    an invisible one) is found from the sets of first and last characters, without a call per name."""
    edges = {c[:1] for c in names} | {c[-1:] for c in names}
    if not any(e.isspace() or (e and e in _INVISIBLE) for e in edges):
        return names
    return [clean_name(c) for c in names]


def clean_name(name: str) -> str:
    """A header name without the spaces and invisible characters around it (as it shows in a spreadsheet)."""
    out = name
    while (cleaned := out.strip().strip(_INVISIBLE)) != out:  # " \u200bX " needs both, in turns
        out = cleaned
    return out


#: Characters some editors and text tools take for a line break but a CSV reader does not.
_ODD_BREAKS = {"\u2028": "U+2028 LINE SEPARATOR", "\u2029": "U+2029 PARAGRAPH SEPARATOR", "\x85": "U+0085 NEXT LINE",
               "\x0b": "a vertical tab", "\x0c": "a form feed"}


def _refuse_odd_line_breaks(line: str, name: str) -> None:
    """A header line holding a character that looks like a line break (the header would swallow the first
    row), or NUL bytes (UTF-16 text without a byte-order mark reads as valid UTF-8 with a NUL after every
    letter): the file is refused, naming the character and the fix, never read as a header of odd names."""
    if "\x00" in line:
        kind = utf16_kind(line.encode("utf-8"))
        if kind:
            raise ObjectFileProblem(f"{name} is UTF-16 text without a byte-order mark (CellProfiler writes UTF-8): "
                                    f"re-export it from CellProfiler or convert it (iconv -f {kind} -t UTF-8 {name})")
        raise ObjectFileProblem(f"{name}: its header holds a NUL byte at character {line.index(chr(0)) + 1} (a damaged "
                                "file?): export or copy it again")
    for char, said in _ODD_BREAKS.items():
        if char in line:
            raise ObjectFileProblem(f"{name}: its header holds {said} at character {line.index(char) + 1} (a line "
                                    "break to some tools, not to a CSV reader); replace it with a newline")


def read_header(path: str, lines: int = 1) -> list[list[str]]:
    """The header row(s). CellProfiler writes names bare: a quote that CSV rules would read as
    opening a field is taken literally when that is what makes the header as wide as the rows."""
    opener: Any = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:
        text = [fh.readline() for _ in range(lines + 1)]
    for line in text[:lines]:
        _refuse_odd_line_breaks(line, os.path.basename(path))
    rows = [clean_names(next(csv.reader([line]), [])) for line in text[:lines]]
    first_data = text[lines].rstrip("\r\n")
    if first_data and '"' not in first_data:
        width = first_data.count(",") + 1
        for i, line in enumerate(text[:lines]):
            if '"' not in line or (len(rows[i]) == width and "" not in rows[i]):
                continue
            bare = clean_names(line.rstrip("\r\n").split(","))
            if len(bare) == width:
                rows[i] = bare
    return rows


def padded_names(path: str, name: str, *, lines: int = 1) -> list[str]:
    """Notes for header names with spaces around them, which are read without (``' Cells_Foo '`` as ``Cells_Foo``):
    said, never a silent rename."""
    opener: Any = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:
        rows = [next(csv.reader([fh.readline()]), []) for _ in range(lines)]
    cleaned = [(row, clean_names(row)) for row in rows]  # the same list back when no name needs cleaning
    named = [(position, c, clean) for row, clean_row in cleaned if clean_row is not row
             for position, (c, clean) in enumerate(zip(row, clean_row), start=1)]
    return [f"{name}: column {position} of the header, {c!r}, read as {clean!r} (spaces or invisible "
            "characters around the name removed)" for position, c, clean in named if c != clean and clean]


#: UTF-16's byte-order marks (little- and big-endian)
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def is_utf16(path: str) -> bool:
    """Whether a file is UTF-16 text (a spreadsheet's "Unicode text" save): its byte-order mark, or else NUL
    bytes between the letters of its start."""
    opener: Any = gzip.open if path.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(64)
    except (OSError, EOFError):
        return False
    return head[:2] in _UTF16_BOMS or utf16_kind(head) is not None


def utf16_kind(head: bytes) -> str | None:
    """``UTF-16LE`` or ``UTF-16BE`` when text without a byte-order mark has a NUL byte beside every byte of
    its start (ASCII names as UTF-16), else None."""
    head = head[: len(head) // 2 * 2]
    if len(head) < 4:
        return None
    if not head[1::2].strip(b"\x00") and head[0::2].strip(b"\x00"):
        return "UTF-16LE"
    if not head[0::2].strip(b"\x00") and head[1::2].strip(b"\x00"):
        return "UTF-16BE"
    return None


def undecodable_name(path: str) -> str | None:
    """Where the header row holds a column name that is not UTF-8 while the rest of the file is UTF-8 text:
    ``column 4 of the header ('AreaShape_\\xffX')`` (None: the file as a whole is not UTF-8 text, or the
    header decodes)."""
    opener: Any = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if raw.startswith(_UTF16_BOMS):  # UTF-16's byte-order mark: the whole file, not a name
        return None
    line, _, rest = raw.partition(b"\n")
    fields = line.rstrip(b"\r").split(b",")
    try:
        rest.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if len(fields) < 2:
        return None
    for position, name in enumerate(fields, start=1):
        try:
            name.decode("utf-8-sig" if position == 1 else "utf-8")
        except UnicodeDecodeError:
            shown = name.decode("utf-8", errors="backslashreplace")
            return f"column {position} of the header ({shown!r})"
    return None


def after_lines(raw: bytes, lines: int) -> int:
    """Offset just past the first ``lines`` lines."""
    position = 0
    for _ in range(lines):
        newline = raw.find(b"\n", position)
        if newline < 0:
            return len(raw)
        position = newline + 1
    return position


def drop_blank_lines(body: bytes) -> bytes:
    """The lines holding something: empty and whitespace-only lines (spaces, tabs, a lone ``\\r``) go."""
    return b"".join(line for line in body.splitlines(keepends=True) if line.strip())


_WHITESPACE_LINE = re.compile(rb"(?m)^[ \t\r\f\v]+$")


def blank_whitespace_lines(raw: bytes, start: int) -> bytes:
    """``raw`` with every whitespace-only line after byte ``start`` made empty, so it is skipped as a blank line
    is; line numbers stay those of the file."""
    body = raw[start:]
    cleaned = _WHITESPACE_LINE.sub(b"", body)
    return raw if cleaned == body else raw[:start] + cleaned


def count_records(raw: bytes, header_lines: int) -> int:
    """Data rows of a CSV: records after the header that hold something (quoted newlines kept in their record)."""
    text = _io.StringIO(raw.decode("utf-8", errors="replace"), newline="")
    n = sum(1 for row in csv.reader(text) if row and (len(row) > 1 or row[0].strip()))
    return max(0, n - header_lines)


def record_problem(data: bytes, width: int, *, first_line: int) -> tuple[int, str | None]:
    """The data records of CSV text with quotes (quotes honoured) and what is wrong with the first bad one:
    a record of another width than ``width`` (a cut-off row the parser would fill with NULLs), or a value
    spanning lines that holds a row's worth of separators (a stray quote pair swallowing the rows
    between; a text value with a line break, as a database export may hold, is kept). ``first_line``
    numbers ``data``'s first line in the file."""
    reader = csv.reader(_io.StringIO(data.decode("utf-8", errors="replace"), newline=""))
    records, before = 0, 0
    for row in reader:
        start, end, before = first_line + before, first_line + reader.line_num - 1, reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        records += 1
        if end > start and any(f.count(",") >= width - 1 for f in row if "\n" in f or "\r" in f):
            return records, (f"a quoted value spans lines {start}-{end} and holds whole rows (a stray quote "
                             "pair swallowing them); remove the stray quotes")
        if len(row) != width:
            return records, f"a row has the wrong number of fields at line {start} (cut-off or corrupt row)"
    return records, None


def line_of_row(raw: bytes, header_lines: int, row: int) -> int:
    """1-based line number in the file of data row ``row`` (0-based), blank lines skipped.

    A quoted value may span lines: then the records are walked, and a row's line is where its record starts.
    """
    if b'"' in raw:
        return _line_of_record(raw, header_lines, row)
    seen = -1
    for number, line in enumerate(raw.splitlines(), start=1):
        if number <= header_lines or not line.strip():
            continue
        seen += 1
        if seen == row:
            return number
    return header_lines + row + 1


def _line_of_record(raw: bytes, header_lines: int, row: int) -> int:
    reader = csv.reader(_io.StringIO(raw.decode("utf-8", "replace"), newline=""))
    seen, start = -1, 1
    try:
        for number, record in enumerate(reader, start=1):
            first, start = start, reader.line_num + 1
            if number <= header_lines or (len(record) <= 1 and not "".join(record).strip()):  # a blank line
                continue
            seen += 1
            if seen == row:
                return first
    except csv.Error:  # a file the reader cannot walk (a NUL byte): count lines
        pass
    return header_lines + row + 1


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]+")


def _printable(text: str) -> str:
    """A parser's message with runs of control bytes (NULs a crash left) named, not printed."""
    return _CONTROL.sub(lambda m: f"<{len(m.group())} {'NUL' if set(m.group()) == {chr(0)} else 'control'} "
                                  f"byte{'s' if len(m.group()) > 1 else ''}>", text)


def parse_problem(base: str, raw: bytes, n_fields: int, exc: Exception) -> str:
    """Turn a parser error into a reason with the line number where one can be found."""
    text = _printable(str(exc))
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
