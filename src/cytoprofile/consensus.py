"""Consensus profiles: one row per replicate group (median, mean or moderated z-score).

``modz`` weights each replicate by its mean correlation with the other replicates
of its group (negative correlations count as 0, weights at least ``min_weight``,
normalized to sum to 1), so a discordant replicate counts less than in a mean.
Unlike the reference, a missing value is skipped with the weights renormalized over
the replicates that have one (the reference counts it as 0), and a feature missing
in every replicate stays missing (the reference returns 0). Profiles with no rows
are an error (the reference writes a file with only a header).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .checks import check_columns, check_frame, check_number, listed
from .errors import ConfigError, InputError
from .step_data import (
    AccountSink,
    FeatureAccount,
    feature_matrix,
    report_account,
    unprocessed_columns,
)
from .vocabulary import CONSENSUS_OPERATIONS as OPERATIONS
from .vocabulary import MODZ_METHODS, resolve_features

__all__ = ["consensus", "modz_weights"]

_MODZ_METHODS = MODZ_METHODS


def _row_standardize(x: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit norm; a constant row becomes NaN."""
    centred = x - x.mean(axis=1, keepdims=True)
    norm = np.sqrt((centred * centred).sum(axis=1, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, centred / norm, np.nan)


def modz_weights(
    corr: np.ndarray, *, min_weight: float = 0.01, precision: int | None = 4
) -> np.ndarray:
    """Replicate weights from a replicate-by-replicate correlation matrix.

    Each replicate's weight is its mean correlation with the others (negatives
    as 0, undefined ones skipped), at least ``min_weight``, normalized to sum 1 and
    rounded to ``precision`` decimals (as the reference does). A replicate whose
    correlations are all undefined gets NaN (it is left out); when no replicate
    has a weight, all count equally.
    """
    check_number("min_weight", min_weight, minimum=0)
    if precision is not None:
        check_number("precision", precision, minimum=0, integer=True)
    k = corr.shape[0]
    c = np.array(corr, dtype=np.float64, copy=True)
    np.fill_diagonal(c, np.nan)
    c = np.where(np.isnan(c), np.nan, np.maximum(c, 0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        raw = np.nanmean(c, axis=1) if k > 1 else np.full(k, np.nan)
    raw = np.where(np.isnan(raw), np.nan, np.maximum(raw, min_weight))
    total = np.nansum(raw)
    weights = np.full(k, 1.0 / k) if total == 0 else raw / total
    if precision is not None:
        weights = np.round(weights, precision)
    return weights


def _weighted(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean over rows, each feature over the replicates it has a value for."""
    w = np.where(np.isnan(weights), 0.0, weights)[:, None]
    present = ~np.isnan(x)
    if present.all():
        return (w * x).sum(axis=0)
    total_w = (w * present).sum(axis=0)
    full_w = w.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        value = (w * np.where(present, x, 0.0)).sum(axis=0) * (full_w / total_w)
    value[~present.any(axis=0)] = np.nan
    return value


def _modz(
    x: np.ndarray,
    codes: np.ndarray,
    n_groups: int,
    *,
    method: str,
    min_weight: float,
    precision: int | None,
) -> np.ndarray:
    """Moderated z-score per group (groups numbered 0..n_groups-1 in ``codes``)."""
    # imported here: scipy.stats takes half a second to import, and the CLI starts without it
    from scipy.stats import rankdata

    complete = ~np.isnan(x).any(axis=1)
    base = rankdata(x, axis=1) if method == "spearman" else x
    z = np.full_like(x, np.nan)
    if complete.any():
        z[complete] = _row_standardize(base[complete])
    out = np.empty((n_groups, x.shape[1]))
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(n_groups + 1))
    for g in range(n_groups):
        rows = order[bounds[g] : bounds[g + 1]]
        xg = x[rows]
        if len(rows) == 1:
            out[g] = xg[0]
            continue
        if method != "kendall" and complete[rows].all():
            zg = z[rows]
            corr = np.clip(zg @ zg.T, -1.0, 1.0)
        else:  # missing values or Kendall: pairwise-complete correlations
            frame = pd.DataFrame(xg.T, columns=range(len(rows)))
            corr = frame.corr(method=method).to_numpy()  # type: ignore[arg-type]
        weights = modz_weights(corr, min_weight=min_weight, precision=precision)
        out[g] = _weighted(xg, weights)
    return out


def _check_options(
    operation: object, modz_method: object, modz_min_weight: object, modz_precision: object
) -> tuple[str, str]:
    """The checked operation and modz method; a wrong type or value is a ``ConfigError``."""
    if not isinstance(operation, str) or operation.lower() not in OPERATIONS:
        raise ConfigError(
            f"unknown consensus operation {operation!r}; choose {listed(OPERATIONS)}"
        )
    if not isinstance(modz_method, str) or modz_method not in _MODZ_METHODS:
        raise ConfigError(
            f"unknown modz_method {modz_method!r}; choose {listed(_MODZ_METHODS)}"
        )
    check_number("modz_min_weight", modz_min_weight, minimum=0)
    if modz_precision is not None:
        check_number("modz_precision", modz_precision, minimum=0, integer=True)
    return operation.lower(), modz_method


def consensus(
    profiles: pd.DataFrame,
    *,
    replicate_columns: Sequence[str] = ("Metadata_Plate", "Metadata_Well"),
    operation: str = "median",
    features: str | Sequence[str] = "infer",
    compartments: str | Sequence[str] | None = None,
    image_features: bool = False,
    modz_method: str = "spearman",
    modz_min_weight: float = 0.01,
    modz_precision: int | None = 4,
    on_account: AccountSink | None = None,
) -> pd.DataFrame:
    """One row per replicate group: the replicate columns, then the features.

    ``operation`` is ``median``, ``mean`` or ``modz``; missing values are skipped and
    a feature missing in every replicate stays missing. Rows are sorted by group.
    Features are inferred from ``compartments`` (default Cells, Cytoplasm, Nuclei), and
    ``Image_*`` columns too with ``image_features``;
    other metadata columns are summarised away, other columns are left out with a
    warning, and ``on_account`` receives the ``FeatureAccount``.
    """
    operation, modz_method = _check_options(operation, modz_method, modz_min_weight, modz_precision)
    check_frame("profiles", profiles)
    keys = check_columns("replicate_columns", replicate_columns, profiles, message=(
        "replicate_columns {missing} are absent from the profiles; use metadata columns "
        "that identify replicates, e.g. Metadata_broad_sample"))
    names = resolve_features(profiles, features, image_features=image_features, compartments=compartments)
    if len(profiles) == 0:
        raise InputError(
            "consensus of profiles with no rows: there is no replicate to summarise; "
            "check the file and the steps that made it"
        )
    report_account(
        FeatureAccount(
            step=f"consensus ({operation})",
            features_in=tuple(names),
            features_out=tuple(names),
            dropped=dict.fromkeys(unprocessed_columns(profiles, {*names, *keys}), "not_a_feature"),
        ),
        on_account,
    )
    x = feature_matrix(profiles, names)
    values = pd.DataFrame(x, columns=pd.Index(names), index=profiles.index)
    frame = pd.concat([profiles.loc[:, keys], values], axis="columns")
    grouped = frame.groupby(keys, dropna=False, sort=True)
    if operation == "median":
        return grouped[names].median().reset_index()
    if operation == "mean":
        return grouped[names].mean().reset_index()
    codes = grouped.ngroup().to_numpy()
    key_frame = grouped.size().index.to_frame(index=False)
    result = _modz(
        x,
        codes,
        len(key_frame),
        method=modz_method,
        min_weight=float(modz_min_weight),
        precision=None if modz_precision is None else int(modz_precision),
    )
    return pd.concat(
        [key_frame, pd.DataFrame(result, columns=pd.Index(names))], axis="columns"
    )
