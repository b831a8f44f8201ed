"""Harmony's output against harmonypy to the bit, and the hand-over form run_chain uses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cytoprofile import processing as pr
from cytoprofile.errors import InputError
from tests.planted import planted_profiles
from tests.profiles import features_of

harmonypy = pytest.importorskip("harmonypy")


def _reference(df: pd.DataFrame, seed: int) -> np.ndarray:
    return np.asarray(harmonypy.run_harmony(df[features_of(df)].to_numpy(dtype=np.float64), df[["Metadata_Batch"]],
                                            ["Metadata_Batch"], random_state=seed, verbose=False, ncores=1).Z_corr)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float32_output_is_harmonypys_result_to_the_bit(dtype: type) -> None:
    # harmonypy computes in float32: its float64 result rounds to float32 without loss
    df = planted_profiles(plates=4, wells=96, features=7, batch_effect=3.0, seed=5, dtype=dtype)
    ref = _reference(df, seed=2)
    assert np.array_equal(ref, ref.astype(np.float32).astype(np.float64))
    out = pr.harmony(df, seed=2, threads=1)
    np.testing.assert_array_equal(out[features_of(df)].to_numpy(), ref.astype(np.float32))
    assert out[features_of(df)].dtypes.eq(np.float32).all()


def test_handed_over_frame_is_taken_and_the_result_is_harmonys() -> None:
    df = planted_profiles(plates=4, wells=96, features=6, batch_effect=2.0, seed=7)
    frames = [df.copy()]
    out = pr.harmony_handed_over(frames, seed=3, threads=1)
    assert frames == []
    pd.testing.assert_frame_equal(out, pr.harmony(df, seed=3, threads=1))
    assert list(out.columns) == list(df.columns)  # metadata first and unchanged, then the features
    pd.testing.assert_frame_equal(out[[c for c in df.columns if c.startswith("Metadata_")]],
                                  df[[c for c in df.columns if c.startswith("Metadata_")]])
    with pytest.raises(InputError, match="exactly one frame"):
        pr.harmony_handed_over([df, df])


def test_chain_harmony_equals_the_step_on_the_chain_before_it() -> None:
    df = planted_profiles(plates=4, wells=96, features=8, batch_effect=2.0, seed=9)
    before = pr.run_chain(df, ["var", "mad", "int"])
    out = pr.run_chain(df, ["var", "mad", "int", "harmony"])
    pd.testing.assert_frame_equal(out, pr.harmony(before, features=features_of(before), seed=0))
    # the caller's frame is not touched
    pd.testing.assert_frame_equal(df, planted_profiles(plates=4, wells=96, features=8, batch_effect=2.0, seed=9))
