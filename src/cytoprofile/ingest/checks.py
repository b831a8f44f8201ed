"""Per-site cross-checks: unique object keys, rows vs Image.csv ``Count_<Object>``, ``Parent_<X>`` links.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from ..vocabulary import normalise_well
from .model import CountCheck, SiteScan

__all__ = [
    "absent_counts",
    "counted_without_table",
    "object_metadata_warnings",
    "set_aside_counts",
    "site_checks",
]


def _pair_keys(images: np.ndarray, objects: np.ndarray, numbers: np.ndarray, span: int) -> np.ndarray:
    """One integer per (ImageNumber, ObjectNumber) pair of a site: image position × span + object."""
    where = np.searchsorted(numbers, images.astype(np.int64))
    if len(numbers) * span < 2**62:
        return where * span + objects.astype(np.int64)
    return where.astype(object) * span + objects.astype(np.int64).astype(object)


def _as_written(value: float | int) -> str:
    """A count as Image.csv holds it: a whole number without a fraction, any other exactly (4.9999999, never 5)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def site_checks(objects: dict[str, np.ndarray], union: dict[str, list[str]], image: pa.Table,
                 image_numbers: Sequence[int], mode: CountCheck) -> tuple[tuple[str, str] | None, list[str]]:
    """Unique object keys always; with ``mode``, rows vs Image.csv ``Count_<Object>`` and ``Parent_<X>`` links."""
    numbers = np.unique(np.asarray(image_numbers, dtype=np.int64))
    span = 1
    for table, a in objects.items():
        cols = list(_link_columns(tuple(union[table]))[2])
        if len(a) and not np.isnan(a[:, cols]).all():
            span = max(span, 1 + int(np.nanmax(a[:, cols])))
    composite = {t: _pair_keys(a[:, 0], a[:, 1], numbers, span) for t, a in objects.items()}
    for table, keys in composite.items():
        unique, counts = np.unique(keys, return_counts=True)
        if len(unique) != len(keys):
            row = int(np.flatnonzero(np.isin(keys, unique[counts > 1]))[0])
            a = objects[table]
            return (table, f"{table}: ImageNumber {int(a[row, 0])}, ObjectNumber {int(a[row, 1])} appears {int(counts.max())} times"), []
    if mode == "off":
        return None, []
    per_image = {t: Counter(a[:, 0].astype(np.int64).tolist()) for t, a in objects.items()}  # rows a table has per image
    problems, checked, empty = _count_problems(per_image, image)
    by_case = {t.lower(): t for t in objects}  # a file named SPECK.CSV is the table Parent_Speck links to
    problems += _link_problems(objects, union, by_case, numbers, span, composite)
    problems += _children_problems(objects, union, by_case, per_image)
    problems += _per_parent_problems(objects, union, by_case, numbers, span, composite)
    problems += _short_twin_problems(objects, union, by_case, checked, per_image)
    if mode == "error" and problems:
        return problems[0], empty
    return None, empty + [p for _, p in problems]


def _count_problems(per_image: dict[str, Counter[int]],
                    image: pa.Table) -> tuple[list[tuple[str, str]], dict[str, set[int]], list[str]]:
    """Rows per image vs Image.csv's ``Count_<table>``: the mismatches, the images each table was checked in,
    and a warning per table whose count is empty in an image (its rows there go unchecked)."""
    problems: list[tuple[str, str]] = []
    checked: dict[str, set[int]] = {}
    empty: list[str] = []
    numbers = image.column("ImageNumber").to_pylist()
    for table, found in per_image.items():
        count = _count_column(image, table)
        if count is None:
            continue
        expected = dict(zip(numbers, image.column(count).to_pylist()))
        blank = sorted(n for n, want in expected.items() if want is None or (isinstance(want, float) and np.isnan(want)))
        if blank:
            empty.append(f"Image.csv's {count} is empty for ImageNumber {blank[0]}"
                         + (f" and {len(blank) - 1} more" if len(blank) > 1 else "")
                         + f": {table}'s {found.get(blank[0], 0)} row(s) there are checked against no count")
        checked[table] = {n for n in expected if n not in blank}
        for number, want in expected.items():
            if number not in blank and found.get(number, 0) != want:
                problems.append((table, f"{table} has {found.get(number, 0)} rows for ImageNumber {number} but Image.csv "
                                        f"{count} says {_as_written(want)}"))
                break
    return problems, checked, empty


