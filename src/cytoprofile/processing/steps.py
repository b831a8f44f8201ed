"""The processing steps, one function each: per-plate statistics (var, mad), rank-based INT,
plate-effect corrections (wellpos, cc, outlier, dropna) and projections (pca, sphering, harmony)."""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..errors import ConfigError, InputError
from ..evaluate import mode_average_precision
from ..step_data import feature_matrix, select_samples
from ..vocabulary import NEGCON_QUERY as NEGCON
from ..vocabulary import PLATES_WITHOUT_CONTROLS, SPHERING_GRID, resolve_features
from .columns import (
    BLOCK,
    cell_count_residuals,
    each_block,
    more_distinct_than,
    ordinal_ranks,
    residuals_in_place,
)

__all__ = [
    "Features",
    "correct_well_position",
    "drop_na_features",
    "harmony",
    "harmony_handed_over",
    "mad_normalize",
    "non_feature_columns",
    "pca",
    "plate_statistics",
    "rank_int",
    "regress_cell_count",
    "remove_outliers",
    "select_variant_features",
    "sphere",
]
log = logging.getLogger("cytoprofile.processing")


Features = str | Sequence[str]


# ------------------------------------------------------------------ shared helpers


def _matrix32(profiles: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    """The features as a new float32 array (rows x features), safe to change in place."""
    try:
        return profiles.loc[:, list(names)].to_numpy(dtype=np.float32, na_value=np.nan, copy=True)
    except (TypeError, ValueError):
        return feature_matrix(profiles, names).astype(np.float32)


def _assemble(profiles: pd.DataFrame, names: Sequence[str], values: np.ndarray,
              *, drop: Sequence[str] = ()) -> pd.DataFrame:
    """Non-feature columns of ``profiles`` (minus ``drop``), then ``values`` as ``names``."""
    gone = set(drop)
    rest = [c for c in profiles.columns if c not in gone]
    block = pd.DataFrame(values, columns=pd.Index(list(names)), index=profiles.index, copy=False)
    return pd.concat([profiles.loc[:, rest], block], axis="columns")


def non_feature_columns(profiles: pd.DataFrame, names: Sequence[str]) -> list[str]:
    taken = set(names)
    return [c for c in profiles.columns if c not in taken]


def _column(profiles: pd.DataFrame, name: str, option: str) -> pd.Series:
    if name not in profiles.columns:
        raise ConfigError(f"profiles have no {name!r} column ({option})")
    return profiles[name]


def _reference_rows(profiles: pd.DataFrame, samples: str) -> np.ndarray:
    """Boolean mask of the rows whose statistics are used (``all`` or a query)."""
    if samples == "all":
        return np.ones(len(profiles), dtype=bool)
    positional = profiles.set_axis(pd.RangeIndex(len(profiles)), axis=0)
    mask = np.zeros(len(profiles), dtype=bool)
    mask[select_samples(positional, samples=samples).index.to_numpy()] = True
    return mask


# ------------------------------------------------------------------ per-plate statistics


def plate_statistics(
    profiles: pd.DataFrame,
    *,
    features: Features = "infer",
    feature_prefixes: Sequence[str] | None = None,
    plate_column: str = "Metadata_Plate",
    samples: str = NEGCON,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-plate median and unscaled MAD (plates x features, float32) of the ``samples`` rows.

    Missing values are left out; plates without any ``samples`` row are absent.
    """
    names = resolve_features(profiles, features, feature_prefixes=feature_prefixes)
    return _plate_stats(profiles, _matrix32(profiles, names), names, plate_column, samples)


def _plate_stats(profiles: pd.DataFrame, x: np.ndarray, names: Sequence[str], plate_column: str,
                 samples: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``plate_statistics`` of the feature matrix ``x`` (rows of ``profiles``).

    The median is computed in float64 and rounded once; the deviations from it are
    taken in float32 (|x − median| rounded per value, the median rounded first),
    as scipy's ``median_abs_deviation`` takes them, so the MAD is the reference's
    to the bit.
    """
    plates = _column(profiles, plate_column, "plate_column").astype(str).to_numpy()
    ref = _reference_rows(profiles, samples)
    found = sorted(set(plates[ref]))
    median = np.empty((len(found), len(names)), dtype=np.float32)
    mad = np.empty_like(median)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for p, plate in enumerate(found):
            rows = np.flatnonzero(ref & (plates == plate))
            for s in range(0, x.shape[1], BLOCK):
                block = x[rows, s : s + BLOCK]
                centre = np.nanmedian(block.astype(np.float64), axis=0).astype(x.dtype)
                median[p, s : s + BLOCK] = centre
                deviation = np.abs(block - centre).astype(np.float64)
                mad[p, s : s + BLOCK] = np.nanmedian(deviation, axis=0)
    index = pd.Index(found, name=plate_column)
    columns = pd.Index(list(names))
    return pd.DataFrame(median, index=index, columns=columns), pd.DataFrame(mad, index=index, columns=columns)


def _plates_with_stats(
    profiles: pd.DataFrame,
    found: Sequence[str],
    plate_column: str,
    plates_without_controls: str,
    step: str,
) -> pd.DataFrame:
    """``profiles`` restricted to plates with statistics, or an error naming the others."""
    if plates_without_controls not in PLATES_WITHOUT_CONTROLS:
        raise ConfigError("plates_without_controls must be 'error' or 'drop'")
    plates = profiles[plate_column].astype(str)
    missing = sorted(set(plates) - set(found))
    if not missing:
        return profiles
    rows = int(plates.isin(missing).sum())
    if plates_without_controls == "error":
        raise InputError(
            f"{step}: {len(missing)} plate(s) have no reference (negative control) wells: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; set "
            "plates_without_controls: drop to leave their wells out, or fix the annotation"
        )
    log.warning("%s: dropped %d well(s) of %d plate(s) without reference wells: %s",
                step, rows, len(missing), ", ".join(missing))
    return profiles[~plates.isin(missing).to_numpy()]


def _reference_statistics(
    profiles: pd.DataFrame, x: np.ndarray, names: Sequence[str], *, plate_column: str, samples: str,
    plates_without_controls: str, step: str,
) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, pd.DataFrame]:
    """Per-plate statistics of ``x`` (rows of ``profiles``), and the profiles and rows of ``x``
    on plates that have them (or an error naming the others)."""
    median, mad = _plate_stats(profiles, x, names, plate_column, samples)
    kept = _plates_with_stats(profiles, list(median.index), plate_column, plates_without_controls, step)
    if len(kept) < len(profiles):
        x = x[np.isin(profiles[plate_column].astype(str).to_numpy(), list(median.index))]
    return kept, x, median, mad


def select_variant_features(
    profiles: pd.DataFrame,
    *,
    features: Features = "infer",
    feature_prefixes: Sequence[str] | None = None,
    plate_column: str = "Metadata_Plate",
    samples: str = NEGCON,
    threshold: float = 1e-3,
    plates_without_controls: Literal["error", "drop"] = "error",
) -> pd.DataFrame:
    """Keep features that vary on every plate's reference wells (see the module doc)."""
    names = resolve_features(profiles, features, feature_prefixes=feature_prefixes)
    x = _matrix32(profiles, names)
    finite = np.isfinite(x).all(axis=0)
    if not finite.all():
        log.info("var: %d feature(s) with missing or infinite values dropped", int((~finite).sum()))
        x = x[:, finite]
    kept_names = [n for n, ok in zip(names, finite) if ok]
    profiles, _, median, mad = _reference_statistics(
        profiles, x, kept_names, plate_column=plate_column, samples=samples,
        plates_without_controls=plates_without_controls, step="var")
    del x
    m, d = median.to_numpy(), mad.to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(d / m)
    ratio[~np.isfinite(ratio)] = 0
    keep = ((d != 0) & (ratio > np.float32(threshold))).all(axis=0)
    dropped = [n for n, ok in zip(names, finite) if not ok] + [n for n, k in zip(kept_names, keep) if not k]
    log.info("var: kept %d of %d features", len(names) - len(dropped), len(names))
    return profiles.drop(columns=dropped)


def mad_normalize(
    profiles: pd.DataFrame,
    *,
    features: Features = "infer",
    feature_prefixes: Sequence[str] | None = None,
    plate_column: str = "Metadata_Plate",
    samples: str = NEGCON,
    epsilon: float = 0.0,
    plates_without_controls: Literal["error", "drop"] = "error",
) -> pd.DataFrame:
    """(x − plate median) / (plate MAD + ``epsilon``), statistics of the reference wells."""
    names = resolve_features(profiles, features, feature_prefixes=feature_prefixes)
    profiles, x, median, mad = _reference_statistics(
        profiles, _matrix32(profiles, names), names, plate_column=plate_column, samples=samples,
        plates_without_controls=plates_without_controls, step="mad")
    scale = mad.to_numpy() + np.float32(epsilon)
    zero = (scale == 0).any(axis=0)
    if zero.any():
        bad = [n for n, z in zip(names, zero) if z]
        raise InputError(
            f"mad: {len(bad)} feature(s) have MAD 0 on some plate ({', '.join(bad[:5])}); run "
            "select_variant_features (var) first or set epsilon"
        )
    row_plate = median.index.get_indexer(pd.Index(profiles[plate_column].astype(str)))
    centre = median.to_numpy()
    with np.errstate(invalid="ignore"):
        for p in range(len(centre)):  # a plate at a time: no rows x features temporaries
            rows = np.flatnonzero(row_plate == p)
            x[rows] = (x[rows] - centre[p]) / scale[p]
    return _assemble(profiles, names, x, drop=names)


# ------------------------------------------------------------------ rank-based INT


def rank_int(
    profiles: pd.DataFrame,
    *,
    features: Features = "infer",
    feature_prefixes: Sequence[str] | None = None,
    c: float = 3.0 / 8.0,
    ties: Literal["random", "average"] = "random",
    seed: int = 0,
) -> pd.DataFrame:
    """Φ⁻¹((rank − c) / (n − 2c + 1)) per feature over all rows (n: its non-missing values).

    ``ties="random"`` ranks tied values by their position in a permutation drawn from
    a generator seeded with ``seed`` (re-seeded for every feature, so the same
    permutation); ``"average"`` gives tied values their mean rank.
    """
    if ties not in ("random", "average"):
        raise ConfigError("ties must be 'random' or 'average'")
    # scipy is imported where used: the command line imports this module to build its commands
    from scipy import special, stats

    names = resolve_features(profiles, features, feature_prefixes=feature_prefixes)
    x = _matrix32(profiles, names)
    perm = np.random.default_rng(seed).permutation(len(x)) if ties == "random" else None

    def transform(s: int) -> None:
        block = np.ascontiguousarray(x[:, s : s + BLOCK].T)  # features x rows
        missing = np.isnan(block)
        ranks = ordinal_ranks(block, perm) if perm is not None else stats.rankdata(
            block, method="average", axis=1, nan_policy="omit")
        n = (~missing).sum(axis=1, keepdims=True).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = special.ndtri((ranks - c) / (n - 2 * c + 1))
        values[missing] = np.nan
        x[:, s : s + BLOCK] = values.T

    each_block(x.shape[1], transform)
    return _assemble(profiles, names, x, drop=names)


# ------------------------------------------------------------------ plate-effect corrections


def correct_well_position(
    profiles: pd.DataFrame,
    *,
    features: Features = "infer",
    feature_prefixes: Sequence[str] | None = None,
    well_column: str = "Metadata_Well",
) -> pd.DataFrame:
    """Subtract, per feature, the mean of all wells at the same position across plates.

    Missing values are left out of the means and stay missing (no row is dropped).
    """
    from scipy import sparse

    names = resolve_features(profiles, features, feature_prefixes=feature_prefixes)
    codes, _ = pd.factorize(_column(profiles, well_column, "well_column").astype(str))
    onehot = sparse.csr_matrix(
        (np.ones(len(codes), dtype=np.float64), (codes, np.arange(len(codes)))),
        shape=(int(codes.max(initial=-1)) + 1, len(codes)),
    )
    x = _matrix32(profiles, names)
    for s in range(0, x.shape[1], BLOCK):
        block = x[:, s : s + BLOCK]
        present = ~np.isnan(block)
        sums = onehot @ np.where(present, block, 0).astype(np.float64)
        counts = onehot @ present.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = sums / counts
        block -= means[codes].astype(np.float32)
    return _assemble(profiles, names, x, drop=names)


def regress_cell_count(
    profiles: pd.DataFrame,
    *,
    features: Features = "infer",
    feature_prefixes: Sequence[str] | None = None,
    cell_count_column: str = "Metadata_Count_Cells",
    min_unique: int = 100,
) -> pd.DataFrame:
    """Replace features with more than ``min_unique`` distinct values by the residuals of
    an OLS fit ``feature ~ 1 + cell count`` over all wells.

    The fit uses the wells where both are present; a well without a residual (missing
    count or value) keeps its original value.
    """
    names = resolve_features(profiles, features, feature_prefixes=feature_prefixes)
    count = pd.to_numeric(_column(profiles, cell_count_column, "cell_count_column"), errors="coerce")
    c = count.to_numpy(dtype=np.float64)
    x = _matrix32(profiles, names)
    regressed = np.zeros(x.shape[1], dtype=bool)

    def regress(s: int) -> None:
        block = x[:, s : s + BLOCK]
        chosen = more_distinct_than(block, min_unique)
        if chosen.all():
            if not residuals_in_place(block, c):
                block[:] = cell_count_residuals(block.astype(np.float64), c)
        elif chosen.any():
            block[:, chosen] = cell_count_residuals(block[:, chosen].astype(np.float64), c)
            regressed[s : s + BLOCK] = chosen

    each_block(x.shape[1], regress)
    log.info("cc: %d of %d features regressed on %s", int(regressed.sum()), len(names), cell_count_column)
    return _assemble(profiles, names, x, drop=names)


def remove_outliers(
    profiles: pd.DataFrame,
    *,
    features: Features = "infer",
    feature_prefixes: Sequence[str] | None = None,
    bound: float = 100.0,
    percentile: float = 99.0,
) -> pd.DataFrame:
    """Drop features whose ``percentile`` of |x| exceeds ``bound``; clip the rest to ±bound.

    Every well is kept.
    """
    if bound <= 0:
        raise ConfigError("bound must be > 0")
    names = resolve_features(profiles, features, feature_prefixes=feature_prefixes)
    x = _matrix32(profiles, names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        q = np.concatenate([
            np.nanpercentile(np.abs(x[:, s : s + BLOCK]).astype(np.float64), percentile, axis=0)
            for s in range(0, x.shape[1], BLOCK)
        ]) if x.shape[1] else np.empty(0)
    keep = ~(q > bound)
    kept = [n for n, k in zip(names, keep) if k]
    log.info("outlier: dropped %d of %d features (|x| %g%% > %g)", int((~keep).sum()), len(names), percentile, bound)
    values = np.clip(x[:, keep], -bound, bound)
    return _assemble(profiles, kept, values, drop=names)


def drop_na_features(
    profiles: pd.DataFrame,
    *,
    features: Features = "infer",
    feature_prefixes: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Drop features with any missing or infinite value."""
    names = resolve_features(profiles, features, feature_prefixes=feature_prefixes)
    bad = ~np.isfinite(_matrix32(profiles, names)).all(axis=0)
    dropped = [n for n, b in zip(names, bad) if b]
    log.info("dropna: dropped %d of %d features", len(dropped), len(names))
    return profiles.drop(columns=dropped)


# ------------------------------------------------------------------ projections


def _complete(x: np.ndarray, step: str) -> None:
    if not np.isfinite(x).all():
        rows = int((~np.isfinite(x)).any(axis=1).sum())
        raise InputError(f"{step} needs complete profiles: {rows} row(s) have missing or infinite values; "
                         "run dropna (drop_na_features) first")


def pca(
    profiles: pd.DataFrame,
    *,
    features: Features = "infer",
    feature_prefixes: Sequence[str] | None = None,
    variance_fraction: float = 0.98,
    prefix: str = "PC",
) -> pd.DataFrame:
    """Principal components (``PC1``…) explaining at least ``variance_fraction`` of the variance.

    Components come from the covariance's eigenvectors, signed so that each one's
    largest loading is positive; the count is the smallest whose cumulative share of
    the variance exceeds ``variance_fraction``.
    """
    if not 0 < variance_fraction <= 1:
        raise ConfigError("variance_fraction must be in (0, 1]")
    names = resolve_features(profiles, features, feature_prefixes=feature_prefixes)
    x = feature_matrix(profiles, names)
    _complete(x, "pca")
    if len(x) < 2:
        raise InputError("pca needs at least 2 rows")
    x = x - x.mean(axis=0)
    values, vectors = np.linalg.eigh(x.T @ x)
    values, vectors = np.clip(values[::-1], 0, None), vectors[:, ::-1]
    limit = min(len(x), x.shape[1])
    values, vectors = values[:limit], vectors[:, :limit]
    ratio = np.cumsum(values / values.sum()) if values.sum() > 0 else np.ones(limit)
    k = min(int(np.searchsorted(ratio, variance_fraction, side="right")) + 1, limit)
    vectors = vectors[:, :k]
    signs = np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(k)])
    vectors *= np.where(signs == 0, 1, signs)
    scores = (x @ vectors).astype(np.float32)
    log.info("pca: %d components explain %.4f of the variance", k, ratio[k - 1])
    return _assemble(profiles, [f"{prefix}{i}" for i in range(1, k + 1)], scores, drop=names)


def _sphered(profiles: pd.DataFrame, names: list[str], *, samples: str, method: str, epsilon: float) -> pd.DataFrame:
    from ..normalize import normalize

    out = normalize(profiles, features=names, meta_features=non_feature_columns(profiles, names), samples=samples,
                    method="spherize", spherize_method=method, spherize_epsilon=epsilon)
    columns = [c for c in out.columns if c not in set(non_feature_columns(profiles, names))]
    return _assemble(out, columns, out[columns].to_numpy(dtype=np.float32), drop=columns)


def _sphering_score(profiles: pd.DataFrame, names: list[str], *, pert_column: str, samples: str,
                    neg_sameby: Sequence[str]) -> float:
    """Mean of mAP against negative controls and mAP against other perturbations."""
    scores = []
    for mode in ("activity", "distinctiveness"):
        ap = mode_average_precision(profiles, mode=mode, column=pert_column, control_query=samples,
                                    neg_sameby=neg_sameby if mode == "activity" else (), features=names)
        scores.append(float(ap.groupby(pert_column)["average_precision"].mean().mean()))
    return float(np.mean(scores))


def sphere(
    profiles: pd.DataFrame,
    *,
    features: Features = "infer",
    feature_prefixes: Sequence[str] | None = None,
    samples: str = NEGCON,
    method: str = "ZCA-cor",
    epsilon: float | Sequence[float] = SPHERING_GRID,
    pert_column: str = "Metadata_broad_sample",
    neg_sameby: Sequence[str] = ("Metadata_Plate",),
) -> pd.DataFrame:
    """Whitening fitted on the ``samples`` wells (``normalize``'s spherize).

    With several ``epsilon`` values, each is tried and the one with the best mean of
    mAP against negative controls and mAP against other perturbations (by
    ``pert_column``) is kept; ``attrs["sphering"]`` records every score.
    """
    names = resolve_features(profiles, features, feature_prefixes=feature_prefixes)
    grid = [float(epsilon)] if isinstance(epsilon, int | float) else [float(e) for e in epsilon]
    if not grid or any(e < 0 for e in grid):
        raise ConfigError("epsilon must be one number >= 0 or a non-empty list of them")
    if len(grid) == 1:
        out = _sphered(profiles, names, samples=samples, method=method, epsilon=grid[0])
        out.attrs["sphering"] = {"epsilon": grid[0]}
        return out
    _column(profiles, pert_column, "pert_column")
    best: tuple[float, float, pd.DataFrame] | None = None
    scores: dict[float, float] = {}
    for eps in grid:
        candidate = _sphered(profiles, names, samples=samples, method=method, epsilon=eps)
        sphered = [c for c in candidate.columns if c not in set(non_feature_columns(profiles, names))]
        scores[eps] = _sphering_score(candidate, sphered, pert_column=pert_column, samples=samples,
                                      neg_sameby=neg_sameby)
        if best is None or scores[eps] > best[0]:
            best = (scores[eps], eps, candidate)
    assert best is not None
    log.info("sphering: epsilon %g chosen (mean mAP %.4f); tried %s", best[1], best[0],
             ", ".join(f"{e:g}: {s:.4f}" for e, s in scores.items()))
    out = best[2]
    out.attrs["sphering"] = {"epsilon": best[1], "scores": scores}
    return out


def harmony_handed_over(
    frames: list[pd.DataFrame],
    *,
    features: Features = "infer",
    feature_prefixes: Sequence[str] | None = None,
    batch_key: str = "Metadata_Batch",
    seed: int = 0,
    max_iter: int = 10,
    n_clusters: int | None = None,
    theta: float | None = None,
    threads: int = 0,
) -> pd.DataFrame:
    """Harmony batch correction (harmonypy) of the features over ``batch_key``, of the one
    frame in ``frames``, taken out of the list.

    harmonypy computes in float32 (its result is float32 to the bit), so the
    float32 output loses nothing. Once the float64 matrix harmonypy needs is made, the step lets go of the frame's
    features (a copy of its other columns is kept): a caller that hands over its only
    reference, as ``run_chain`` does with the frames it made, holds no float32 copy
    of them through harmonypy's peak.
    """
    import harmonypy

    if len(frames) != 1:
        raise InputError("harmony_handed_over takes a list holding exactly one frame")
    profiles = frames.pop()
    names = resolve_features(profiles, features, feature_prefixes=feature_prefixes)
    batches = _column(profiles, batch_key, "batch_key")
    if batches.isna().any():
        raise InputError(f"harmony: {int(batches.isna().sum())} row(s) have no {batch_key}")
    if batches.nunique() < 2:
        raise InputError(f"harmony: {batch_key} has a single value; there is no batch effect to correct")
    x = feature_matrix(profiles, names)  # C-contiguous float64: harmonypy's input, not copied again
    _complete(x, "harmony")
    meta = pd.DataFrame({batch_key: batches.astype(str).to_numpy()})
    rest = profiles.loc[:, non_feature_columns(profiles, names)].copy()
    del profiles, batches
    # rows x features is used without a copy; a square matrix is passed as features x rows
    data = x if x.shape[0] != x.shape[1] else x.T
    result = harmonypy.run_harmony(data, meta, [batch_key], theta=theta, nclust=n_clusters,
                                   max_iter_harmony=max_iter, random_state=seed, verbose=False, ncores=threads)
    del data, x
    # harmonypy's getter makes two float64 copies of its float32 state; its state is
    # freed before the float32 array is made
    z = result.Z_corr
    del result
    corrected = z.astype(np.float32)
    del z
    return _assemble(rest, names, corrected)


def harmony(profiles: pd.DataFrame, **options: Any) -> pd.DataFrame:
    """Harmony batch correction (harmonypy) of the features over ``batch_key``.

    harmonypy computes in float32 (its result is float32 to the bit), so the float32
    output loses nothing. The options are :func:`harmony_handed_over`'s.
    """
    return harmony_handed_over([profiles], **options)


harmony.__signature__ = inspect.signature(harmony_handed_over, eval_str=True).replace(  # type: ignore[attr-defined]
    parameters=[inspect.Parameter("profiles", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=pd.DataFrame),
                *list(inspect.signature(harmony_handed_over, eval_str=True).parameters.values())[1:]])
