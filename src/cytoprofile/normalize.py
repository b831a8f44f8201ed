"""Normalize profile features against a reference set of wells (all, or e.g. negcon).

The scaling is fitted on the chosen rows and applied to every row, column-wise in
numpy. Methods: ``standardize`` (mean, population std), ``robustize`` (median, IQR),
``mad_robustize`` (median, 1.4826 * MAD + epsilon), ``spherize`` (PCA, ZCA,
PCA-cor, ZCA-cor whitening) and ``inverse_normal`` (quantile mapping to a standard
normal through ``inverse_normal_n_quantiles`` landmarks, the reference's
QuantileTransformer; every fit row is used, where the reference subsamples 10,000).
Missing values are ignored in the fit and stay missing.
Spherizing a rank-deficient fit matrix is an error here; the reference intends the
same check, but an operator-precedence slip disables it and it returns values
blown up by 1/epsilon. Spherizing with no more fit rows than features is an error
too (the reference returns data it could not whiten), and so is an infinite
feature value (which would make the feature missing for every well).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from . import step_data
from .checks import check_choice, check_columns, check_flag, check_number
from .errors import ConfigError, InputError
from .step_data import AccountSink, FeatureAccount, report_account, unprocessed_columns
from .vocabulary import NORMALIZE_METHODS as METHODS
from .vocabulary import SPHERIZE_METHODS, metadata_columns, resolve_features

__all__ = ["fit_rows", "normalize"]

log = logging.getLogger(__name__)

_MAD_SCALE = 1.4826  # makes the MAD a consistent estimator of a normal std
_EPS = float(np.finfo(np.float64).eps)


def fit_rows(
    profiles: pd.DataFrame,
    *,
    samples: str = "all",
    sample_filter: Mapping[str, Any] | None = None,
    min_cells: int | None = None,
    object_count_column: str = "Metadata_Object_Count",
) -> np.ndarray:
    """Boolean mask (by position) of the rows a normalization is fitted on.

    ``samples`` (a pandas query or "all") AND ``sample_filter`` AND, when ``min_cells``
    is set and not 1, ``object_count_column >= min_cells``.
    """
    if min_cells is not None:
        min_cells = int(check_number("min_cells", min_cells, minimum=0, integer=True))
    if not isinstance(object_count_column, str):
        raise ConfigError(f"object_count_column must be a column name, got {object_count_column!r}")
    positional = profiles.set_axis(pd.RangeIndex(len(profiles)), axis=0)
    chosen = step_data.select_samples(positional, samples=samples, sample_filter=sample_filter)
    mask = np.zeros(len(profiles), dtype=bool)
    mask[chosen.index.to_numpy()] = True
    if min_cells is not None and min_cells != 1:
        if object_count_column not in profiles.columns:
            raise ConfigError(
                f"min_cells={min_cells} needs the column {object_count_column!r}, absent from "
                "the profiles; aggregate with object counts or set min_cells to 1"
            )
        counts = pd.to_numeric(profiles[object_count_column], errors="coerce").to_numpy()
        with np.errstate(invalid="ignore"):
            mask &= counts >= min_cells
        if not mask.any():
            raise InputError(
                f"no rows to fit on: none of the selected wells has {object_count_column} "
                f">= min_cells ({min_cells}); lower min_cells"
            )
    return mask


def _mean_std(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, scale (population std; 1 for constant features) and the constant mask."""
    n = (~np.isnan(x)).sum(axis=0).astype(np.float64)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nansum(x, axis=0) / n
        centred = x - mean
        correction = np.nansum(centred, axis=0)
        var = (np.nansum(centred * centred, axis=0) - correction**2 / n) / n
        # a feature indistinguishable from a constant (rounding bound of the
        # two-pass variance) gets scale 1, as in the usual standard scaler
        constant = var <= n * _EPS * var + (n * mean * _EPS) ** 2
    scale = np.where(constant, 1.0, np.sqrt(var))
    return mean, scale, constant


