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
    toxicity: float = 0.3,
    batch_well_effect: float = 0.0,
    density_noise: float = 0.1,
    seed: int = 0,
    replicates: int | None = None,
    dtype: type = np.float64,
) -> pd.DataFrame:
    """Plates with positions shuffled per plate; each compound once per plate it is on.

    Every compound is on every plate, or with ``replicates`` (dividing ``plates``) on
    that many plates, spread over the batches (plate p holds compound set p mod k).

    Features = 20 + 3 * (plate offset + well-position offset + batch offset + the batch's
    own well-position offset + compound effect (actives only) + cell-count term +
    noise); the cell count varies by well and, with ``toxicity``, by compound. ``Metadata_active`` marks the
    planted actives; negative controls are ``Metadata_control_type == 'negcon'``.
    """
    rng = np.random.default_rng(seed)
    names = well_names(next(f for f in (96, 384, 1536) if f >= wells))[:wells]
    per_plate = wells - negcon_per_plate
    sets = plates // replicates if replicates else 1
    if replicates and plates % replicates:
        raise ValueError("replicates must divide plates")
    n_compounds = per_plate * sets
    compounds = np.array([f"BRD-{k:05d}" for k in range(n_compounds)])
    active = rng.random(n_compounds) < active_share
    signature = rng.normal(size=(n_compounds, features)) * effect * active[:, None]
    tox_by_compound = rng.normal(scale=toxicity, size=n_compounds)
    well_offset = rng.normal(size=(wells, features)) * well_effect
    batch_offset = rng.normal(size=(batches, features)) * batch_effect
    batch_well = rng.normal(size=(batches, wells, features)) * batch_well_effect
    loading = rng.normal(size=features)
    frames = []
    for p in range(plates):
        batch = p * batches // plates
        order = rng.permutation(wells)
        mine = compounds[(p % sets) * per_plate : (p % sets + 1) * per_plate]
        labels = np.concatenate([np.full(negcon_per_plate, "DMSO"), mine])[order]
        is_neg = labels == "DMSO"
        idx = np.searchsorted(compounds, labels)
        idx[is_neg] = 0
        tox = np.where(is_neg, 0.0, tox_by_compound[idx])
        counts = np.maximum(50, np.round(2000 * np.exp(tox + rng.normal(scale=density_noise, size=wells))))
        z = (rng.normal(size=features) * plate_effect + well_offset + batch_offset[batch] + batch_well[batch]
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
