"""Single-cell QC flags: hand-computed z-scores, the shipped sets, NaN, and the streamed single-cell table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import zscore

from cytoprofile.cell_qc import (
    add_outlier_flags,
    flag_column,
    flag_single_cells,
    load_thresholds,
    outlier_flags,
    zscores,
)
from cytoprofile.collate import collate_plate
from cytoprofile.errors import ConfigError, InputError
from cytoprofile.single_cells import single_cells, write_single_cells
from cytoprofile.synth import synth


def test_default_sets_are_the_three_nuclei_sets() -> None:
    sets = load_thresholds()
    assert sets == {
        "small_and_low_formfactor_nuclei": {"Nuclei_AreaShape_Area": -1.0, "Nuclei_AreaShape_FormFactor": -1.0},
        "elongated_nuclei": {"Nuclei_AreaShape_Eccentricity": 2.0},
        "large_nuclei": {"Nuclei_AreaShape_Area": 2.0, "Nuclei_AreaShape_FormFactor": -2.0},
    }
    assert list(load_thresholds(sets=["large_nuclei"])) == ["large_nuclei"]
    with pytest.raises(ConfigError, match="no threshold set huge"):
        load_thresholds(sets=["huge"])


def test_hand_computed_zscores_and_directions() -> None:
    # area: mean 5, population std 2 → z = -1.5, -1, -0.5, 0, 3 ... (values chosen for exact z)
    area = np.array([2.0, 3.0, 4.0, 5.0, 11.0, 5.0])
    mean, std = area.mean(), np.sqrt(((area - area.mean()) ** 2).mean())
    expected = (area - mean) / std
    np.testing.assert_allclose(zscores(area), expected)
    np.testing.assert_allclose(zscores(area), zscore(area))  # scipy's, population std
    form = np.array([0.1, 0.9, 0.2, 0.8, 0.85, 0.8])
    zf = (form - form.mean()) / form.std()
    flags = outlier_flags({"A": area, "F": form}, {"small_low": {"A": -1, "F": -1}, "big": {"A": 2}})
    assert flags["small_low"].tolist() == list((expected < -1) & (zf < -1))
    assert flags["small_low"].tolist() == [True, False, False, False, False, False]
    assert flags["big"].tolist() == [False, False, False, False, True, False]


def test_nan_never_flags_and_is_left_out_of_the_statistics() -> None:
    area = np.array([1.0, np.nan, 1.0, 1.0, 1.0, 10.0])
    z = zscores(area)
    assert np.isnan(z[1])
    finite = area[np.isfinite(area)]
    assert z[5] == pytest.approx((10 - finite.mean()) / finite.std())
    assert outlier_flags({"A": area}, {"s": {"A": -0.1}})["s"].tolist() == [True, False, True, True, True, False]
    assert not outlier_flags({"A": np.full(4, np.nan)}, {"s": {"A": -1}})["s"].any()
    assert not outlier_flags({"A": np.ones(4)}, {"s": {"A": -1}})["s"].any()  # no spread: nothing flagged


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=40), st.floats(0.1, 3))
def test_flags_are_exactly_the_cells_beyond_the_bound(values: list[float], bound: float) -> None:
    x = np.array(values)
    z = zscores(x)
    up = outlier_flags({"x": x}, {"s": {"x": bound}})["s"]
    down = outlier_flags({"x": x}, {"s": {"x": -bound}})["s"]
    with np.errstate(invalid="ignore"):
        assert up.tolist() == (z > bound).tolist() and down.tolist() == (z < -bound).tolist()
    assert not (up & down).any()


def test_threshold_file_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "t.yml"
    bad.write_text("thresholds:\n  s:\n    Nuclei_AreaShape_Area: 0\n")
    with pytest.raises(ConfigError, match="no direction"):
        load_thresholds(bad)
    bad.write_text("sets: {}\n")
    with pytest.raises(ConfigError, match="top-level 'thresholds:'"):
        load_thresholds(bad)
    good = tmp_path / "g.yml"
    good.write_text("thresholds:\n  dim:\n    Cells_Intensity_MeanIntensity_DNA: -2.5\n")
    assert load_thresholds(good) == {"dim": {"Cells_Intensity_MeanIntensity_DNA": -2.5}}
    with pytest.raises(InputError, match="Cells_Intensity_MeanIntensity_DNA"):
        outlier_flags(pd.DataFrame({"a": [1.0]}), load_thresholds(good))


def _backend(tmp_path, **kw):  # type: ignore[no-untyped-def]
    synth(tmp_path, plates=["P1"], wells=96, well_subset=kw.get("wells", 4), sites=kw.get("sites", 2), cells=30, features=12)
    return collate_plate(tmp_path, "BATCH1", "P1", backend=("parquet",)).outputs["parquet"]


def test_streamed_flags_equal_in_memory_flags_over_the_plate(tmp_path) -> None:  # type: ignore[no-untyped-def]
    backend = _backend(tmp_path)
    sets = load_thresholds()
    report = write_single_cells(backend, thresholds=sets, formats=["parquet", "anndata"])
    out = pq.read_table(report.outputs["parquet"]).to_pandas()
    plain = single_cells(backend).to_pandas()
    expected = add_outlier_flags(plain, sets)
    pd.testing.assert_frame_equal(out, expected)
    # z-scores over the plate's cells, by hand
    area = plain["Nuclei_AreaShape_Area"].to_numpy()
    form = plain["Nuclei_AreaShape_FormFactor"].to_numpy()
    za, zf = (area - area.mean()) / area.std(), (form - form.mean()) / form.std()
    assert out[flag_column("large_nuclei")].tolist() == list((za > 2) & (zf < -2))
    assert out[flag_column("small_and_low_formfactor_nuclei")].tolist() == list((za < -1) & (zf < -1))
    assert out[flag_column("small_and_low_formfactor_nuclei")].any()
    assert report.cell_qc["flagged"]["small_and_low_formfactor_nuclei"] == int(((za < -1) & (zf < -1)).sum())
    per_well = pd.DataFrame(report.cell_qc["per_well"])
    assert per_well["elongated_nuclei"].sum() == report.cell_qc["flagged"]["elongated_nuclei"]
    flag_cols = [c for c in out.columns if c.startswith("Metadata_cqc_")]
    meta = [c for c in out.columns if c.startswith("Metadata_")]
    assert list(out.columns[: len(meta)]) == meta and len(flag_cols) == 3


def test_flag_an_existing_single_cell_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    backend = _backend(tmp_path, wells=3, sites=3)
    report = write_single_cells(backend, row_group_values=1)  # one row group per site
    path = report.outputs["parquet"]
    sets = load_thresholds(sets=["elongated_nuclei"])
    summary = flag_single_cells(path, tmp_path / "flagged.parquet", thresholds=sets)
    flagged = pq.ParquetFile(tmp_path / "flagged.parquet")
    assert flagged.metadata.num_row_groups == pq.ParquetFile(path).metadata.num_row_groups == 9
    df = flagged.read().to_pandas()
    expected = add_outlier_flags(pd.read_parquet(path), sets)
    pd.testing.assert_frame_equal(df, expected)
    assert summary["flagged"]["elongated_nuclei"] == int(df[flag_column("elongated_nuclei")].sum())
    # flagging again in place replaces the columns instead of adding copies
    flag_single_cells(tmp_path / "flagged.parquet", thresholds=sets)
    again = pd.read_parquet(tmp_path / "flagged.parquet")
    pd.testing.assert_frame_equal(again, expected)


# ---------------------------------------------------------------- excluding outlier cells before aggregation


def _hand_kept_profiles(backend: Path, thresholds: dict[str, dict[str, float]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hand computation: join Cytoplasm to Nuclei, plate-wide z (population std, NaN left out), flag, drop, median."""
    import sqlite3

    conn = sqlite3.connect(backend)
    tables = {t: pd.read_sql_query(f"SELECT * FROM {t}", conn) for t in ("Image", "Cells", "Cytoplasm", "Nuclei")}
    conn.close()
    keys = ["TableNumber", "ImageNumber"]
    cells = tables["Cytoplasm"][[*keys, "ObjectNumber", "Cytoplasm_Parent_Cells", "Cytoplasm_Parent_Nuclei"]].merge(
        tables["Nuclei"], left_on=[*keys, "Cytoplasm_Parent_Nuclei"], right_on=[*keys, "ObjectNumber"], suffixes=("", "_n"))
    cells = cells.merge(tables["Image"][[*keys, "Metadata_Plate", "Metadata_Well"]], on=keys)
    flagged = np.zeros(len(cells), dtype=bool)
    for conditions in thresholds.values():
        hit = np.ones(len(cells), dtype=bool)
        for feature, bound in conditions.items():
            x = cells[feature].to_numpy(float)
            z = (x - np.nanmean(x)) / np.nanstd(x)
            hit &= np.nan_to_num(z, nan=0.0) > bound if bound > 0 else np.nan_to_num(z, nan=0.0) < bound
        flagged |= hit
    cells["excluded"] = flagged
    out = []
    gone_by = {"Cytoplasm": "ObjectNumber", "Nuclei": "Cytoplasm_Parent_Nuclei", "Cells": "Cytoplasm_Parent_Cells"}
    for compartment, column in gone_by.items():
        gone = set(map(tuple, cells.loc[flagged, [*keys, column]].to_numpy().tolist()))
        t = tables[compartment]
        kept = t[[tuple(r) not in gone for r in t[[*keys, "ObjectNumber"]].to_numpy().tolist()]]
        kept = kept.merge(tables["Image"][[*keys, "Metadata_Plate", "Metadata_Well"]], on=keys)
        feats = [c for c in t.columns if c.startswith(f"{compartment}_") and "_Parent_" not in c]
        medians = kept.groupby(["Metadata_Plate", "Metadata_Well"])[feats].median()
        if compartment == "Cells":
            medians.insert(0, "Metadata_Object_Count", kept.groupby(["Metadata_Plate", "Metadata_Well"]).size())
        out.append(medians)
    return pd.concat(out, axis=1).reset_index(), cells


