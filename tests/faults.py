"""Fault fixtures: a small synthetic plate, mutated into each shape real CellProfiler exports take.

Every mutation takes a site folder (or the plate's analysis folder) of a plate made by
``small_plate`` and rewrites files in place, the way a pipeline, a copy or a user would.
``assert_rows_accounted`` is the invariant every fault test checks: the rows of every
input file are in the backend or named in the report.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
import shutil
import sqlite3
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from cytoprofile.ingest import TABLE_NUMBER_FILE
from cytoprofile.synth import synth

__all__ = [
    "BATCH",
    "PLATE",
    "assert_rows_accounted",
    "count_data_rows",
    "crc32_twin",
    "cr_line_endings",
    "read_rows",
    "site_files",
    "small_plate",
    "write_rows",
]

BATCH = "BATCH1"
PLATE = "P1"
Mutation = Callable[[Path], Any]


def small_plate(ws: Path, *, wells: int = 2, sites: int = 2, cells: int = 5, features: int = 4, seed: int = 0) -> Path:
    """A synthetic plate (wells × sites, about ``cells`` cells a site); returns its analysis folder."""
    synth(ws, plates=[PLATE], wells=96, well_subset=wells, sites=sites, cells=cells, features=features, seed=seed)
    return ws / "analysis" / BATCH / PLATE / "analysis"


def read_rows(path: Path) -> list[list[str]]:
    """A CSV (plain or gzip) as rows of text, header included, blank lines kept as []."""
    raw = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        raw = gzip.decompress(raw)
    return list(csv.reader(io.StringIO(raw.decode("utf-8"), newline="")))


def write_rows(path: Path, rows: list[list[str]], *, raw: bool = True) -> None:
    """Write rows as CellProfiler does (bare fields, ``\\n``); ``raw=False`` quotes like the csv module."""
    if raw:
        text = "".join(",".join(r) + "\n" for r in rows)
    else:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        text = buf.getvalue()
    data = text.encode()
    path.write_bytes(gzip.compress(data) if path.name.lower().endswith(".gz") else data)


def count_data_rows(path: Path) -> int | None:
    """Data rows of an input CSV, counted independently of cytoprofile (two-row headers recognised);
    None for a file that is not UTF-8 text (it has no rows to count)."""
    if path.stat().st_size == 0:
        return 0
    raw = path.read_bytes()
    try:
        text = (gzip.decompress(raw) if path.name.lower().endswith(".gz") else raw).decode("utf-8")
    except UnicodeDecodeError:
        return None
    # rows end at LF, CRLF or CR (not at the other breaks str.splitlines knows); blank lines hold no row
    lines = [line for line in re.split(r"\r\n|\r|\n", text) if line.strip()]
    header = 2 if len(lines) > 1 and "ImageNumber" not in lines[0] and "ImageNumber" in lines[1] else 1
    body = "\n".join(lines[header:])
    if '"' not in body:  # bare CellProfiler rows: one a line, whatever the header holds
        return len(lines) - header if lines else 0
    return sum(1 for r in csv.reader(io.StringIO(body, newline="")) if r)


def _is_csv(path: Path) -> bool:
    return path.name.lower().endswith((".csv", ".csv.gz"))


def _backend_counts(outputs: dict[str, str]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    if "sqlite" in outputs:
        conn = sqlite3.connect(outputs["sqlite"])
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                 if r[0] != "cytoprofile_run"]  # the build's generation id, not data
        counts["sqlite"] = {n: conn.execute(f'SELECT COUNT(*) FROM "{n}"').fetchone()[0] for n in names}
        for n in names:
            if n == "Image":
                keys = "TableNumber, ImageNumber"
            else:
                keys = "TableNumber, ImageNumber, ObjectNumber"
            distinct = conn.execute(f'SELECT COUNT(*) FROM (SELECT DISTINCT {keys} FROM "{n}")').fetchone()[0]
            assert distinct == counts["sqlite"][n], f"{n}: ({keys}) is not unique"
        conn.close()
    if "parquet" in outputs:
        image = Path(outputs["parquet"])
        plate = image.name[: -len("_Image.parquet")]
        counts["parquet"] = {p.name[len(plate) + 1 : -len(".parquet")]: pq.ParquetFile(p).metadata.num_rows
                             for p in image.parent.glob(f"{plate}_*.parquet")}
    return counts


def site_files(folder: Path) -> dict[str, Path]:
    """Every file of a site folder, subfolders included (links to folders inside them not followed), by relative path."""
    out: dict[str, Path] = {}
    if not folder.exists():
        return out
    for here, dirs, names in os.walk(folder):
        rel = Path(here).relative_to(folder)
        for d in dirs:
            if (Path(here) / d).is_symlink():
                out[f"{rel / d}/"] = Path(here) / d
        for name in names:
            if name != TABLE_NUMBER_FILE:
                out[str(rel / name) if str(rel) != "." else name] = Path(here) / name
    return out


def assert_rows_accounted(result: Any, plate_dir: Path) -> None:
    """Rows in every input file = rows in the backend + rows named in the report (quarantined, not stored),
    and every file of a site folder is named: read, or not read with the reason."""
    report = result.report
    assert report is not None, result.message
    sites = {s["site"]: s for s in report["sites"]}
    folders = sorted(p for p in plate_dir.iterdir() if p.is_dir() or p.is_symlink())
    assert sorted(sites) == [p.name for p in folders], "every site folder is in the report"
    expected: Counter[str] = Counter()
    for folder in folders:
        entry = sites[folder.name]
        files = site_files(folder)
        assert sorted(entry["files"]) == sorted(files), f"{folder.name}: files in the report != in the folder"
        for name, f in entry["files"].items():
            if f.get("not_read"):
                readable = "/" not in name and _is_csv(files[name]) and not name.startswith("._")
                assert f["rows"] is None and not f["tables"] and not readable, f"{folder.name}/{name}: a CSV left unread"
                continue
            assert f["rows"] == count_data_rows(files[name]), f"{folder.name}/{name}: rows in the report != in the file"
            if entry["status"] == "ok":
                assert f["tables"] or f.get("not_stored"), f"{folder.name}/{name}: rows neither stored nor named"
                for table in f["tables"]:
                    expected[table] += f["rows"]
            else:
                assert entry["reason"], f"{folder.name}: quarantined without a reason"
                assert not f["tables"]
    for kind, counts in _backend_counts(result.outputs).items():
        stored = {t: n for t, n in counts.items() if n or t in expected}
        assert stored == {t: n for t, n in expected.items() if n or t in counts}, f"{kind}: backend rows {counts} != report {dict(expected)}"


# --- mutations -------------------------------------------------------------------------


def site(plate_dir: Path, well: str = "A01", number: int = 1) -> Path:
    """A site folder of ``small_plate``."""
    return plate_dir / f"{PLATE}-{well}-{number}"


def set_image_value(folder: Path, column: str, value: str, *, name: str = "Image.csv") -> None:
    rows = read_rows(folder / name)
    rows[1][rows[0].index(column)] = value
    write_rows(folder / name, rows)


def duplicate_columns(folder: Path, table: str, columns: list[str], *, identical: bool) -> None:
    """Append copies of ``columns`` under the same names (identical values or shifted ones)."""
    rows = read_rows(folder / f"{table}.csv")
    where = [rows[0].index(c) for c in columns]
    rows[0] += columns
    for i, row in enumerate(rows[1:], start=1):
        row += [r if identical else str(float(row[w]) + i) for r, w in zip([row[w] for w in where], where)]
    write_rows(folder / f"{table}.csv", rows)


def add_object_table(folder: Path, name: str, *, rows: int | None = None, count: bool = True, like: str = "Nuclei") -> None:
    """A further object table (``rows`` of them, default as many as ``like``) with its Count_ in Image.csv."""
    source = read_rows(folder / f"{like}.csv")
    body = source[1:] if rows is None else source[1 : 1 + rows]
    write_rows(folder / f"{name}.csv", [source[0], *body])
    if count:
        image = read_rows(folder / "Image.csv")
        image[0].append(f"Count_{name}")
        image[1].append(str(len(body)))
        write_rows(folder / "Image.csv", image)


def drop_rows(folder: Path, table: str, n: int) -> None:
    """Cut the last ``n`` rows at a line boundary (an interrupted copy)."""
    rows = read_rows(folder / f"{table}.csv")
    write_rows(folder / f"{table}.csv", rows[: len(rows) - n])


def set_object_value(folder: Path, table: str, column: str, value: str, *, row: int = 1) -> None:
    rows = read_rows(folder / f"{table}.csv")
    rows[row][rows[0].index(column)] = value
    write_rows(folder / f"{table}.csv", rows)


def rename_column(folder: Path, table: str, old: str, new: str) -> None:
    rows = read_rows(folder / f"{table}.csv")
    rows[0][rows[0].index(old)] = new
    write_rows(folder / f"{table}.csv", rows)


def keep_columns(folder: Path, table: str, keep: Callable[[str], bool]) -> None:
    """Drop the columns of an object CSV whose header ``keep`` refuses (e.g. every feature)."""
    rows = read_rows(folder / f"{table}.csv")
    kept = [k for k, name in enumerate(rows[0]) if keep(name)]
    write_rows(folder / f"{table}.csv", [[r[k] for k in kept] for r in rows])


def insert_blank_line(folder: Path, table: str, *, at: int = 2) -> None:
    rows = read_rows(folder / f"{table}.csv")
    write_rows(folder / f"{table}.csv", rows[:at] + [[]] + rows[at:])


def repeat_row(folder: Path, name: str, *, row: int = 1) -> None:
    rows = read_rows(folder / name)
    write_rows(folder / name, [*rows, rows[row]])


def trailing_comma(folder: Path, name: str) -> None:
    rows = read_rows(folder / name)
    write_rows(folder / name, [[*r, ""] for r in rows])


def rename_files(folder: Path, rename: Callable[[str], str], *, compress: bool = False) -> None:
    """Rename every CSV of a site (e.g. upper case, a prefix), gzip-compressing it when asked."""
    for path in sorted(folder.iterdir()):
        if not _is_csv(path):
            continue
        target = folder / rename(path.name)
        data = path.read_bytes()
        path.unlink()
        target.write_bytes(gzip.compress(data) if compress else data)


def to_object_csv(folder: Path, tables: tuple[str, ...] = ("Cells", "Cytoplasm", "Nuclei")) -> None:
    """The old export: one ``object.csv`` with a compartment row above the feature row."""
    parts = {t: read_rows(folder / f"{t}.csv") for t in tables}
    labels, names = ["Image", tables[0]], ["ImageNumber", "ObjectNumber"]
    columns: list[tuple[str, int]] = []
    for t, rows in parts.items():
        for j, c in enumerate(rows[0]):
            if c not in ("ImageNumber", "ObjectNumber"):
                labels.append(t)
                names.append(c)
                columns.append((t, j))
    n = len(parts[tables[0]]) - 1
    body = []
    for i in range(1, n + 1):
        first = parts[tables[0]][i]
        body.append([first[0], first[1], *[parts[t][i][j] for t, j in columns]])
    for t in tables:
        (folder / f"{t}.csv").unlink()
    write_rows(folder / "object.csv", [labels, names, *body])


def link_twice(plate_dir: Path, folder: Path, name: str) -> Path:
    """The same site folder reached a second time through a symbolic link."""
    link = plate_dir / name
    link.symlink_to(folder.resolve(), target_is_directory=True)
    return link


def copy_site(plate_dir: Path, folder: Path, name: str) -> Path:
    return Path(shutil.copytree(folder, plate_dir / name))


def broken_link(plate_dir: Path, name: str) -> Path:
    link = plate_dir / name
    link.symlink_to(plate_dir / "does-not-exist", target_is_directory=True)
    return link


def add_image_column(folder: Path, column: str, value: str, *, name: str = "Image.csv") -> None:
    """A further Image.csv column (e.g. ``Metadata_Gene``, ``URL_OrigDNA``) holding ``value``."""
    rows = read_rows(folder / name)
    rows[0].append(column)
    for row in rows[1:]:
        row.append(value)
    write_rows(folder / name, rows)


def insert_line(folder: Path, name: str, line: bytes, *, at: int) -> None:
    """Put a raw line (``b"   "``, ``b"\\t"``, ``b"\\r"``) before line ``at`` (1-based; past the end: appended)."""
    path = folder / name
    raw = path.read_bytes()
    data = gzip.decompress(raw) if name.lower().endswith(".gz") else raw
    lines = data.split(b"\n")
    lines.insert(at - 1, line)
    out = b"\n".join(lines)
    path.write_bytes(gzip.compress(out) if name.lower().endswith(".gz") else out)


def compress(folder: Path, names: tuple[str, ...] | None = None) -> None:
    """Gzip CSVs of a site in place (``Cells.csv`` → ``Cells.csv.gz``); all of them by default."""
    for path in sorted(folder.iterdir()):
        if path.name.lower().endswith(".csv") and (names is None or path.name in names):
            path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
            path.unlink()


def cr_line_endings(folder: Path, name: str, *, only_line: int | None = None) -> None:
    """End the lines of a CSV (plain or gzip) with CR, as classic Mac OS and some spreadsheet saves do;
    with ``only_line`` just that line (1-based) ends with a lone CR among LF ones (a mixed file)."""
    path = folder / name
    raw = path.read_bytes()
    gz = name.lower().endswith(".gz")
    lines = (gzip.decompress(raw) if gz else raw).replace(b"\r\n", b"\n").split(b"\n")
    if only_line is None:
        out = b"\r".join(lines)
    else:
        out = b"\n".join([*lines[: only_line - 1], lines[only_line - 1] + b"\r" + lines[only_line], *lines[only_line + 1 :]])
    path.write_bytes(gzip.compress(out) if gz else out)


def run_sql(path: str | Path, *statements: str) -> None:
    """Run ``statements`` on the SQLite file at ``path`` and commit (to damage or edit a fixture database)."""
    conn = sqlite3.connect(path)
    try:
        for s in statements:
            conn.execute(s)
        conn.commit()
    finally:
        conn.close()


def fail_sqlite_writes(monkeypatch: Any, code: int) -> None:
    """Make the SQLite backend writer fail as SQLite does on a full disk (``ENOSPC``) or a read-only one."""
    import errno

    from cytoprofile import backend

    message = "database or disk is full" if code == errno.ENOSPC else "attempt to write a readonly database"

    def add(*_: object, **__: object) -> None:
        raise sqlite3.OperationalError(message)
    monkeypatch.setattr(backend.SQLiteBackendWriter, "add", add)


def crc32_twin(text: str, target: str, *, digits: range) -> str:
    """``text`` with some of the digits at positions ``digits`` changed (1 to 3) so that its CRC32
    equals ``target``'s: CRC32 is affine over GF(2), so the flips that reach the target solve a
    linear system (32 unknowns at most), as a chance collision between two sites would give."""
    import zlib

    chars = list(text)
    ones = [i for i in digits if chars[i] == "1"]
    base = zlib.crc32(text.encode())
    effects = []
    for i in ones:
        flipped = chars.copy()
        flipped[i] = "3"
        effects.append((zlib.crc32("".join(flipped).encode()) ^ base, {i}))
    basis: list[tuple[int, set[int]]] = []
    for vector, used in effects:  # Gaussian elimination, highest bit first
        for b_vector, b_used in basis:
            if vector ^ b_vector < vector:
                vector, used = vector ^ b_vector, used ^ b_used
        if vector:
            basis.append((vector, used))
            basis.sort(key=lambda e: -e[0])
    want, chosen = base ^ zlib.crc32(target.encode()), set()
    for b_vector, b_used in basis:
        if want ^ b_vector < want:
            want, chosen = want ^ b_vector, chosen ^ b_used
    if want:
        raise ValueError("no digits to change reach the target CRC32; give more positions")
    for i in chosen:
        chars[i] = "3"
    return "".join(chars)