def _link_problems(objects: dict[str, np.ndarray], union: dict[str, list[str]], by_case: dict[str, str],
                   numbers: np.ndarray, span: int, composite: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    """``Parent_<X>`` values that are neither 0 nor an object of X in the same image."""
    problems = []
    for table, a in objects.items():
        for j, named in _link_columns(tuple(union[table]))[0]:
            other, column = _resolve(named, objects, by_case), union[table][j]
            if other is None:
                continue
            parents = a[:, j]
            linked = ~np.isnan(parents) & (parents != 0)
            if not linked.any():
                continue
            wanted = _pair_keys(a[linked, 0], parents[linked], numbers, span)
            missing = ~np.isin(wanted, composite[other])
            if missing.any():
                row = np.flatnonzero(linked)[np.flatnonzero(missing)[0]]
                problems.append((table, f"{table} row with ObjectNumber {int(a[row, 1])} (ImageNumber {int(a[row, 0])}) has "
                                        f"{column} {int(parents[row])}, but {other} has no such object in that image "
                                        f"({int(missing.sum())} such link(s))"))
    return problems


@functools.lru_cache(maxsize=256)
def _link_columns(header: tuple[str, ...]) -> tuple[tuple[tuple[int, str], ...], tuple[tuple[int, str], ...], tuple[int, ...]]:
    """Of a table's columns (every site of a plate shares them, so this runs once a table): each ``Parent_<X>``
    with X, each ``Children_<X>_Count`` with X, and the positions of the ObjectNumber and Parent_ columns."""
    parents = tuple((j, c[len("Parent_"):]) for j, c in enumerate(header) if c.startswith("Parent_") and c != "Parent_")
    children = tuple((j, c[len("Children_"):-len("_Count")]) for j, c in enumerate(header)
                     if c.startswith("Children_") and c.endswith("_Count") and len(c) > len("Children__Count"))
    keys = tuple(j for j, c in enumerate(header) if c.startswith("Parent_") or c == "ObjectNumber")
    return parents, children, keys


def _resolve(named: str, objects: dict[str, np.ndarray], by_case: dict[str, str]) -> str | None:
    """The table a ``Parent_<X>`` or ``Children_<X>_Count`` column names, as written or else in any case."""
    return named if named in objects else by_case.get(named.lower())


def _short_twin_problems(objects: dict[str, np.ndarray], union: dict[str, list[str]], by_case: dict[str, str],
                         checked: dict[str, set[int]], per_image: dict[str, Counter[int]]) -> list[tuple[str, str]]:
    """A compartment numbered as its parent (ObjectNumber = ``Parent_<P>`` in every row, as Cytoplasm is to Cells)
    with at least two fewer objects than P in an image that no count vouches for (no ``Count_<X>`` in Image.csv,
    no ``Children_<X>_Count`` in P): the file lost its last rows, which nothing else could show."""
    out = []
    for table, a in objects.items():
        for j, named in _link_columns(tuple(union[table]))[0]:
            parent, column = _resolve(named, objects, by_case), union[table][j]
            if parent is None or parent == table or not len(a) or not np.array_equal(a[:, 1], a[:, j]):
                continue
            if any(_resolve(c, objects, by_case) == table for _, c in _link_columns(tuple(union[parent]))[1]):
                continue
            have, told, parents = per_image[table], checked.get(table, set()), per_image[parent]
            # two or more missing: one alone is what a filter dropping P's last object leaves (FilterObjects)
            short = [(n, m) for n, m in sorted(parents.items()) if n not in told and have.get(n, 0) < m - 1]
            if short:
                n, m = short[0]
                out.append((table, f"{table} has {have.get(n, 0)} rows for ImageNumber {n} but {parent}, which it "
                                   f"matches object for object ({column} = ObjectNumber), has {m} (rows lost from the "
                                   f"{table} file? Image.csv has no Count_{table} to tell; --count-check warn keeps the site)"))
                break
    return out


def _per_parent_problems(objects: dict[str, np.ndarray], union: dict[str, list[str]], by_case: dict[str, str],
                         numbers: np.ndarray, span: int, composite: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    """A parent's ``Children_<X>_Count`` against the X rows whose ``Parent_<parent>`` names it, object by object:
    two Cytoplasm rows claiming one cell (and none the next) add up right per image, yet one cell would be joined
    twice and another lost."""
    out = []
    for table, a in objects.items():
        for j, named in _link_columns(tuple(union[table]))[1]:
            child = _resolve(named, objects, by_case)
            back = None if child is None else _back_link(child, table, objects, union, by_case)
            told = ~np.isnan(a[:, j])
            if child is None or back is None or not told.any():
                continue
            links = objects[child][:, back]
            if np.isnan(links).any():  # the column is another site's (or a value is missing): nothing to judge by
                continue
            linked = links != 0
            wanted = _pair_keys(objects[child][linked, 0], links[linked], numbers, span)
            have = _link_counts(wanted, composite[table][told])
            wrong = np.flatnonzero(have != a[told, j])
            if len(wrong):
                row = np.flatnonzero(told)[wrong[0]]
                out.append((child, f"{table} object {int(a[row, 1])} (ImageNumber {int(a[row, 0])}) has "
                                   f"{union[table][j]} {_as_written(a[row, j])} but {int(have[wrong[0]])} {child} row(s) "
                                   f"name it in {union[child][back]} ({len(wrong)} such {table} object(s))"))
    return out


def _back_link(child: str, parent: str, objects: dict[str, np.ndarray], union: dict[str, list[str]],
               by_case: dict[str, str]) -> int | None:
    """The position of the child's ``Parent_<parent>`` column, if it has one."""
    return next((k for k, p in _link_columns(tuple(union[child]))[0] if _resolve(p, objects, by_case) == parent), None)


def _link_counts(links: np.ndarray, parents: np.ndarray) -> np.ndarray:
    """How many of ``links`` (composite keys) name each of ``parents``."""
    keys, found = np.unique(links, return_counts=True)
    if not len(keys):
        return np.zeros(len(parents), dtype=np.int64)
    where = np.searchsorted(keys, parents).clip(max=len(keys) - 1)
    return np.where(keys[where] == parents, found[where], 0)


def _children_problems(objects: dict[str, np.ndarray], union: dict[str, list[str]], by_case: dict[str, str],
                       per_image: dict[str, Counter[int]]) -> list[tuple[str, str]]:
    """A parent table's ``Children_<X>_Count`` adding up, in an image, to more objects than X has there: X lost
    rows (a file cut at a line ending, which its own row count cannot show when Image.csv has no Count_<X>)."""
    out = []
    for table, a in objects.items():
        for j, named in _link_columns(tuple(union[table]))[1]:
            child, column = _resolve(named, objects, by_case), union[table][j]
            counts = a[:, j]
            if child is None or not len(counts) or np.isnan(counts).all():
                continue
            told = ~np.isnan(counts)
            images, where = np.unique(a[told, 0].astype(np.int64), return_inverse=True)
            claimed = np.bincount(where, weights=counts[told])
            have = per_image[child]
            short = [(int(n), c) for n, c in zip(images.tolist(), claimed.tolist()) if c > have.get(n, 0)]
            if short:
                n, c = short[0]
                out.append((child, f"{child} has {have.get(n, 0)} rows for ImageNumber {n} but {table}'s {column} "
                                   f"adds up to {_as_written(c)} (rows lost from the {child} file?)"))
    return out


def _count_column(image: pa.Table, table: str) -> str | None:
    """Image.csv's ``Count_<table>``, matched as written or else in any case (file names may be SPECKLES.CSV)."""
    exact = f"Count_{table}"
    if exact in image.column_names:
        return exact
    wanted = exact.lower()
    return next((c for c in image.column_names if c.lower() == wanted), None)


def object_metadata_warnings(file: str, texts: pa.Table, image_numbers: np.ndarray, image: pa.Table) -> list[str]:
    """Where an object CSV's copy of an Image.csv column (``Metadata_Well``, ``FileName_OrigDNA``) disagrees with
    Image.csv for the same ImageNumber: one warning per column, naming the file, the image and both values."""
    names = set(image.column_names)
    if "ImageNumber" not in names or not len(image_numbers):
        return []
    numbers = image.column("ImageNumber").to_pylist()
    out = []
    for column in texts.column_names:
        if column not in names:
            continue
        said = dict(zip(numbers, image.column(column).to_pylist()))
        pairs = pa.table({"n": pa.array(image_numbers.astype(np.int64)), "v": texts.column(column)}).group_by(["n", "v"]).aggregate([])
        for number, value in zip(pairs.column("n").to_pylist(), pairs.column("v").to_pylist()):
            if not _same_text(column, value, said.get(number)):
                out.append(f"{file}: {column} is {value!r} for ImageNumber {number}, but Image.csv says "
                           f"{said.get(number)!r} (Image.csv's value is the image's; the object file's is stored as written)")
                break
    return out


def _same_text(column: str, value: object, image_value: object) -> bool:
    if value is None or image_value is None:
        return value is None and image_value is None
    a, b = str(value).strip(), str(image_value).strip()
    if column == "Metadata_Well":
        a, b = normalise_well(a), normalise_well(b)
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def set_aside_counts(rejected: dict[str, tuple[str, str]], image: pa.Table) -> list[str]:
    """Object files set aside (empty, no header) although Image.csv's ``Count_<X>`` says the image has objects:
    those objects are in no table (a warning; a compartment's file in that state quarantines the site)."""
    counts = {c[len("Count_"):].lower(): c for c in image.column_names if c.startswith("Count_")}
    if "ImageNumber" not in image.column_names:
        return []
    out = []
    for table, (why, _path) in sorted(rejected.items()):
        column = counts.get(table)
        if column is None:
            continue
        values = [(n, v) for n, v in zip(image.column("ImageNumber").to_pylist(), image.column(column).to_pylist())
                  if isinstance(v, (int, float)) and v == v and v > 0]
        if values:
            out.append(f"{why}, but Image.csv's {column} says {values[0][1]:g} object(s) in ImageNumber {values[0][0]}: "
                       "they are in no table")
    return out


def absent_counts(tables: Sequence[str], image: pa.Table) -> list[tuple[str, str]]:
    """Object tables other sites have and this one lacks, although Image.csv's ``Count_<X>`` says its image has such
    objects: 0 rows where the count says more, as a header-only file would be (table, reason)."""
    if "ImageNumber" not in image.column_names:
        return []
    out = []
    for table in tables:
        column = _count_column(image, table)
        if column is None:
            continue
        values = [(n, v) for n, v in zip(image.column("ImageNumber").to_pylist(), image.column(column).to_pylist())
                  if isinstance(v, (int, float)) and v == v and v > 0]
        if values:
            out.append((table, f"{table} has no file in this site (other sites have one), but Image.csv's {column} says "
                               f"{values[0][1]:g} object(s) in ImageNumber {values[0][0]}"))
    return out


def counted_without_table(scans: Sequence[SiteScan], tables: Sequence[str]) -> dict[str, dict[str, int]]:
    """Image.csv ``Count_<X>`` columns of the trusted sites whose objects no site has a table for (an object the
    pipeline did not export, or whose files are gone): per column, the objects counted and the images counting
    them, so that the report says which counted objects are in no output."""
    known = {t.lower() for t in tables} | {t for s in scans for t in s.rejected}
    out: dict[str, dict[str, int]] = {}
    for scan in scans:
        image = scan.image
        if scan.problem is not None or image is None:
            continue
        for column in image.column_names:
            if not column.startswith("Count_") or column[len("Count_"):].lower() in known:
                continue
            values = [v for v in image.column(column).to_pylist() if isinstance(v, (int, float)) and v == v and v > 0]
            if values:
                entry = out.setdefault(column, {"objects": 0, "images": 0})
                entry["objects"] += int(sum(values))
                entry["images"] += len(values)
    return dict(sorted(out.items()))
