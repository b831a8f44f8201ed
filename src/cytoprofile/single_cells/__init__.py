"""One row per cell: every compartment of a backend joined, written as Parquet and AnnData.

Compartments are joined as the old single-cell merge joins them: a hub compartment
(``Cytoplasm``) links to the others through its ``<Hub>_Parent_<Other>`` columns,
inner joins on (TableNumber, ImageNumber, link = ObjectNumber), then the image
metadata on (TableNumber, ImageNumber). The join runs one site (TableNumber) at a
time, so memory holds one site's cells whatever the plate size. Objects the join
cannot link are counted and named in the report, never dropped silently.

Column names follow the old merge: ``Metadata_TableNumber``, ``Metadata_ImageNumber``,
``Metadata_ObjectNumber_<hub>``, ``Metadata_<Hub>_Parent_<Other>``, ... ; metadata
columns come first, then ``Image_*`` features (if asked), then each compartment's
features in the order the compartments are given.
"""

from .join import DEFAULT_HUB, DEFAULT_METADATA, SingleCellJoin, SingleCellReport, single_cells
from .sinks import ROW_GROUP_ROWS, ROW_GROUP_VALUES, feature_annotation
from .sources import OUTPUT_TABLE
from .write import (
    SingleCellFormat,
    SingleCellStream,
    write_plates_single_cells,
    write_single_cells,
)

__all__ = [
    "DEFAULT_HUB",
    "DEFAULT_METADATA",
    "OUTPUT_TABLE",
    "ROW_GROUP_ROWS",
    "ROW_GROUP_VALUES",
    "SingleCellFormat",
    "SingleCellJoin",
    "SingleCellReport",
    "SingleCellStream",
    "feature_annotation",
    "single_cells",
    "write_plates_single_cells",
    "write_single_cells",
]
