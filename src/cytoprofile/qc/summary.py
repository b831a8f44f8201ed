"""The per-plate QC summary table (the recipe's columns, then cytoprofile's) and quarantined wells."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .. import io as cpio
from ..errors import InputError
from ..vocabulary import normal_well
from .metrics import cells_per_well, feature_columns, plate_rows

__all__ = [
    "RECIPE_SUMMARY_COLUMNS",
    "SUMMARY_COLUMNS",
    "summary_for_file",
    "summarize_plate",
    "quarantined_wells",
    "update_summary",
    "read_summary",
]

#: The recipe's summary columns, in its order.
RECIPE_SUMMARY_COLUMNS: tuple[str, ...] = (
    "Batch_Name",
    "Plate_Name",
    "Well_Count",
    "Images_per_site",
    "Sites_per_well_Median",
    "Sites_per_well_mad",
)
#: Every summary column: the recipe's, then cytoprofile's own.
SUMMARY_COLUMNS: tuple[str, ...] = (
    *RECIPE_SUMMARY_COLUMNS,
    "Cells_per_well_Median",
    "Cells_per_well_Min",
    "Wells_without_cells",
    "Wells_not_in_platemap",
    "Sites_quarantined",
    "Wells_quarantined",
    "Features_selected",
)
_INT_COLUMNS = ("Well_Count", "Images_per_site", "Cells_per_well_Min", "Wells_without_cells", "Wells_not_in_platemap",
                "Sites_quarantined", "Wells_quarantined", "Features_selected")


def summarize_plate(
    *,
    batch: str,
    plate: str,
    load_data: pd.DataFrame,
    profiles: pd.DataFrame | None = None,
    report: Mapping[str, Any] | None = None,
    selected_profiles: pd.DataFrame | None = None,
    well_columns: Sequence[str] | None = None,
    source: str | None = None,
    not_in_platemap: Collection[str] | None = None,
) -> dict[str, Any]:
    """One summary row for a plate (keys are :data:`SUMMARY_COLUMNS`).

    ``load_data`` has one row per site. ``Images_per_site`` is its number of
    ``FileName_*`` columns, ``Well_Count`` its number of distinct wells (keyed by
    ``Metadata_Well``, else ``Metadata_Row`` + ``Metadata_Col``, or ``well_columns``),
    and sites per well are rows per well. ``Sites_per_well_mad`` is a true, unscaled
    median absolute deviation, ``median(|x - median(x)|)``; it is not a mean
    deviation and carries no 1.4826 normal-consistency factor.

    Cells per well come from ``profiles["Metadata_Object_Count"]``; an imaged well
    with no profile row counts as a well without cells (0 cells). A well that lost
    sites to quarantine (in the ingest ``report``) is left out of ``Cells_per_well_*``
    and ``Wells_without_cells``: its count says what was lost, not what grew; it is
    counted in ``Wells_quarantined`` instead, the wells the cell-count map marks.
    Wells ``not_in_platemap`` (dropped by annotate with ``unmatched_wells: drop``) had
    cells but no profile row: they are counted in ``Wells_not_in_platemap`` and never
    as wells without cells (``pd.NA`` when not given and no profiles are given).
    The quarantined site count comes from ``report`` and the kept feature count from
    ``selected_profiles``; each is ``pd.NA`` when its input is not given.
    """
    where = source or "load_data"
    keys = _load_data_well_columns(load_data, well_columns, where)
    images = [c for c in load_data.columns if str(c).startswith("FileName_")]
    if not images:
        raise InputError(
            f"{where}: no FileName_<Channel> columns; give the load_data file CellProfiler "
            "was run with (one row per site, one FileName_ column per channel)"
        )
    per_well = load_data.dropna(subset=list(keys)).groupby(list(keys), sort=False).size()
    sites = per_well.to_numpy(dtype=float)
    row: dict[str, Any] = dict.fromkeys(SUMMARY_COLUMNS, pd.NA)
    row.update(
        Batch_Name=str(batch),
        Plate_Name=str(plate),
        Well_Count=int(len(per_well)),
        Images_per_site=len(images),
        Sites_per_well_Median=_int_if_whole(np.median(sites)) if len(sites) else pd.NA,
        Sites_per_well_mad=float(_mad(sites)) if len(sites) else pd.NA,
    )
    if profiles is not None:
        imaged = None
        if list(keys) == ["Metadata_Well"]:
            imaged = {normal_well(w) for w in load_data["Metadata_Well"].dropna().astype(str)}
        row.update(_cell_stats(plate_rows(profiles, plate), imaged, _lost_wells(report), not_in_platemap or ()))
    if not_in_platemap is not None:  # else unknown (no record of annotate's drops): n/a, not 0
        row["Wells_not_in_platemap"] = len(set(not_in_platemap))
    if report is not None:
        row["Sites_quarantined"] = _quarantined_count(report)
        row["Wells_quarantined"] = len(_lost_wells(report))
    if selected_profiles is not None:
        row["Features_selected"] = len(feature_columns(selected_profiles))
    return row


def _load_data_well_columns(
    load_data: pd.DataFrame, well_columns: Sequence[str] | None, where: str
) -> tuple[str, ...]:
    if well_columns is not None:
        missing = [c for c in well_columns if c not in load_data.columns]
        if missing:
            raise InputError(f"{where}: no column(s) {', '.join(missing)}; name the well columns that exist")
        return tuple(well_columns)
    if "Metadata_Well" in load_data.columns:
        return ("Metadata_Well",)
    if {"Metadata_Row", "Metadata_Col"} <= set(load_data.columns):
        return ("Metadata_Row", "Metadata_Col")
    raise InputError(
        f"{where}: no Metadata_Well column (nor Metadata_Row + Metadata_Col); "
        "add the well of each site, or name the well columns to group by"
    )


def _mad(values: np.ndarray) -> float:
    """Unscaled median absolute deviation."""
    med = np.median(values)
    return float(np.median(np.abs(values - med)))


def _int_if_whole(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def _lost_wells(report: Mapping[str, Any] | None) -> set[str]:
    """Wells (normalised) with at least one quarantined site in ``report``."""
    lost = quarantined_wells(report)["Metadata_Well"]
    return {str(w) for w in lost if w != "?"}


def _cell_stats(profiles: pd.DataFrame, imaged: set[str] | None, lost: set[str],
                dropped: Collection[str]) -> dict[str, Any]:
    stats = cells_per_well(profiles, imaged=imaged, quarantined=lost, not_in_platemap=dropped)
    return {
        "Cells_per_well_Median": stats["median"],
        "Cells_per_well_Min": stats["min"],
        "Wells_without_cells": stats["without_cells"],
    }


def _quarantined_count(report: Mapping[str, Any]) -> Any:
    totals = report.get("totals") or {}
    if "sites_quarantined" in totals:
        return int(totals["sites_quarantined"])
    sites = report.get("sites")
    if sites is None:
        return pd.NA
    return sum(1 for s in sites if s.get("status") == "quarantined")


def quarantined_wells(report: Mapping[str, Any] | None) -> pd.DataFrame:
    """Wells that lost sites to quarantine, from a plate's ingest report.

    One row per well with a quarantined site: ``Metadata_Well`` (normalised, e.g.
    ``A01``), ``Sites_quarantined`` (its sites left out), ``Sites_in_well`` (all its
    sites in the report, quarantined or not) and ``Reasons`` (distinct reasons, ``; ``-joined). A quarantined site whose well is
    unknown is listed under the well ``"?"``. Rows follow the report's order.
    """
    columns = ["Metadata_Well", "Sites_quarantined", "Sites_in_well", "Reasons"]
    sites = list((report or {}).get("sites") or [])
    if not sites:
        return pd.DataFrame(columns=columns)
    wells = [normal_well(str(s.get("well"))) if s.get("well") else "?" for s in sites]
    lost: dict[str, list[str]] = {}
    totals: dict[str, int] = {}
    for well, site in zip(wells, sites, strict=True):
        totals[well] = totals.get(well, 0) + 1
        if site.get("status") == "quarantined":
            lost.setdefault(well, []).append(str(site.get("reason") or "no reason given"))
    records = [
        {"Metadata_Well": well, "Sites_quarantined": len(reasons), "Sites_in_well": totals[well],
         "Reasons": "; ".join(dict.fromkeys(reasons))}
        for well, reasons in lost.items()
    ]
    return pd.DataFrame(records, columns=columns)


def update_summary(existing: pd.DataFrame | None, rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Append ``rows`` to ``existing``, one row per batch and plate (the newest wins).

    Rows come out sorted by ``Batch_Name`` then ``Plate_Name``, columns in the order
    of :data:`SUMMARY_COLUMNS` then any extra columns ``existing`` had.
    """
    frames = []
    if existing is not None and len(existing.columns):
        frames.append(existing)
    new = pd.DataFrame([dict(r) for r in rows])
    if len(new):
        frames.append(new)
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in SUMMARY_COLUMNS})
    table = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].copy()
    for key in ("Batch_Name", "Plate_Name"):
        if key not in table.columns:
            raise InputError(f"summary table has no {key} column; delete the summary file and re-run")
        table[key] = table[key].astype(str)
    table = table.drop_duplicates(subset=["Batch_Name", "Plate_Name"], keep="last")
    table = table.sort_values(["Batch_Name", "Plate_Name"], kind="mergesort").reset_index(drop=True)
    extra = [c for c in table.columns if c not in SUMMARY_COLUMNS]
    table = table.reindex(columns=[*SUMMARY_COLUMNS, *extra])
    for column in (*_INT_COLUMNS, "Sites_per_well_Median", "Cells_per_well_Median"):
        table[column] = _tidy_numbers(table[column])
    for column in ("Sites_per_well_mad",):
        table[column] = pd.to_numeric(table[column], errors="coerce").astype("Float64")
    return table


def _tidy_numbers(series: pd.Series) -> pd.Series:
    """Nullable integers where every value is whole, else nullable floats."""
    numbers = pd.to_numeric(series, errors="coerce").astype("Float64")
    present = numbers.dropna()
    if (present == present.round()).all():
        return numbers.round().astype("Int64")
    return numbers


def summary_for_file(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` as the summary file writes it: a whole number without ``.0`` (``19``, not
    ``19.0``) even in a column where another plate's value has a fraction (15 significant
    digits), a missing value as an empty cell."""
    out = table.copy()
    for column in out.columns:
        if pd.api.types.is_float_dtype(out[column].dtype):
            out[column] = [None if pd.isna(v) else f"{float(v):.15g}" for v in out[column]]
    return out


def read_summary(path: str | os.PathLike[str]) -> pd.DataFrame | None:
    """The summary table at ``path``, or ``None`` if there is none yet."""
    if not cpio.exists(path):
        return None
    try:
        return pd.read_csv(str(path), sep="\t", dtype={"Batch_Name": str, "Plate_Name": str})
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable summary table ({exc}); delete it and re-run") from exc
