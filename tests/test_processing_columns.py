"""The column-block kernels: threaded blocks, ranks, distinct-value tests and cell-count residuals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cytoprofile import processing as pr
from cytoprofile.processing import columns
from tests.reference import rank_int_array

_VALUES = st.sampled_from([np.nan, 0.0, -0.0, 1.5, -1.5, np.inf, -np.inf, 2.0, 1e-30, -1e-30])


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 40)), elements=_VALUES | st.floats(-1e6, 1e6, width=32)),
       st.integers(0, 2**16))
def test_ordinal_ranks_order_values_then_the_permutation(block: np.ndarray, seed: int) -> None:
    perm = np.random.default_rng(seed).permutation(block.shape[1])
    position = np.argsort(perm)
    ranks = columns.ordinal_ranks(block, perm)
    for row, got in zip(block, ranks):
        value = np.where(np.isnan(row), np.inf, row.astype(np.float64) + 0.0)
        order = np.lexsort((position, value, np.isnan(row)))  # NaN last, then value, then position
        expected = np.empty(len(row))
        expected[order] = np.arange(1, len(row) + 1)
        np.testing.assert_array_equal(got, expected)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 300), st.integers(0, 2**16))
def test_more_distinct_than_equals_pandas_nunique(rows: int, distinct: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    block = rng.integers(0, distinct, size=(rows, 3)).astype(np.float32)
    block[rng.random(block.shape) < 0.1] = np.nan
    block[: min(rows, 2500), 2] = 7.0  # the first rows hold one value, the rest may hold many
    expected = pd.DataFrame(block).nunique().to_numpy() > 100
    np.testing.assert_array_equal(columns.more_distinct_than(block, 100), expected)


@pytest.mark.parametrize("threads", [1, 2])
def test_blocks_on_threads_give_the_one_thread_answer(monkeypatch: pytest.MonkeyPatch, threads: int) -> None:
    """130 features are three blocks: each block's columns, written by its thread, equal the reference."""
    monkeypatch.setattr(columns, "_MAX_THREADS", threads)
    rng = np.random.default_rng(3)
    rows = 3000
    x = np.round(rng.normal(size=(rows, 130)), 2)
    x[:2500, 129] = 0.5  # distinct values only after the rows that usually settle the test
    df = pd.DataFrame(x, columns=[f"Cells_f{i}" for i in range(130)])
    df.insert(0, "Metadata_Count_Cells", rng.integers(200, 3000, rows).astype(float))
    ranked = pr.rank_int(df)
    for j in (0, 64, 129):
        np.testing.assert_allclose(ranked[f"Cells_f{j}"], rank_int_array(x[:, j]), rtol=2e-6, atol=1e-6)
    regressed = pr.regress_cell_count(df)
    design = np.column_stack([np.ones(rows), df["Metadata_Count_Cells"]])
    for j in (0, 64, 128, 129):
        beta, *_ = np.linalg.lstsq(design, x[:, j], rcond=None)
        np.testing.assert_allclose(regressed[f"Cells_f{j}"], x[:, j] - design @ beta, rtol=1e-4, atol=1e-4)


def test_a_failing_block_raises_its_error() -> None:
    def work(start: int) -> None:
        if start == 64:
            raise ValueError("block 64")

    with pytest.raises(ValueError, match="block 64"):
        columns.each_block(200, work)


def test_one_cell_count_everywhere_leaves_centred_values_without_a_warning() -> None:
    import warnings

    y = np.arange(12, dtype=np.float64).reshape(6, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resid = columns.cell_count_residuals(y, np.full(6, 500.0))
    np.testing.assert_allclose(resid, y - y.mean(axis=0))


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, (30, 5), elements=st.floats(-1e4, 1e4, width=32)),
       arrays(np.float64, 30, elements=st.floats(0, 5000)))
def test_in_place_residuals_equal_the_float64_path(y: np.ndarray, count: np.ndarray) -> None:
    """The float32 in-place fast path gives the float64 path's residuals rounded to float32 (within an ulp of
    the fit's magnitude: the fit is summed in another order); a NaN or a missing count leaves it to that path."""
    block = y.copy()
    assert columns.residuals_in_place(block, count)
    want = columns.cell_count_residuals(y.astype(np.float64), count)
    scale = np.abs(y.astype(np.float64)).max() + 1.0
    np.testing.assert_allclose(block, want, rtol=0, atol=scale * 2e-7)
    y[0, 0], count[3] = np.nan, np.nan
    untouched = y.copy()
    assert not columns.residuals_in_place(y, count) and np.array_equal(y, untouched, equal_nan=True)
