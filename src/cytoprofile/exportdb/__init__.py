"""CellProfiler ExportToDatabase (SQLite) files as collate input.

ExportToDatabase writes one SQLite file per CellProfiler run: ``Per_Image`` (one row
per image, ``Image_``-prefixed columns) and either one ``Per_<Object>`` table per
object set or a single ``Per_Object`` table holding every set side by side, all
optionally behind a table prefix (``MyExpt_Per_Image``). ImageNumber is unique in a
file only. This module finds such files, checks them, streams them one image at a
time (SQLite cursors in batches, never a whole table in memory) and writes each
image of a plate as a site folder in the CSV layout (``PLATE-WELL-SITE/Image.csv``,
``Cells.csv``, …) with the TableNumber the site must get, so the CSV route
ingests, writes and reports it unchanged.

TableNumber of an image is CRC32 of ``"<source name>:<ImageNumber>"``, where the
source name is the file's path relative to the workspace (its base name when it lies
outside). Every row of every file is accounted for: written into a site folder,
left for another plate (rows are routed by ``Image_Metadata_Plate``), or named in
the report with its reason.

The package, by role: :mod:`.files` finds and checks the files, :mod:`.stream` reads them image
by image, :mod:`.materialise` writes a plate's images as site folders, :mod:`.plate` collates a plate.
"""

from __future__ import annotations

from .files import (
    EXPORT_SUFFIXES,
    Dropped,
    ExportFile,
    ObjectSource,
    discover_export_files,
    export_files_in,
    export_plates,
    find_export_files,
    open_export,
    table_number,
)
from .materialise import Materialised, materialise_plate
from .plate import collate_export
from .stream import ExportImage, read_images

__all__ = [
    "EXPORT_SUFFIXES",
    "Dropped",
    "ExportFile",
    "ExportImage",
    "Materialised",
    "ObjectSource",
    "collate_export",
    "discover_export_files",
    "export_files_in",
    "export_plates",
    "find_export_files",
    "materialise_plate",
    "open_export",
    "read_images",
    "table_number",
]
