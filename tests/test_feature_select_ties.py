"""feature_select's correlation filter on near-ties, compared with pycytominer 1.7.1.

Pairs of features are built with a sample correlation equal to the threshold up to
rounding (and a few units of rounding either side), groups of features whose sums of
absolute correlations tie, and float32 as well as float64 columns: whether a pair is
above the threshold, and which member is dropped, is decided by the last bits of the
correlation, so only a computation done as the reference does it gives its answer.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cytoprofile.feature_select import feature_select

from .reference import pycytominer_step

pytest.importorskip("pycytominer")
reference = partial(pycytominer_step, "feature_select")


def _orthonormal_pair(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two centred, unit-norm, mutually orthogonal vectors of length ``n``."""
    a, b = rng.standard_normal(n), rng.standard_normal(n)
    a -= a.mean()
    a /= np.linalg.norm(a)
    b -= b.mean()
    b -= (b @ a) * a
    b /= np.linalg.norm(b)
    return a, b


def near_tie_profiles(*, seed: int, rows: int, pairs: int, threshold: float, nudge: int,
                      dtype: type) -> pd.DataFrame:
    """Features in pairs correlated at ``threshold`` (moved by ``nudge`` ulps of it), each
    pair's second member a scaled, shifted copy of a mix of the first and noise, plus
    an exact duplicate and a negated copy (ties of the column sums)."""
    rng = np.random.default_rng(seed)
    r = float(np.float64(threshold) + nudge * np.spacing(np.float64(threshold)))
    cols: dict[str, np.ndarray] = {}
    for p in range(pairs):
        a, b = _orthonormal_pair(rng, rows)
        scale, shift = rng.uniform(0.1, 50.0, size=2), rng.uniform(-100.0, 100.0, size=2)
        cols[f"Cells_Intensity_pair{p}_a"] = a * scale[0] + shift[0]
        cols[f"Cells_Intensity_pair{p}_b"] = (r * a + np.sqrt(1 - r * r) * b) * scale[1] + shift[1]
    first = cols["Cells_Intensity_pair0_a"]
    cols["Nuclei_AreaShape_duplicate"] = first.copy()
    cols["Nuclei_AreaShape_negated"] = -first
    meta = {"Metadata_Plate": np.repeat(["P1", "P2"], [rows // 2, rows - rows // 2]),
            "Metadata_Well": [f"W{i:03d}" for i in range(rows)]}
    return pd.DataFrame(meta | {k: v.astype(dtype) for k, v in cols.items()})


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    rows=st.integers(8, 120),
    pairs=st.integers(1, 6),
    threshold=st.sampled_from([0.9, 0.8, 0.95, 0.5]),
    nudge=st.integers(-3, 3),
    dtype=st.sampled_from([np.float32, np.float64]),
    method=st.sampled_from(["pearson", "spearman"]),
)
# spearman ranks correlated with np.corrcoef instead of pandas' routine keep pair1_a and drop the negated copy
@example(seed=0, rows=8, pairs=4, threshold=0.5, nudge=0, dtype=np.float32, method="spearman")
def test_near_ties_at_the_threshold_match_reference(seed: int, rows: int, pairs: int, threshold: float,
                                                    nudge: int, dtype: type, method: str) -> None:
    df = near_tie_profiles(seed=seed, rows=rows, pairs=pairs, threshold=threshold, nudge=nudge, dtype=dtype)
    ops = ["correlation_threshold"]
    ours = feature_select(df, operations=ops, corr_threshold=threshold, corr_method=method)
    ref = reference(df, operation=ops, corr_threshold=threshold, corr_method=method)
    pd.testing.assert_frame_equal(ours, ref)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_near_ties_after_a_frequency_drop_match_reference(seed: int, dtype: type) -> None:
    # a feature dropped before the correlation filter changes the matrix it is given
    df = near_tie_profiles(seed=seed, rows=64, pairs=4, threshold=0.9, nudge=seed % 3 - 1, dtype=dtype)
    df["Cells_Intensity_constant"] = dtype(1.0)
    df.loc[0, "Cells_Intensity_constant"] = dtype(2.0)
    ours = feature_select(df, operations=["variance_threshold", "correlation_threshold", "blocklist"])
    ref = reference(df, operation=["frequency_threshold", "correlation_threshold", "blocklist"])
    pd.testing.assert_frame_equal(ours, ref)
    assert "Cells_Intensity_constant" not in ours.columns


def test_near_tie_cases_sit_on_the_threshold() -> None:
    # the generated pairs straddle the threshold: some pairs above it, some not, by rounding
    above = below = 0
    for seed in range(40):
        df = near_tie_profiles(seed=seed, rows=50, pairs=3, threshold=0.9, nudge=0, dtype=np.float64)
        corr = np.corrcoef(df.filter(like="pair").to_numpy().T)
        for p in range(3):
            r = corr[2 * p, 2 * p + 1]
            assert abs(r - 0.9) < 1e-12
            above += r > 0.9
            below += r <= 0.9
    assert above > 0 and below > 0


@pytest.mark.parametrize("row_values", [50, 1000, 1 << 20])  # blocks of 1 row, of a few rows, one block
@pytest.mark.parametrize("threshold", [0.9, 0.5])
def test_pairwise_correlation_over_row_blocks_matches_reference(
    monkeypatch: pytest.MonkeyPatch, row_values: int, threshold: float
) -> None:
    # with missing values the correlation is accumulated over blocks of rows: any block size
    # gives pycytominer's selection (pairwise-complete pearson)
    import cytoprofile.correlation as correlation

    from .profiles import selection_profiles

    df = selection_profiles(n_features=40, seed=4)
    assert df.filter(like="_").isna().any().any()
    monkeypatch.setattr(correlation, "_ROW_VALUES", row_values)
    ours = feature_select(df, operations=["correlation_threshold"], corr_threshold=threshold)
    ref = reference(df, operation=["correlation_threshold"], corr_threshold=threshold)
    pd.testing.assert_frame_equal(ours, ref)
    assert ours.shape[1] < df.shape[1]