def _robust(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        centre = np.nanmedian(x, axis=0)
        q25, q75 = np.nanpercentile(x, [25.0, 75.0], axis=0)
    scale = q75 - q25
    scale = np.where(scale < 10 * _EPS, 1.0, scale)
    return centre, scale


def _mad(x: np.ndarray, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        centre = np.nanmedian(x, axis=0)
        mad = np.nanmedian(np.abs(x - centre), axis=0) * _MAD_SCALE
    return centre, mad + epsilon


def _inverse_normal(x_all: np.ndarray, x_fit: np.ndarray, n_quantiles: int) -> np.ndarray:
    """Map each feature through its fit rows' quantiles to a standard normal."""
    from scipy import special

    bound = 1e-7  # the reference's clipping margin
    n = max(1, min(n_quantiles, len(x_fit)))
    references = np.linspace(0, 1, n, endpoint=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        quantiles = np.nanpercentile(x_fit, references * 100, axis=0)
    out = np.array(x_all, dtype=np.float64, copy=True)
    clip = special.ndtri(np.array([bound - np.spacing(1), 1 - (bound - np.spacing(1))]))
    for j in range(out.shape[1]):
        col, q = out[:, j], quantiles[:, j]
        with np.errstate(invalid="ignore"):
            low, high = col - bound < q[0], col + bound > q[-1]
        ok = ~np.isnan(col)
        col[ok] = 0.5 * (np.interp(col[ok], q, references) - np.interp(-col[ok], -q[::-1], -references[::-1]))
        col[high] = 1
        col[low] = 0
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, j] = np.clip(special.ndtri(col), clip[0], clip[1])
    return out


def _spherize(
    x_all: np.ndarray,
    fit: np.ndarray,
    names: Sequence[str],
    *,
    method: str,
    center: bool,
    epsilon: float,
) -> np.ndarray:
    """Whitening fitted on the complete rows of ``x_all[fit]``, applied to all rows."""
    x_fit = x_all[fit]
    complete = ~np.isnan(x_fit).any(axis=1)
    if not complete.all():
        log.warning(
            "spherize: %d of %d fit rows have missing values and are left out of the fit",
            int((~complete).sum()),
            len(x_fit),
        )
        x_fit = x_fit[complete]
    n, d = x_fit.shape
    if n < 2:
        raise InputError(
            "spherize needs at least 2 fit rows without missing values; drop features "
            "with missing values first (feature_select drop_na_columns)"
        )
    if n <= d:
        raise InputError(
            f"spherize needs more fit rows than features, got {n} rows for {d} features: "
            "the covariance cannot be whitened; select fewer features first (feature_select) "
            "or fit on more wells (samples)"
        )
    if method.endswith("-cor"):
        mean, scale, constant = _mean_std(x_fit)
        if constant.any():
            bad = [names[i] for i in np.flatnonzero(constant)[:5]]
            raise InputError(
                f"spherize {method} cannot scale features with zero variance on the fit rows "
                f"({', '.join(bad)}{' ...' if constant.sum() > 5 else ''}); remove them first "
                "(feature_select variance_threshold)"
            )
    elif center:
        mean = x_fit.mean(axis=0)
        scale = np.ones(d)
    else:
        mean = np.zeros(d)
        scale = np.ones(d)
    xt = (x_fit - mean) / scale

    _, s, vt = np.linalg.svd(xt, full_matrices=False)
    tol = s.max(initial=0.0) * max(n, d) * _EPS
    rank = int((s > tol).sum())
    if rank < d:
        raise InputError(
            f"spherize: the fit rows' feature matrix has rank {rank}, expected {d} "
            f"({n} rows x {d} features); some features are linear combinations of others "
            "(duplicated or constant features): run feature_select "
            "(variance_threshold, correlation_threshold) before spherizing"
        )
    sigma = s + epsilon
    root = np.sqrt(n - 1)

    with np.errstate(invalid="ignore"):
        y = (x_all - mean) / scale
    if method.startswith("PCA"):
        return (y @ vt.T) * (root / sigma)
    # ZCA: W = V diag(1/sigma) V^T, computed without forming the d x d matrix
    return ((y @ vt.T) / sigma) @ vt * root


def _meta_columns(profiles: pd.DataFrame, meta_features: str | Sequence[str]) -> list[str]:
    """The metadata columns kept in front: inferred, or the given list (all present)."""
    if isinstance(meta_features, str):
        if meta_features != "infer":
            raise ConfigError(
                f"meta_features must be 'infer' or a list of columns, got {meta_features!r}"
            )
        meta = metadata_columns(profiles.columns)
    else:
        meta = check_columns("meta_features", meta_features, profiles, message=(
            "meta_features names columns absent from the profiles: {missing}; "
            "fix the list or use meta_features: infer"))
    return meta


def _apply(
    method: str, x: np.ndarray, fit: np.ndarray, names: list[str], *, mad_robustize_epsilon: float,
    inverse_normal_n_quantiles: int, spherize_method: str, spherize_center: bool, spherize_epsilon: float,
) -> tuple[np.ndarray, list[str]]:
    """The normalized matrix and its column names (``PC1..PCd`` for PCA whitening)."""
    columns: list[str] = list(names)
    with np.errstate(invalid="ignore", divide="ignore"):
        if method == "standardize":
            mean, scale, _ = _mean_std(x[fit])
            out = (x - mean) / scale
        elif method == "robustize":
            centre, scale = _robust(x[fit])
            out = (x - centre) / scale
        elif method == "mad_robustize":
            centre, scale = _mad(x[fit], mad_robustize_epsilon)
            out = (x - centre) / scale
        elif method == "inverse_normal":
            quantiles = int(check_number("inverse_normal_n_quantiles", inverse_normal_n_quantiles,
                                         minimum=1, integer=True))
            out = _inverse_normal(x, x[fit], quantiles)
        else:
            out = _spherize(
                x,
                fit,
                names,
                method=spherize_method,
                center=spherize_center,
                epsilon=spherize_epsilon,
            )
            if spherize_method.startswith("PCA"):
                columns = [f"PC{i}" for i in range(1, len(names) + 1)]
    return out, columns


def normalize(
    profiles: pd.DataFrame,
    *,
    features: str | Sequence[str] = "infer",
    meta_features: str | Sequence[str] = "infer",
    image_features: bool = False,
    compartments: str | Sequence[str] | None = None,
    samples: str = "all",
    method: str = "standardize",
    mad_robustize_epsilon: float = 1e-18,
    spherize_center: bool = True,
    spherize_method: str = "ZCA-cor",
    spherize_epsilon: float = 1e-6,
    sample_filter: Mapping[str, Any] | None = None,
    min_cells: int | None = None,
    object_count_column: str = "Metadata_Object_Count",
    on_account: AccountSink | None = None,
    inverse_normal_n_quantiles: int = 1000,
) -> pd.DataFrame:
    """Normalize ``features`` of ``profiles``; fit on the rows ``samples`` etc. choose.

    Output: the metadata columns, then non-feature ``Image_*`` columns unchanged, then
    the normalized features (``PC1..PCd`` for PCA whitening), with the input's row
    order and index. ``samples`` is "all" or a pandas query such as
    ``"Metadata_control_type == 'negcon'"``; ``sample_filter`` ({column: [values]})
    and ``min_cells`` narrow the fit rows further (AND). ``spherize`` is fitted on the
    fit rows without missing values, and a row with any missing feature comes out
    all-missing (whitening mixes every feature into every output column).
    Features are inferred from ``compartments`` (default Cells, Cytoplasm, Nuclei);
    other non-metadata columns are left out with a warning, and ``on_account``
    receives the ``FeatureAccount`` of features in and out. An infinite feature
    value is an error naming the feature and the rows.
    """
    method = check_choice("method", method, METHODS)
    check_flag("spherize_center", spherize_center)
    check_number("spherize_epsilon", spherize_epsilon, minimum=0)
    if method == "spherize":
        spherize_method = check_choice("spherize_method", spherize_method, SPHERIZE_METHODS)
        if spherize_method.endswith("-cor") and not spherize_center:
            raise ConfigError(f"spherize_method {spherize_method} needs spherize_center: true")
    check_number("mad_robustize_epsilon", mad_robustize_epsilon, minimum=0)

    names = resolve_features(
        profiles, features, image_features=image_features, compartments=compartments
    )
    meta = _meta_columns(profiles, meta_features)
    taken = set(names) | set(meta)
    passthrough = [
        c
        for c in profiles.columns
        if c not in taken and isinstance(c, str) and c.startswith(("Image_", "ome_arrow_"))
    ]

    x = step_data.feature_matrix(profiles, names)
    step_data.refuse_infinite(profiles, x, names, step="normalizing")
    fit = fit_rows(profiles, samples=samples, sample_filter=sample_filter, min_cells=min_cells,
                   object_count_column=object_count_column)
    out, columns = _apply(
        method, x, fit, names,
        mad_robustize_epsilon=mad_robustize_epsilon, inverse_normal_n_quantiles=inverse_normal_n_quantiles,
        spherize_method=spherize_method, spherize_center=spherize_center, spherize_epsilon=spherize_epsilon,
    )
    normalized = pd.DataFrame(out, columns=pd.Index(columns), index=profiles.index)
    left_out = unprocessed_columns(profiles, {*names, *passthrough})
    report_account(
        FeatureAccount(
            step=f"normalize ({method})",
            features_in=tuple(names),
            features_out=tuple(columns),
            dropped=dict.fromkeys(left_out, "not_a_feature"),
        ),
        on_account,
    )
    return pd.concat(
        [profiles.loc[:, meta], profiles.loc[:, passthrough], normalized], axis="columns"
    )
