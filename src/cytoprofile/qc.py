"""Quality control: a per-plate summary table, plate heatmaps and one HTML report per batch.

Everything is computed by pure functions from DataFrames and dicts; only
:func:`quality_control` reads the workspace and writes files, each atomically, so an
interrupted run never leaves a half-written summary, image or report behind.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io as _io
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import io as cpio
from .errors import InputError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "RECIPE_SUMMARY_COLUMNS",
    "SUMMARY_COLUMNS",
    "FIGURE_NAMES",
    "QualityControlResult",
    "summarize_plate",
    "update_summary",
    "read_summary",
    "plate_layout",
    "well_to_grid",
    "grid_to_well",
    "feature_columns",
    "well_correlation",
    "cell_count_figure",
    "correlation_figure",
    "position_effect",
    "position_effect_figure",
    "percent_replicating",
    "replication_figure",
    "figure_png",
    "render_report",
    "quality_control",
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
    "Sites_quarantined",
    "Features_selected",
)
#: Heatmaps made per plate, as in ``PLATE_{name}.png``.
FIGURE_NAMES: tuple[str, ...] = ("cell_count", "correlation", "position_effect")

_FEATURE_PREFIXES = ("Cells_", "Cytoplasm_", "Nuclei_", "Image_")
_COUNT_COLUMNS = ("Metadata_Object_Count", "Cytoplasm_Number_Object_Number")
_REPLICATE_CANDIDATES = (
    "Metadata_broad_sample",
    "Metadata_pert_iname",
    "Metadata_JCP2022",
    "Metadata_treatment",
    "Metadata_Treatment",
)
_PLATE_FORMATS = ((8, 12), (16, 24), (32, 48))
_WELL_RE = re.compile(r"^\s*([A-Za-z]{1,2})\s*0*(\d{1,3})\s*$")
_INT_COLUMNS = ("Well_Count", "Images_per_site", "Cells_per_well_Min", "Wells_without_cells",
                "Sites_quarantined", "Features_selected")
_PLATE_FIGSIZE = (9.0, 6.0)
_SQUARE_FIGSIZE = (8.0, 7.0)
_GREY = "#d0d0d0"


# --------------------------------------------------------------------------- summary


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
) -> dict[str, Any]:
    """One summary row for a plate (keys are :data:`SUMMARY_COLUMNS`).

    ``load_data`` has one row per site. ``Images_per_site`` is its number of
    ``FileName_*`` columns, ``Well_Count`` its number of distinct wells (keyed by
    ``Metadata_Well``, else ``Metadata_Row`` + ``Metadata_Col``, or ``well_columns``),
    and sites per well are rows per well. ``Sites_per_well_mad`` is a true, unscaled
    median absolute deviation, ``median(|x - median(x)|)``; it is not a mean
    deviation and carries no 1.4826 normal-consistency factor.

    Cells per well come from ``profiles["Metadata_Object_Count"]``; an imaged well
    with no profile row counts as a well without cells (0 cells). The quarantined
    site count comes from the ingest ``report`` and the kept feature count from
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
            imaged = {_normal_well(w) for w in load_data["Metadata_Well"].dropna().astype(str)}
        row.update(_cell_stats(_plate_rows(profiles, plate), imaged))
    if report is not None:
        row["Sites_quarantined"] = _quarantined_count(report)
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


def _cell_stats(profiles: pd.DataFrame, imaged: set[str] | None) -> dict[str, Any]:
    column = _count_column(profiles)
    counts = pd.to_numeric(profiles[column], errors="coerce").fillna(0.0)
    if "Metadata_Well" in profiles.columns:
        wells = profiles["Metadata_Well"].astype(str).map(_normal_well)
        counts = counts.groupby(wells.to_numpy()).sum()
        if imaged:
            counts = counts.reindex(sorted(imaged | set(counts.index)), fill_value=0.0)
    values = counts.to_numpy(dtype=float)
    if not len(values):
        return {"Cells_per_well_Median": pd.NA, "Cells_per_well_Min": pd.NA, "Wells_without_cells": 0}
    return {
        "Cells_per_well_Median": _int_if_whole(np.median(values)),
        "Cells_per_well_Min": int(values.min()),
        "Wells_without_cells": int((values <= 0).sum()),
    }


def _count_column(profiles: pd.DataFrame) -> str:
    for column in _COUNT_COLUMNS:
        if column in profiles.columns:
            return column
    raise InputError(
        "per-well profiles have no Metadata_Object_Count column; give the aggregated "
        "(or annotated) profiles, which carry the number of cells per well"
    )


def _quarantined_count(report: Mapping[str, Any]) -> Any:
    totals = report.get("totals") or {}
    if "sites_quarantined" in totals:
        return int(totals["sites_quarantined"])
    sites = report.get("sites")
    if sites is None:
        return pd.NA
    return sum(1 for s in sites if s.get("status") == "quarantined")


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


