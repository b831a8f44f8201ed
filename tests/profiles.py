"""Per-well profile builders for the step tests: 96-well replicate plates with CellProfiler feature names."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = [
    "KINDS", "NEGCON", "WELLS", "feature_names", "features_of", "make_profiles", "plant_nan", "plate_profiles", "replicate_profiles",
    "selection_profiles", "well_metadata",
]

NEGCON = "Metadata_control_type == 'negcon'"  # the negative controls of well_metadata
WELLS = [f"{r}{c:02d}" for r in "ABCDEFGH" for c in range(1, 13)]
COMPARTMENTS = ("Cells", "Cytoplasm", "Nuclei")
KINDS = (
    "AreaShape_Area",
    "Intensity_MeanIntensity_DNA",
    "Texture_Contrast_RNA_3_00_256",
    "Granularity_2_Mito",
    "Correlation_Costes_ER_AGP",
    "RadialDistribution_FracAtD_AGP_1of4",
)


def features_of(df: pd.DataFrame) -> list[str]:
    """The columns of ``df`` that are not ``Metadata_``: its features."""
    return [c for c in df.columns if not c.startswith("Metadata_")]


def feature_names(n: int, kinds: tuple[str, ...] = KINDS) -> list[str]:
    """``n`` feature names cycling through the compartments and ``kinds``, numbered to stay unique."""
    return [f"{COMPARTMENTS[j % 3]}_{kinds[j % len(kinds)]}_{j}" for j in range(n)]


def well_metadata(*, plates: int, rng: np.random.Generator | None = None) -> pd.DataFrame:
    """96 wells on each replicate plate ``SQ0000<p>``: DMSO negcon every 6th well, 20 compounds elsewhere.

    With ``rng``, each well also gets a ``Metadata_Object_Count`` drawn from it.
    """
    rows = []
    for p in range(plates):
        for i, w in enumerate(WELLS):
            row: dict[str, object] = {
                "Metadata_Plate": f"SQ0000{p}",
                "Metadata_Well": w,
                "Metadata_control_type": "negcon" if i % 6 == 0 else "trt",
                "Metadata_broad_sample": "DMSO" if i % 6 == 0 else f"BRD-K{i % 20:04d}",
            }
            if rng is not None:
                row["Metadata_Object_Count"] = int(rng.integers(20, 400))
            rows.append(row)
    return pd.DataFrame(rows)


def plant_nan(x: np.ndarray, rng: np.random.Generator) -> None:
    """NaN in place: five rows of feature 13, about a fifth of feature 14."""
    n, d = x.shape
    x[rng.integers(0, n, 5), 13 % d] = np.nan
    x[rng.random(n) < 0.2, 14 % d] = np.nan


def _random_features(
    rng: np.random.Generator, n: int, d: int, *, loc: tuple[float, float], scale: tuple[float, float]
) -> np.ndarray:
    """Normal features, each with its own location and scale."""
    return rng.normal(loc=rng.uniform(*loc, d), scale=rng.uniform(*scale, d), size=(n, d))


def make_profiles(
    *, plates: int = 2, n_features: int = 60, seed: int = 0, nan: bool = True, degenerate: bool = True
) -> pd.DataFrame:
    """Per-well profiles with object counts; ``degenerate`` plants correlated, constant and few-valued features."""
    rng = np.random.default_rng(seed)
    meta = well_metadata(plates=plates, rng=rng)
    n, d = len(meta), n_features
    x = _random_features(rng, n, d, loc=(-5, 50), scale=(0.1, 10))
    if degenerate:
        x[:, 1 % d] = 2 * x[:, 0] + rng.normal(scale=0.01, size=n)
        x[:, 10 % d] = 3.0  # constant
        x[:, 11 % d] = np.where(np.arange(n) % 50 == 0, 1.0, 0.0)  # mostly constant
        x[:, 12 % d] = np.round(x[:, 12 % d])  # few distinct values
    if nan:
        plant_nan(x, rng)
    return pd.concat([meta, pd.DataFrame(x, columns=feature_names(d))], axis="columns")


def selection_profiles(*, plates: int = 2, n_features: int = 120, seed: int = 0, nan: bool = True) -> pd.DataFrame:
    """Per-well profiles with constant, near-constant, correlated, duplicated, NaN, outlier and blocklisted features."""
    rng = np.random.default_rng(seed)
    meta = well_metadata(plates=plates)
    n, d = len(meta), n_features
    x = _random_features(rng, n, d, loc=(-2, 2), scale=(0.5, 2))
    x[:, 1] = 2 * x[:, 0] + rng.normal(scale=0.05, size=n)  # correlated
    x[:, 4] = -x[:, 3] + rng.normal(scale=0.05, size=n)  # anticorrelated: never dropped
    x[:, 7] = x[:, 6] + 0.3 * x[:, 5]
    x[:, 10] = 3.0  # constant
    x[:, 11] = np.where(np.arange(n) % 50 == 0, 1.0, 0.0)  # one value dominates
    x[:, 12] = np.round(x[:, 12] * 2)  # few distinct values
    x[:, 15] = 1.0 + rng.normal(scale=1e-4, size=n)  # tiny variance
    x[:, 16] = x[:, 16] * 400  # outliers beyond 500
    x[:, 17] = x[:, 18] * 0.5 + x[:, 19] * 0.5 + x[:, 20] * 0.5
    if nan:
        plant_nan(x, rng)
    df = pd.concat([meta, pd.DataFrame(x, columns=feature_names(d))], axis="columns")
    df["Nuclei_Correlation_Manders_AGP_DNA"] = rng.normal(size=n)  # blocklisted
    df["Nuclei_Granularity_14_ER"] = rng.normal(size=n)  # blocklisted
    return df


def replicate_profiles(*, plates: int = 3, n_features: int = 50, seed: int = 0) -> pd.DataFrame:
    """Normalized-looking replicate plates: a per-compound signal shared by replicates, plus noise."""
    rng = np.random.default_rng(seed)
    meta = well_metadata(plates=plates)
    signal = {s: rng.normal(size=n_features) for s in meta["Metadata_broad_sample"].unique()}
    x = np.vstack([signal[s] for s in meta["Metadata_broad_sample"]]) + rng.normal(
        scale=0.8, size=(len(meta), n_features)
    )
    names = feature_names(n_features, ("Intensity_MeanIntensity_DNA",))
    return pd.concat([meta, pd.DataFrame(x, columns=names)], axis="columns")


def plate_profiles(plate: str = "SQ00015167", seed: int = 1, n_features: int = 20) -> pd.DataFrame:
    """One aggregated plate as annotate gets it: strata, site and object counts, features; sorted by well."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"Metadata_Plate": plate, "Metadata_Well": WELLS})
    df["Metadata_Site_Count"] = 9
    df["Metadata_Object_Count"] = rng.integers(100, 3000, 96)
    for j in range(n_features):
        df[f"{COMPARTMENTS[j % 3]}_AreaShape_Area_{j}"] = rng.normal(size=96)
    return df
