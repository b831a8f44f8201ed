"""QC maths on per-well profiles: well correlations, position effect, percent replicating, mAP.

Pure functions of DataFrames; nothing here reads or writes a file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..vocabulary import (
    CANONICAL_COMPARTMENTS,
    OBJECT_COUNT_COLUMN,
    REPLICATE_CANDIDATES,
    normal_well,
    prefixed_features,
    row_label,
    table_prefixes,
    well_to_grid,
)

__all__ = [
    "cell_less_wells",
    "FEATURE_PREFIXES",
    "feature_columns",
    "shared_features",
    "plate_rows",
    "require_wells",
    "count_column",
    "cells_per_well",
    "well_matrix",
    "well_correlation",
    "treatment_column",
    "treatment_order",
    "position_effect",
    "position_effect_note",
    "percent_replicating",
    "map_tables",
    "map_by_plate",
    "plate_map_summary",
    "ANY_OUTLIER_SET",
    "outlier_shares",
    "outlier_set_summary",
]

#: QC's features: the canonical compartments' and the image's (``Cells_``, ..., ``Image_``).
FEATURE_PREFIXES = table_prefixes(CANONICAL_COMPARTMENTS, image=True)
_COUNT_COLUMNS = (OBJECT_COUNT_COLUMN, "Cytoplasm_Number_Object_Number")


def feature_columns(profiles: pd.DataFrame) -> list[str]:
    """Feature columns: names starting with ``Cells_``, ``Cytoplasm_``, ``Nuclei_`` or ``Image_``."""
    return prefixed_features(profiles.columns, FEATURE_PREFIXES)


def cell_less_wells(profiles: pd.DataFrame) -> list[str]:
    """Wells whose profile has no value for any compartment feature (no cells: every Cells_, Cytoplasm_ and
    Nuclei_ feature missing). Such a well says nothing about its cells, and kept in it would make every cell
    feature "missing somewhere", leaving QC only the image features."""
    columns = [c for c in feature_columns(profiles) if not c.startswith("Image_")]
    if not columns or not len(profiles):
        return []
    values = profiles[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    empty = ~np.isfinite(values).any(axis=1)
    return sorted({normal_well(str(w)) for w in profiles.loc[empty, "Metadata_Well"]}, key=well_to_grid)


def shared_features(frames: Iterable[pd.DataFrame]) -> list[str]:
    """The one feature set QC uses for a batch: features every frame has, finite in every row.

    Order is the first frame's. Correlation maps, position effect and percent
    replicating all use this set, so every panel counts the same features.
    """
    frames = list(frames)
    if not frames:
        return []
    common = feature_columns(frames[0])
    for frame in frames[1:]:
        present = set(frame.columns)
        common = [f for f in common if f in present]
    keep = np.ones(len(common), dtype=bool)
    for frame in frames:
        if len(frame) and common:
            values = frame[common].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
            keep &= np.isfinite(values).all(axis=0)
    return [f for f, ok in zip(common, keep, strict=True) if ok]


def plate_rows(profiles: pd.DataFrame, plate: str) -> pd.DataFrame:
    """Rows of ``plate`` (by ``Metadata_Plate``); all rows when none match or there is no such column."""
    if "Metadata_Plate" in profiles.columns:
        mask = profiles["Metadata_Plate"].astype(str) == str(plate)
        if mask.any():
            return profiles.loc[mask]
    return profiles


def require_wells(profiles: pd.DataFrame, what: str) -> None:
    """Refuse profiles without a ``Metadata_Well`` column, naming ``what`` they are."""
    if "Metadata_Well" not in profiles.columns:
        raise InputError(f"{what}: no Metadata_Well column; give per-well profiles")


def count_column(profiles: pd.DataFrame) -> str:
    """The column holding cells per well (``Metadata_Object_Count``, as the recipe's fallback)."""
    for column in _COUNT_COLUMNS:
        if column in profiles.columns:
            return column
    raise InputError(
        "per-well profiles have no Metadata_Object_Count column; give the aggregated "
        "(or annotated) profiles, which carry the number of cells per well"
    )


def cells_per_well(
    profiles: pd.DataFrame,
    *,
    imaged: Iterable[str] | None = None,
    quarantined: Iterable[str] = (),
    not_in_platemap: Iterable[str] = (),
) -> dict[str, Any]:
    """Cells per well counted one way, for the summary table and the cell-count map's title.

    A well's count is the sum of its rows' object counts (a missing count is 0); an
    ``imaged`` well with no profile row counts 0 cells. Wells that lost sites to
    ``quarantined`` and wells ``not_in_platemap`` (dropped by annotate) are left out:
    their count says nothing about what grew. Returns ``wells`` (counted), ``median``,
    ``min`` (``pd.NA`` when no well is counted) and ``without_cells``.
    """
    column = count_column(profiles)
    counts = pd.to_numeric(profiles[column], errors="coerce").fillna(0.0)
    if "Metadata_Well" in profiles.columns:
        wells = profiles["Metadata_Well"].astype(str).map(normal_well)
        counts = counts.groupby(wells.to_numpy()).sum()
        skip = {normal_well(str(w)) for w in (*quarantined, *not_in_platemap)}
        seen = {normal_well(str(w)) for w in imaged or ()}
        if seen:
            counts = counts.reindex(sorted(seen | set(counts.index)), fill_value=0.0)
        counts = counts.loc[[w not in skip for w in counts.index]]
    values = counts.to_numpy(dtype=float)
    if not len(values):
        return {"wells": 0, "median": pd.NA, "min": pd.NA, "without_cells": 0}
    median = float(np.median(values))
    return {"wells": len(values), "median": int(median) if median.is_integer() else median,
            "min": int(values.min()), "without_cells": int((values <= 0).sum())}


def well_matrix(
    profiles: pd.DataFrame, features: Sequence[str] | None
) -> tuple[list[str], np.ndarray, list[str]]:
    """Wells in plate order, their feature matrix (mean over duplicate rows), usable features."""
    require_wells(profiles, "profiles")
    feats = list(features) if features is not None else feature_columns(profiles)
    missing = [f for f in feats if f not in profiles.columns]
    if missing:
        raise InputError(f"profiles lack feature column(s) {', '.join(missing[:5])}; pick features they have")
    wells = profiles["Metadata_Well"].astype(str).map(normal_well)
    values = profiles[feats].apply(pd.to_numeric, errors="coerce")
    values.index = wells.to_numpy()
    values = values.groupby(level=0, sort=False).mean()
    finite = np.isfinite(values.to_numpy(dtype=float)).all(axis=0)
    values = values.loc[:, finite]
    order = sorted(values.index, key=well_to_grid)
    values = values.loc[order]
    return list(values.index), values.to_numpy(dtype=float), list(values.columns)


def _standardize_rows(x: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit norm, so a dot product is a Pearson correlation."""
    centred = x - x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, centred / norms, np.nan)


def well_correlation(
    profiles: pd.DataFrame, *, features: Sequence[str] | None = None, order: Sequence[str] | None = None
) -> pd.DataFrame:
    """Wells × wells Pearson correlation across features.

    Wells come in plate (row-major) order, or in ``order`` (well names; wells not
    named there follow in plate order).
    """
    wells, x, _ = well_matrix(profiles, features)
    z = _standardize_rows(x) if x.size else np.zeros((len(wells), 0))
    corr = np.clip(z @ z.T, -1.0, 1.0) if z.shape[1] else np.full((len(wells),) * 2, np.nan)
    frame = pd.DataFrame(corr, index=wells, columns=wells)
    if order is not None:
        first = [w for w in dict.fromkeys(map(normal_well, order)) if w in frame.index]
        chosen = set(first)
        ordered = first + [w for w in wells if w not in chosen]
        frame = frame.loc[ordered, ordered]
    return frame


def treatment_column(profiles: pd.DataFrame, *, replicate_column: str | None = None) -> str:
    """The column naming a well's treatment: ``replicate_column``, else the first candidate present."""
    if replicate_column is not None:
        if replicate_column not in profiles.columns:
            raise InputError(
                f"profiles have no {replicate_column} column; name the plate map column "
                "that identifies a treatment"
            )
        return replicate_column
    for column in REPLICATE_CANDIDATES:
        if column in profiles.columns:
            return column
    raise InputError(
        "profiles have none of " + ", ".join(REPLICATE_CANDIDATES)
        + "; annotate them with the plate map or name the treatment column"
    )


def treatment_order(profiles: pd.DataFrame, column: str) -> pd.DataFrame:
    """Wells sorted by treatment then plate position: columns ``Metadata_Well`` and ``treatment``.

    Replicates of a treatment come together, so a well-by-well correlation matrix in
    this order shows each replicate group as a block. Wells without a treatment come last.
    """
    require_wells(profiles, "profiles")
    wells = profiles["Metadata_Well"].astype(str).map(normal_well)
    table = pd.DataFrame({"Metadata_Well": wells.to_numpy(), "treatment": profiles[column].to_numpy()})
    table = table.drop_duplicates("Metadata_Well", keep="first")
    table["_missing"] = table["treatment"].isna()
    table["_name"] = table["treatment"].astype(str)
    table["_grid"] = [_grid_key(w) for w in table["Metadata_Well"]]
    table = table.sort_values(["_missing", "_name", "_grid"], kind="mergesort")
    return table[["Metadata_Well", "treatment"]].reset_index(drop=True)


def _grid_key(well: str) -> tuple[int, int]:
    try:
        return well_to_grid(well)
    except InputError:
        return (10**6, 10**6)


def position_effect(
    profiles: pd.DataFrame, *, features: Sequence[str] | None = None, quantile: float = 0.95
) -> pd.DataFrame:
    """Per well, the share of its same-row and same-column correlations above its own null.

    As in the profiling recipe, a well's null is its correlations with the wells that
    share neither its row nor its column, and its threshold is that null's ``quantile``
    (95th percentile). ``Position_Effect`` is the share of the well's correlations with
    the other wells of its row or column above the threshold. Without position effects
    the expected share is ``1 - quantile`` (0.05), stored in ``result.attrs["chance"]``.
    A well with no same-row/column partner, or no null, gets NaN, and
    ``result.attrs["why_missing"]`` maps it to the reason (see :func:`position_effect_note`).
    Columns: ``Metadata_Well``, ``Row``, ``Column`` (1-based), ``Position_Effect``,
    ``Comparisons`` (same-row/column partners) and ``Threshold``.
    """
    corr = well_correlation(profiles, features=features)
    wells = list(corr.index)
    values = corr.to_numpy()
    grid = np.array([well_to_grid(w) for w in wells], dtype=int).reshape(-1, 2)
    rows, cols = grid[:, 0], grid[:, 1]
    finite = np.isfinite(values)
    same = (rows[:, None] == rows[None, :]) | (cols[:, None] == cols[None, :])
    np.fill_diagonal(same, False)
    other = ~((rows[:, None] == rows[None, :]) | (cols[:, None] == cols[None, :])) & finite
    usable = same & finite
    thresholds = np.full(len(wells), np.nan)
    share = np.full(len(wells), np.nan)
    why: dict[str, str] = {}
    for i in range(len(wells)):
        null = values[i, other[i]]
        if null.size and usable[i].any():
            thresholds[i] = float(np.quantile(null, quantile))
            share[i] = float((values[i, usable[i]] > thresholds[i]).mean())
        else:
            why[wells[i]] = _why_no_position_effect(i, finite, same, null.size > 0, bool(usable[i].any()))
    result = pd.DataFrame(
        {
            "Metadata_Well": wells,
            "Row": [row_label(r) for r in rows],
            "Column": cols + 1,
            "Position_Effect": share,
            "Comparisons": usable.sum(axis=1),
            "Threshold": thresholds,
        }
    )
    result.attrs["quantile"] = quantile
    result.attrs["chance"] = 1.0 - quantile
    result.attrs["why_missing"] = why
    return result


_NO_CORRELATION = "no correlation with any other well (a constant or empty profile)"
_NO_NULL = "no well shares neither its row nor its column (no null to compare with)"
_NO_PARTNER = "no other well with data in its row or column"


def _why_no_position_effect(i: int, finite: np.ndarray, same: np.ndarray, has_null: bool, has_partner: bool) -> str:
    others = np.ones(len(finite), dtype=bool)
    others[i] = False
    if others.any() and not finite[i, others].any():
        return _NO_CORRELATION
    if not has_null and not has_partner:
        return f"{_NO_NULL}; {_NO_PARTNER}"
    return _NO_NULL if not has_null else _NO_PARTNER


def position_effect_note(effect: pd.DataFrame) -> str | None:
    """Why :func:`position_effect` left wells without a value, in one sentence for the
    map and the report (``None`` when every well has one).

    A plate whose wells all sit in one row (or one column) has no null for any well:
    every other well shares the row.
    """
    why: dict[str, str] = effect.attrs.get("why_missing") or {}
    if not why:
        return None
    n = len(effect)
    rows, cols = effect["Row"].unique(), effect["Column"].unique()
    if len(why) == n and n > 1 and (len(rows) == 1 or len(cols) == 1):
        line = f"row {rows[0]}" if len(rows) == 1 else f"column {cols[0]}"
        return (f"not computed: all {n} wells are in {line}, so every well shares it with all the others and "
                "none has a null (wells sharing neither its row nor its column)")
    counts: dict[str, int] = {}
    for reason in why.values():
        counts[reason] = counts.get(reason, 0) + 1
    parts = "; ".join(f"{c} {'well' if c == 1 else 'wells'}: {r}" for r, c in counts.items())
    return f"not computed for {len(why)} of {n} wells ({parts})"


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
    ``n_single_well`` (treatments with one well: not scored, nothing to compare), ``n_features``, ``treatments`` (DataFrame: treatment, ``n_replicates``,
    ``median_correlation``, ``replicating``) and ``null`` (array of correlations).
    """
    column = treatment_column(profiles, replicate_column=replicate_column)
    keep = profiles[column].notna()
    if negcon_column in profiles.columns:
        keep &= profiles[negcon_column].astype(str) != str(negcon_value)
    wells = profiles.loc[keep]
    feats = list(features) if features is not None else feature_columns(profiles)
    x = wells[feats].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    usable = np.isfinite(x).all(axis=0) if len(x) else np.zeros(len(feats), bool)
    x = x[:, usable]
    codes, uniques = pd.factorize(wells[column].astype(str).to_numpy())
    z = _standardize_rows(x) if x.shape[1] >= 2 else np.full((len(x), 0), np.nan)
    treatments = _treatment_medians(z, codes, uniques, column)
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
        "n_single_well": int(len(uniques) - len(treatments)),
        "n_features": int(x.shape[1]),
        "treatments": treatments.sort_values("median_correlation", ascending=False, kind="mergesort")
        .reset_index(drop=True),
        "null": null,
    }


def _treatment_medians(z: np.ndarray, codes: np.ndarray, uniques: Any, column: str) -> pd.DataFrame:
    """Per treatment with two or more wells, the median correlation of its replicate pairs."""
    records = []
    for code, name in enumerate(uniques):
        members = np.flatnonzero(codes == code)
        if len(members) < 2:
            continue
        pairs = (z[members] @ z[members].T)[np.triu_indices(len(members), k=1)] if z.shape[1] else []
        median = float(np.nanmedian(pairs)) if np.isfinite(pairs).any() else float("nan")
        records.append({column: name, "n_replicates": len(members), "median_correlation": median})
    return pd.DataFrame(records, columns=[column, "n_replicates", "median_correlation"])


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


def map_tables(
    profiles: pd.DataFrame, *, features: Sequence[str], modes: Sequence[str], **options: Any
) -> dict[str, pd.DataFrame]:
    """mAP per perturbation (``activity``) or annotation label (``consistency``), one table per mode.

    Each table is :func:`cytoprofile.evaluate.mean_average_precision`'s for those
    ``options`` (pert_column, annotation_column, control_query, neg_sameby, ...), with
    ``attrs["fraction_retrieved"]``.
    """
    from ..evaluate import mean_average_precision

    return {
        mode: mean_average_precision(profiles, mode=mode, features=list(features), **options)  # type: ignore[arg-type]
        for mode in modes
    }


def map_by_plate(
    profiles: pd.DataFrame, *, features: Sequence[str], modes: Sequence[str], plate_column: str = "Metadata_Plate",
    **options: Any,
) -> dict[str, pd.DataFrame]:
    """mAP of each plate's profiles on their own, one long table per mode.

    Each plate's rows go through :func:`map_tables` with the same ``options``, so a plate's
    numbers are what ``evaluate.mean_average_precision`` gives for that plate alone; the
    table is ``plate_column`` then that table's columns. Plates that cannot be scored
    alone (no replicate or no negative control on the plate) are left out, each with its
    reason in ``attrs["not_scored"]`` (plate → reason).
    """
    if plate_column not in profiles.columns:
        raise InputError(f"profiles have no {plate_column} column; mAP by plate needs it")
    parts: dict[str, list[pd.DataFrame]] = {mode: [] for mode in modes}
    not_scored: dict[str, dict[str, str]] = {mode: {} for mode in modes}
    for plate, rows in profiles.groupby(profiles[plate_column].astype(str), sort=True):
        for mode in modes:
            try:
                table = map_tables(rows.reset_index(drop=True), features=features, modes=[mode], **options)[mode]
            except InputError as exc:
                not_scored[mode][str(plate)] = str(exc)
                continue
            parts[mode].append(table.assign(**{plate_column: str(plate)}))
    out = {}
    for mode in modes:
        frame = pd.concat(parts[mode], ignore_index=True) if parts[mode] else pd.DataFrame(columns=[plate_column])
        out[mode] = frame[[plate_column, *[c for c in frame.columns if c != plate_column]]]
        out[mode].attrs["not_scored"] = not_scored[mode]
    return out


def plate_map_summary(by_plate: pd.DataFrame, *, plate_column: str = "Metadata_Plate") -> pd.DataFrame:
    """One row per plate of a :func:`map_by_plate` table: groups scored, mean mAP, retrieved and their share."""
    columns = [plate_column, "n_groups", "mean_average_precision", "n_retrieved", "fraction_retrieved"]
    if by_plate.empty:
        return pd.DataFrame(columns=columns)
    grouped = by_plate.groupby(plate_column, sort=True)
    summary = grouped.agg(n_groups=("mean_average_precision", "size"),
                          mean_average_precision=("mean_average_precision", "mean"),
                          n_retrieved=("below_corrected_p", "sum"),
                          fraction_retrieved=("below_corrected_p", "mean")).reset_index()
    summary["n_retrieved"] = summary["n_retrieved"].astype(int)
    return summary[columns]


#: the column of :func:`outlier_shares` for cells flagged by at least one set (those left out of the profiles)
ANY_OUTLIER_SET = "any set"


def outlier_shares(cell_qc: Mapping[str, Any]) -> pd.DataFrame | None:
    """Per well, its cells and the share of them each outlier set flags (``any set``: flagged by one or more).

    ``cell_qc`` is a plate report's ``cell_qc`` section (per-well counts by set, as collate
    writes them with ``--exclude-outlier-cells``); rows of one well (e.g. per site) are summed.
    ``None`` when the counts carry no well or no cell numbers.
    """
    rows = pd.DataFrame(list(cell_qc.get("per_well") or []))
    sets = [str(name) for name in (cell_qc.get("flagged") or {})]
    if rows.empty or "Metadata_Well" not in rows.columns or "cells" not in rows.columns:
        return None
    counted = [c for c in [*sets, "excluded"] if c in rows.columns]
    rows["Metadata_Well"] = rows["Metadata_Well"].astype(str).map(normal_well)
    per_well = rows.groupby("Metadata_Well", sort=False)[["cells", *counted]].sum()
    per_well = per_well.loc[sorted(per_well.index, key=_grid_key)]
    out = pd.DataFrame({"Metadata_Well": per_well.index, "cells": per_well["cells"].astype(int).to_numpy()})
    cells = per_well["cells"].to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        for name in [*[c for c in sets if c in per_well.columns], *(["excluded"] if "excluded" in per_well.columns else [])]:
            share = np.where(cells > 0, per_well[name].to_numpy(float) / cells, np.nan)
            out[ANY_OUTLIER_SET if name == "excluded" else name] = share
    return out


def outlier_set_summary(cell_qc: Mapping[str, Any], shares: pd.DataFrame) -> pd.DataFrame:
    """One row per outlier set (and ``any set``): cells flagged, their share of the plate, and the worst well."""
    total = int(cell_qc.get("cells") or 0)
    counts = {**{str(k): int(v) for k, v in (cell_qc.get("flagged") or {}).items()}, ANY_OUTLIER_SET: int(cell_qc.get("excluded") or 0)}
    rows = []
    for name, flagged in counts.items():
        column = (shares[name] if name in shares.columns else pd.Series(dtype=float)).to_numpy(float)
        worst = int(np.nanargmax(column)) if np.isfinite(column).any() else None  # the first in plate order
        rows.append({"set": name, "cells_flagged": flagged, "share_of_cells": flagged / total if total else np.nan,
                     "wells_with_flagged_cells": int((column > 0).sum()),
                     "highest_well_share": np.nan if worst is None else float(column[worst]),
                     "highest_well": "" if worst is None else str(shares["Metadata_Well"].iloc[worst])})
    return pd.DataFrame(rows)
