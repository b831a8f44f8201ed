"""The reference path for comparisons: an old-layout SQLite made with pandas, pycytominer's steps, one frame comparator."""

from __future__ import annotations

import re
import sqlite3
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "assert_profiles_equal", "old_layout_sqlite", "pycytominer_merge", "pycytominer_profiles", "pycytominer_step",
    "rank_int_array",
]

KEYS = ("TableNumber", "ImageNumber", "ObjectNumber")
_SITE = re.compile(r"^(?P<plate>.+)-(?P<well>[A-Za-z]{1,2}\d{1,3})-(?P<site>\d+)$")


def old_layout_sqlite(site_dirs: Sequence[Path], path: Path, compartments: Sequence[str]) -> Path:
    """Build a backend the way the old ingest did (one site after another) from trusted sites."""
    conn = sqlite3.connect(path)
    images = []
    objects: dict[str, list[pd.DataFrame]] = {c: [] for c in compartments}
    for d in sorted(site_dirs, key=lambda p: p.name):
        raw = (d / "Image.csv").read_bytes()
        table_number = zlib.crc32(raw) & 0xFFFFFFFF
        image = pd.read_csv(d / "Image.csv")
        match = _SITE.match(d.name)
        for col, val in (("Metadata_Plate", match and match["plate"]), ("Metadata_Well", match and match["well"]),
                         ("Metadata_Site", match and int(match["site"]))):
            if col not in image.columns:
                image[col] = val
        image = image.copy()
        image.insert(0, "TableNumber", table_number)
        images.append(image)
        for c in compartments:
            df = pd.read_csv(d / f"{c}.csv")
            df = df.rename(columns={k: k if k in KEYS else f"{c}_{k}" for k in df.columns})
            df = df.copy()
            df.insert(0, "TableNumber", table_number)
            objects[c].append(df)
    pd.concat(images).to_sql("Image", conn, index=False)
    for c, frames in objects.items():
        pd.concat(frames).to_sql(c, conn, index=False)
    conn.close()
    return path


def pycytominer_profiles(
    backend: Path,
    *,
    operation: str = "median",
    image_features: bool = True,
    categories: Sequence[str] = ("Granularity", "Texture", "ImageQuality", "Count", "Threshold"),
    compartments: Sequence[str] = ("cells", "cytoplasm", "nuclei"),
) -> pd.DataFrame:
    """pycytominer's per-well aggregation of a backend."""
    from pycytominer.cyto_utils.cells import SingleCells

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc = SingleCells(
            f"sqlite:///{backend}",
            strata=["Metadata_Plate", "Metadata_Well"],
            aggregation_operation=operation,
            add_image_features=image_features,
            image_feature_categories=list(categories) if image_features else None,
            image_table_name="Image",
            compartments=list(compartments),
        )
        return sc.aggregate_profiles()


def pycytominer_step(step: str, *frames: pd.DataFrame, **kwargs: object) -> pd.DataFrame:
    """pycytominer's ``step`` (``normalize``, ``annotate``, ...) on copies of ``frames``, its warnings silenced."""
    import pycytominer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(pycytominer, step)(*(f.copy() for f in frames), **kwargs)


def pycytominer_merge(backend: Path, strata: Sequence[str], image_cols: Sequence[str]) -> pd.DataFrame:
    """pycytominer's single-cell merge of a backend."""
    from pycytominer.cyto_utils.cells import SingleCells

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc = SingleCells(f"sqlite:///{backend}", strata=list(strata), image_cols=list(image_cols),
                         image_table_name="Image")
        return sc.merge_single_cells()


def assert_profiles_equal(
    ours: pd.DataFrame,
    ref: pd.DataFrame,
    *,
    rtol: float = 1e-9,
    atol: float = 0.0,
    check_index: bool = False,
    exact_metadata: bool = False,
) -> None:
    """Same columns in the same order and the same rows; numbers within ``rtol``/``atol`` (NaN where ref has
    NaN), anything else equal as text. ``check_index`` also compares the index; ``exact_metadata`` compares
    ``Metadata_`` columns as pandas does, dtype included."""
    assert list(ours.columns) == list(ref.columns)
    assert len(ours) == len(ref)
    if check_index:
        pd.testing.assert_index_equal(ours.index, ref.index)
    numeric = pd.api.types.is_numeric_dtype
    for c in ref.columns:
        if exact_metadata and c.startswith("Metadata_"):
            pd.testing.assert_series_equal(ours[c], ref[c], check_index=check_index)
        elif numeric(ref[c]) and numeric(ours[c]):
            np.testing.assert_allclose(ours[c].to_numpy(float), ref[c].to_numpy(float), rtol=rtol, atol=atol,
                                       equal_nan=True, err_msg=c)
        else:
            assert ours[c].astype(str).tolist() == ref[c].astype(str).tolist(), c


def rank_int_array(values: np.ndarray, *, c: float = 3 / 8, stochastic: bool = True, seed: int = 0) -> np.ndarray:
    """The JUMP recipe's rank_int_array, one feature (formula from its definition)."""
    from scipy import stats

    if stochastic:
        ix = np.random.default_rng(seed).permutation(len(values))
        rank = stats.rankdata(values[ix], method="ordinal")[np.argsort(ix)]
    else:
        rank = stats.rankdata(values, method="average")
    return np.asarray(stats.norm.ppf((rank - c) / (len(rank) - 2 * c + 1)))
