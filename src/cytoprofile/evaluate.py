"""Mean average precision (mAP): how well a profile retrieves its replicates.

For each query profile, the profiles it is compared with are ranked by cosine
similarity: positives share the query's group (``pos_sameby``, and differ in every
``pos_diffby`` column), negatives share every ``neg_sameby`` column and differ in
every ``neg_diffby`` column. Average precision (AP) is the mean over positives of
the precision at each positive's rank; a group's mAP is the mean AP of its members.
Significance: a group's null is the mean of its members' APs under random rankings
with the same numbers of positives and negatives (``null_size`` draws), p =
(#null > mAP + 1) / (null_size + 1), Benjamini–Hochberg across groups, and a group
is *retrieved* when its corrected p is below ``threshold``.

Numbers equal the reference implementation (copairs 0.5) on the same profiles and
parameters: similarities are stored as float32 before ranking, ties between a
positive and a negative rank the positive first, and the null draws use the same
random stream. The reference caches null distributions on disk under a key that
omits the per-configuration seed, so its p-values can depend on earlier runs; ours
depend only on ``seed``, ``null_size`` and the configurations present (they equal
the reference's with an empty cache).

Similarities are computed with matrix products over blocks of query rows within
each ``neg_sameby`` group, never pair by pair.

Modes of ``mean_average_precision``:

* ``activity`` – replicates against negative controls (phenotypic activity);
* ``distinctiveness`` – replicates against other perturbations (controls left out);
* ``consistency`` – profiles sharing an annotation (e.g. target, MOA; typically
  consensus profiles) against profiles sharing none; the annotation may hold several
  labels separated by ``multilabel_separator``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from .checks import listed
from .errors import ConfigError, InputError
from .step_data import feature_matrix
from .vocabulary import MAP_MODES as MODES
from .vocabulary import MAP_NEG_SAMEBY, NEGCON_QUERY, PERTURBATION_CANDIDATES, resolve_features

__all__ = [
    "average_precision",
    "benjamini_hochberg",
    "fraction_retrieved",
    "map_from_average_precision",
    "mean_average_precision",
    "mode_average_precision",
    "null_distributions",
]

log = logging.getLogger(__name__)

_REF = "__cytoprofile_reference"
_BLOCK = 1 << 20  # similarities computed at once (about 40 MB of work space)


# ------------------------------------------------------------------ features and codes


def _matrix64(profiles: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    """A new, writable float64 feature matrix, filled a block of columns at a time."""
    out = np.empty((len(profiles), len(names)), dtype=np.float64)
    step = 256
    for s in range(0, len(names), step):
        out[:, s : s + step] = feature_matrix(profiles, names[s : s + step])
    return out


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows of a writable ``x`` scaled in place to unit length; missing or zero rows are refused."""
    if np.isnan(x).any():
        rows = int(np.isnan(x).any(axis=1).sum())
        raise InputError(
            f"mAP needs complete profiles: {rows} row(s) have missing feature values; "
            "drop features with missing values first (feature_select drop_na_columns)"
        )
    norm = np.sqrt(np.einsum("ij,ij->i", x, x))  # no rows x features temporary
    if (norm == 0).any() or not np.isfinite(norm).all():
        raise InputError(
            f"{int((norm == 0).sum() + (~np.isfinite(norm)).sum())} profile(s) are all zero "
            "or infinite; cosine similarity is undefined for them"
        )
    x /= norm[:, np.newaxis]
    return x


