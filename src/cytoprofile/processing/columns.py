"""Column-block kernels of the processing steps: the block size, blocks spread over threads,
and the ranks, distinct-value tests and cell-count residuals computed on one block.

A block is ``BLOCK`` feature columns: its float64 work space stays small however many
wells there are, and NumPy's sorts and arithmetic release the GIL, so blocks run on
the machine's cores at once while the float32 matrix is shared, never copied.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["BLOCK", "cell_count_residuals", "each_block", "more_distinct_than", "ordinal_ranks", "residuals_in_place"]

BLOCK = 64  # feature columns handled at once (float64 work space: rows x 64 per temporary)
_MAX_THREADS = 4  # each holds a few float64 temporaries of one block
_PREFIX_ROWS = 2048  # rows whose distinct values usually settle ``more_distinct_than``


def each_block(n_columns: int, work: Callable[[int], None], *, width: int = BLOCK) -> None:
    """``work(start)`` for the block of ``width`` columns at every ``start``, on up to four threads.

    ``work`` writes only its own columns, so the blocks never race.
    """
    starts = range(0, n_columns, width)
    threads = min(len(starts), _MAX_THREADS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    if threads <= 1:
        for start in starts:
            work(start)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cytoprofile-block") as pool:
        for _ in pool.map(work, starts):  # re-raises a block's error here
            pass


def ordinal_ranks(block: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Ranks 1..n along each row of a float32 ``block``, ties in the order of ``perm``'s positions; NaN last.

    Each value becomes one unique 64-bit key (its float order in the high 32 bits, its
    position in the permutation in the low 32): one plain sort orders the row, and the
    low bits of the sorted keys say which value went where.
    """
    n = block.shape[1]
    position = np.empty(n, dtype=np.uint64)
    position[perm] = np.arange(n, dtype=np.uint64)
    clean = block + np.float32(0)  # -0 becomes +0, which it equals
    nan = np.isnan(clean)
    if nan.any():
        clean[nan] = np.float32(np.nan)  # one NaN bit pattern, sorted last
    bits = clean.view(np.uint32)
    flip = bits >> np.uint32(31)
    flip *= np.uint32(0x7FFFFFFF)
    flip |= np.uint32(0x80000000)
    bits ^= flip  # negative floats: every bit flipped; positive: the sign bit set
    key = bits.astype(np.uint64)
    key <<= np.uint64(32)
    key |= position
    key.sort(axis=1)
    rows = perm[(key & np.uint64(0xFFFFFFFF)).astype(np.intp)]
    ranks = np.empty(block.shape, dtype=np.float64)
    np.put_along_axis(ranks, rows, np.arange(1, n + 1, dtype=np.float64)[None, :], axis=1)
    return ranks


def more_distinct_than(block: np.ndarray, limit: int) -> np.ndarray:
    """Per column of ``block``: more than ``limit`` distinct non-missing values?

    A column that has them among its first rows has them all; only the others are counted in full.
    """
    answer = _distinct_counts(block[:_PREFIX_ROWS]) > limit
    rest = ~answer
    if block.shape[0] > _PREFIX_ROWS and rest.any():
        answer[rest] = _distinct_counts(block[:, rest]) > limit
    return answer


def _distinct_counts(block: np.ndarray) -> np.ndarray:
    ordered = np.sort(block, axis=0)  # NaN last
    present = ~np.isnan(ordered)
    changes = (np.diff(ordered, axis=0) != 0) & present[1:]
    return np.where(present.any(axis=0), 1 + changes.sum(axis=0), 0)


def residuals_in_place(block: np.ndarray, count: np.ndarray) -> bool:
    """The usual case of :func:`cell_count_residuals` straight on a float32 ``block`` (rows x features): every
    count present and every value finite. Sums run in float64 and each value is replaced by float32(value − fit),
    the fit in float64 (one float64 copy of the block, not three temporaries). False (``block`` untouched)
    when a count or a value is missing or infinite."""
    if not np.isfinite(count).all():
        return False
    dc = count - count.mean()
    # both sums in one small matrix product over a contiguous float64 copy (a strided float32 reduction is slower)
    y_sum, dc_y = np.stack([np.ones_like(dc), dc]) @ block.astype(np.float64)
    if not (np.isfinite(y_sum).all() and np.isfinite(dc_y).all()):
        return False
    with np.errstate(invalid="ignore", divide="ignore"):  # one count everywhere: no slope (0)
        slope = dc_y / (dc @ dc)
    fit = np.multiply.outer(dc, np.where(np.isfinite(slope), slope, 0.0))
    fit += y_sum / len(count)
    np.subtract(block, fit, out=block, casting="unsafe")
    return True


def cell_count_residuals(y: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Residuals of ``y ~ 1 + count`` per column (float64), fitted on the rows where both are present;
    other rows keep their value. ``y`` (float64) is the caller's work space: it may be changed."""
    has_count = np.isfinite(count)
    if has_count.all():  # the usual case: column sums (no BLAS: it would fight each_block's threads), in place
        dc = count - count.mean()
        y_sum = y.sum(axis=0)
        dc_y = (dc[:, None] * y).sum(axis=0)
        if np.isfinite(y_sum).all() and np.isfinite(dc_y).all():  # else a missing or infinite value
            with np.errstate(invalid="ignore", divide="ignore"):  # one count everywhere: no slope (0)
                slope = dc_y / (dc @ dc)
            y -= y_sum / len(count)
            y -= dc[:, None] * np.where(np.isfinite(slope), slope, 0.0)
            return y
    use = np.isfinite(y) & has_count[:, None]
    n = use.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        c_mean = np.where(use, count[:, None], 0).sum(axis=0) / n
        y_mean = np.where(use, y, 0).sum(axis=0) / n
        dc = np.where(use, count[:, None] - c_mean, 0)
        slope = (dc * np.where(use, y - y_mean, 0)).sum(axis=0) / (dc * dc).sum(axis=0)
        slope = np.where(np.isfinite(slope), slope, 0.0)
        resid = y - y_mean - slope * (count[:, None] - c_mean)
    return np.where(use, resid, y)
