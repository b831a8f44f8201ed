"""Per-well profiles with planted effects, for the processing and mAP tests and the benchmark."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cytoprofile.synth import well_names

COMPARTMENTS = ("Cells", "Cytoplasm", "Nuclei")


def planted_profiles(
    *,
    plates: int = 4,
    wells: int = 96,
    features: int = 30,
    batches: int = 2,
    negcon_per_plate: int = 16,
    active_share: float = 0.5,
    effect: float = 1.0,
    plate_effect: float = 1.0,
    well_effect: float = 1.0,
    batch_effect: float = 1.0,
    cell_effect: float = 0.5,
    seed: int = 0,
    dtype: type = np.float64,
) -> pd.DataFrame:
    """Plates of one layout per plate (positions shuffled), each compound once per plate.

    Features = 20 + 3 * (plate offset + well-position offset + batch offset + compound
    effect (actives only) + cell-count term + noise). ``Metadata_active`` marks the
    planted actives; negative controls are ``Metadata_control_type == 'negcon'``.
    """
    rng = np.random.default_rng(seed)
    names = well_names(next(f for f in (96, 384, 1536) if f >= wells))[:wells]
    n_compounds = wells - negcon_per_plate
    compounds = np.array([f"BRD-{k:05d}" for k in range(n_compounds)])
    active = rng.random(n_compounds) < active_share
    signature = rng.normal(size=(n_compounds, features)) * effect * active[:, None]
    toxicity = rng.normal(scale=0.3, size=n_compounds)
    well_offset = rng.normal(size=(wells, features)) * well_effect
    batch_offset = rng.normal(size=(batches, features)) * batch_effect
    loading = rng.normal(size=features)
    frames = []
    for p in range(plates):
        batch = p * batches // plates
        order = rng.permutation(wells)
        labels = np.concatenate([np.full(negcon_per_plate, "DMSO"), compounds])[order]
        is_neg = labels == "DMSO"
        idx = np.searchsorted(compounds, labels)
        idx[is_neg] = 0
        tox = np.where(is_neg, 0.0, toxicity[idx])
        counts = np.maximum(50, np.round(2000 * np.exp(tox + rng.normal(scale=0.1, size=wells))))
        z = (rng.normal(size=features) * plate_effect + well_offset + batch_offset[batch]
             + np.where(is_neg[:, None], 0.0, signature[idx])
             + cell_effect * np.log(counts / 2000)[:, None] * loading
             + rng.normal(size=(wells, features)))
        x = 20 + 3 * z * (1 + 0.2 * p / plates)
        meta = pd.DataFrame({
            "Metadata_Batch": f"B{batch}",
            "Metadata_Plate": f"P{p:03d}",
            "Metadata_Well": names,
            "Metadata_control_type": np.where(is_neg, "negcon", "trt"),
            "Metadata_broad_sample": labels,
            "Metadata_Count_Cells": counts.astype(np.int64),
            "Metadata_active": np.where(is_neg, False, active[idx]),
        })
        cols = [f"{COMPARTMENTS[k % 3]}_Intensity_Feature{k:04d}" for k in range(features)]
        frames.append(pd.concat([meta, pd.DataFrame(x.astype(dtype), columns=cols)], axis=1))
    return pd.concat(frames, ignore_index=True)
