"""The plate's union schema over its trusted sites; a site lacking a compartment is quarantined.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence

from ..errors import InputError
from .model import IMAGE_TABLE, PlateSchema, SiteScan, canonical_order
from .scan import case_clash, settle_duplicates

__all__ = [
    "plan_schema",
]


def plan_schema(scans: Sequence[SiteScan], *, plate: str, strata: Sequence[str], compartments: Sequence[str] = ()) -> PlateSchema:
    """Union schema over the trusted sites.

    Table names that differ only in case are one table (a compartment's own spelling,
    else the most common one). A site lacking a compartment table other sites have is
    quarantined (also when its file is there but not an object table); other object tables are
    stored for the sites that have them.
    """
    _unify_table_names(scans, compartments)
    settle_duplicates(scans)
    present = sorted({t for s in scans if s.problem is None for t in s.files if t != IMAGE_TABLE})
    for scan in scans:
        if scan.problem is None:
            _require_compartments(scan, compartments, present)
    # the tables of the sites still trusted: one only a quarantined site held is no table of the plate
    object_tables = sorted({t for s in scans if s.problem is None for t in s.files if t != IMAGE_TABLE})
    partial = {t: sorted(s.name for s in scans if s.problem is None and t not in s.files) for t in object_tables}
    tables: dict[str, list[str]] = {}
    text_columns: dict[str, list[str]] = {}
    for table in [IMAGE_TABLE, *object_tables]:
        columns: set[str] = set()
        texts: set[str] = set()
        for scan in scans:
            if scan.problem is None:
                columns.update(scan.headers.get(table, []))
                texts.update(scan.text_headers.get(table, []))
        if table == IMAGE_TABLE:
            columns.update(c for s in scans if s.problem is None for c in s.filled_columns)
        if texts:
            text_columns[table] = sorted(texts)
        clash = case_clash(sorted(columns | texts))
        if clash:
            raise _case_clash_error(scans, plate=plate, table=table, clash=clash)
        tables[table] = canonical_order(sorted(columns))
    return PlateSchema(tables=tables, strata=list(strata), plate=plate, partial={t: v for t, v in partial.items() if v},
                       text_columns=text_columns)


def _case_clash_error(scans: Sequence[SiteScan], *, plate: str, table: str, clash: Sequence[str]) -> InputError:
    """Two spellings of one column across sites, each with the sites that use it: the plate is refused, for
    one measurement in two spellings would be two half-empty columns (and SQLite cannot hold both)."""
    def where(name: str) -> str:
        sites = sorted(s.name for s in scans if s.problem is None
                       and name in {*s.headers.get(table, []), *s.text_headers.get(table, [])})
        shown = ", ".join(sites[:3]) + (", …" if len(sites) > 3 else "")
        return f"{name!r} in {len(sites)} site{'' if len(sites) == 1 else 's'} ({shown})" if sites else repr(name)

    return InputError(f"{plate}: {table} column spelled {where(clash[0])} and {where(clash[1])}: one measurement in "
                      "two spellings would be two half-empty columns (and SQLite cannot hold both); give it one "
                      "spelling in the CSVs")


def _require_compartments(scan: SiteScan, compartments: Sequence[str], object_tables: Sequence[str]) -> None:
    """Quarantine a site whose compartment file is there but not a table (empty, no keys), or that lacks a
    compartment other sites have."""
    held = {t.lower() for t in scan.files}
    wanted = {c.lower() for c in compartments}
    for table in sorted({*compartments, *object_tables}, key=str.lower):
        if table.lower() in held or table.lower() not in wanted:
            continue
        if table.lower() in scan.rejected:  # its file is there but not an object table
            why, path = scan.rejected[table.lower()]
            scan.quarantine(f"{why}; {table} is one of the compartments", path)
            return
        if table in object_tables:
            old_export = scan.rejected.get("object")  # the single object.csv that would have held it
            scan.quarantine(f"{table}.csv is missing (other sites have it)" + (f"; {old_export[0]}" if old_export else ""),
                            old_export[1] if old_export else os.path.join(scan.path, f"{table}.csv"))
            return


def _table_spelling(files: Counter[str], asked: str | None) -> str:
    """A table's name: the files' most common spelling, so ``--compartments cells`` never renames a
    ``Cells`` table; only a case-folded file name (``CELLS.CSV``, ``cells.csv``) takes the compartment's."""
    common = sorted(files.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    folded = all(name in (name.upper(), name.lower()) for name in files)
    return asked if asked is not None and folded else common


def _unify_table_names(scans: Sequence[SiteScan], compartments: Sequence[str]) -> None:
    """Give each table one spelling in every site (see ``_table_spelling``)."""
    spellings: dict[str, Counter[str]] = {}
    for scan in scans:
        for table in scan.files:
            if table != IMAGE_TABLE:
                spellings.setdefault(table.lower(), Counter())[table] += 1
    asked = {c.lower(): c for c in compartments}
    chosen = {lower: _table_spelling(counter, asked.get(lower)) for lower, counter in spellings.items()}
    for scan in scans:
        for table in list(scan.files):
            target = chosen.get(table.lower(), table) if table != IMAGE_TABLE else table
            if target != table:
                scan.files[target] = scan.files.pop(table)
                scan.sources[target] = scan.sources.pop(table)
                if table in scan.headers:
                    scan.headers[target] = scan.headers.pop(table)
                if table in scan.text_headers:
                    scan.text_headers[target] = scan.text_headers.pop(table)
                for entry in scan.duplicates:
                    if entry["table"] == table:
                        entry["table"] = target
