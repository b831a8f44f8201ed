"""Feature selection: drop uninformative, redundant or unreliable profile features.

Operations run in the given order, each on the features the previous ones left; the
result keeps every other column. ``dropped_features`` returns the dropped names with the
operation that dropped each, so a selection fitted on several plates together
(``batch``/``all`` levels) can be applied to each plate and recorded.

``variance_threshold`` changed meaning between versions of the reference tool (the
frequency filter, later a plain ``variance <= min_variance`` filter, the frequency filter
becoming ``frequency_threshold``): here ``frequency_threshold`` is always the frequency
filter and ``variance_threshold_meaning`` says which one ``variance_threshold`` is
(``"frequency"``, the default and what existing recipe configs mean, or ``"variance"``).

Results equal the reference's, except: ``blocklist`` drops only selected features;
per-row ``noise_removal`` labels follow row order (not index labels); a variance filter
that rejects every feature drops them all instead of failing; the comparing operations
refuse a table of fewer than 2 rows (where the reference drops every feature); a string
``blocklist`` is one feature; and with missing values, which of two exactly duplicated
features ``correlation_threshold`` keeps may differ (the tie is decided by rounding in both).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from .checks import as_names, check_choice, check_number, listed
from .correlation import correlation_matrix
from .errors import ConfigError, InputError
from .processing.columns import each_block
from .step_data import (
    AccountSink,
    FeatureAccount,
    feature_matrix,
    keep_hint,
    report_account,
    select_samples,
    unprocessed_columns,
)
from .vocabulary import CORRELATION_METHODS, FEATURE_SELECT_OPERATIONS, resolve_features

__all__ = ["default_blocklist", "dropped_features", "excluded_features", "feature_select", "selected_features"]

log = logging.getLogger(__name__)

_BLOCK = 512  # rows of the correlation matrix handled at once
_COLUMNS = 64  # feature columns converted or reduced at once


def _frequency_excluded(x: np.ndarray, freq_cut: float, unique_cut: float) -> np.ndarray:
    """Mask of features failing the frequency filter, a block of columns at a time.

    The run-length bookkeeping needs several integer arrays per value; blocks keep
    that to a few times one block instead of many times the whole matrix.
    """
    d = x.shape[1]
    step = max(1, (1 << 18) // max(1, x.shape[0]))  # about 256K values a block (~10 work arrays each)
    if d <= step:
        return _frequency_excluded_block(x, freq_cut, unique_cut)
    out = np.empty(d, dtype=bool)

    def block(i: int) -> None:
        out[i : i + step] = _frequency_excluded_block(x[:, i : i + step], freq_cut, unique_cut)

    each_block(d, block, width=step)
    return out


def _frequency_excluded_block(x: np.ndarray, freq_cut: float, unique_cut: float) -> np.ndarray:
    """Mask of features failing the frequency filter (vectorised over columns).

    A feature fails when (count of its second most common value) / (count of its most
    common value) < ``freq_cut`` (0 when it has fewer than two distinct values), or
    when distinct values / rows < ``unique_cut``. NaN is not a value; rows still count.
    """
    n, d = x.shape
    if d == 0:
        return np.zeros(0, dtype=bool)
    s = np.array(x.T, order="C")  # a feature a row, sorted in place (NaN last)
    s.sort(axis=1)
    valid = ~np.isnan(s)
    starts = valid.copy()
    starts[:, 1:] &= s[:, 1:] != s[:, :-1]
    n_unique = starts.sum(axis=1)
    n_valid = valid.sum(axis=1)
    # run lengths, feature after feature; each feature's runs are one contiguous segment
    pos = np.flatnonzero(starts)
    col = pos // n
    nxt = np.append(pos[1:], np.iinfo(np.int64).max)
    lengths = np.minimum(nxt, col * n + n_valid[col]) - pos
    has1 = n_unique >= 1
    has2 = n_unique >= 2
    top1 = np.zeros(d)
    top2 = np.zeros(d)
    if has1.any():
        segments = np.searchsorted(col, np.flatnonzero(has1))
        top1[has1] = np.maximum.reduceat(lengths, segments)
        first_max = np.flatnonzero(lengths == top1[col])  # then the second largest: the largest of the rest
        first_max = first_max[np.r_[True, col[first_max[1:]] != col[first_max[:-1]]]]
        rest = lengths.copy()
        rest[first_max] = 0
        top2[has1] = np.maximum.reduceat(rest, segments)
    ratio = np.where(has2, top2 / np.where(has1, top1, 1.0), 0.0)
    unique_ratio = n_unique / n if n else np.zeros(d)
    return (ratio < freq_cut) | (unique_ratio < unique_cut)


def _variance_excluded(x: np.ndarray, min_variance: float) -> np.ndarray:
    """Mask of features with population variance <= ``min_variance`` (or undefined).

    A block of columns at a time: ``nanvar`` copies its input, and per block that copy
    is small (each column's sums run over the rows in the same order, so the values
    are those of the whole matrix).
    """
    with np.errstate(invalid="ignore"), _quiet():
        var = np.concatenate([np.nanvar(x[:, s : s + _COLUMNS], axis=0)
                              for s in range(0, x.shape[1], _COLUMNS)]) if x.shape[1] else np.zeros(0)
        if min_variance == 0:
            # the peak-to-peak range is exact for constant features
            ptp = np.nanmax(x, axis=0) - np.nanmin(x, axis=0)
            var = np.fmin(var, ptp)
    return ~(var > min_variance)


def _na_excluded(x: np.ndarray, na_cutoff: float) -> np.ndarray:
    if x.shape[0] == 0:
        return np.zeros(x.shape[1], dtype=bool)
    return np.isnan(x).sum(axis=0) / x.shape[0] > na_cutoff


def _outlier_excluded(x: np.ndarray, cutoff: float) -> np.ndarray:
    with _quiet():
        hi = np.abs(np.nanmax(x, axis=0))
        lo = np.abs(np.nanmin(x, axis=0))
    return (hi > cutoff) | (lo > cutoff)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence numpy's all-NaN slice and degrees-of-freedom warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        yield


def _correlation_excluded(
    rows: pd.DataFrame, names: Sequence[str], threshold: float, method: str
) -> np.ndarray:
    """Mask of features ``names`` (columns of ``rows``) dropped by the correlation filter.

    Rule (the reference's): rank the features by the sum of absolute correlations
    with all features (ascending); for every pair with correlation > ``threshold``
    (signed, so anticorrelation never drops), drop the member ranked later.
    """
    d = len(names)
    dropped = np.zeros(d, dtype=bool)
    if d < 2:
        return dropped
    corr = correlation_matrix(rows, names, method)
    # column sums of |corr|, summed over contiguous copies so the rounding (and so
    # the order of exactly tied features) is the reference's
    sums = np.empty(d)
    for j0 in range(0, d, _BLOCK):
        sl = slice(j0, min(j0 + _BLOCK, d))
        sums[sl] = np.nansum(np.ascontiguousarray(np.abs(corr[:, sl]).T), axis=1)
    rank = np.empty(d, dtype=np.int64)
    rank[np.argsort(sums, kind="quicksort")] = np.arange(d)
    for i0 in range(0, d, _BLOCK):
        pairs = np.arange(i0, min(i0 + _BLOCK, d))
        with np.errstate(invalid="ignore"):
            above = corr[pairs] > threshold
        above &= np.arange(d)[None, :] < pairs[:, None]  # strictly lower triangle
        a, b = np.nonzero(above)
        if a.size == 0:
            continue
        a = pairs[a]
        drop = np.where(rank[a] > rank[b], a, b)
        dropped[drop] = True
    return dropped


def _noise_excluded(
    frame: pd.DataFrame, x: np.ndarray, groups: pd.Series, cutoff: float
) -> np.ndarray:
    """Mask of features whose mean within-group standard deviation exceeds ``cutoff``."""
    data = pd.DataFrame(x, index=frame.index, copy=False)
    std = data.groupby(groups.to_numpy()).std(ddof=0)
    with _quiet():
        mean_std = np.nanmean(std.to_numpy(dtype=np.float64), axis=0)
    with np.errstate(invalid="ignore"):
        return mean_std > cutoff


def default_blocklist() -> list[str]:
    """The standard blocklist of 55 noisy CellProfiler features."""
    text = resources.files("cytoprofile").joinpath("data/blocklist_features.txt").read_text()
    return _parse_blocklist(text)


def _parse_blocklist(text: str) -> list[str]:
    names = [line.strip() for line in text.splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if names and names[0] == "blocklist":  # header line of the classic file
        names = names[1:]
    return names


def _load_blocklist(path: str | Path) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"blocklist file {path} cannot be read ({exc}); check the path") from exc
    except UnicodeDecodeError as exc:  # the message, not the file: a binary file would fill the terminal
        raise InputError(f"blocklist file {path} is not UTF-8 text (byte {exc.start}); give a text file of "
                         "feature names, one a line") from None
    return _parse_blocklist(text)


# ---------------------------------------------------------------- public API

# operations that compare rows: meaningless (and dropping everything) on one row
_NEEDS_ROWS = ("variance_threshold", "frequency_threshold", "correlation_threshold")


def _check_options(
    operations: object,
    variance_threshold_meaning: object,
    corr_method: object,
    numbers_in: Mapping[str, object],
) -> tuple[list[str], str, str, dict[str, float]]:
    """Checked operations, variance meaning, correlation method and numeric options."""
    ops = as_names("operations", operations)
    unknown = [op for op in ops if op not in FEATURE_SELECT_OPERATIONS]
    if unknown:
        raise ConfigError(
            f"unknown feature_select operation(s) {listed(unknown, last='and')}; choose {listed(FEATURE_SELECT_OPERATIONS)}"
        )
    if variance_threshold_meaning not in ("frequency", "variance"):
        raise ConfigError(
            "variance_threshold_meaning must be 'frequency' (freq_cut/unique_cut filter) "
            f"or 'variance' (min_variance filter), got {variance_threshold_meaning!r}"
        )
    method = check_choice("corr_method", corr_method, CORRELATION_METHODS)
    checked: dict[str, float] = {}
    for name, value in numbers_in.items():
        if value is None and name == "noise_removal_stdev_cutoff":
            continue
        bounded = name in ("na_cutoff", "corr_threshold", "freq_cut", "unique_cut")
        checked[name] = check_number(
            name, value, minimum=0.0 if name != "outlier_cutoff" else None,
            maximum=1.0 if bounded else None,
        )
    return ops, str(variance_threshold_meaning), method, checked


def _blocklist_names(
    blocklist: str | Sequence[str] | None, blocklist_file: str | Path | None
) -> set[str]:
    """The features a ``blocklist`` operation drops (the standard list when none is given)."""
    if blocklist is None and blocklist_file is None:
        return set(default_blocklist())
    block = set(as_names("blocklist", blocklist, repeats=True)) if blocklist is not None else set()
    if blocklist_file is not None:
        if not isinstance(blocklist_file, str | Path):
            raise ConfigError(f"blocklist_file must be a path, got {blocklist_file!r}")
        block |= set(_load_blocklist(blocklist_file))
    return block


def dropped_features(profiles: pd.DataFrame, **options: Any) -> dict[str, str]:
    """Feature -> the operation that drops it, in column order.

    ``options`` are ``feature_select``'s, with its names and defaults (an unknown name is a ``TypeError``).
    """
    return _dropped(profiles, **_select_options(options))


def _select_options(given: dict[str, Any]) -> dict[str, Any]:
    """``given`` completed with ``feature_select``'s defaults (the one place they are declared)."""
    parameters = {k: p for k, p in inspect.signature(feature_select).parameters.items()
                  if k not in ("profiles", "on_account")}
    unknown = sorted(set(given) - set(parameters))
    if unknown:
        raise TypeError(f"dropped_features() got an unexpected keyword argument {unknown[0]!r}")
    return {k: given.get(k, p.default) for k, p in parameters.items()}


def _dropped(
    profiles: pd.DataFrame,
    *,
    features: str | Sequence[str],
    image_features: bool,
    compartments: str | Sequence[str] | None,
    operations: str | Sequence[str],
    variance_threshold_meaning: Literal["frequency", "variance"],
    samples: str,
    sample_filter: Mapping[str, Any] | None,
    na_cutoff: float,
    corr_threshold: float,
    corr_method: str,
    freq_cut: float,
    unique_cut: float,
    min_variance: float,
    blocklist_file: str | Path | None,
    blocklist: str | Sequence[str] | None,
    outlier_cutoff: float,
    noise_removal_perturb_groups: str | Sequence[Any] | None,
    noise_removal_stdev_cutoff: float | None,
) -> dict[str, str]:
    """:func:`dropped_features` with every option given."""
    ops, meaning, corr_method, opts = _check_options(
        operations, variance_threshold_meaning, corr_method,
        {"na_cutoff": na_cutoff, "corr_threshold": corr_threshold, "freq_cut": freq_cut,
         "unique_cut": unique_cut, "min_variance": min_variance, "outlier_cutoff": outlier_cutoff,
         "noise_removal_stdev_cutoff": noise_removal_stdev_cutoff},
    )
    names = resolve_features(
        profiles, features, image_features=image_features, compartments=compartments
    )
    rows = select_samples(profiles, samples=samples, sample_filter=sample_filter)
    statistical = [op for op in ops if op in _NEEDS_ROWS]
    if statistical and len(rows) < 2:
        raise InputError(
            f"feature_select {', '.join(statistical)} needs at least 2 rows to compare, got "
            f"{len(rows)}; select features over more wells (level: batch or all) or leave "
            "these operations out"
        )
    block = _blocklist_names(blocklist, blocklist_file) if "blocklist" in ops else set()
    groups: pd.Series | None = None
    if "noise_removal" in ops:
        groups = _noise_groups(profiles, rows, noise_removal_perturb_groups)
        if noise_removal_stdev_cutoff is None:
            raise ConfigError(
                "noise_removal needs noise_removal_stdev_cutoff (the largest mean "
                "within-group standard deviation to keep)"
            )
    held = {"idx": np.arange(len(names)), "x": feature_matrix(rows, names)}  # also checks the values
    keep = np.ones(len(names), dtype=bool)
    by: dict[str, str] = {}
    for op in ops:
        idx = np.flatnonzero(keep)
        kind = op
        if op == "variance_threshold":
            kind = "frequency_threshold" if meaning == "frequency" else "variance"
        if kind == "correlation_threshold":
            held.clear()  # it makes its own (transposed) float64 matrix: never two at once
        x = _kept_matrix(rows, names, idx, held) if kind not in _OWN_VALUES else None
        bad = _excluded_by(kind, x, names, idx, opts, corr_method=corr_method, block=block, rows=rows, groups=groups)
        del x
        keep[idx[bad]] = False
        by.update((names[i], op) for i in idx[bad])
        log.debug("feature_select %s dropped %d features", op, int(bad.sum()))
    return {c: by[c] for c in profiles.columns if c in by}


# operations that need no float64 matrix of the kept features (the correlation makes its own)
_OWN_VALUES = ("correlation_threshold", "blocklist")


def _kept_matrix(rows: pd.DataFrame, names: Sequence[str], idx: np.ndarray,
                 held: dict[str, np.ndarray]) -> np.ndarray:
    """The float64 values of the kept features ``idx``: ``held``'s matrix while they are the
    same, else made anew from the frame after the old one is let go, so that one
    full-size float64 matrix at most is alive at a time."""
    if "x" in held and np.array_equal(held["idx"], idx):
        return held["x"]
    held.clear()
    held["idx"], held["x"] = idx, feature_matrix(rows, [names[i] for i in idx])
    return held["x"]


def _excluded_by(kind: str, x: np.ndarray | None, names: Sequence[str], idx: np.ndarray, opts: dict[str, Any], *,
                 corr_method: str, block: set[str], rows: pd.DataFrame, groups: pd.Series | None) -> np.ndarray:
    """Which of the still kept features (columns ``idx`` of ``names``, values ``x``) one operation drops."""
    if kind == "correlation_threshold":
        return _correlation_excluded(rows, [names[i] for i in idx], opts["corr_threshold"], corr_method)
    if kind == "blocklist":
        return np.array([names[i] in block for i in idx], dtype=bool)
    assert x is not None
    if kind == "frequency_threshold":
        return _frequency_excluded(x, opts["freq_cut"], opts["unique_cut"])
    if kind == "variance":
        return _variance_excluded(x, opts["min_variance"])
    if kind == "drop_na_columns":
        return _na_excluded(x, opts["na_cutoff"])
    if kind == "drop_outliers":
        return _outlier_excluded(x, opts["outlier_cutoff"])
    assert groups is not None  # noise_removal
    return _noise_excluded(rows, x, groups, opts["noise_removal_stdev_cutoff"])


def excluded_features(profiles: pd.DataFrame, **options: Any) -> list[str]:
    """Features the operations drop, in column order (options as ``feature_select``)."""
    return list(dropped_features(profiles, **options))


def _noise_groups(
    profiles: pd.DataFrame, rows: pd.DataFrame, groups: str | Sequence[Any] | None
) -> pd.Series:
    """Group labels of the fitting rows, from a column name or per-row labels."""
    if groups is None:
        raise ConfigError(
            "noise_removal needs noise_removal_perturb_groups: a metadata column name "
            "(e.g. Metadata_broad_sample) or one label per row"
        )
    if not isinstance(groups, str | Iterable):
        raise ConfigError(
            f"noise_removal_perturb_groups must be a column name or one label per row, got {groups!r}"
        )
    if isinstance(groups, str):
        if groups not in profiles.columns:
            raise ConfigError(
                f"noise_removal_perturb_groups names column {groups!r}, absent from the "
                "profiles; use a metadata column such as Metadata_broad_sample"
            )
        return rows[groups]
    labels = list(groups)
    if len(labels) != len(profiles):
        raise ConfigError(
            f"noise_removal_perturb_groups has {len(labels)} labels for {len(profiles)} "
            "rows; give one label per row or a column name"
        )
    # labels follow the rows of ``profiles`` by position, whatever its index
    series = pd.Series(labels, index=pd.RangeIndex(len(profiles)))
    positions = profiles.index.get_indexer_for(rows.index) if profiles.index.is_unique else None
    if positions is None:
        raise ConfigError("profiles with a duplicated index need a column name for groups")
    return pd.Series(series.to_numpy()[positions], index=rows.index)


def selected_features(profiles: pd.DataFrame, **options: Any) -> list[str]:
    """Features that survive ``feature_select`` with the same options, in column order."""
    names = resolve_features(
        profiles,
        options.get("features", "infer"),
        image_features=options.get("image_features", False),
        compartments=options.get("compartments"),
    )
    dropped = dropped_features(profiles, **options)
    return [f for f in names if f not in dropped]


def feature_select(
    profiles: pd.DataFrame,
    *,
    features: str | Sequence[str] = "infer",
    image_features: bool = False,
    compartments: str | Sequence[str] | None = None,
    operations: str | Sequence[str] = ("variance_threshold",),
    variance_threshold_meaning: Literal["frequency", "variance"] = "frequency",
    samples: str = "all",
    sample_filter: Mapping[str, Any] | None = None,
    na_cutoff: float = 0.05,
    corr_threshold: float = 0.9,
    corr_method: str = "pearson",
    freq_cut: float = 0.05,
    unique_cut: float = 0.01,
    min_variance: float = 1e-6,
    blocklist_file: str | Path | None = None,
    blocklist: str | Sequence[str] | None = None,
    outlier_cutoff: float = 500.0,
    noise_removal_perturb_groups: str | Sequence[Any] | None = None,
    noise_removal_stdev_cutoff: float | None = None,
    on_account: AccountSink | None = None,
) -> pd.DataFrame:
    """``profiles`` without the features the ``operations`` drop; other columns stay.

    Operations: ``frequency_threshold`` (freq_cut, unique_cut), ``variance_threshold``
    (see ``variance_threshold_meaning``), ``correlation_threshold`` (corr_threshold,
    corr_method), ``drop_na_columns`` (na_cutoff), ``blocklist`` (the standard list,
    or ``blocklist`` — one name or a list — and/or ``blocklist_file``), ``drop_outliers``
    (outlier_cutoff) and ``noise_removal`` (noise_removal_perturb_groups,
    noise_removal_stdev_cutoff). Statistics are computed on the rows chosen by
    ``samples``/``sample_filter``; the comparing operations need at least 2 rows.
    Features are inferred from ``compartments`` (default Cells, Cytoplasm, Nuclei).
    ``on_account`` receives a ``FeatureAccount`` (features in, out, and the
    operation that dropped each feature); the same is logged.
    """
    options = {k: v for k, v in locals().items() if k not in ("profiles", "on_account")}
    dropped = _dropped(profiles, **options)
    names = resolve_features(
        profiles, features, image_features=image_features, compartments=compartments
    )
    account = FeatureAccount(
        step="feature_select",
        features_in=tuple(names),
        features_out=tuple(f for f in names if f not in dropped),
        dropped=dropped,
    )
    report_account(account, on_account)
    unselected = [c for c in unprocessed_columns(profiles, names) if not c.startswith(("Image", "ome_arrow_"))]
    if unselected:
        shown = ", ".join(unselected[:5]) + (f" ... ({len(unselected)} in all)" if len(unselected) > 5 else "")
        log.warning(
            "feature_select: %d column(s) are neither metadata nor features of the compartments and "
            "are kept as they are, not selected: %s; %s to select them", len(unselected), shown, keep_hint(unselected),
        )
    return profiles.drop(columns=list(dropped))
