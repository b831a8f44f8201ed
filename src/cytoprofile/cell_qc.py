"""Single-cell quality control: flag badly segmented cells by z-score threshold sets.

A threshold file holds named sets (``thresholds: {set: {feature: bound}}``, the
coSMicQC format, accepted unchanged). z-scores are taken over all cells of the plate
with the population standard deviation; a positive bound flags z above it, a
negative bound z below it, and a cell is an outlier of a set when every condition
of the set holds. A missing value never flags a cell (and is left out of the mean
and standard deviation); a feature with zero spread flags nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from .errors import ConfigError, InputError
from .vocabulary import metadata_columns

__all__ = [
    "DEFAULT_THRESHOLDS",
    "OutlierCells",
    "Thresholds",
    "add_outlier_flags",
    "flag_column",
    "flag_single_cells",
    "flag_summary",
    "load_thresholds",
    "outlier_cells",
    "outlier_flags",
    "zscores",
]

log = logging.getLogger("cytoprofile.cell_qc")
Thresholds = Mapping[str, Mapping[str, float]]
#: the shipped sets: small and low form factor, elongated, and large nuclei
DEFAULT_THRESHOLDS = "cell_qc_thresholds.yml"


def flag_column(name: str) -> str:
    """Column of a set's flags in the single-cell table."""
    return f"Metadata_cqc_{name}_is_outlier"


