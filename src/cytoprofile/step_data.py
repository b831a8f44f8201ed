"""What a profile step works on, shared by normalize, feature_select, consensus, evaluate and
the processing chain: the numeric feature matrix (missing-value tokens as NaN, infinities
refused), the rows a step fits on (``samples``/``sample_filter``), and the account of features
in and out of a step with where it is reported.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .errors import ConfigError, InputError
from .vocabulary import MISSING_TOKENS, OBJECT_COUNT_COLUMN, is_metadata

__all__ = [
    "AccountSink",
    "FeatureAccount",
    "feature_matrix",
    "fit_query",
    "keep_hint",
    "refuse_infinite",
    "report_account",
    "select_samples",
    "unprocessed_columns",
]

log = logging.getLogger("cytoprofile.feature_select")
_MATRIX_BLOCK = 64  # feature columns converted to float64 at once



def _coerce_numeric(column: pd.Series, name: str) -> pd.Series:
    """Numeric view of a column whose only strings are missing-value markers."""
    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        return column
    values = column.dropna()
    as_text = values[values.map(lambda v: isinstance(v, str))]
    markers = as_text.map(lambda v: v.strip().lower()).isin(MISSING_TOKENS)
    numeric = pd.to_numeric(column.where(~column.isin(as_text[markers])), errors="coerce")
    if (numeric.isna() & column.notna() & ~column.isin(as_text[markers])).any():
        raise InputError(
            f"feature column {name!r} is not numeric; leave it out of the features "
            "(or name it Metadata_* if it is metadata)"
        )
    return numeric


def feature_matrix(profiles: pd.DataFrame, features: Sequence[str]) -> np.ndarray:
    """The features as a float64 (rows x features) array; NaN stays NaN.

    Filled a block of columns at a time, so the only full-size array is the result.
    """
    names = list(features)
    try:
        out = np.empty((len(profiles), len(names)), dtype=np.float64)
        for s in range(0, len(names), _MATRIX_BLOCK):
            out[:, s : s + _MATRIX_BLOCK] = profiles.loc[:, names[s : s + _MATRIX_BLOCK]].to_numpy(
                dtype=np.float64, na_value=np.nan)
        return out
    except (TypeError, ValueError):
        pass
    block = profiles.loc[:, names]
    cols = {f: _coerce_numeric(block[f], f) for f in features}
    return pd.DataFrame(cols, index=block.index).to_numpy(dtype=np.float64, na_value=np.nan)


def _row_names(profiles: pd.DataFrame, rows: np.ndarray) -> list[str]:
    """How a user finds rows: plate and well when the profiles have them, else the index."""
    keys = [c for c in ("Metadata_Plate", "Metadata_Well") if c in profiles.columns]
    picked = profiles.iloc[rows]
    if keys:
        return ["/".join(str(v) for v in values) for values in picked[keys].itertuples(index=False)]
    return [f"row {label!r}" for label in picked.index]


def refuse_infinite(profiles: pd.DataFrame, x: np.ndarray, names: Sequence[str], *, step: str) -> None:
    """An ``InputError`` naming the features and rows of infinite values in ``x`` (rows of
    ``profiles`` x ``names``): they would turn statistics such as a mean, a MAD or a
    correlation into NaN for the whole feature."""
    infinite = np.isinf(x)
    if not infinite.any():
        return
    cols = np.flatnonzero(infinite.any(axis=0))
    parts = []
    for j in cols[:5]:
        rows = np.flatnonzero(infinite[:, j])
        where = _row_names(profiles, rows[:5])
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        parts.append(f"{names[j]} ({', '.join(where)}{more})")
    extra = f"; {len(cols) - 5} more feature(s)" if len(cols) > 5 else ""
    raise InputError(
        f"infinite feature values: {'; '.join(parts)}{extra}; fix or remove these values "
        f"(or the features) before {step}"
    )


def fit_query(*samples: str, sample_filter: Mapping[str, Sequence[Any]] | None = None, min_cells: int = 1) -> str:
    """The pandas query choosing the rows a step is fitted on: each of ``samples`` that is not
    "all" (in parentheses when it holds an or), the ``sample_filter`` columns' values and
    ``Metadata_Object_Count >= min_cells`` (when not 1), joined with ``&``; "all" when nothing
    restricts them. What :func:`select_samples` reads as ``samples``."""
    parts: list[str] = []
    for query in samples:
        text = query.strip()
        if text != "all":
            parts.append(f"({text})" if re.search(r"\||\bor\b", text) else text)
    for column, values in (sample_filter or {}).items():
        name = column if column.isidentifier() else f"`{column}`"
        parts.append(f"{name} == {values[0]!r}" if len(values) == 1 else f"{name} in {list(values)!r}")
    if min_cells != 1:
        parts.append(f"{OBJECT_COUNT_COLUMN} >= {min_cells}")
    return " & ".join(parts) if parts else "all"


def select_samples(
    profiles: pd.DataFrame,
    *,
    samples: str = "all",
    sample_filter: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Rows to fit on: a pandas query (``samples``) AND ``{column: [values]}`` filters."""
    if not isinstance(samples, str):
        raise ConfigError(f"samples must be 'all' or a pandas query string, got {samples!r}")
    if sample_filter is not None and not isinstance(sample_filter, Mapping):
        raise ConfigError(
            f"sample_filter must map columns to allowed values, e.g. "
            f"{{'Metadata_control_type': ['negcon']}}, got {sample_filter!r}"
        )
    subset = profiles
    if samples != "all":
        try:
            subset = subset.query(samples)
        except Exception as exc:  # pandas raises many kinds for a bad query
            raise ConfigError(
                f"samples query {samples!r} cannot be evaluated ({exc}); write it like "
                "\"Metadata_control_type == 'negcon'\" or use 'all'"
            ) from exc
    for column, allowed in (sample_filter or {}).items():
        if column not in subset.columns:
            raise ConfigError(
                f"sample_filter names column {column!r}, absent from the profiles; "
                "check the column name (metadata columns start with Metadata_)"
            )
        values = list(allowed) if np.iterable(allowed) and not isinstance(allowed, str) else [allowed]
        subset = subset[subset[column].isin(values)]
    if len(subset) == 0:
        raise InputError(
            f"no rows match samples={samples!r} and sample_filter={dict(sample_filter or {})!r}; "
            "check the query, the values and the annotation of the profiles"
        )
    return subset


