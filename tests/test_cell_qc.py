"""Single-cell QC flags: hand-computed z-scores, the shipped sets, NaN, and the streamed single-cell table."""

from __future__ import annotations

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
