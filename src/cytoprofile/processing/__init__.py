"""Profile processing beyond normalize → feature select, as large screens do it today.

One function per step; each takes per-well profiles and returns them with the step
applied (non-feature columns first and unchanged, then the features as float32):

* ``select_variant_features`` (``var``): per-plate median and unscaled MAD of the
  reference wells (negative controls, or all); a feature stays only if on every
  plate MAD ≠ 0 and |MAD / median| > ``threshold`` (a median of 0 counts as 0);
  features with NaN or ±inf drop first.
* ``mad_normalize`` (``mad``): (x − plate median) / plate MAD with those statistics.
  Unlike ``normalize(method="mad_robustize")`` the MAD is not scaled by 1.4826 and
  no ε is added.
* ``rank_int`` (``int``): rank-based inverse normal transform per feature, Blom's
  c = 3/8; ties broken by a seeded permutation (the same for every feature) or
  averaged. NaN cells stay NaN and are not ranked.
* ``correct_well_position`` (``wellpos``): subtract each well position's mean
  across plates.
* ``regress_cell_count`` (``cc``): per-feature OLS residuals on the cell count.
* ``remove_outliers`` (``outlier``): drop features whose 99th percentile of |x|
  exceeds ``bound`` and clip the rest to ±bound.
* ``drop_na_features`` (``dropna``), ``pca``, ``sphere`` (``sphering``; the
  regularization chosen by mAP) and ``harmony`` (harmonypy; ``harmony_handed_over``
  takes its frame out of a one-element list and lets go of its features before
  harmonypy runs, as ``run_chain`` does with the frames it made).

``parse_chain`` reads a chain (``profiles_var_mad_int_featselect_harmony`` or a
list) and ``run_chain`` applies it, recording each step's effect.

Where the reference recipe drops rows (wells with missing values before the
well-position correction, plates without negative controls), this module either
keeps them (missing values are ignored in the statistics and stay missing) or
refuses unless asked to drop (``plates_without_controls="drop"``), naming them.
"""

from __future__ import annotations

from ..vocabulary import PROCESSING_STEPS as CHAIN_STEPS
from .chain import CHAIN_OPTIONS, check_chain_options, parse_chain, run_chain
from .steps import (
    correct_well_position,
    drop_na_features,
    harmony,
    harmony_handed_over,
    mad_normalize,
    pca,
    plate_statistics,
    rank_int,
    regress_cell_count,
    remove_outliers,
    select_variant_features,
    sphere,
)

__all__ = [
    "CHAIN_OPTIONS",
    "CHAIN_STEPS",
    "check_chain_options",
    "correct_well_position",
    "drop_na_features",
    "harmony",
    "harmony_handed_over",
    "mad_normalize",
    "parse_chain",
    "pca",
    "plate_statistics",
    "rank_int",
    "regress_cell_count",
    "remove_outliers",
    "run_chain",
    "select_variant_features",
    "sphere",
]
