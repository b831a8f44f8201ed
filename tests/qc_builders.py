"""Builders for the QC tests: synthetic load_data, per-well profiles and a QC workspace."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cytoprofile import qc

__all__ = [
    "FEATURES", "make_wells", "make_load_data", "qc_well_profiles", "make_batch_profiles", "png_stats",
    "assert_png", "write_workspace", "MAP_SETTINGS", "map_workspace",
]

FEATURES = [f"Cells_F{i}" for i in range(10)] + [f"Nuclei_F{i}" for i in range(10)] + [
    f"Cytoplasm_F{i}" for i in range(5)
] + [f"Image_F{i}" for i in range(5)]


# --------------------------------------------------------------------------- builders


def make_wells(n_rows: int, n_cols: int) -> list[str]:
    return [qc.grid_to_well(r, c) for r in range(n_rows) for c in range(n_cols)]


def make_load_data(plate: str, sites_per_well: dict[str, int], channels: int = 5) -> pd.DataFrame:
    records = []
    for well, n_sites in sites_per_well.items():
        for site in range(1, n_sites + 1):
            record = {"Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": site}
            for ch in range(channels):
                record[f"FileName_Ch{ch}"] = f"{plate}_{well}_s{site}_ch{ch}.tiff"
                record[f"PathName_Ch{ch}"] = "/images"
            records.append(record)
    return pd.DataFrame(records)


def qc_well_profiles(plate: str, wells: list[str], *, rng: np.random.Generator, counts=None) -> pd.DataFrame:
    """One plate's per-well profiles as QC reads them: site and cell counts, random QC features."""
    frame = pd.DataFrame(
        {
            "Metadata_Plate": plate,
            "Metadata_Well": wells,
            "Metadata_Site_Count": 4,
            "Metadata_Object_Count": counts if counts is not None else rng.integers(50, 400, len(wells)),
        }
    )
    values = pd.DataFrame(rng.normal(size=(len(wells), len(FEATURES))), columns=FEATURES)
    return pd.concat([frame, values], axis=1)


def make_batch_profiles(n_strong: int = 20, n_null: int = 20, seed: int = 1) -> pd.DataFrame:
    """Two 96-well plates: negcon in columns 1 and 12, every treatment twice per plate.

    Strong treatments add a shared random signal (3 × noise) to their replicates;
    null treatments are noise only.
    """
    rng = np.random.default_rng(seed)
    names = [f"strong-{i}" for i in range(n_strong)] + [f"null-{i}" for i in range(n_null)]
    signal = {n: (3.0 * rng.normal(size=len(FEATURES)) if n.startswith("strong") else 0.0) for n in names}
    frames = []
    for plate in ("P1", "P2"):
        treatment_wells = [w for w in make_wells(8, 12) if not w.endswith(("01", "12"))]
        layout = dict(zip(treatment_wells, [n for n in names for _ in range(2)], strict=False))
        frame = qc_well_profiles(plate, make_wells(8, 12), rng=rng)
        negcon = frame["Metadata_Well"].str.endswith(("01", "12"))
        frame["Metadata_broad_sample"] = [
            "DMSO" if is_negcon else layout.get(w) for w, is_negcon in zip(frame["Metadata_Well"], negcon, strict=True)
        ]
        frame["Metadata_control_type"] = np.where(negcon, "negcon", "trt")
        for i, name in enumerate(frame["Metadata_broad_sample"]):
            if name in signal:
                frame.loc[i, FEATURES] = frame.loc[i, FEATURES].to_numpy(float) + signal[name]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def png_stats(png: bytes) -> tuple[tuple[int, int], float, int]:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    pixels = np.asarray(image)
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    return image.size, float(pixels.std()), colours


def assert_png(png: bytes, size: tuple[int, int]) -> None:
    actual, std, colours = png_stats(png)
    assert actual == size
    assert std > 5
    assert colours > 20



def write_workspace(root: Path, batch: str = "B1") -> list[str]:
    """A workspace with two 96-well plates and one 1536-well plate (without negcon profiles)."""
    profiles = make_batch_profiles()
    plates = ["P1", "P2", "BIG"]
    for plate in plates:
        prof_dir = root / "profiles" / batch / plate
        prof_dir.mkdir(parents=True)
        if plate == "BIG":
            wells = make_wells(32, 48)
            frame = qc_well_profiles(plate, wells, rng=np.random.default_rng(9))
        else:
            frame = profiles[profiles["Metadata_Plate"] == plate].reset_index(drop=True)
            frame = frame[frame["Metadata_Well"] != "H12"]  # one empty well
            wells = make_wells(8, 12)
            frame.to_csv(prof_dir / f"{plate}_normalized_feature_select_negcon_batch.csv.gz", index=False)
            frame.drop(columns=FEATURES[-3:]).to_csv(
                prof_dir / f"{plate}_normalized_feature_select_batch.csv.gz", index=False
            )
        frame.to_csv(prof_dir / f"{plate}_augmented.csv.gz", index=False)
        ld_dir = root / "load_data_csv" / batch / plate
        ld_dir.mkdir(parents=True)
        sites = {w: 4 if i % 7 else 3 for i, w in enumerate(wells)}
        with gzip.open(ld_dir / "load_data.csv.gz", "wt") as fh:
            make_load_data(plate, sites).to_csv(fh, index=False)
    report = {
        "plate": "P1", "batch": batch, "cytoprofile_version": "0.1.0",
        "sites": [
            {"site": "P1-A01-1", "well": "A01", "status": "ok", "reason": None, "file": None,
             "rows": {"Image": 1, "Cells": 220}},
            {"site": "P1-A02-2", "well": "A02", "status": "quarantined", "reason": "Cells.csv is missing",
             "file": "analysis/B1/P1/analysis/P1-A02-2/Cells.csv", "rows": {}},
        ],
        "missing_columns": {"Image": {"Granularity_1_DNA": ["P1-A03-1"]}},
        "tables": {"Image": {"rows_in": 10, "rows_out": 10, "columns": 50}},
        "totals": {"sites": 380, "sites_ok": 379, "sites_quarantined": 1, "wells": 96},
    }
    backend = root / "backend" / batch / "P1"
    backend.mkdir(parents=True)
    (backend / "P1.report.json").write_text(json.dumps(report))
    return plates


MAP_SETTINGS = {"modes": ["activity", "consistency"], "annotation_column": "Metadata_moa", "pert_column": None,
                "control_query": "Metadata_control_type == 'negcon'", "neg_sameby": ["Metadata_Plate"],
                "pos_diffby": [], "multilabel_separator": None, "null_size": 2000, "threshold": 0.05, "seed": 0}


def map_workspace(root: Path) -> tuple[list[str], pd.DataFrame]:
    """The QC workspace with a ``Metadata_moa`` annotation on its negcon-normalized profiles."""
    plates = write_workspace(root)
    frames = []
    for plate in ("P1", "P2"):
        path = root / "profiles" / "B1" / plate / f"{plate}_normalized_feature_select_negcon_batch.csv.gz"
        frame = pd.read_csv(path)
        frame = frame.dropna(subset=["Metadata_broad_sample"]).reset_index(drop=True)  # wells left empty
        frame["Metadata_moa"] = "moa_" + frame["Metadata_broad_sample"].str.split("-").str[0]
        frame.to_csv(path, index=False)
        frames.append(frame)
    return plates, pd.concat(frames, ignore_index=True)
