"""Site discovery, validation and schema union: CellProfiler CSVs to checked single-cell tables.

A plate is read in two passes. The scan reads every CSV header and each Image.csv
(small), so the schema is the union of every site's columns whatever sorts first,
and each site's wells are known before any cell is read. The read pass then parses
one site at a time (in threads, ahead of the consumer) and yields either the
site's tables, conformed to the union schema, or the reason it is quarantined.
Nothing here writes: the backend writers and the aggregator consume the stream.

What a site folder may hold, as CellProfiler exports are found in the wild:
``Image.csv`` and any number of object CSVs (upper- or lower-case extension,
gzip-compressed ``.csv.gz``, an ExportToSpreadsheet file-name prefix such as
``MyExpt_``), the run metadata ``Experiment.csv`` (not stored) and the old single
``object.csv`` with a two-row header (split per compartment). Columns of CellProfiler's
text families (``Metadata_``, ``FileName_``, ``PathName_``, ``URL_``, ``Objects*``) are
text wherever they are: in an object CSV (ExportToSpreadsheet's add-metadata options) they
are kept apart from the numbers, stored, and never features. Every row read is either
returned or belongs to a quarantined site whose rows per file are counted.
"""

from __future__ import annotations

from .checks import counted_without_table
from .model import (
    FOLDER_WARNING,
    GENERATION_TABLE,
    IMAGE_TABLE,
    MAX_KEY,
    NULL_VALUES,
    RESERVED_TABLES,
    RUN_METADATA_FILES,
    SINGLE_CELL_TABLE,
    TABLE_NUMBER_FILE,
    TEXT_IMAGE_FAMILIES,
    CountCheck,
    PlateSchema,
    Quarantine,
    SiteScan,
    SiteTables,
    Source,
    canonical_order,
    is_reserved_table,
    normalise_site,
    reader_opens,
)
from .read import image_numeric, order_by_key, read_sites
from .scan import discover_sites, files_beside_sites, scan_sites
from .schema import plan_schema

__all__ = [
    "FOLDER_WARNING",
    "IMAGE_TABLE",
    "MAX_KEY",
    "NULL_VALUES",
    "RUN_METADATA_FILES",
    "TEXT_IMAGE_FAMILIES",
    "CountCheck",
    "PlateSchema",
    "Quarantine",
    "SiteScan",
    "SiteTables",
    "GENERATION_TABLE",
    "RESERVED_TABLES",
    "SINGLE_CELL_TABLE",
    "Source",
    "TABLE_NUMBER_FILE",
    "canonical_order",
    "counted_without_table",
    "discover_sites",
    "files_beside_sites",
    "image_numeric",
    "is_reserved_table",
    "normalise_site",
    "order_by_key",
    "plan_schema",
    "read_sites",
    "reader_opens",
    "scan_sites",
]
