"""Feature-by-feature correlation as the reference computes it, without its full-size copies.

Pearson over complete rows is ``np.corrcoef`` bit for bit (the order of exactly tied
features then resolves as the reference's); with missing values, pairwise-complete
Pearson from a few features x features sums, with pairs that lose digits that way done
again exactly; spearman, kendall and infinities go to pandas' routines.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

from .step_data import feature_matrix

__all__ = ["correlation_matrix", "pairwise_pearson_nan"]

_BLOCK = 512  # rows of the correlation matrix handled at once
_COLUMNS = 64  # feature columns converted or reduced at once
_ROW_VALUES = 1 << 20  # values in a block of rows of the pairwise correlation
#: a pair whose variance over its complete rows is below this share of its sum of squares about the feature's
#: mean has lost about six of its sixteen digits to the one-pass formula: it is computed again
_SUSPECT = 1e-6


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence numpy's all-NaN slice and degrees-of-freedom warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        yield


def pairwise_pearson_nan(rows: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    """Pearson correlation of the features ``names`` over pairwise-complete rows.

    The formula's sums (pair counts, sums and sums of squares of each feature where the
    other is present, cross products) are accumulated with matmuls over blocks of rows,
    each made in float64 from the frame and centred on the feature means: what is held
    is a few features x features arrays, never a full-size float64 matrix.
    """
    d = len(names)
    with _quiet():  # a block of columns at a time: nanmean copies its input
        centre = np.concatenate([np.nanmean(feature_matrix(rows, names[s : s + _COLUMNS]), axis=0)
                                 for s in range(0, d, _COLUMNS)]) if d else np.zeros(0)
    centre = np.where(np.isnan(centre), 0.0, centre)
    n, sx, sxx, sxy = (np.zeros((d, d)) for _ in range(4))
    step = max(1, _ROW_VALUES // max(d, 1))
    for r0 in range(0, len(rows), step):
        xc = feature_matrix(rows.iloc[r0 : r0 + step], names)
        missing = np.isnan(xc)
        m = (~missing).astype(np.float64)
        xc -= centre
        xc[missing] = 0.0
        n += m.T @ m
        sx += xc.T @ m  # [i, j]: sum of x_i where x_j present
        sxx += (xc * xc).T @ m
        sxy += xc.T @ xc
    out = sxy  # each row block of the result overwrites its own rows of sxy, read only for that block
    for i0 in range(0, d, _BLOCK):
        sl = slice(i0, min(i0 + _BLOCK, d))
        sx_i, sx_j, sxx_i, sxx_j = sx[sl], sx[:, sl].T, sxx[sl], sxx[:, sl].T
        with np.errstate(divide="ignore", invalid="ignore"):
            cov = sxy[sl] - sx_i * sx_j / n[sl]
            var_i = sxx_i - sx_i * sx_i / n[sl]
            var_j = sxx_j - sx_j * sx_j / n[sl]
            tiny = 1e-12
            bad = (n[sl] < 2) | (var_i <= tiny * sxx_i) | (var_j <= tiny * sxx_j)
            r = cov / np.sqrt(var_i * var_j)
        r[bad] = np.nan
        # where a pair's complete rows sit far from the feature's mean, the sums lose digits: those pairs again, exactly
        suspect = (n[sl] >= 2) & ((var_i <= _SUSPECT * sxx_i) | (var_j <= _SUSPECT * sxx_j))
        _exact_pairs(rows, names, r, i0, suspect)
        out[sl] = np.clip(r, -1.0, 1.0)
    return out


def _exact_pairs(rows: pd.DataFrame, names: Sequence[str], r: np.ndarray, i0: int, suspect: np.ndarray) -> None:
    """Pearson of each suspect pair (rows ``i0 + a``, column ``b`` of ``r``) over its complete rows, two-pass as
    pandas computes it (NaN without spread); one column of the frame at a time."""
    pairs = np.argwhere(suspect)
    for a in np.unique(pairs[:, 0]):
        x = feature_matrix(rows, [names[i0 + a]])[:, 0]
        for b in pairs[pairs[:, 0] == a, 1]:
            y = x if b == i0 + a else feature_matrix(rows, [names[b]])[:, 0]
            both = ~np.isnan(x) & ~np.isnan(y)
            dx, dy = x[both] - x[both].mean(), y[both] - y[both].mean()
            scale = np.sqrt((dx @ dx) * (dy @ dy))
            r[a, b] = (dx @ dy) / scale if both.sum() >= 2 and scale > 0 else np.nan


def _corrcoef_in_place(xt: np.ndarray) -> np.ndarray:
    """``np.corrcoef(xt)`` (features x rows, C-contiguous float64), centring ``xt`` in place.

    The same operations in the same order and layout as numpy's, so the result is
    bit for bit numpy's, without its full-size copy of the input.
    """
    avg = np.average(xt, axis=1)
    fact = max(xt.shape[1] - 1, 0)
    xt -= avg[:, None]
    c = np.dot(xt, xt.T)
    c *= np.true_divide(1, fact)
    stddev = np.sqrt(np.diag(c))
    c /= stddev[:, None]
    c /= stddev[None, :]
    np.clip(c, -1, 1, out=c)
    return c


def _rows_by_feature(rows: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    """The features as a C-contiguous float64 (features x rows) array, filled from the
    frame a block of columns at a time: the only full-size array is the result."""
    out = np.empty((len(names), len(rows)), dtype=np.float64)
    for s in range(0, len(names), _COLUMNS):
        chunk = list(names[s : s + _COLUMNS])
        part = rows.loc[:, chunk]  # plain numbers come in the frame's own layout, a feature a row
        plain = all(isinstance(t, np.dtype) and t.kind in "fiu" for t in part.dtypes)
        out[s : s + len(chunk)] = part.to_numpy().T if plain else feature_matrix(rows, chunk).T
    return out


def correlation_matrix(rows: pd.DataFrame, names: Sequence[str], method: str) -> np.ndarray:
    """Feature-by-feature correlation over ``rows``, computed as the reference computes it.

    Pearson without missing values: the reference's ``np.corrcoef`` of the transposed
    matrix, done on one features x rows float64 array made straight from the frame (its
    values and layout are those of the reference's copy, so ties resolve identically).
    Spearman and kendall are pandas' routines, as in the reference (ranks correlated
    another way round differently, and near-ties then resolve differently).
    """
    if method == "pearson":
        xt = _rows_by_feature(rows, names)
        if bool(np.isfinite(xt).all()):
            with _quiet(), np.errstate(divide="ignore", invalid="ignore"):
                return _corrcoef_in_place(xt)
        infinite = bool(np.isinf(xt).any())
        del xt
        if not infinite:
            return pairwise_pearson_nan(rows, names)
    # spearman/kendall, or infinities: pandas' pairwise routines
    frame = pd.DataFrame(feature_matrix(rows, names), columns=pd.Index(list(names)), copy=False)
    return frame.corr(method=method).to_numpy()  # type: ignore[arg-type]