def _codes(meta: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """Integer codes (rows x columns) of metadata columns; missing values refused."""
    out = np.empty((len(meta), len(columns)), dtype=np.int64)
    for k, col in enumerate(columns):
        if col not in meta.columns:
            raise ConfigError(f"mAP option names column {col!r}, absent from the profiles")
        values = meta[col]
        if values.isna().any():
            raise InputError(
                f"column {col!r} has {int(values.isna().sum())} missing value(s); mAP "
                "needs every grouping column filled"
            )
        out[:, k] = pd.factorize(values, sort=True)[0]
    return out


def _group_key(codes: np.ndarray) -> np.ndarray:
    """One integer per distinct row of ``codes`` (all zero when there are no columns)."""
    if codes.shape[1] == 0:
        return np.zeros(len(codes), dtype=np.int64)
    return np.unique(codes, axis=0, return_inverse=True)[1].reshape(-1)


# ------------------------------------------------------------------ pairs and ranks


def _positive_pairs(group: np.ndarray, diff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All pairs i < j in the same group that differ in every ``diff`` column."""
    order = np.argsort(group, kind="stable")
    sizes = np.bincount(group)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    first: list[np.ndarray] = []
    second: list[np.ndarray] = []
    for size in np.unique(sizes[sizes > 1]):
        a, b = np.triu_indices(int(size), 1)
        base = starts[sizes == size][:, np.newaxis]
        first.append(order[(base + a).ravel()])
        second.append(order[(base + b).ravel()])
    if not first:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    i, j = np.concatenate(first), np.concatenate(second)
    i, j = np.minimum(i, j), np.maximum(i, j)
    if diff.shape[1]:
        keep = (diff[i] != diff[j]).all(axis=1)
        i, j = i[keep], j[keep]
    return i, j


def _sortable(key: np.ndarray) -> np.ndarray:
    """float32 values as int64 in the same order (exact, unlike float arithmetic)."""
    bits = (np.ascontiguousarray(key, dtype=np.float32) + np.float32(0)).view(np.int32).astype(np.int64)
    return np.where(bits < 0, -(bits & 0x7FFFFFFF) - 1, bits) + (1 << 31)


def _ranking_key(sim: np.ndarray) -> np.ndarray:
    """The ranking key: 1 - similarity, both float32 (higher similarity first)."""
    return np.float32(1) - sim.astype(np.float32)


def _negatives_below(
    unit: np.ndarray,
    neg_group: np.ndarray,
    neg_diff: np.ndarray,
    queries: np.ndarray,
    pos_query: np.ndarray,
    pos_key: np.ndarray,
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the number of negatives; per positive, negatives ranked before it.

    With ``labels`` (rows x labels, 0/1), a negative must share no label with the query.
    """
    n_neg = np.zeros(len(unit), dtype=np.int64)
    below = np.zeros(len(pos_query), dtype=np.int64)
    wanted = np.zeros(len(unit), dtype=bool)
    wanted[queries] = True
    for g in np.unique(neg_group):
        members = np.flatnonzero(neg_group == g)
        step = max(1, _BLOCK // max(len(members), 1))
        for s in range(0, len(members), step):
            rows = members[s : s + step]
            mask = rows[:, None] != members[None, :]
            for k in range(neg_diff.shape[1]):
                mask &= neg_diff[rows, k][:, None] != neg_diff[members, k][None, :]
            if labels is not None:
                mask &= (labels[rows] @ labels[members].T) == 0
            n_neg[rows] = mask.sum(axis=1)
            local = np.flatnonzero(wanted[rows])
            sel = np.flatnonzero(np.isin(pos_query, rows[local]))
            if len(sel) == 0:
                continue
            rows_q = rows[local]
            # similarities only to the members that are a negative of some query here
            cols = np.flatnonzero(mask[local].any(axis=0))
            key = _ranking_key(unit[rows_q] @ unit[members[cols]].T)
            sortable = np.where(mask[local][:, cols], _sortable(key), np.int64(1) << 33)
            sortable.sort(axis=1)
            offset = (np.arange(len(rows_q), dtype=np.int64) * (np.int64(1) << 34))[:, None]
            flat = (sortable + offset).ravel()
            slot = np.searchsorted(rows_q, pos_query[sel])
            target = _sortable(pos_key[sel]) + slot * (np.int64(1) << 34)
            below[sel] = np.searchsorted(flat, target, side="left") - slot * len(cols)
    return n_neg, below


def _ap_from_ranks(
    n: int, pos_query: np.ndarray, pos_key: np.ndarray, below: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """AP per row (NaN without positives) and the number of positives per row."""
    order = np.lexsort([pos_key, pos_query])
    q = pos_query[order]
    n_pos = np.bincount(q, minlength=n)
    starts = np.concatenate([[0], np.cumsum(n_pos)[:-1]])
    i = np.arange(1, len(q) + 1) - np.repeat(starts, n_pos)
    precision = i / (i + below[order])
    total = np.bincount(q, weights=precision, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = total / n_pos
    ap[n_pos == 0] = np.nan
    return ap, n_pos


def _expected_ap(m: np.ndarray, n_neg: np.ndarray) -> np.ndarray:
    """AP expected under random ranking with ``m`` positives among ``m + n_neg``."""
    total = m + n_neg
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, max(int(total.max(initial=0)), 1) + 1))])
    h = harmonic[total]
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = (1.0 / total) * (((m - 1.0) / (total - 1.0)) * (total - h) + h)
    mu = np.where(total == 1, (m == 1).astype(float), mu)
    mu = np.where(m == 0, 0.0, mu)
    return np.where(m == total, 1.0, mu)


def average_precision(
    profiles: pd.DataFrame,
    *,
    pos_sameby: Sequence[str],
    pos_diffby: Sequence[str] = (),
    neg_sameby: Sequence[str] = (),
    neg_diffby: Sequence[str] = (),
    features: str | Sequence[str] = "infer",
    feature_prefixes: Sequence[str] | None = None,
) -> pd.DataFrame:
    """AP of every profile: its metadata plus ``n_pos_pairs``, ``n_total_pairs``,
    ``average_precision`` and ``normalized_average_precision``.

    Rows without positives get NaN AP (they are left out of mAP).
    """
    if not (pos_sameby or pos_diffby) or not (neg_sameby or neg_diffby):
        raise ConfigError("give at least one pos_sameby/pos_diffby and one neg_sameby/neg_diffby column")
    overlap = (set(pos_sameby) & set(pos_diffby)) | (set(neg_sameby) & set(neg_diffby))
    if overlap:
        raise ConfigError(f"sameby and diffby share {listed(sorted(overlap), last='and')}; a column can only be one of them")
    names = resolve_features(profiles, features, feature_prefixes=feature_prefixes)
    unit = _unit_rows(_matrix64(profiles, names))
    meta = profiles.loc[:, [c for c in profiles.columns if c not in set(names)]].reset_index(drop=True)
    return _scores(
        meta,
        unit,
        pos_group=_group_key(_codes(meta, pos_sameby)),
        pos_diff=_codes(meta, pos_diffby),
        neg_group=_group_key(_codes(meta, neg_sameby)),
        neg_diff=_codes(meta, neg_diffby),
    )


def _scores(
    meta: pd.DataFrame,
    unit: np.ndarray,
    *,
    pos_group: np.ndarray,
    pos_diff: np.ndarray,
    neg_group: np.ndarray,
    neg_diff: np.ndarray,
    labels: np.ndarray | None = None,
) -> pd.DataFrame:
    """The AP table from unit-length rows and coded grouping columns."""
    i, j = _positive_pairs(pos_group, pos_diff)
    pos_sim = np.empty(len(i), dtype=np.float32)
    step = max(1, _BLOCK // max(unit.shape[1], 1))
    for s in range(0, len(i), step):
        pos_sim[s : s + step] = np.sum(unit[i[s : s + step]] * unit[j[s : s + step]], axis=1)
    pos_query = np.concatenate([i, j])
    pos_key = _ranking_key(np.concatenate([pos_sim, pos_sim]))
    n_neg, below = _negatives_below(
        unit, neg_group, neg_diff, np.unique(pos_query), pos_query, pos_key, labels
    )
    ap, n_pos = _ap_from_ranks(len(meta), pos_query, pos_key, below)
    paired = (n_pos + n_neg) > 0
    out = meta.copy()
    out["n_pos_pairs"] = np.where(paired, n_pos, 0).astype(np.int64)
    out["n_total_pairs"] = np.where(paired, n_pos + n_neg, 0).astype(np.int64)
    out["average_precision"] = np.where(paired, ap, np.nan)
    mu = _expected_ap(n_pos, n_neg)
    with np.errstate(invalid="ignore"):
        normalized = np.clip((ap - mu) / np.maximum(1 - mu, 1e-10), -1, 1)
    out["normalized_average_precision"] = np.where(paired & (n_pos > 0), normalized, np.nan)
    return out


# ------------------------------------------------------------------ significance


def null_distributions(configurations: np.ndarray, *, null_size: int, seed: int) -> np.ndarray:
    """Random-ranking APs (configurations x null_size, float32) for (n_pos, n_total) rows.

    ``configurations`` must be the distinct rows in ascending order; each gets its own
    generator, seeded from one seeded with ``seed``, as the reference draws them.
    """
    seeds = np.random.default_rng(seed).integers(8096, size=len(configurations))
    out = np.empty((len(configurations), null_size), dtype=np.float32)
    for row, ((k, total), s) in enumerate(zip(configurations, seeds)):
        rng = np.random.default_rng(s)
        dtype = np.uint16 if total < 2**16 else np.uint32
        ranks = np.tile(np.arange(total, dtype=dtype), (null_size, 1))
        rng.permuted(ranks, axis=1, out=ranks)
        first = np.sort(ranks[:, :k], axis=1)
        precision = np.arange(1, k + 1, dtype=np.float32) / (first + 1)
        out[row] = (precision.sum(axis=1) / k).astype(np.float32)
    return out


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (capped at 1), in the input's order."""
    p = np.asarray(p_values, dtype=np.float64)
    n = len(p)
    if n == 0:
        return p.copy()
    order = np.argsort(p)
    ranked = p[order] / (np.arange(1, n + 1) / float(n))
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    adjusted[adjusted > 1] = 1
    out = np.empty(n)
    out[order] = adjusted
    return out


def map_from_average_precision(
    ap: pd.DataFrame,
    *,
    sameby: Sequence[str],
    null_size: int = 10000,
    threshold: float = 0.05,
    seed: int = 0,
) -> pd.DataFrame:
    """mAP per group of ``sameby`` with p-values, BH-corrected p-values and the verdicts.

    Columns: ``sameby``, ``mean_average_precision``, ``mean_normalized_average_precision``,
    ``n_profiles``, ``p_value``, ``corrected_p_value``, ``below_p``, ``below_corrected_p``.
    """
    if null_size < 1:
        raise ConfigError("null_size must be at least 1")
    sameby = list(sameby)
    scored = ap[ap["average_precision"].notna() & (ap["n_pos_pairs"] > 0)].reset_index(drop=True)
    if scored.empty:
        raise InputError("no profile has a replicate to retrieve; check the grouping columns")
    confs, inverse = np.unique(
        scored[["n_pos_pairs", "n_total_pairs"]].to_numpy(dtype=np.int64), axis=0, return_inverse=True
    )
    inverse = inverse.reshape(-1)
    nulls = null_distributions(confs, null_size=null_size, seed=seed)
    grouped = scored.groupby(sameby, observed=True, sort=True)
    table = grouped.agg(
        mean_average_precision=("average_precision", "mean"),
        mean_normalized_average_precision=("normalized_average_precision", "mean"),
        n_profiles=("average_precision", "size"),
    ).reset_index()
    members = grouped.indices
    keys = [tuple(row) if len(sameby) > 1 else row[0] for row in table[sameby].itertuples(index=False)]
    p_values = np.empty(len(table))
    for g, (key, score) in enumerate(zip(keys, table["mean_average_precision"].to_numpy())):
        null = nulls[inverse[members[key]]].mean(axis=0)
        # compared in float32, the null's precision, as the reference does
        p_values[g] = ((null > np.float32(score)).sum() + 1) / (null_size + 1)
    table["p_value"] = p_values
    table["corrected_p_value"] = benjamini_hochberg(p_values)
    table["below_p"] = table["p_value"] < threshold
    table["below_corrected_p"] = table["corrected_p_value"] < threshold
    return table


def fraction_retrieved(table: pd.DataFrame) -> float:
    """Share of groups whose corrected p-value is below the threshold."""
    return float(table["below_corrected_p"].mean()) if len(table) else 0.0


# ------------------------------------------------------------------ modes


def _pert_column(profiles: pd.DataFrame, pert_column: str | None, option: str = "pert_column") -> str:
    if pert_column is not None:
        if pert_column not in profiles.columns:
            raise ConfigError(f"profiles have no {pert_column!r} column ({option})")
        return pert_column
    for column in PERTURBATION_CANDIDATES:
        if column in profiles.columns:
            return column
    raise ConfigError(
        "profiles have none of " + ", ".join(PERTURBATION_CANDIDATES) + "; name the perturbation column (pert_column)"
    )


def _controls(profiles: pd.DataFrame, control_query: str) -> np.ndarray:
    try:
        chosen = profiles.reset_index(drop=True).query(control_query).index.to_numpy()
    except Exception as exc:  # pandas raises many kinds for a bad query
        raise ConfigError(f"control_query {control_query!r} cannot be evaluated ({exc}); pass "
                          "control_query=None (--control-query none) for profiles without controls") from exc
    mask = np.zeros(len(profiles), dtype=bool)
    mask[chosen] = True
    return mask




def _label_matrix(values: pd.Series, separator: str) -> tuple[list[str], np.ndarray]:
    """Sorted distinct labels and a rows x labels 0/1 matrix (float32 for products)."""
    split = [
        sorted({part.strip() for part in str(v).split(separator) if part.strip()}) if pd.notna(v) else []
        for v in values
    ]
    vocab = sorted({label for row in split for label in row})
    where = {label: k for k, label in enumerate(vocab)}
    matrix = np.zeros((len(split), len(vocab)), dtype=np.float32)
    for r, row in enumerate(split):
        matrix[r, [where[label] for label in row]] = 1
    return vocab, matrix


def _multilabel_scores(
    meta: pd.DataFrame,
    unit: np.ndarray,
    column: str,
    separator: str,
    *,
    pos_diffby: Sequence[str],
    neg_sameby: Sequence[str],
) -> pd.DataFrame:
    """Per label: its profiles retrieve each other against profiles sharing no label."""
    vocab, labels = _label_matrix(meta[column], separator)
    n = len(meta)
    pos_diff, neg_group = _codes(meta, pos_diffby), _group_key(_codes(meta, neg_sameby))
    frames = []
    for k, label in enumerate(vocab):
        has = labels[:, k] > 0
        if has.sum() < 2:
            continue
        group = np.where(has, 0, np.arange(1, n + 1))
        scored = _scores(meta, unit, pos_group=group, pos_diff=pos_diff, neg_group=neg_group,
                         neg_diff=np.empty((n, 0), np.int64), labels=labels)
        frames.append(scored[has].assign(**{column: label}))
    if not frames:
        raise InputError(f"no label of {column!r} is shared by two profiles")
    return pd.concat(frames, ignore_index=True)


def _mode_scores(
    profiles: pd.DataFrame,
    names: list[str],
    *,
    mode: str,
    column: str,
    control_query: str | None,
    pos_diffby: Sequence[str],
    neg_sameby: Sequence[str],
    multilabel_separator: str | None,
) -> pd.DataFrame:
    """The AP table of one mode, restricted to the rows that are scored."""
    controls = (
        _controls(profiles, control_query) if control_query else np.zeros(len(profiles), dtype=bool)
    )
    if mode == "activity":
        if not controls.any():
            raise InputError(f"no negative controls match control_query {control_query!r}")
        unit = _unit_rows(_matrix64(profiles, names))
        meta = profiles.loc[:, [c for c in profiles.columns if c not in set(names)]].reset_index(drop=True)
        # controls often have no perturbation name; they only need to differ from the others
        meta[column] = meta[column].astype(object).where(~(controls & meta[column].isna().to_numpy()), "<control>")
        meta[_REF] = np.where(controls, np.arange(1, len(meta) + 1), 0)
        ap = _scores(meta, unit, pos_group=_group_key(_codes(meta, [column, _REF])),
                     pos_diff=_codes(meta, pos_diffby), neg_group=_group_key(_codes(meta, neg_sameby)),
                     neg_diff=_codes(meta, [column, _REF]))
        return ap[~controls].drop(columns=[_REF]).reset_index(drop=True)
    frame = profiles[~controls] if controls.any() else profiles
    unit = _unit_rows(_matrix64(frame, names))
    meta = frame.loc[:, [c for c in frame.columns if c not in set(names)]].reset_index(drop=True)
    if mode == "consistency" and multilabel_separator:
        return _multilabel_scores(meta, unit, column, multilabel_separator,
                                  pos_diffby=pos_diffby, neg_sameby=neg_sameby)
    return _scores(meta, unit, pos_group=_group_key(_codes(meta, [column])), pos_diff=_codes(meta, pos_diffby),
                   neg_group=_group_key(_codes(meta, neg_sameby)), neg_diff=_codes(meta, [column]))


def mode_average_precision(
    profiles: pd.DataFrame,
    *,
    mode: str,
    column: str,
    control_query: str | None = NEGCON_QUERY,
    pos_diffby: Sequence[str] = (),
    neg_sameby: Sequence[str] | None = None,
    multilabel_separator: str | None = None,
    features: str | Sequence[str] = "infer",
    feature_prefixes: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The AP table of one ``mode`` (see ``mean_average_precision``), scored rows only;
    ``column`` is the perturbation (or, for consistency, the annotation) column."""
    if mode not in MODES:
        raise ConfigError(f"unknown mAP mode {mode!r}; choose {listed(MODES)}")
    names = resolve_features(profiles, features, feature_prefixes=feature_prefixes)
    return _mode_scores(profiles, names, mode=mode, column=column, control_query=control_query,
                        pos_diffby=pos_diffby, neg_sameby=_neg_sameby(profiles, mode, neg_sameby),
                        multilabel_separator=multilabel_separator)


def _neg_sameby(profiles: pd.DataFrame, mode: str, neg_sameby: Sequence[str] | None) -> Sequence[str]:
    """The columns negatives share with the query: those given, else the mode's default
    (``vocabulary.MAP_NEG_SAMEBY``), whose absence from the profiles says how to choose."""
    if neg_sameby is not None:
        return neg_sameby
    default = MAP_NEG_SAMEBY[mode]
    missing = [c for c in default if c not in profiles.columns]
    if missing:
        raise ConfigError(f"mAP ({mode}) compares with negatives of the same {', '.join(missing)} by default, "
                          "absent from the profiles; name the neg_sameby columns, or none (--neg-sameby none)")
    return default


def _scope(profiles: pd.DataFrame) -> str:
    """What a mAP log line is about: ``plate P1``, ``3 plates (P1, P2, P3)`` or ``the profiles``."""
    if "Metadata_Plate" not in profiles.columns:
        return "the profiles"
    plates = list(dict.fromkeys(profiles["Metadata_Plate"].dropna().astype(str)))
    if len(plates) == 1:
        return f"plate {plates[0]}"
    shown = ", ".join(plates[:5]) + (", ..." if len(plates) > 5 else "")
    return f"{len(plates)} plates ({shown})" if plates else "the profiles"


def mean_average_precision(
    profiles: pd.DataFrame,
    *,
    mode: Literal["activity", "distinctiveness", "consistency"] = "activity",
    pert_column: str | None = None,
    annotation_column: str | None = None,
    control_query: str | None = NEGCON_QUERY,
    pos_diffby: Sequence[str] = (),
    neg_sameby: Sequence[str] | None = None,
    multilabel_separator: str | None = None,
    null_size: int = 10000,
    threshold: float = 0.05,
    seed: int = 0,
    features: str | Sequence[str] = "infer",
    feature_prefixes: Sequence[str] | None = None,
) -> pd.DataFrame:
    """mAP per perturbation (or per annotation label, for ``consistency``).

    ``activity``: each perturbation's replicates (``pert_column``) against the negative
    controls (``control_query``) sharing the ``neg_sameby`` columns (by default
    ``Metadata_Plate``, as JUMP reports it; ``[]`` for every control). ``distinctiveness``: replicates against
    other perturbations, controls left out. ``consistency``: profiles sharing a label of
    ``annotation_column`` against profiles sharing none (several labels per profile when
    ``multilabel_separator`` is set, e.g. ``"|"``); these two compare with every negative
    unless ``neg_sameby`` is given. ``pos_diffby`` columns must differ
    between replicates (e.g. ``["Metadata_Plate"]``). The table (see
    ``map_from_average_precision``) carries ``attrs["fraction_retrieved"]``.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown mAP mode {mode!r}; choose {listed(MODES)}")
    if mode == "consistency":
        if not annotation_column:
            raise ConfigError("mode consistency needs annotation_column (e.g. Metadata_target)")
        column = _pert_column(profiles, annotation_column, "annotation_column")
    else:
        column = _pert_column(profiles, pert_column)
    ap = mode_average_precision(profiles, mode=mode, column=column, control_query=control_query,
                                pos_diffby=pos_diffby, neg_sameby=neg_sameby,
                                multilabel_separator=multilabel_separator, features=features,
                                feature_prefixes=feature_prefixes)
    table = map_from_average_precision(ap, sameby=[column], null_size=null_size, threshold=threshold, seed=seed)
    table.attrs["fraction_retrieved"] = fraction_retrieved(table)
    table.attrs["mode"] = mode
    log.info("mAP (%s) of %s: %d of %d groups retrieved at corrected p < %g", mode, _scope(profiles),
             int(table["below_corrected_p"].sum()), len(table), threshold)
    return table
