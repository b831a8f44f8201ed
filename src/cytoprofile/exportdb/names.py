"""Messages of the CSV route put in the ExportToDatabase file's terms.

A plate read from ExportToDatabase files is collated through scratch CSV site folders, so
the CSV route's messages name ``Cells.csv line 3`` or ``Cells.csv is missing``. Users
have no such file: these say the table, the ``.sqlite`` file and the ImageNumber instead
(``MyExpt_Per_Cells of run1.sqlite (ImageNumber 2, object row 2)``), in the report, on
the terminal and in errors.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from typing import Any

__all__ = ["ExportNames"]

#: a CSV name with what follows it: a line number, or the scan's "is missing" (``\w`` admits object-set names)
_CSV = re.compile(r"(?<![\w.-])(\w[\w.-]*?)\.csv(?: line (\d+)|( is missing(?: \(other sites have it\))?))?")
_NO_SITE_HAS = re.compile(r"no site has (\w[\w.-]*?)\.csv")
_TWICE = re.compile(r"(?<![\w.-])(\w[\w.-]*?)\.csv: column (\S+) is in the header twice \(fields (\d+) and (\d+)\)")
_LINE = re.compile(r"(?<![\w.-])line (\d+)")
_TOKEN = re.compile(r"[\w.-]+")
_LOGGERS = ("cytoprofile.collate", "cytoprofile.ingest")


class ExportNames:
    """Per scratch site folder, the file, ImageNumber and SQL tables it was written from."""

    def __init__(self) -> None:
        self.sites: dict[str, dict[str, Any]] = {}
        self.files: dict[str, dict[str, Any]] = {}
        self.columns: dict[str, dict[str, tuple[str, ...]]] = {}

    def learn(self, sites: dict[str, dict[str, Any]], files: list[dict[str, Any]],
              columns: dict[str, dict[str, tuple[str, ...]]] | None = None) -> None:
        """Take the materialised sites, the files' records and their columns (``Materialised.sites``, ``.files``,
        ``.columns``: per file and CSV stem, the database column of each CSV field)."""
        self.sites = sites
        self.files = {f["file"]: f for f in files}
        self.columns = columns or {}

    def column(self, site: str, stem: str, field: int) -> str | None:
        """The database column a site's ``STEM.csv`` field (1-based) was written from (None: unknown)."""
        source = self.sites.get(site)
        names = self.columns.get(source["file"], {}).get(stem, ()) if source else ()
        return names[field - 1] if 0 < field <= len(names) else None

    def table(self, site: str, stem: str) -> str | None:
        """The SQL table a site's ``STEM.csv`` came from (None: unknown)."""
        source = self.sites.get(site)
        record = self.files.get(source["file"], {}) if source else {}
        return record.get("tables", {}).get(stem)

    def for_site(self, site: str, text: str) -> str:
        """``text`` (a message about ``site``) naming tables of the source file instead of scratch CSVs."""
        source = self.sites.get(site)
        if source is None or ".csv" not in text:
            return text
        record = self.files.get(source["file"], {})
        tables = record.get("tables", {})
        file, number = source["file"], source["image_number"]

        def both(m: re.Match[str]) -> str:
            a, b = (self.column(site, m.group(1), int(m.group(k))) for k in (3, 4))
            if a is None or b is None:
                return m.group(0)
            return f"{m.group(1)}.csv: columns {a} and {b} are both read as {m.group(2)}"

        text = _TWICE.sub(both, text)

        def named(m: re.Match[str]) -> str:
            stem, line, missing = m.group(1), m.group(2), m.group(3)
            if missing:
                if record.get("layout") == "per_object":
                    return (f"object set {stem} is missing in {file} ({record.get('table_prefix', '')}Per_Object has "
                            f"no {stem}_Number_Object_Number column)")
                return f"table {record.get('table_prefix', '')}Per_{stem} is missing in {file}"
            table = tables.get(stem)
            if table is None:
                return m.group(0)
            if line is None:
                return f"{table} of {file} (ImageNumber {number})"
            if stem == "Image":
                return f"{table} of {file} (ImageNumber {number})"
            return f"{table} of {file} (ImageNumber {number}, object row {int(line) - 1})"

        stems = {m.group(1) for m in _CSV.finditer(text) if m.group(1) in tables}
        text = _CSV.sub(named, text)
        if len(stems) == 1:  # "(first '1e400', line 4)" of the one table named
            row = "its row" if stems == {"Image"} else None
            text = _LINE.sub(lambda m: row or f"object row {int(m.group(1)) - 1}", text)
        return text

    def anywhere(self, text: str) -> str:
        """``text`` with the messages about the first site it names put in the file's terms."""
        if ".csv" not in text:
            return text
        files = ", ".join(sorted(self.files))
        text = _NO_SITE_HAS.sub(lambda m: f"no file has a {m.group(1)} object table ({files})", text)
        site = next((t for t in _TOKEN.findall(text) if t in self.sites), None)
        return text if site is None else self.for_site(site, text)

    @contextlib.contextmanager
    def in_logs(self) -> Iterator[None]:
        """While collating the scratch sites, their log messages name the files' tables."""
        names = self

        class _Rename(logging.Filter):
            def filter(self, record: logging.LogRecord) -> bool:
                message = record.getMessage()
                renamed = names.anywhere(message)
                if renamed != message:
                    record.msg, record.args = renamed, None
                return True

        rename = _Rename()
        loggers = [logging.getLogger(n) for n in _LOGGERS]
        for logger in loggers:
            logger.addFilter(rename)
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeFilter(rename)
