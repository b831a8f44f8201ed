"""Per-plate MAD of float32 profiles: equal to scipy's ``median_abs_deviation`` to the bit,
and mad_normalize equal to the JUMP recipe's pandas arithmetic with it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import median_abs_deviation

from cytoprofile import processing as pr
from tests.planted import planted_profiles
from tests.profiles import features_of

NEG = "Metadata_control_type == 'negcon'"


def _reference_stats(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-plate median and unscaled MAD of the negative controls, as the JUMP recipe takes them."""
    neg = df.query(NEG)
    feats = features_of(df)
    median = neg.groupby("Metadata_Plate")[feats].median().astype(np.float32)
    mad = neg.groupby("Metadata_Plate")[feats].agg(
        lambda col: median_abs_deviation(col.to_numpy(), nan_policy="omit")).astype(np.float32)
    return median, mad


def _float32_profiles(seed: int, plates: int, negcon: int, features: int, spread: float) -> pd.DataFrame:
    df = planted_profiles(plates=plates, wells=96, features=features, negcon_per_plate=negcon, seed=seed,
                          dtype=np.float32)
    rng = np.random.default_rng(seed)
    feats = features_of(df)
    # widen the range of magnitudes so that float32 rounding of |x - median| matters
    df[feats] = (df[feats] * np.float32(spread) + rng.uniform(-1e3, 1e3, len(feats)).astype(np.float32))
    return df


# even counts (the median of deviations is a mean of two: where rounding differed);
# an odd count (an element: equal either way)
@pytest.mark.parametrize(("negcon", "plates"), [(16, 3), (17, 2), (64, 2)])
def test_plate_mad_equals_scipy_on_float32_to_the_bit(negcon: int, plates: int) -> None:
    df = _float32_profiles(seed=negcon, plates=plates, negcon=negcon, features=80, spread=37.0)
    median, mad = pr.plate_statistics(df)
    ref_median, ref_mad = _reference_stats(df)
    np.testing.assert_array_equal(median.to_numpy(), ref_median.to_numpy())
    np.testing.assert_array_equal(mad.to_numpy(), ref_mad.to_numpy())
    assert mad.to_numpy().dtype == np.float32


def test_plate_mad_with_missing_values_equals_scipy_omit() -> None:
    df = _float32_profiles(seed=3, plates=2, negcon=24, features=40, spread=11.0)
    feats = features_of(df)
    rng = np.random.default_rng(3)
    values = df[feats].to_numpy()
    values[rng.random(values.shape) < 0.15] = np.nan
    df[feats] = values
    _, mad = pr.plate_statistics(df)
    _, ref_mad = _reference_stats(df)
    np.testing.assert_array_equal(mad.to_numpy(), ref_mad.to_numpy())


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), negcon=st.integers(4, 40), spread=st.sampled_from([0.05, 1.0, 250.0]))
def test_mad_normalize_equals_recipe_arithmetic(seed: int, negcon: int, spread: float) -> None:
    # (x - plate median) / plate MAD in float32, with the reference's statistics: equal to the bit
    df = _float32_profiles(seed=seed, plates=2, negcon=negcon, features=12, spread=spread)
    out = pr.mad_normalize(df)
    median, mad = _reference_stats(df)
    feats = features_of(df)
    for plate, rows in df.groupby("Metadata_Plate"):
        expected = (rows[feats] - median.loc[plate]) / mad.loc[plate]
        np.testing.assert_array_equal(out.loc[rows.index, feats].to_numpy(), expected.to_numpy(dtype=np.float32))
