"""Single cells in the one pass: the joined one-row-per-cell table asked with ``single_cells``, and
profiles of the cells no outlier set flags (``exclude_outlier_cells``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from .. import io
from ..aggregate import aggregate
from ..backend import object_column_name
from ..errors import InputError
from ..ingest import IMAGE_TABLE
from ..layout import SIDECAR, parquet_table_path
from ..vocabulary import SINGLE_CELL_FORMATS
from .outputs import GENERATION_KEY

__all__ = ["CELL_OPTIONS", "aggregate_kept_cells", "cell_options", "single_cell_section", "single_cell_stream"]

log = logging.getLogger("cytoprofile.collate")

CELL_OPTIONS = ("single_cells", "exclude_outlier_cells", "hub")


def cell_options(single_cells: Sequence[str], exclude: Sequence[str] | dict[str, Any] | None, thresholds: str | None,
                  *, aggregate_only: bool, hub: str = "Cytoplasm") -> dict[str, Any]:
    """The single-cell outputs asked for, and the resolved outlier sets to exclude (only keys that are set)."""
    from ..cell_qc import load_thresholds

    formats = tuple(dict.fromkeys(single_cells))
    bad = [f for f in formats if f not in SINGLE_CELL_FORMATS]
    if bad:
        raise InputError(f"--single-cells {bad[0]}: choose parquet and/or anndata")
    out: dict[str, Any] = {"single_cells": formats} if formats else {}
    if isinstance(exclude, dict):  # already resolved (a re-entry)
        out["exclude_outlier_cells"] = exclude
    elif exclude is not None:
        out["exclude_outlier_cells"] = load_thresholds(thresholds, sets=list(exclude) or None)
    elif thresholds is not None:
        raise InputError("cell_qc_thresholds (--thresholds) has no effect without exclude_outlier_cells "
                         "(--exclude-outlier-cells)")
    if hub != "Cytoplasm":  # recorded only when not the default: older reports stay current
        if not out:
            raise InputError(f"--hub {hub} joins cells: give it with --single-cells or --exclude-outlier-cells")
        out["hub"] = hub
    if aggregate_only and out:
        raise InputError("--aggregate-only reads an existing backend: use `cytoprofile single-cells` for the joined table, "
                         "and a full collate (without --aggregate-only) to exclude outlier cells")
    return out


def single_cell_stream(prefix: str, schema: Any, compartments: list[str], options: dict[str, Any], generation: str) -> Any:
    """The joined single-cell table written during the pass (None when not asked for)."""
    from ..single_cells import SingleCellStream

    formats = options.get("single_cells") or ()
    if not formats:
        return None
    tables = {t: ["TableNumber", *[object_column_name(t, c) for c in cols]] for t, cols in schema.tables.items() if t != IMAGE_TABLE}
    tables[IMAGE_TABLE] = list(schema.tables[IMAGE_TABLE])
    return SingleCellStream(prefix, tables, formats=formats, compartments=compartments,
                            hub=options.get("hub", "Cytoplasm"), file_metadata={GENERATION_KEY: generation})


def single_cell_section(cells: Any, prefix: str, generation: str) -> dict[str, Any]:
    """The plate report's account of the joined table: rows per compartment in, cells out, unlinked objects named."""
    if cells is None:
        return {}
    if "anndata" in cells.outputs:
        with io.atomic_open(cells.outputs["anndata"] + SIDECAR) as fh:
            fh.write(generation + "\n")
    section = {k: v for k, v in cells.as_dict().items() if k not in ("backend", "outputs", "cell_qc")}
    section["outputs"] = {f: os.path.basename(p) for f, p in cells.outputs.items()}
    if cells.lost:
        log.warning("%s: %d object(s) not linked into a cell (named in the report)", os.path.basename(prefix), cells.lost)
    return {"single_cells": section}


def aggregate_kept_cells(files: dict[str, str], kinds: Sequence[str], options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Profiles of the cells no outlier set flags, from the staged backend (flags need plate-wide z-scores)."""
    from ..cell_qc import outlier_cells

    source = parquet_table_path(files["parquet_prefix"], IMAGE_TABLE) if "parquet" in kinds else files["sqlite"]
    thresholds = options["exclude_outlier_cells"]
    flagged = outlier_cells(source, thresholds, compartments=options["compartments"], strata=options["strata"],
                            hub=options.get("hub", "Cytoplasm"))
    profiles = aggregate(source, operation=options["operation"], strata=options["strata"],
                         compartments=options["compartments"], image_features=options["image_features"],
                         image_feature_categories=options["image_feature_categories"], exclude=flagged)
    log.info("%s: %d of %d cells excluded as outliers before aggregation", os.path.basename(files["parquet_prefix"]),
             flagged.excluded, flagged.cells)
    return profiles, flagged.summary()
