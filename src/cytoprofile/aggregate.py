"""Per-well profiles: the median (or mean) of every feature over a well's objects.

One engine serves every way in: the collate stream hands it a well's cells while
they are in hand (so memory stays flat however large the plate),
:func:`aggregate` walks an existing backend well by well, including backends the
old ingest tool made (``Image_``-prefixed image columns, md5 TableNumbers), and
:func:`aggregate_cells` takes a single-cell DataFrame already in memory.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .checks import as_names
from .errors import ConfigError, InputError
from .vocabulary import (
    AGGREGATE_OPERATIONS,
    DEFAULT_COMPARTMENTS,
    DEFAULT_IMAGE_FEATURE_CATEGORIES,
    DEFAULT_STRATA,
    KEY_COLUMNS,
    LINKING_COLUMNS,
    compartment_features,
    metadata_columns,
    prefixed_features,
    table_prefixes,
    with_metadata_prefix,
)
from .vocabulary import AggregateOperation as Operation

if TYPE_CHECKING:
    from .cell_qc import OutlierCells

__all__ = [
    "WellAggregator",
    "aggregate",
    "aggregate_cells",
    "compartment_tables",
]

log = logging.getLogger("cytoprofile.aggregate")


def _reduce(values: np.ndarray, operation: Operation) -> np.ndarray:
    """Column-wise median/mean skipping NaN; an all-NaN (or empty) column gives NaN."""
    if values.shape[0] == 0:
        return np.full(values.shape[1], np.nan)
    if not values.flags.writeable:
        values = values.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        has_nan = np.isnan(values).any()
        if operation == "median":
            # the well's rows are a copy made for this reduction: partition them in place
            return np.nanmedian(values, axis=0, overwrite_input=True) if has_nan else np.median(values, axis=0, overwrite_input=True)
        return np.nanmean(values, axis=0) if has_nan else np.mean(values, axis=0)


@dataclass
class WellAggregator:
    """Accumulates one output row per well; rows come back sorted by strata.

    Arrays handed to :meth:`add` are reduced in place (their rows may be reordered).

    ``image_columns`` are the bare Image table columns available; the categories
    pick which become ``Metadata_Count_*`` (summed) and ``Image_*`` (aggregated).
    """

    strata: Sequence[str]
    compartments: Mapping[str, Sequence[str]]
    image_columns: Sequence[str]
    operation: Operation = "median"
    image_features: bool = True
    image_feature_categories: Sequence[str] = DEFAULT_IMAGE_FEATURE_CATEGORIES
    rows: list[tuple[tuple[object, ...], dict[str, object], np.ndarray]] = field(default_factory=list)

    def __post_init__(self) -> None:
        as_names("strata", self.strata)  # a stratum named twice would be two columns of the profiles
        if self.operation not in AGGREGATE_OPERATIONS:
            raise ConfigError(f"operation: {self.operation!r} is not supported; choose median or mean")
        cats = tuple(self.image_feature_categories) if self.image_features else ()
        self.count_columns = sorted(c for c in self.image_columns if "Count" in cats and c.startswith("Count_"))
        other = tuple(c for c in cats if c != "Count")
        self.image_feature_columns = sorted(c for c in self.image_columns if other and c.startswith(other)) if other else []
        unmatched = [c for c in cats if not any(col.startswith(f"{c}_") for col in self.image_columns)]
        if unmatched:
            log.warning("image feature categories with no Image column: %s", ", ".join(unmatched))
        self.site_count = "Metadata_Site" not in self.strata
        meta = list(self.strata)
        if self.site_count:
            meta.append("Metadata_Site_Count")
        meta += [with_metadata_prefix(c) for c in self.count_columns]
        meta.append("Metadata_Object_Count")
        self.metadata_columns = meta
        self.feature_columns = [f"Image_{c}" for c in self.image_feature_columns]
        for features in self.compartments.values():
            self.feature_columns.extend(features)
        self.first_compartment = next(iter(self.compartments), None)

    def add(
        self,
        key: Sequence[object],
        *,
        n_images: int,
        image_counts: np.ndarray,
        image_values: np.ndarray,
        objects: Mapping[str, np.ndarray],
    ) -> None:
        """Aggregate one well: image rows (counts, features) and per-compartment feature arrays."""
        meta: dict[str, object] = dict(zip(self.strata, key))
        if self.site_count:
            meta["Metadata_Site_Count"] = n_images
        if self.count_columns:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                sums = np.nansum(image_counts, axis=0)
            for c, v in zip(self.count_columns, sums):
                meta[with_metadata_prefix(c)] = float(v)
        first = objects.get(self.first_compartment) if self.first_compartment else None
        meta["Metadata_Object_Count"] = 0 if first is None else int(first.shape[0])
        parts = [_reduce(image_values, self.operation)] if self.image_feature_columns else []
        for compartment in self.compartments:
            parts.append(_reduce(objects[compartment], self.operation))
        values = np.concatenate(parts) if parts else np.empty(0)
        self.rows.append((tuple(key), meta, values))

    def result(self) -> pd.DataFrame:
        """The per-well table, rows sorted by strata, columns in profile order."""
        rows = sorted(self.rows, key=lambda r: tuple(_sort_key(v) for v in r[0]))
        meta = pd.DataFrame([r[1] for r in rows], columns=self.metadata_columns)
        if "Metadata_Object_Count" in meta:
            meta["Metadata_Object_Count"] = meta["Metadata_Object_Count"].astype("int64")
        if "Metadata_Site_Count" in meta:
            meta["Metadata_Site_Count"] = meta["Metadata_Site_Count"].astype("int64")
        values = np.vstack([r[2] for r in rows]) if rows else np.empty((0, len(self.feature_columns)))
        features = pd.DataFrame(values, columns=self.feature_columns)
        return pd.concat([meta, features], axis=1)


def compartment_tables(compartments: Sequence[str], tables: Iterable[str], *,
                       missing: Callable[[str], str]) -> dict[str, str]:
    """The object table of each compartment, names matched regardless of case.

    A compartment without a table is an ``InputError`` with the message ``missing(compartment)``.
    """
    by_lower = {t.lower(): t for t in tables}
    chosen: dict[str, str] = {}
    for compartment in compartments:
        table = by_lower.get(compartment.lower())
        if table is None:
            raise InputError(missing(compartment))
        chosen[compartment] = table
    return chosen


def _sort_key(value: object) -> tuple[int, object]:
    if isinstance(value, (int, float, np.integer, np.floating)):
        return (0, float(value))
    text = str(value)
    if text.lstrip("-").isdigit():  # Metadata_ columns are text in the backend: site "10" after "9"
        return (0, float(text))
    return (1, text)


def aggregate(
    backend: str | os.PathLike[str],
    *,
    operation: Operation = "median",
    strata: Sequence[str] = DEFAULT_STRATA,
    compartments: Sequence[str] = DEFAULT_COMPARTMENTS,
    image_features: bool = True,
    image_feature_categories: Sequence[str] = DEFAULT_IMAGE_FEATURE_CATEGORIES,
    sites: Sequence[int] | None = None,
    exclude: OutlierCells | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Per-well profiles from an existing backend (SQLite of either generation, or Parquet).

    Reads one well at a time, so memory holds one well's cells, not the plate.
    ``sites`` keeps only those fields of view (``Metadata_Site``); ``exclude``
    (:func:`cytoprofile.cell_qc.outlier_cells`) leaves the objects of flagged cells out.
    """
    from .backend import open_backend

    reader = open_backend(backend)
    try:
        image = reader.image()
        missing = [s for s in strata if s not in image.columns]
        if missing:
            raise InputError(
                f"{backend}: the Image table lacks strata column(s) {', '.join(missing)}; "
                f"available Metadata columns: {', '.join(metadata_columns(image.columns))}"
            )
        if image.empty:
            raise InputError(f"{backend}: the Image table has no rows, so the profiles would have no wells; "
                             "check that the backend was written to the end (re-run collate to rebuild it)")
        if sites is not None:
            if "Metadata_Site" not in image.columns:
                raise InputError(f"{backend}: sites were chosen but the Image table has no Metadata_Site column")
            present = set(pd.to_numeric(image["Metadata_Site"], errors="coerce").dropna().astype(int))
            absent = sorted({int(x) for x in sites} - present)
            if absent:
                log.warning("%s: site(s) %s asked for but not in the Image table", backend, ", ".join(map(str, absent)))
            image = image[pd.to_numeric(image["Metadata_Site"], errors="coerce").isin([int(x) for x in sites])].reset_index(drop=True)
            if image.empty:
                raise InputError(
                    f"{backend}: none of the sites {', '.join(map(str, sites))} is in the Image table (sites "
                    f"{', '.join(map(str, sorted(present)))}); the profiles would have no wells: choose existing sites"
                )
        available = {t.lower(): t for t in reader.object_tables()}
        tables = compartment_tables(compartments, reader.object_tables(), missing=lambda compartment: (
            f"{backend}: no {compartment} table; available object tables: {', '.join(sorted(available.values())) or 'none'}"))
        compartments = list(tables.values())  # as the backend spells them: the profile columns are its columns
        features = {t: compartment_features(t, reader.tables[t]) for t in compartments}
        agg = WellAggregator(
            strata=list(strata),
            compartments=features,
            image_columns=[c for c in image.columns if c not in KEY_COLUMNS],
            operation=operation,
            image_features=image_features,
            image_feature_categories=image_feature_categories,
        )
        numeric = image.apply(pd.to_numeric, errors="coerce") if (agg.count_columns or agg.image_feature_columns) else None
        groups = image.groupby(list(strata), sort=True, dropna=False).indices
        for done, (key, idx) in enumerate(groups.items(), start=1):
            key_tuple = key if isinstance(key, tuple) else (key,)
            rows = image.iloc[idx]
            pairs = list(zip(rows["TableNumber"].tolist(), rows["ImageNumber"].tolist()))
            objects = {t: reader.read_objects(t, features[t], pairs) if exclude is None else
                       _kept_objects(reader, t, features[t], pairs, exclude, t) for t in compartments}
            counts = numeric.iloc[idx][agg.count_columns].to_numpy(dtype=float) if numeric is not None else np.empty((len(idx), 0))
            values = numeric.iloc[idx][agg.image_feature_columns].to_numpy(dtype=float) if numeric is not None else np.empty((len(idx), 0))
            agg.add(key_tuple, n_images=len(idx), image_counts=counts, image_values=values, objects=objects)
            if progress is not None:
                progress(done, len(groups))
        return agg.result()
    finally:
        reader.close()