@dataclass(frozen=True)
class FeatureAccount:
    """The features a step read and wrote, and for each one it did not write, why.

    ``dropped`` maps a feature to the operation that dropped it (a feature_select
    operation, or ``not_a_feature`` for a column a step cannot process and leaves
    out). ``as_dict`` is the form recorded in provenance sidecars.
    """

    step: str
    features_in: tuple[str, ...]
    features_out: tuple[str, ...]
    dropped: Mapping[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: counts, output names and the dropped features by operation."""
        return {
            "step": self.step,
            "features_in": len(self.features_in),
            "features_out": len(self.features_out),
            "dropped": dict(self.dropped),
        }

    def summary(self) -> str:
        """One line: ``STEP: N features in, M out (K dropped by OP, ...)``; columns left out as
        not features (never among the N) are counted apart."""
        counts: dict[str, int] = {}
        for op in self.dropped.values():
            counts[op] = counts.get(op, 0) + 1
        others = counts.pop("not_a_feature", 0)
        detail = ", ".join(f"{n} by {op}" for op, n in counts.items())
        return (
            f"{self.step}: {len(self.features_in)} features in, {len(self.features_out)} out"
            + (f" ({detail})" if detail else "")
            + (f"; {others} other column(s) left out (not features)" if others else "")
        )


AccountSink = Callable[[FeatureAccount], None]


def report_account(account: FeatureAccount, on_account: AccountSink | None) -> None:
    """Log ``account`` (a warning for columns left out as not features) and hand it on."""
    if on_account is not None and not callable(on_account):
        raise ConfigError(f"on_account must be a function taking a FeatureAccount, got {on_account!r}")
    log.debug("%s", account.summary())  # the recipe logs one line per step and plate
    lost = [f for f, op in account.dropped.items() if op == "not_a_feature"]
    if lost:
        shown = ", ".join(lost[:5]) + (f" ... ({len(lost)} in all)" if len(lost) > 5 else "")
        log.warning(
            "%s: %d column(s) are neither metadata nor features of the compartments and are "
            "left out: %s; %s",
            account.step,
            len(lost),
            shown,
            keep_hint(lost),
        )
    if on_account is not None:
        on_account(account)


def keep_hint(lost: Sequence[str]) -> str:
    """How to keep columns a step left out, on the command line and in a recipe block."""
    hints = []
    if any(str(c).startswith("Image") for c in lost):
        hints.append("keep Image* columns with image_features=True (--image-features on the command line, "
                     "image_features: true in a recipe block)")
    if any(not str(c).startswith("Image") for c in lost):
        hints.append("name their compartment with compartments=[...] (--compartments on the command line, "
                     "compartments: in a recipe block)")
    return "; ".join(hints)


def unprocessed_columns(
    profiles: pd.DataFrame, kept: Collection[object]
) -> list[str]:
    """Columns of ``profiles`` a step leaves out: not ``Metadata_*`` and not in ``kept``."""
    return [
        c
        for c in profiles.columns
        if isinstance(c, str) and not is_metadata(c) and c not in kept
    ]