def load_thresholds(path: str | os.PathLike[str] | None = None, *, sets: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Threshold sets from a YAML file (default: the three shipped nuclei sets); ``sets`` picks some."""
    if path is None:
        text = resources.files("cytoprofile").joinpath("data", DEFAULT_THRESHOLDS).read_text(encoding="utf-8")
        where = f"cytoprofile/data/{DEFAULT_THRESHOLDS}"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the threshold file ({exc.strerror})") from exc
        where = str(path)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("thresholds"), dict):
        raise ConfigError(f"{where}: expected a top-level 'thresholds:' mapping of set name to {{feature: bound}}")
    out = {str(name): _conditions(where, str(name), conditions) for name, conditions in doc["thresholds"].items()}
    if sets is not None:
        unknown = [s for s in sets if s not in out]
        if unknown:
            raise ConfigError(f"{where}: no threshold set {', '.join(unknown)}; sets: {', '.join(out)}")
        out = {s: out[s] for s in sets}
    return out


def _conditions(where: str, name: str, conditions: Any) -> dict[str, float]:
    if not isinstance(conditions, dict) or not conditions:
        raise ConfigError(f"{where}: set {name} must map features to z-score bounds")
    out: dict[str, float] = {}
    for feature, bound in conditions.items():
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not np.isfinite(bound):
            raise ConfigError(f"{where}: set {name}, {feature}: the bound must be a number, not {bound!r}")
        if bound == 0:
            raise ConfigError(f"{where}: set {name}, {feature}: a bound of 0 has no direction; use a positive or negative z-score")
        out[str(feature)] = float(bound)
    return out


def zscores(values: np.ndarray) -> np.ndarray:
    """(x - mean) / population std over the finite values; NaN stays NaN, zero spread gives NaN."""
    x = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(x)
    if not finite.any():
        return np.full(x.shape, np.nan)
    mean = x[finite].mean()
    std = x[finite].std()  # ddof=0: population std
    if std == 0:
        return np.full(x.shape, np.nan)
    z = (x - mean) / std
    z[~finite] = np.nan
    return z


def outlier_flags(data: Mapping[str, np.ndarray] | pd.DataFrame, thresholds: Thresholds) -> dict[str, np.ndarray]:
    """Per set, a boolean per cell: True when every condition of the set holds."""
    columns = set(data.columns) if isinstance(data, pd.DataFrame) else set(data)
    missing = sorted({f for c in thresholds.values() for f in c} - columns)
    if missing:
        raise InputError(f"cell QC threshold feature(s) {', '.join(missing)} are not in the table")
    z = {f: zscores(np.asarray(data[f], dtype=np.float64)) for f in sorted({f for c in thresholds.values() for f in c})}
    n = len(next(iter(z.values()))) if z else 0
    flags: dict[str, np.ndarray] = {}
    for name, conditions in thresholds.items():
        flag = np.ones(n, dtype=bool)
        for feature, bound in conditions.items():
            with np.errstate(invalid="ignore"):
                flag &= (z[feature] > bound) if bound > 0 else (z[feature] < bound)
        flags[name] = flag
    return flags


def add_outlier_flags(df: pd.DataFrame, thresholds: Thresholds) -> pd.DataFrame:
    """A copy of a single-cell DataFrame with ``Metadata_cqc_<set>_is_outlier`` columns after its metadata."""
    flags = outlier_flags(df, thresholds)
    out = df.copy()
    at = len(metadata_columns(df.columns))
    for k, (name, values) in enumerate(flags.items()):
        out.insert(at + k, flag_column(name), values)
    return out


def flag_single_cells(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    thresholds: Thresholds,
) -> dict[str, Any]:
    """Add flag columns to a single-cell Parquet file (ours or CytoTable's), streaming row group by row group.

    A first pass reads only the threshold features (and the well keys, for the counts
    per well); the second rewrites the file with the flags. ``output`` defaults to
    replacing ``source`` (atomically). Returns flagged counts per set and per well.
    """
    src = pq.ParquetFile(source)
    names = src.schema_arrow.names
    features = sorted({f for c in thresholds.values() for f in c})
    keys = [c for c in ("Metadata_Plate", "Metadata_Well") if c in names]
    missing = [f for f in features if f not in names]
    if missing:
        raise InputError(f"{source}: no column {', '.join(missing)} for the cell QC threshold sets")
    first = src.read(columns=[*keys, *features])
    flags = outlier_flags({f: first.column(f).to_numpy(zero_copy_only=False).astype(np.float64) for f in features}, thresholds)
    summary = flag_summary(first, keys, flags)
    final = Path(output if output is not None else source)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    existing = [flag_column(n) for n in thresholds if flag_column(n) in names]
    try:
        writer: pq.ParquetWriter | None = None
        offset = 0
        for g in range(src.metadata.num_row_groups):
            table = src.read_row_group(g).drop_columns(existing)
            at = len(metadata_columns(table.column_names))
            for k, (name, values) in enumerate(flags.items()):
                table = table.add_column(at + k, flag_column(name), pa.array(values[offset: offset + table.num_rows]))
            offset += table.num_rows
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
            writer.write_table(table, row_group_size=max(table.num_rows, 1))
        if writer is None:
            raise InputError(f"{source}: the file has no row groups")
        writer.close()
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"output": str(final), **summary}


def flag_summary(table: pa.Table, keys: Sequence[str], flags: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Flagged cells per set, and per well when the table carries the well keys."""
    out: dict[str, Any] = {"cells": table.num_rows, "flagged": {k: int(v.sum()) for k, v in flags.items()}}
    if keys:
        frame = table.select(list(keys)).to_pandas()
        for name, values in flags.items():
            frame[name] = values
        per_well = frame.groupby(list(keys), dropna=False)[list(flags)].sum().astype(int).reset_index()
        out["per_well"] = per_well.to_dict(orient="records")
    return out


@dataclass
class OutlierCells:
    """Cells some outlier set flags: their objects per compartment (to leave out of aggregation) and counts."""

    thresholds: dict[str, dict[str, float]]
    #: per compartment and TableNumber (as text), the flagged objects' ImageNumber << 32 | ObjectNumber, sorted
    objects: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    cells: int = 0
    flagged: dict[str, int] = field(default_factory=dict)
    excluded: int = 0
    per_well: list[dict[str, Any]] = field(default_factory=list)

    def kept(self, compartment: str, table_number: Any, images: np.ndarray, objects: np.ndarray) -> np.ndarray:
        """Which of a site's objects of a compartment are not part of a flagged cell."""
        flagged = self.objects.get(compartment, {}).get(str(table_number))
        if flagged is None or not len(images):
            return np.ones(len(images), dtype=bool)
        return ~np.isin(object_keys(images, objects), flagged)

    def summary(self) -> dict[str, Any]:
        """JSON-ready counts for a report."""
        return {"thresholds": self.thresholds, "cells": self.cells, "flagged": self.flagged, "excluded": self.excluded,
                "per_well": self.per_well}


def object_keys(images: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """One int64 per (ImageNumber, ObjectNumber) of a site."""
    return np.asarray(images, dtype=np.int64) * (1 << 32) + np.asarray(objects, dtype=np.int64)


def outlier_cells(
    backend: str | os.PathLike[str],
    thresholds: Thresholds,
    *,
    compartments: Sequence[str],
    strata: Sequence[str],
    hub: str = "Cytoplasm",
) -> OutlierCells:
    """Flag a backend's joined cells, reading only the threshold features (plate-wide z-scores).

    A flagged cell is a joined row (hub object and the objects it links); objects no cell
    links are never flagged. Counts per well (``strata``) and set go to :meth:`OutlierCells.summary`.
    """
    from .single_cells import SingleCellJoin

    join = SingleCellJoin(backend, compartments=compartments, hub=hub, metadata=list(strata))
    try:
        needed = sorted({f for conditions in thresholds.values() for f in conditions})
        missing = [f for f in needed if f not in join.feature_columns]
        if missing:
            raise InputError(f"cell QC threshold feature(s) {', '.join(missing)} are not among the features of "
                             f"{', '.join(join.compartments)}")
        features = {c: [f for f in join.features[c] if f in needed] for c in join.compartments}
        parts = [join.join_site(tn, features=features, count=False) for tn in join.site_order()]
    finally:
        join.close()
    table = pa.concat_tables(parts, promote_options="permissive") if parts else None
    out = OutlierCells(thresholds={k: dict(v) for k, v in thresholds.items()})
    if table is None or table.num_rows == 0:
        return out
    flags = outlier_flags({f: table.column(f).to_numpy(zero_copy_only=False).astype(np.float64) for f in needed}, thresholds)
    any_flag = np.zeros(table.num_rows, dtype=bool)
    for values in flags.values():
        any_flag |= values
    out.cells, out.excluded = table.num_rows, int(any_flag.sum())
    out.flagged = {k: int(v.sum()) for k, v in flags.items()}
    picked = table.filter(pa.array(any_flag))
    tns = np.array([str(t) for t in picked.column("Metadata_TableNumber").to_pylist()], dtype=object)
    images = picked.column("Metadata_ImageNumber").to_numpy(zero_copy_only=False)
    for c in join.compartments:
        keys = object_keys(images, picked.column(join.object_names[c]).to_numpy(zero_copy_only=False))
        out.objects[c] = {t: np.sort(keys[tns == t]) for t in dict.fromkeys(tns.tolist())}
    frame = table.select(list(strata)).to_pandas()
    for name, values in flags.items():
        frame[name] = values
    frame["excluded"] = any_flag
    grouped = frame.groupby(list(strata), dropna=False)[[*flags, "excluded"]].sum().astype(int).reset_index()
    grouped.insert(len(strata), "cells", frame.groupby(list(strata), dropna=False).size().to_numpy())
    out.per_well = grouped.to_dict(orient="records")
    return out