def _kept_objects(reader: Any, table: str, features: Sequence[str], pairs: Sequence[tuple[object, object]],
                  exclude: OutlierCells, compartment: str) -> np.ndarray:
    """A well's objects of one table without those of flagged cells (one read per site)."""
    by_site: dict[object, list[tuple[object, object]]] = {}
    for t, i in pairs:
        by_site.setdefault(t, []).append((t, i))
    parts = [np.empty((0, len(features)))]
    for t, site_pairs in by_site.items():
        got = reader.read_objects(table, ["ImageNumber", "ObjectNumber", *features], site_pairs)
        keep = exclude.kept(compartment, t, got[:, 0].astype(np.int64), got[:, 1].astype(np.int64))
        parts.append(got[keep, 2:])
    return np.concatenate(parts)


def aggregate_cells(
    population_df: pd.DataFrame,
    *,
    strata: Sequence[str] = DEFAULT_STRATA,
    features: Sequence[str] | Literal["infer"] = "infer",
    operation: Operation = "median",
    compute_object_count: bool = False,
    object_feature: str = "Metadata_ObjectNumber",
    compartments: Sequence[str] = DEFAULT_COMPARTMENTS,
    image_features: bool = False,
) -> pd.DataFrame:
    """Per-stratum profiles of a single-cell DataFrame (pycytominer ``aggregate``'s arguments).

    Same reduction as the streaming engine: median or mean of each feature skipping
    NaN. ``features="infer"`` takes the columns named after a compartment (and
    ``Image_*`` with ``image_features``). Output: strata, ``Metadata_Object_Count``
    (non-null ``object_feature`` per stratum, when asked), features; rows sorted by strata.
    """
    if operation not in AGGREGATE_OPERATIONS:
        raise ConfigError(f"operation: {operation!r} is not supported; choose median or mean")
    strata = list(strata)
    missing = [c for c in strata if c not in population_df.columns]
    if missing:
        raise InputError(f"strata column(s) {', '.join(missing)} not in the single-cell table")
    if features == "infer":
        prefixes = table_prefixes(compartments, image=image_features)
        features = [c for c in prefixed_features(population_df.columns, prefixes) if c not in LINKING_COLUMNS]
        if not features:
            raise InputError(f"no feature columns (names starting with {', '.join(prefixes)}) in the single-cell table")
    features = [f for f in features if f not in strata]
    if compute_object_count and object_feature not in population_df.columns:
        raise InputError(f"object_feature {object_feature} is not a column of the single-cell table")
    values = population_df[list(features)].to_numpy(dtype=np.float64)
    groups = population_df[strata].groupby(strata, sort=True, dropna=False).indices
    rows = []
    counts = []
    for idx in groups.values():
        rows.append(_reduce(values[idx], operation))
        if compute_object_count:
            counts.append(int(population_df[object_feature].iloc[idx].notna().sum()))
    keys = [k if isinstance(k, tuple) else (k,) for k in groups]
    out = pd.DataFrame(keys, columns=strata)
    if compute_object_count:
        out["Metadata_Object_Count"] = np.array(counts, dtype=np.int64)
    reduced = np.vstack(rows) if rows else np.empty((0, len(features)))
    return pd.concat([out, pd.DataFrame(reduced, columns=list(features))], axis=1)