def read_summary(path: str | os.PathLike[str]) -> pd.DataFrame | None:
    """The summary table at ``path``, or ``None`` if there is none yet."""
    if not cpio.exists(path):
        return None
    try:
        return pd.read_csv(str(path), sep="\t", dtype={"Batch_Name": str, "Plate_Name": str})
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable summary table ({exc}); delete it and re-run") from exc


# --------------------------------------------------------------------------- plate geometry


def well_to_grid(well: str) -> tuple[int, int]:
    """Zero-based (row, column) of a well name: ``"A01"`` → (0, 0), ``"AF48"`` → (31, 47)."""
    match = _WELL_RE.match(str(well))
    if not match:
        raise InputError(
            f"well {well!r} is not a well name like 'A01' or 'AF48'; "
            "check the Metadata_Well column"
        )
    letters, number = match.group(1).upper(), int(match.group(2))
    row = 0
    for letter in letters:  # bijective base 26: A..Z, AA..AZ, ...
        row = row * 26 + (ord(letter) - ord("A") + 1)
    if number < 1:
        raise InputError(f"well {well!r}: columns start at 1; check the Metadata_Well column")
    return row - 1, number - 1


def _row_label(index: int) -> str:
    label = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        label = chr(ord("A") + rest) + label
    return label


def grid_to_well(row: int, col: int) -> str:
    """Well name of a zero-based grid position: (31, 47) → ``"AF48"``."""
    return f"{_row_label(row)}{col + 1:02d}"


def _normal_well(well: str) -> str:
    try:
        return grid_to_well(*well_to_grid(well))
    except InputError:
        return str(well)


def plate_layout(wells: Iterable[str]) -> tuple[int, int]:
    """(rows, columns) of the smallest 96-, 384- or 1536-well plate holding ``wells``.

    Wells beyond 32 × 48 give a grid just large enough; no wells give 8 × 12.
    """
    max_row = max_col = -1
    for well in wells:
        row, col = well_to_grid(well)
        max_row, max_col = max(max_row, row), max(max_col, col)
    for n_rows, n_cols in _PLATE_FORMATS:
        if max_row < n_rows and max_col < n_cols:
            return n_rows, n_cols
    return max_row + 1, max_col + 1


# --------------------------------------------------------------------------- profiles helpers


def feature_columns(profiles: pd.DataFrame) -> list[str]:
    """Feature columns: names starting with ``Cells_``, ``Cytoplasm_``, ``Nuclei_`` or ``Image_``."""
    return [c for c in profiles.columns if str(c).startswith(_FEATURE_PREFIXES)]


def _plate_rows(profiles: pd.DataFrame, plate: str) -> pd.DataFrame:
    if "Metadata_Plate" in profiles.columns:
        mask = profiles["Metadata_Plate"].astype(str) == str(plate)
        if mask.any():
            return profiles.loc[mask]
    return profiles


def _require_wells(profiles: pd.DataFrame, what: str) -> None:
    if "Metadata_Well" not in profiles.columns:
        raise InputError(f"{what}: no Metadata_Well column; give per-well profiles")


def _well_matrix(
    profiles: pd.DataFrame, features: Sequence[str] | None
) -> tuple[list[str], np.ndarray, list[str]]:
    """Wells in plate order, their feature matrix (mean over duplicate rows), usable features."""
    _require_wells(profiles, "profiles")
    feats = list(features) if features is not None else feature_columns(profiles)
    missing = [f for f in feats if f not in profiles.columns]
    if missing:
        raise InputError(f"profiles lack feature column(s) {', '.join(missing[:5])}; pick features they have")
    wells = profiles["Metadata_Well"].astype(str).map(_normal_well)
    values = profiles[feats].apply(pd.to_numeric, errors="coerce")
    values.index = wells.to_numpy()
    values = values.groupby(level=0, sort=False).mean()
    finite = np.isfinite(values.to_numpy(dtype=float)).all(axis=0)
    values = values.loc[:, finite]
    order = sorted(values.index, key=lambda w: (well_to_grid(w)[0], well_to_grid(w)[1]))
    values = values.loc[order]
    return list(values.index), values.to_numpy(dtype=float), list(values.columns)