@pytest.mark.parametrize(("wells", "sites", "cells", "seed"), [(3, 2, 20, 3), (2, 3, 12, 4)])
def test_collate_excludes_flagged_cells_before_aggregation(tmp_path: Path, wells: int, sites: int, cells: int, seed: int) -> None:
    thresholds = {"big": {"Nuclei_AreaShape_Area": 1.0},
                  "odd": {"Nuclei_AreaShape_Eccentricity": -0.5, "Nuclei_AreaShape_FormFactor": 0.5}}
    path = tmp_path / "sets.yml"
    path.write_text(json.dumps({"thresholds": thresholds}))
    ws = tmp_path / "ws"
    synth(ws, plates=["P1"], wells=96, well_subset=wells, sites=sites, cells=cells, features=8, seed=seed)
    site = sorted((ws / "analysis/BATCH1/P1/analysis").iterdir())[0]
    nuclei = pd.read_csv(site / "Nuclei.csv")
    biggest = int(nuclei["AreaShape_Area"].idxmax())
    nuclei.loc[biggest, "AreaShape_Area"] = np.nan  # would be flagged by "big"; a NaN never flags
    nuclei.to_csv(site / "Nuclei.csv", index=False)
    result = collate_plate(ws, "BATCH1", "P1", profile_format="parquet", exclude_outlier_cells=["big", "odd"],
                           cell_qc_thresholds=str(path))
    assert result.status == "done" and result.report is not None
    expected, joined = _hand_kept_profiles(Path(result.outputs["sqlite"]), thresholds)
    assert 0 < joined["excluded"].sum() < len(joined)
    assert not joined.loc[joined["Nuclei_AreaShape_Area"].isna(), "excluded"].any()
    profiles = pd.read_parquet(result.outputs["profiles"])
    assert profiles["Metadata_Well"].tolist() == expected["Metadata_Well"].tolist()
    np.testing.assert_array_equal(profiles["Metadata_Object_Count"], expected["Metadata_Object_Count"])
    feats = [c for c in expected.columns if c.startswith(("Cells_", "Cytoplasm_", "Nuclei_"))]
    np.testing.assert_allclose(profiles[feats].to_numpy(float), expected[feats].to_numpy(float), rtol=1e-12)
    qc = result.report["cell_qc"]
    assert qc["cells"] == len(joined) and qc["excluded"] == int(joined["excluded"].sum())
    per_well = joined.groupby("Metadata_Well")["excluded"].agg(["sum", "size"])
    assert {r["Metadata_Well"]: (r["excluded"], r["cells"]) for r in qc["per_well"]} == {
        w: (int(s), int(n)) for w, (s, n) in per_well.iterrows()}
    plain = collate_plate(ws, "BATCH1", "P1", profile_format="parquet")  # options changed: rebuilt, all cells
    assert "cell_qc" not in (plain.report or {})
    assert pd.read_parquet(plain.outputs["profiles"])["Metadata_Object_Count"].sum() == len(joined)


def test_exclude_outlier_cells_refusals(tmp_path: Path) -> None:
    from cytoprofile.cli import main

    synth(tmp_path, plates=["P1"], wells=96, well_subset=1, sites=1, cells=4, features=8)
    with pytest.raises(ConfigError, match="no threshold set huge"):
        collate_plate(tmp_path, "BATCH1", "P1", exclude_outlier_cells=["huge"])
    with pytest.raises(InputError, match="without exclude_outlier_cells"):
        collate_plate(tmp_path, "BATCH1", "P1", cell_qc_thresholds="x.yml")
    assert main(["collate", str(tmp_path), "BATCH1", "P1", "--qc-sets", "large_nuclei", "-q"]) == 1
    assert main(["collate", str(tmp_path), "BATCH1", "P1", "--exclude-outlier-cells", "--qc-sets", "large_nuclei", "-q"]) == 0
    report = json.loads((tmp_path / "backend/BATCH1/P1/P1.report.json").read_text())
    assert list(report["cell_qc"]["thresholds"]) == ["large_nuclei"]