def _standardize_rows(x: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit norm, so a dot product is a Pearson correlation."""
    centred = x - x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, centred / norms, np.nan)


def well_correlation(profiles: pd.DataFrame, *, features: Sequence[str] | None = None) -> pd.DataFrame:
    """Wells × wells Pearson correlation across features, wells in plate (row-major) order."""
    wells, x, _ = _well_matrix(profiles, features)
    z = _standardize_rows(x) if x.size else np.zeros((len(wells), 0))
    corr = np.clip(z @ z.T, -1.0, 1.0) if z.shape[1] else np.full((len(wells),) * 2, np.nan)
    return pd.DataFrame(corr, index=wells, columns=wells)


# --------------------------------------------------------------------------- figures


def _new_figure(figsize: tuple[float, float]) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _plate_grid(values: Mapping[Any, Any], shape: tuple[int, int]) -> np.ndarray:
    grid = np.full(shape, np.nan)
    for well, value in values.items():
        row, col = well_to_grid(well)
        if row < shape[0] and col < shape[1] and value is not None and not pd.isna(value):
            grid[row, col] = float(value)
    return grid


def _draw_plate(
    fig: Figure,
    grid: np.ndarray,
    *,
    title: str,
    colorbar_label: str,
    cmap: str,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Axes:
    import matplotlib as mpl

    ax = fig.add_subplot()
    colormap = mpl.colormaps[cmap].with_extremes(bad=_GREY)
    image = ax.imshow(
        np.ma.masked_invalid(grid), cmap=colormap, vmin=vmin, vmax=vmax,
        interpolation="nearest", aspect="equal",
    )
    n_rows, n_cols = grid.shape
    small = 7 if n_cols <= 24 else 5.5
    col_step = 1 if n_cols <= 24 else 2
    ax.set_xticks(range(0, n_cols, col_step), [str(c + 1) for c in range(0, n_cols, col_step)], fontsize=small)
    ax.set_yticks(range(n_rows), [_row_label(r) for r in range(n_rows)], fontsize=small)
    ax.xaxis.tick_top()
    ax.set_xticks(np.arange(-0.5, n_cols, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n_rows, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.6 if n_cols <= 24 else 0.3)
    ax.tick_params(which="minor", length=0)
    ax.tick_params(which="major", length=0)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(f"{n_rows * n_cols}-well plate; grey: no data for the well", fontsize=8)
    bar = fig.colorbar(image, ax=ax, shrink=0.8)
    bar.set_label(colorbar_label)
    return ax


def cell_count_figure(
    profiles: pd.DataFrame, *, plate: str, shape: tuple[int, int] | None = None
) -> Figure:
    """Cells per well (``Metadata_Object_Count``) on the plate grid; wells without data grey."""
    rows = _plate_rows(profiles, plate)
    _require_wells(rows, f"profiles of plate {plate}")
    column = _count_column(rows)
    wells = rows["Metadata_Well"].astype(str).map(_normal_well)
    counts = pd.to_numeric(rows[column], errors="coerce").groupby(wells.to_numpy()).sum(min_count=1)
    shape = shape or plate_layout(counts.index)
    grid = _plate_grid(counts.to_dict(), shape)
    fig = _new_figure(_PLATE_FIGSIZE)
    present = grid[np.isfinite(grid)]
    summary = (
        f"wells with data: {present.size}, median {np.median(present):,.0f}, min {present.min():,.0f}"
        if present.size
        else "no data"
    )
    _draw_plate(
        fig, grid, cmap="viridis", vmin=0,
        title=f"Plate {plate}: cells per well ({column})\n{summary}",
        colorbar_label="cells per well",
    )
    return fig


def correlation_figure(
    profiles: pd.DataFrame, *, plate: str, features: Sequence[str] | None = None
) -> Figure:
    """Well-by-well Pearson correlation matrix of a plate's profiles (wells in plate order)."""
    import matplotlib as mpl

    rows = _plate_rows(profiles, plate)
    corr = well_correlation(rows, features=features)
    n_features = len(_well_matrix(rows, features)[2])
    fig = _new_figure(_SQUARE_FIGSIZE)
    ax = fig.add_subplot()
    colormap = mpl.colormaps["RdBu_r"].with_extremes(bad=_GREY)
    image = ax.imshow(
        np.ma.masked_invalid(corr.to_numpy()), cmap=colormap, vmin=-1, vmax=1,
        interpolation="nearest", aspect="equal",
    )
    wells = list(corr.index)
    step = max(1, math.ceil(len(wells) / 32))
    ticks = list(range(0, len(wells), step))
    fontsize = 7 if len(ticks) <= 24 else 5.5
    ax.set_xticks(ticks, [wells[i] for i in ticks], rotation=90, fontsize=fontsize)
    ax.set_yticks(ticks, [wells[i] for i in ticks], fontsize=fontsize)
    ax.set_xlabel("well")
    ax.set_ylabel("well")
    ax.set_title(
        f"Plate {plate}: well-by-well Pearson correlation\n"
        f"{len(wells)} wells, {n_features} features",
        fontsize=11,
    )
    bar = fig.colorbar(image, ax=ax, shrink=0.8)
    bar.set_label("Pearson correlation between wells")
    return fig


def position_effect(
    profiles: pd.DataFrame, *, features: Sequence[str] | None = None, quantile: float = 0.95
) -> pd.DataFrame:
    """Per well, the share of its correlations with same-row or same-column wells above a threshold.

    The threshold is the ``quantile`` of all distinct well-pair correlations of the
    plate (stored in ``result.attrs["threshold"]``). A well sharing no row or column
    with another well gets NaN. Columns: ``Metadata_Well``, ``Row``, ``Column``
    (1-based), ``Position_Effect`` and ``Comparisons``.
    """
    corr = well_correlation(profiles, features=features)
    wells = list(corr.index)
    values = corr.to_numpy()
    grid = np.array([well_to_grid(w) for w in wells], dtype=int).reshape(-1, 2)
    rows, cols = grid[:, 0], grid[:, 1]
    upper = values[np.triu_indices(len(wells), k=1)]
    upper = upper[np.isfinite(upper)]
    threshold = float(np.quantile(upper, quantile)) if upper.size else float("nan")
    same = (rows[:, None] == rows[None, :]) | (cols[:, None] == cols[None, :])
    np.fill_diagonal(same, False)
    usable = same & np.isfinite(values)
    above = usable & (values > threshold)
    comparisons = usable.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(comparisons > 0, above.sum(axis=1) / np.maximum(comparisons, 1), np.nan)
    result = pd.DataFrame(
        {
            "Metadata_Well": wells,
            "Row": [_row_label(r) for r in rows],
            "Column": cols + 1,
            "Position_Effect": share,
            "Comparisons": comparisons,
        }
    )
    result.attrs["threshold"] = threshold
    result.attrs["quantile"] = quantile
    return result


def position_effect_figure(
    profiles: pd.DataFrame,
    *,
    plate: str,
    features: Sequence[str] | None = None,
    quantile: float = 0.95,
    shape: tuple[int, int] | None = None,
) -> Figure:
    """:func:`position_effect` on the plate grid (0 = none, 1 = all above the threshold)."""
    rows = _plate_rows(profiles, plate)
    effect = position_effect(rows, features=features, quantile=quantile)
    shape = shape or plate_layout(effect["Metadata_Well"])
    grid = _plate_grid(dict(zip(effect["Metadata_Well"], effect["Position_Effect"], strict=True)), shape)
    fig = _new_figure(_PLATE_FIGSIZE)
    percentile = f"{quantile * 100:g}th percentile"
    _draw_plate(
        fig, grid, cmap="viridis", vmin=0, vmax=1,
        title=(
            f"Plate {plate}: position effect\nshare of same-row/column well correlations above the "
            f"{percentile} of all pairs (r > {effect.attrs['threshold']:.2f})"
        ),
        colorbar_label="share above threshold",
    )
    return fig


def figure_png(fig: Figure, *, dpi: int = 100) -> bytes:
    """The figure as PNG bytes, exactly ``figsize × dpi`` pixels."""
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()


# --------------------------------------------------------------------------- replication


def _replicate_column(profiles: pd.DataFrame, replicate_column: str | None) -> str:
    if replicate_column is not None:
        if replicate_column not in profiles.columns:
            raise InputError(
                f"profiles have no {replicate_column} column; name the plate map column "
                "that identifies a treatment"
            )
        return replicate_column
    for column in _REPLICATE_CANDIDATES:
        if column in profiles.columns:
            return column
    raise InputError(
        "profiles have none of " + ", ".join(_REPLICATE_CANDIDATES)
        + "; annotate them with the plate map or name the treatment column"
    )


def percent_replicating(
    profiles: pd.DataFrame,
    *,
    replicate_column: str | None = None,
    negcon_column: str = "Metadata_control_type",
    negcon_value: str = "negcon",
    features: Sequence[str] | None = None,
    quantile: float = 0.95,
    n_null: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Share of treatments whose replicates correlate better than non-replicates.

    For each treatment (value of ``replicate_column``, default the first present of
    ``Metadata_broad_sample``, ``Metadata_pert_iname``, ...) with two or more wells,
    the median Pearson correlation across features of all pairs of its wells, over
    every plate given. The null is ``n_null`` random pairs of wells of different
    treatments (all such pairs when fewer); a treatment replicates when its median
    exceeds the null's ``quantile``. Negative controls (``negcon_column ==
    negcon_value``) and wells without a treatment are not scored.

    Returns ``percent`` (0–100, NaN if nothing is scored), ``threshold``, ``quantile``,
    ``replicate_column``, ``n_treatments``, ``n_replicating``, ``n_wells``,
    ``n_features``, ``treatments`` (DataFrame: treatment, ``n_replicates``,
    ``median_correlation``, ``replicating``) and ``null`` (array of correlations).
    """
    column = _replicate_column(profiles, replicate_column)
    keep = profiles[column].notna()
    if negcon_column in profiles.columns:
        keep &= profiles[negcon_column].astype(str) != str(negcon_value)
    wells = profiles.loc[keep]
    feats = list(features) if features is not None else feature_columns(profiles)
    x = wells[feats].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    usable = np.isfinite(x).all(axis=0) if len(x) else np.zeros(len(feats), bool)
    x = x[:, usable]
    labels = wells[column].astype(str).to_numpy()
    codes, uniques = pd.factorize(labels)
    z = _standardize_rows(x) if x.shape[1] >= 2 else np.full((len(x), 0), np.nan)

    records = []
    for code, name in enumerate(uniques):
        members = np.flatnonzero(codes == code)
        if len(members) < 2:
            continue
        pairs = (z[members] @ z[members].T)[np.triu_indices(len(members), k=1)] if z.shape[1] else []
        median = float(np.nanmedian(pairs)) if np.isfinite(pairs).any() else float("nan")
        records.append({column: name, "n_replicates": len(members), "median_correlation": median})
    treatments = pd.DataFrame(records, columns=[column, "n_replicates", "median_correlation"])

    null = _null_correlations(z, codes, n_null=n_null, seed=seed) if z.shape[1] else np.array([])
    threshold = float(np.quantile(null, quantile)) if null.size else float("nan")
    treatments["replicating"] = treatments["median_correlation"].to_numpy() > threshold
    scored = treatments["median_correlation"].notna()
    n_scored = int(scored.sum())
    n_replicating = int(treatments.loc[scored, "replicating"].sum())
    percent = 100.0 * n_replicating / n_scored if n_scored and null.size else float("nan")
    return {
        "percent": percent,
        "threshold": threshold,
        "quantile": quantile,
        "replicate_column": column,
        "n_treatments": n_scored,
        "n_replicating": n_replicating,
        "n_wells": len(wells),
        "n_features": int(x.shape[1]),
        "treatments": treatments.sort_values("median_correlation", ascending=False, kind="mergesort")
        .reset_index(drop=True),
        "null": null,
    }


def _null_correlations(z: np.ndarray, codes: np.ndarray, *, n_null: int, seed: int) -> np.ndarray:
    """Correlations of random pairs of wells of different treatments."""
    n = len(codes)
    if n < 2:
        return np.array([])
    rng = np.random.default_rng(seed)
    total = n * (n - 1) // 2
    if total <= n_null:
        i, j = np.triu_indices(n, k=1)
        distinct = codes[i] != codes[j]
        i, j = i[distinct], j[distinct]
    else:
        if len(np.unique(codes)) < 2:
            return np.array([])
        chosen_i: list[np.ndarray] = []
        chosen_j: list[np.ndarray] = []
        found = 0
        while found < n_null:
            a = rng.integers(0, n, size=2 * n_null)
            b = rng.integers(0, n, size=2 * n_null)
            ok = codes[a] != codes[b]
            chosen_i.append(a[ok])
            chosen_j.append(b[ok])
            found += int(ok.sum())
        i = np.concatenate(chosen_i)[:n_null]
        j = np.concatenate(chosen_j)[:n_null]
    values = np.einsum("ij,ij->i", z[i], z[j])
    return np.clip(values[np.isfinite(values)], -1.0, 1.0)


def replication_figure(replication: Mapping[str, Any], *, batch: str) -> Figure:
    """Histograms of treatments' median replicate correlations and of the null, with the threshold."""
    fig = _new_figure((8.0, 4.5))
    ax = fig.add_subplot()
    null = np.asarray(replication.get("null", []), dtype=float)
    treatments = replication.get("treatments")
    medians = (
        treatments["median_correlation"].dropna().to_numpy(dtype=float)
        if isinstance(treatments, pd.DataFrame) and len(treatments)
        else np.array([])
    )
    bins = [float(b) for b in np.linspace(-1, 1, 81)]
    if null.size:
        ax.hist(null, bins=bins, density=True, alpha=0.6, color="#7f7f7f",
                label=f"null: non-replicate well pairs (n={null.size:,})")
    if medians.size:
        ax.hist(medians, bins=bins, density=True, alpha=0.6, color="#d62728",
                label=f"treatments: median replicate correlation (n={medians.size:,})")
    threshold = float(replication.get("threshold", float("nan")))
    if math.isfinite(threshold):
        ax.axvline(threshold, color="black", linestyle="--",
                   label=f"{float(replication.get('quantile', 0.95)) * 100:g}th percentile of null ({threshold:.2f})")
    percent = float(replication.get("percent", float("nan")))
    shown = f"{percent:.1f}%" if math.isfinite(percent) else "n/a"
    ax.set_title(f"Batch {batch}: percent replicating {shown}", fontsize=11)
    ax.set_xlabel("Pearson correlation across features")
    ax.set_ylabel("density")
    ax.set_xlim(-1, 1)
    if null.size or medians.size:
        ax.legend(fontsize=8, loc="upper left")
    return fig


# --------------------------------------------------------------------------- report

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:2em}
h3{margin-bottom:.3em}.muted{color:#666;font-size:.9em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f2f2f2}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.figs{display:flex;flex-wrap:wrap;gap:12px}.figs figure{margin:0}
.figs img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#444;max-width:640px}
.wide{overflow-x:auto}.ok{color:#2a7a2a}.warn{color:#b35900}nav a{margin-right:10px}
"""

_IMAGES_CHECK = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; }
  }
  document.body.setAttribute('data-images-ok', String(ok));
  document.body.setAttribute('data-images-total', String(imgs.length));
});
"""

_CAPTIONS = {
    "cell_count": "Cells per well on the plate grid; grey wells have no data.",
    "correlation": "Pearson correlation between every pair of wells across the negative-control "
    "normalized, feature-selected profiles.",
    "position_effect": "Per well, the share of its correlations with wells in the same row or column "
    "that exceed the 95th percentile of all well-pair correlations; high values hint at row or "
    "column artefacts.",
}


def _e(value: Any) -> str:
    return html.escape("" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value))


def _html_table(frame: pd.DataFrame, *, max_rows: int | None = None) -> str:
    shown = frame if max_rows is None else frame.head(max_rows)
    head = "".join(f"<th>{_e(c).replace('_', '_<wbr>')}</th>" for c in shown.columns)
    body = []
    for record in shown.itertuples(index=False, name=None):
        cells = []
        for value in record:
            numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            text = _format_number(value) if numeric else _e(value)
            cells.append(f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = ""
    if max_rows is not None and len(frame) > max_rows:
        more = f'<p class="muted">{len(frame) - max_rows:,} more rows not shown.</p>'
    return (
        f'<div class="wide"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>{more}"
    )


def _format_number(value: float) -> str:
    number = float(value)
    if not math.isfinite(number):
        return ""
    if number.is_integer():
        return f"{int(number):,}" if abs(number) >= 10_000 else str(int(number))
    return f"{number:.3f}".rstrip("0")


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _anchor(plate: str) -> str:
    return "plate-" + re.sub(r"[^A-Za-z0-9_-]", "_", plate)


def _ingest_section(report: Mapping[str, Any] | None) -> str:
    if report is None:
        return '<p class="muted">No ingest report for this plate.</p>'
    parts = []
    totals = report.get("totals") or {}
    if totals:
        parts.append(
            "<p>Ingest: {sites} sites, {ok} ok, {bad} quarantined, {wells} wells.</p>".format(
                sites=_e(totals.get("sites")), ok=_e(totals.get("sites_ok")),
                bad=_e(totals.get("sites_quarantined")), wells=_e(totals.get("wells")),
            )
        )
    bad = [s for s in report.get("sites") or [] if s.get("status") == "quarantined"]
    if bad:
        frame = pd.DataFrame(
            [{"site": s.get("site"), "well": s.get("well"), "reason": s.get("reason"), "file": s.get("file")} for s in bad]
        )
        parts.append(f'<h4 class="warn">Quarantined sites ({len(bad)})</h4>' + _html_table(frame))
    else:
        parts.append('<p class="ok">No quarantined sites.</p>')
    missing = report.get("missing_columns") or {}
    records = [
        {"table": table, "column": column, "sites": len(sites), "example sites": ", ".join(map(str, list(sites)[:5]))}
        for table, columns in missing.items()
        for column, sites in (columns or {}).items()
    ]
    if records:
        parts.append(
            f'<h4 class="warn">Missing columns ({len(records)})</h4>'
            + _html_table(pd.DataFrame(records), max_rows=200)
        )
    else:
        parts.append('<p class="ok">No missing columns.</p>')
    return "\n".join(parts)


def _replication_section(batch: str, replication: Mapping[str, Any] | None, note: str | None) -> str:
    if replication is None:
        reason = note or "no annotated, feature-selected profiles for this batch"
        return f'<p class="muted">Not computed: {_e(reason)}.</p>'
    percent = float(replication.get("percent", float("nan")))
    threshold = float(replication.get("threshold", float("nan")))
    quantile = float(replication.get("quantile", 0.95))
    shown = f"{percent:.1f}%" if math.isfinite(percent) else "n/a"
    text = (
        f"<p><b>Percent replicating: {shown}</b> ({_e(replication.get('n_replicating'))} of "
        f"{_e(replication.get('n_treatments'))} treatments, by <code>{_e(replication.get('replicate_column'))}</code>). "
        f"A treatment replicates when the median Pearson correlation between its replicate wells "
        f"(across all plates of the batch, {_e(replication.get('n_features'))} features) exceeds the "
        f"{quantile * 100:g}th percentile ({threshold:.3f}) of correlations between wells of different "
        f"treatments. Negative controls are not scored.</p>"
    )
    figure = replication_figure(replication, batch=batch)
    image = _img(figure_png(figure), f"percent replicating histogram for batch {batch}")
    treatments = replication.get("treatments")
    table = ""
    if isinstance(treatments, pd.DataFrame) and len(treatments):
        table = (
            f"<details><summary>Per-treatment median replicate correlation ({len(treatments):,})</summary>"
            + _html_table(treatments, max_rows=2000) + "</details>"
        )
    return text + f'<div class="figs"><figure>{image}</figure></div>' + table


def render_report(
    *,
    batch: str,
    summary: pd.DataFrame,
    figures: Mapping[str, Mapping[str, bytes]],
    ingest_reports: Mapping[str, Mapping[str, Any] | None],
    replication: Mapping[str, Any] | None,
    notes: Mapping[str, Sequence[str]] | None = None,
    replication_note: str | None = None,
) -> str:
    """A self-contained HTML report for a batch: images inline, no network needed to view it.

    ``figures`` maps plate → figure name (``cell_count``, ``correlation``,
    ``position_effect``) → PNG bytes; ``notes`` maps plate → lines shown under it
    (for example why a heatmap is missing); ``replication_note`` says why
    ``replication`` is ``None``.
    """
    from . import __version__

    notes = notes or {}
    plates = list(dict.fromkeys([*figures, *ingest_reports, *notes]))
    table = summary
    if "Batch_Name" in summary.columns:
        table = summary.loc[summary["Batch_Name"].astype(str) == str(batch)]
    nav = " ".join(f'<a href="#{_anchor(p)}">{_e(p)}</a>' for p in plates)
    sections = []
    for plate in plates:
        images = []
        for name, png in (figures.get(plate) or {}).items():
            caption = _CAPTIONS.get(name, name)
            images.append(f"<figure>{_img(png, f'{plate} {name}')}<figcaption>{_e(caption)}</figcaption></figure>")
        plate_notes = "".join(f'<p class="muted">{_e(n)}</p>' for n in notes.get(plate, ()))
        sections.append(
            f'<section id="{_anchor(plate)}"><h2>Plate {_e(plate)}</h2>{plate_notes}'
            f'<div class="figs">{"".join(images)}</div>'
            f"<h3>Ingest</h3>{_ingest_section(ingest_reports.get(plate))}</section>"
        )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>Quality control: batch {_e(batch)}</title><style>{_CSS}</style></head>\n<body>"
        f"<h1>Quality control: batch {_e(batch)}</h1>"
        f'<p class="muted">Made by cytoprofile {_e(__version__)}; {len(plates)} plates.</p>'
        f"<nav>{nav}</nav>"
        f"<h2>Summary</h2>{_html_table(table)}"
        '<p class="muted">Sites_per_well_mad is the median absolute deviation of sites per well, '
        "median(|x - median(x)|), unscaled.</p>"
        f"<h2>Replicate correlation</h2>{_replication_section(batch, replication, replication_note)}"
        + "".join(sections)
        + f"<script>{_IMAGES_CHECK}</script></body></html>\n"
    )


# --------------------------------------------------------------------------- workspace driver


@dataclass
class QualityControlResult:
    """What :func:`quality_control` wrote and computed."""

    summary_path: str | None = None
    summary: pd.DataFrame | None = None
    heatmaps: dict[str, dict[str, str]] = field(default_factory=dict)
    report_path: str | None = None
    replication: dict[str, Any] | None = None
    replication_note: str | None = None
    notes: dict[str, list[str]] = field(default_factory=dict)


_TABLE_EXTENSIONS = (".csv.gz", ".csv", ".parquet")
_LEVELS = ("all", "batch", "plate")


def _first_table(folder: str, stems: Sequence[str]) -> str | None:
    for stem in stems:
        for ext in _TABLE_EXTENSIONS:
            path = cpio.join(folder, stem + ext)
            if cpio.exists(path):
                return path
    return None


def _selected_stems(plate: str, *, negcon: bool, level: str | None) -> list[str]:
    suffix = "_negcon" if negcon else ""
    levels = [level] if level else list(_LEVELS)
    return [f"{plate}_normalized_feature_select{suffix}_{lvl}" for lvl in levels]


def _load_data_path(workspace: str, load_data_dir: str, batch: str, plate: str) -> str:
    folder = cpio.join(workspace, load_data_dir, batch, plate)
    for name in ("load_data.csv.gz", "load_data.csv"):
        path = cpio.join(folder, name)
        if cpio.exists(path):
            return path
    raise InputError(
        f"{folder}: no load_data.csv or load_data.csv.gz; the QC summary needs the per-site "
        "load_data file of each plate there"
    )


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """Serialise read-modify-write of a local file across processes (no-op elsewhere)."""
    if cpio.is_remote(path):
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    lock = Path(path).with_name(f".{Path(path).name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_bytes(data: bytes, path: str) -> str:
    with cpio.atomic_open(path, "wb") as handle:
        handle.write(data)
    return path


def quality_control(
    workspace: str | os.PathLike[str],
    batch: str,
    plates: Sequence[str],
    *,
    profiles_dir: str = "profiles",
    load_data_dir: str = "load_data_csv",
    backend_dir: str = "backend",
    output_dir: str = "quality_control",
    level: str | None = None,
    replicate_column: str | None = None,
    negcon_column: str = "Metadata_control_type",
    negcon_value: str = "negcon",
    n_null: int = 10_000,
    seed: int = 0,
    dpi: int = 100,
    summary: bool = True,
    heatmaps: bool = True,
    report: bool = True,
    summary_well_columns: Sequence[str] | None = None,
) -> QualityControlResult:
    """Run QC for ``plates`` of ``batch`` in a workspace and write its outputs.

    Reads ``load_data_csv/BATCH/PLATE/load_data.csv[.gz]``, the optional ingest report
    ``backend/BATCH/PLATE/PLATE.report.json`` and from ``profiles/BATCH/PLATE/``:
    ``PLATE_augmented`` (else ``PLATE``) for cell counts,
    ``PLATE_normalized_feature_select_negcon_{all,batch,plate}`` for the correlation
    and position-effect heatmaps and ``PLATE_normalized_feature_select_{...}`` for
    kept features and percent replicating (``level`` picks one level). Writes
    ``quality_control/summary/summary.tsv``,
    ``quality_control/heatmap/BATCH/PLATE/PLATE_{cell_count,correlation,position_effect}.png``
    and ``quality_control/report/BATCH.html``. ``summary_well_columns`` are the
    load_data columns sites are grouped into wells by (default: see ``summarize_plate``).
    """
    if level is not None and level not in _LEVELS:
        raise InputError(f"level {level!r}: use one of {', '.join(_LEVELS)}")
    root = str(workspace)
    qc_root = cpio.join(root, output_dir)
    result = QualityControlResult()
    rows: list[dict[str, Any]] = []
    figures: dict[str, dict[str, bytes]] = {}
    ingest: dict[str, dict[str, Any] | None] = {}
    selected_frames: list[pd.DataFrame] = []

    for plate in map(str, plates):
        folder = cpio.join(root, profiles_dir, batch, plate)
        notes = result.notes.setdefault(plate, [])
        report_path = cpio.join(root, backend_dir, batch, plate, f"{plate}.report.json")
        plate_report = cpio.read_json(report_path) if cpio.exists(report_path) else None
        ingest[plate] = plate_report
        per_well_path = _first_table(folder, [f"{plate}_augmented", plate])
        per_well = cpio.read_table(per_well_path) if per_well_path else None
        selected_path = _first_table(folder, _selected_stems(plate, negcon=False, level=level))
        selected = cpio.read_table(selected_path) if selected_path else None
        negcon_path = _first_table(folder, _selected_stems(plate, negcon=True, level=level))
        if selected is not None:
            selected_frames.append(selected)
        if per_well is None:
            notes.append(f"No per-well profile ({plate}_augmented or {plate}) in {folder}.")
        if summary:
            load_path = _load_data_path(root, load_data_dir, batch, plate)
            rows.append(
                summarize_plate(
                    batch=batch, plate=plate, load_data=cpio.read_table(load_path),
                    profiles=per_well, report=plate_report, selected_profiles=selected,
                    well_columns=summary_well_columns, source=load_path,
                )
            )
        if heatmaps or report:
            figures[plate] = _plate_figures(plate, per_well, negcon_path, notes, dpi=dpi)
        if heatmaps:
            out = cpio.join(qc_root, "heatmap", batch, plate)
            result.heatmaps[plate] = {
                name: _write_bytes(png, cpio.join(out, f"{plate}_{name}.png"))
                for name, png in figures[plate].items()
            }

    if summary:
        result.summary_path = cpio.join(qc_root, "summary", "summary.tsv")
        with _locked(result.summary_path):
            result.summary = update_summary(read_summary(result.summary_path), rows)
            cpio.write_table(result.summary, result.summary_path)
    if not selected_frames:
        result.replication_note = "no feature-selected profiles (PLATE_normalized_feature_select_LEVEL) found"
    else:
        batch_profiles = pd.concat(selected_frames, ignore_index=True)
        if replicate_column is None and not any(c in batch_profiles.columns for c in _REPLICATE_CANDIDATES):
            result.replication_note = (
                "the feature-selected profiles have no treatment column ("
                + ", ".join(_REPLICATE_CANDIDATES) + "); annotate them or name the column"
            )
        else:
            result.replication = percent_replicating(
                batch_profiles, replicate_column=replicate_column, negcon_column=negcon_column,
                negcon_value=negcon_value, n_null=n_null, seed=seed,
            )
    if report:
        table = result.summary if result.summary is not None else update_summary(None, rows)
        html_text = render_report(
            batch=batch, summary=table, figures=figures, ingest_reports=ingest,
            replication=result.replication, notes=result.notes,
            replication_note=result.replication_note,
        )
        result.report_path = cpio.join(qc_root, "report", f"{batch}.html")
        with cpio.atomic_open(result.report_path) as handle:
            handle.write(html_text)
    return result


def _plate_figures(
    plate: str, per_well: pd.DataFrame | None, negcon_path: str | None, notes: list[str], *, dpi: int
) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    if per_well is not None:
        out["cell_count"] = figure_png(cell_count_figure(per_well, plate=plate), dpi=dpi)
    if negcon_path is None:
        notes.append("No negcon feature-selected profile; no correlation or position-effect heatmap.")
        return out
    negcon = cpio.read_table(negcon_path)
    if len(negcon) < 2 or len(_well_matrix(_plate_rows(negcon, plate), None)[2]) < 2:
        notes.append(f"{negcon_path}: fewer than two wells or features; no correlation heatmaps.")
        return out
    out["correlation"] = figure_png(correlation_figure(negcon, plate=plate), dpi=dpi)
    out["position_effect"] = figure_png(position_effect_figure(negcon, plate=plate), dpi=dpi)
    return out
