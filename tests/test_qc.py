"""Tests of cytoprofile.qc: summary values, plate geometry, heatmaps, percent replicating, workspace runs."""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cytoprofile import qc
from cytoprofile.errors import InputError

from .qc_builders import (
    FEATURES,
    assert_png,
    make_batch_profiles,
    make_load_data,
    make_wells,
    qc_well_profiles,
    write_workspace,
)

# --------------------------------------------------------------------------- summary


def test_summary_values_match_hand_computed() -> None:
    sites = {"A01": 9, "A02": 9, "A03": 9, "B01": 8, "B02": 5}
    load_data = make_load_data("P1", sites, channels=5)
    rng = np.random.default_rng(0)
    # B02 is imaged but has no profile row; A03 has a row with no cells.
    profiles = qc_well_profiles("P1", ["A01", "A02", "A03", "B01"], rng=rng, counts=[300, 120, 0, 80])
    selected = profiles[["Metadata_Plate", "Metadata_Well", *FEATURES[:7]]]
    report = {
        "plate": "P1",
        "batch": "B1",
        "sites": [
            {"site": "P1-A01-1", "well": "A01", "status": "ok"},
            {"site": "P1-B02-2", "well": "B02", "status": "quarantined", "reason": "Cells.csv is missing"},
        ],
        "totals": {"sites": 40, "sites_ok": 38, "sites_quarantined": 2, "wells": 5},
    }
    row = qc.summarize_plate(
        batch="B1", plate="P1", load_data=load_data, profiles=profiles, report=report,
        selected_profiles=selected,
    )
    assert list(row) == list(qc.SUMMARY_COLUMNS)
    assert row["Batch_Name"] == "B1" and row["Plate_Name"] == "P1"
    assert row["Well_Count"] == 5
    assert row["Images_per_site"] == 5
    assert row["Sites_per_well_Median"] == 9
    # True MAD: |[9,9,9,8,5] - 9| = [0,0,0,1,4] → median 0; the mean deviation would be 1.2.
    assert row["Sites_per_well_mad"] == 0.0
    values = np.array([9, 9, 9, 8, 5])
    assert np.mean(np.abs(values - values.mean())) == pytest.approx(1.2)
    # Cells per well over imaged wells that lost no site: [300, 120, 0, 80]; B02 lost
    # its site to quarantine, so it is counted as quarantined, not as a well without cells.
    assert row["Cells_per_well_Median"] == 100
    assert row["Cells_per_well_Min"] == 0
    assert row["Wells_without_cells"] == 1
    assert row["Sites_quarantined"] == 2
    assert row["Wells_quarantined"] == 1
    assert row["Features_selected"] == 7


def test_summary_mad_is_median_of_absolute_deviations() -> None:
    load_data = make_load_data("P1", {"A01": 1, "A02": 2, "A03": 3, "A04": 4, "A05": 100}, channels=2)
    row = qc.summarize_plate(batch="B", plate="P1", load_data=load_data)
    assert row["Sites_per_well_Median"] == 3
    assert row["Sites_per_well_mad"] == 1.0  # median of [2, 1, 0, 1, 97]
    assert row["Images_per_site"] == 2
    assert pd.isna(row["Sites_quarantined"]) and pd.isna(row["Features_selected"])
    assert pd.isna(row["Cells_per_well_Median"])


def test_summary_groups_by_row_and_col_without_well_column() -> None:
    load_data = make_load_data("P1", {"A01": 2, "A02": 3, "B01": 4}).drop(columns="Metadata_Well")
    load_data["Metadata_Row"] = ["A"] * 5 + ["B"] * 4
    load_data["Metadata_Col"] = [1, 1, 2, 2, 2, 1, 1, 1, 1]
    row = qc.summarize_plate(batch="B", plate="P1", load_data=load_data)
    assert row["Well_Count"] == 3
    assert row["Sites_per_well_Median"] == 3
    assert row["Sites_per_well_mad"] == 1.0


def test_summary_input_errors_name_the_file_and_fix() -> None:
    load_data = make_load_data("P1", {"A01": 1}).drop(columns="Metadata_Well")
    with pytest.raises(InputError, match=r"ld\.csv: no Metadata_Well"):
        qc.summarize_plate(batch="B", plate="P1", load_data=load_data, source="ld.csv")
    no_files = make_load_data("P1", {"A01": 1}, channels=0)
    with pytest.raises(InputError, match="FileName_"):
        qc.summarize_plate(batch="B", plate="P1", load_data=no_files)


def test_update_summary_replaces_rows_and_round_trips(tmp_path: Path) -> None:
    first = [
        qc.summarize_plate(batch="B1", plate=p, load_data=make_load_data(p, {"A01": 9, "A02": 9}))
        for p in ("0042", "P2")
    ]
    table = qc.update_summary(None, first)
    path = tmp_path / "summary.tsv"
    table.to_csv(path, sep="\t", index=False)
    existing = qc.read_summary(path)
    assert existing is not None
    assert list(existing["Plate_Name"]) == ["0042", "P2"]  # leading zeros survive
    rerun = qc.summarize_plate(batch="B1", plate="0042", load_data=make_load_data("0042", {"A01": 4}))
    other = qc.summarize_plate(batch="A0", plate="X", load_data=make_load_data("X", {"A01": 1}))
    updated = qc.update_summary(existing, [rerun, other])
    assert list(zip(updated["Batch_Name"], updated["Plate_Name"], strict=True)) == [
        ("A0", "X"), ("B1", "0042"), ("B1", "P2"),
    ]
    assert updated.loc[updated["Plate_Name"] == "0042", "Well_Count"].item() == 1
    assert updated.loc[updated["Plate_Name"] == "0042", "Sites_per_well_Median"].item() == 4
    assert list(updated.columns[:6]) == list(qc.RECIPE_SUMMARY_COLUMNS)
    again = qc.update_summary(updated, [rerun])
    assert len(again) == 3
    assert qc.read_summary(tmp_path / "absent.tsv") is None


def test_update_summary_reads_recipe_summary_without_new_columns() -> None:
    recipe = pd.DataFrame(
        {"Batch_Name": ["B0"], "Plate_Name": ["P0"], "Well_Count": [384], "Images_per_site": [5],
         "Sites_per_well_Median": [9], "Sites_per_well_mad": ["0.000"]}
    )
    table = qc.update_summary(recipe, [])
    assert list(table.columns) == list(qc.SUMMARY_COLUMNS)
    assert table["Sites_per_well_mad"].iloc[0] == 0.0
    assert pd.isna(table["Features_selected"].iloc[0])


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    ("well", "grid"),
    [("A01", (0, 0)), ("H12", (7, 11)), ("P24", (15, 23)), ("Z48", (25, 47)), ("AA01", (26, 0)),
     ("AF48", (31, 47)), ("b7", (1, 6)), ("C003", (2, 2))],
)
def test_well_to_grid(well: str, grid: tuple[int, int]) -> None:
    assert qc.well_to_grid(well) == grid
    assert qc.well_to_grid(qc.grid_to_well(*grid)) == grid


def test_grid_to_well_names() -> None:
    assert qc.grid_to_well(31, 47) == "AF48"
    assert qc.grid_to_well(26, 0) == "AA01"
    assert qc.grid_to_well(0, 0) == "A01"


@pytest.mark.parametrize(
    ("wells", "layout"),
    [(["A01", "H12"], (8, 12)), (["A01", "B02"], (8, 12)), (["A13"], (16, 24)), (["I01"], (16, 24)),
     (["P24"], (16, 24)), (["Q01"], (32, 48)), (["A25"], (32, 48)), (["AF48", "A01"], (32, 48)),
     ([], (8, 12))],
)
def test_plate_layout(wells: list[str], layout: tuple[int, int]) -> None:
    assert qc.plate_layout(wells) == layout


@pytest.mark.parametrize("well", ["", "A", "01", "A-1", "ABC1", "A00"])
def test_bad_well_names_raise(well: str) -> None:
    with pytest.raises(InputError, match="Metadata_Well"):
        qc.well_to_grid(well)


# --------------------------------------------------------------------------- figures


@pytest.mark.parametrize(("n_rows", "n_cols"), [(8, 12), (16, 24), (32, 48)])
def test_cell_count_figure_png(n_rows: int, n_cols: int) -> None:
    rng = np.random.default_rng(n_rows)
    wells = make_wells(n_rows, n_cols)[:-3]  # the last three wells have no data: grey
    frame = qc_well_profiles("P1", wells, rng=rng)
    fig = qc.cell_count_figure(frame, plate="P1")
    png = qc.figure_png(fig, dpi=100)
    assert_png(png, (900, 600))
    assert qc.figure_png(fig, dpi=50)[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(qc.figure_png(fig, dpi=50))).size == (450, 300)
    title = fig.axes[0].get_title()
    assert "P1" in title and "cells per well" in title
    image = fig.axes[0].images[0]
    assert image.get_array().shape == (n_rows, n_cols)
    assert image.get_array().mask[-1, -1]  # empty well masked → drawn grey
    assert len(fig.axes) == 2  # plate + colour bar


def test_correlation_and_position_effect_figures() -> None:
    rng = np.random.default_rng(3)
    frame = qc_well_profiles("P1", make_wells(16, 24), rng=rng)
    corr = qc.correlation_figure(frame, plate="P1")
    assert_png(qc.figure_png(corr), (800, 700))
    assert corr.axes[0].images[0].get_array().shape == (384, 384)
    assert "correlation" in corr.axes[0].get_title()
    pos = qc.position_effect_figure(frame, plate="P1")
    assert_png(qc.figure_png(pos), (900, 600))
    assert "position effect" in pos.axes[0].get_title()


def test_position_effect_finds_a_row_artefact() -> None:
    rng = np.random.default_rng(5)
    frame = qc_well_profiles("P1", make_wells(8, 12), rng=rng)
    artefact = rng.normal(size=len(FEATURES)) * 3
    in_row_c = frame["Metadata_Well"].str.startswith("C").to_numpy()
    frame.loc[in_row_c, FEATURES] = frame.loc[in_row_c, FEATURES].to_numpy() + artefact
    effect = qc.position_effect(frame).set_index("Metadata_Well")
    assert list(effect.columns) == ["Row", "Column", "Position_Effect", "Comparisons", "Threshold"]
    assert effect.loc["C05", "Comparisons"] == 11 + 7
    row_c = effect.loc[effect["Row"] == "C", "Position_Effect"]
    others = effect.loc[effect["Row"] != "C", "Position_Effect"]
    # Row C wells correlate with their 11 row neighbours, far above their own null's 95th percentile.
    assert row_c.min() > 0.5
    assert others.median() < 0.15
    assert qc.position_effect(frame).attrs["chance"] == pytest.approx(0.05)


def test_well_correlation_is_pearson_in_plate_order() -> None:
    rng = np.random.default_rng(8)
    frame = qc_well_profiles("P1", ["B01", "A02", "A01"], rng=rng)
    corr = qc.well_correlation(frame)
    assert list(corr.index) == ["A01", "A02", "B01"]
    x = frame.set_index("Metadata_Well").loc[["A01", "A02", "B01"], FEATURES].to_numpy(float)
    np.testing.assert_allclose(corr.to_numpy(), np.corrcoef(x), atol=1e-12)


# --------------------------------------------------------------------------- percent replicating


def test_percent_replicating_separates_strong_from_null() -> None:
    profiles = make_batch_profiles()
    result = qc.percent_replicating(profiles, n_null=5000, seed=0)
    treatments = result["treatments"].set_index("Metadata_broad_sample")
    assert result["replicate_column"] == "Metadata_broad_sample"
    assert "DMSO" not in treatments.index  # negative controls are not scored
    assert result["n_treatments"] == 40
    assert (treatments["n_replicates"] == 4).all()
    strong = treatments.loc[treatments.index.str.startswith("strong"), "replicating"]
    null = treatments.loc[treatments.index.str.startswith("null"), "replicating"]
    assert strong.all()
    assert null.sum() <= 2
    assert 50.0 <= result["percent"] <= 55.0
    assert 0.0 < result["threshold"] < 0.6
    assert len(result["null"]) == 5000
    again = qc.percent_replicating(profiles, n_null=5000, seed=0)
    assert again["threshold"] == result["threshold"]
    png = qc.figure_png(qc.replication_figure(result, batch="B1"))
    assert_png(png, (800, 450))


def test_percent_replicating_options() -> None:
    profiles = make_batch_profiles(n_strong=4, n_null=4)
    profiles["Metadata_pert_iname"] = profiles.pop("Metadata_broad_sample")
    profiles["Metadata_is_control"] = profiles.pop("Metadata_control_type") == "negcon"
    result = qc.percent_replicating(
        profiles, negcon_column="Metadata_is_control", negcon_value="True", n_null=100_000
    )
    assert result["replicate_column"] == "Metadata_pert_iname"
    assert result["n_treatments"] == 8
    # Fewer pairs than n_null: every non-replicate pair of treatment wells is used.
    n = 8 * 4
    assert len(result["null"]) == n * (n - 1) // 2 - 8 * 6
    with pytest.raises(InputError, match="Metadata_nope"):
        qc.percent_replicating(profiles, replicate_column="Metadata_nope")


# --------------------------------------------------------------------------- workspace + report


def _quarantine_every_site(ws: Path, batch: str, plate: str, wells: list[str]) -> None:
    """Empty Nuclei.csv in every site of ``wells``."""
    for site in (ws / "analysis" / batch / plate / "analysis").iterdir():
        if site.name.split("-")[1] in wells:
            (site / "Nuclei.csv").write_bytes(b"")


@pytest.mark.parametrize(("wells", "sites", "lost"), [(96, 3, ["B05"]), (96, 2, ["A01", "H12"]), (384, 1, None)])
def test_summary_counts_quarantined_wells_apart_from_empty_wells(
    tmp_path: Path, wells: int, sites: int, lost: list[str] | None
) -> None:
    from cytoprofile.collate import collate
    from cytoprofile.synth import synth

    ws = tmp_path / "ws"
    made = synth(ws, batch="B1", plates=["P1"], wells=wells, sites=sites, cells=8, features=6,
                 faults=lost is None, seed=3)
    if lost is None:  # synth's faults: with one site per well, three wells lose every site
        lost = made.wells[:3]
    else:
        _quarantine_every_site(ws, "B1", "P1", lost)
    collate(ws, "B1", ["P1"])
    (ws / "profiles" / "B1" / "P1").mkdir(parents=True)
    shutil.copy(ws / "backend" / "B1" / "P1" / "P1.csv", ws / "profiles" / "B1" / "P1" / "P1.csv")
    result = qc.quality_control(ws, "B1", ["P1"], heatmaps=False, report=False, n_null=100)
    row = result.summary.set_index("Plate_Name").loc["P1"]
    assert row["Wells_quarantined"] == len(lost) == len(result.quarantine["P1"])
    assert row["Wells_without_cells"] == 0
    assert row["Cells_per_well_Min"] > 0
    assert row["Well_Count"] == wells


@pytest.fixture(scope="module")
def qc_workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], qc.QualityControlResult]:
    """A workspace after one QC run; tests that change it work on a copy."""
    root = tmp_path_factory.mktemp("qc") / "ws"
    plates = write_workspace(root)
    result = qc.quality_control(root, "B1", plates, n_null=2000)
    return root, plates, result


def test_quality_control_writes_outputs(qc_workspace, tmp_path: Path) -> None:
    original, plates, result = qc_workspace
    root = Path(shutil.copytree(original, tmp_path / "ws"))
    qc_dir = root / "quality_control"
    summary = pd.read_csv(qc_dir / "summary" / "summary.tsv", sep="\t", dtype={"Plate_Name": str})
    assert list(summary.columns) == list(qc.SUMMARY_COLUMNS)
    assert list(summary["Plate_Name"]) == ["BIG", "P1", "P2"]
    by_plate = summary.set_index("Plate_Name")
    assert by_plate.loc["BIG", "Well_Count"] == 1536
    assert by_plate.loc["P1", "Well_Count"] == 96
    assert by_plate.loc["P1", "Images_per_site"] == 5
    assert by_plate.loc["P1", "Sites_per_well_Median"] == 4
    assert by_plate.loc["P1", "Sites_per_well_mad"] == 0
    assert by_plate.loc["P1", "Wells_without_cells"] == 1  # H12 has no profile row
    assert by_plate.loc["P1", "Sites_quarantined"] == 1
    assert pd.isna(by_plate.loc["P2", "Sites_quarantined"])  # no ingest report
    assert by_plate.loc["P1", "Features_selected"] == len(FEATURES) - 3
    for plate in ("P1", "P2"):
        for name in qc.FIGURE_NAMES:
            path = qc_dir / "heatmap" / "B1" / plate / f"{plate}_{name}.png"
            assert Image.open(path).size in {(900, 600), (800, 700)}
    assert sorted(p.name for p in (qc_dir / "heatmap" / "B1" / "BIG").iterdir()) == ["BIG_cell_count.png"]
    assert result.replication is not None and 40 <= result.replication["percent"] <= 60
    assert not list(qc_dir.rglob("*.tmp"))
    # A re-run replaces this run's rows and keeps other plates' and batches' (per-plate runs build one table).
    extra = summary.iloc[[0]].assign(Batch_Name="A0")
    pd.concat([extra, summary]).to_csv(qc_dir / "summary" / "summary.tsv", sep="\t", index=False)
    qc.quality_control(root, "B1", ["P1"], heatmaps=False, report=False)
    again = pd.read_csv(qc_dir / "summary" / "summary.tsv", sep="\t")
    assert len(again) == 4
    assert list(again["Batch_Name"]) == ["A0", "B1", "B1", "B1"]


def test_quality_control_missing_load_data_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"load_data_csv.*load_data\.csv"):
        qc.quality_control(tmp_path, "B1", ["P9"])


def test_quality_control_without_treatment_column_skips_replication(qc_workspace, tmp_path: Path) -> None:
    original, _, _ = qc_workspace
    root = Path(shutil.copytree(original, tmp_path / "ws"))
    for name in ("P1_normalized_feature_select_batch", "P1_normalized_feature_select_negcon_batch"):
        path = root / "profiles" / "B1" / "P1" / f"{name}.csv.gz"
        pd.read_csv(path).drop(columns=["Metadata_broad_sample"]).to_csv(path, index=False)
    result = qc.quality_control(root, "B1", ["P1"], heatmaps=False)
    assert result.replication is None
    assert result.replication_note and "treatment column" in result.replication_note
    assert "Not computed: the feature-selected profiles have no treatment column" in Path(
        str(result.report_path)
    ).read_text()
    with pytest.raises(InputError, match="Metadata_broad_sample"):
        qc.quality_control(root, "B1", ["P1"], replicate_column="Metadata_broad_sample", report=False)


def test_report_is_self_contained(qc_workspace) -> None:
    root, plates, _ = qc_workspace
    text = (root / "quality_control" / "report" / "B1.html").read_text()
    assert "Granularity_1_DNA" in text and "Cells.csv is missing" in text
    assert "Percent replicating" in text
    for plate in plates:
        assert f"Plate {plate}" in text
    # Every resource is inline: no http(s) links, no external scripts, styles or fonts.
    assert not re.search(r"(?:src|href)=\"(?!data:|#)", text)
    assert "http://" not in text and "https://" not in text and "@import" not in text
    assert text.count('src="data:image/png;base64,') == 2 * 3 + 1 + 1


# --------------------------------------------------------------------------- profiles written as AnnData only


def test_read_table_reads_anndata_profiles(tmp_path: Path) -> None:
    """``.h5ad`` profiles (as ``output_format: anndata`` writes them) read back as the table written."""
    from cytoprofile import io as cpio
    from cytoprofile.recipe.provenance import write_output

    frame = qc_well_profiles("P1", make_wells(2, 3), rng=np.random.default_rng(4))
    path = str(tmp_path / "P1_augmented.h5ad")
    write_output(frame, path)
    got = cpio.read_table(path)
    assert list(got.columns) == list(frame.columns)
    pd.testing.assert_frame_equal(got, frame, check_dtype=False, check_exact=True)
    pd.testing.assert_frame_equal(got, cpio.load_profiles(path))
    with pytest.raises(InputError, match="file not found"):
        cpio.read_table(tmp_path / "absent.h5ad")
    (tmp_path / "broken.h5ad").write_bytes(b"not hdf5")
    with pytest.raises(InputError, match="not an AnnData file"):
        cpio.read_table(tmp_path / "broken.h5ad")


def test_quality_control_of_anndata_only_outputs_equals_csv_run(qc_workspace, tmp_path: Path) -> None:
    """A run that wrote only ``.h5ad`` profiles gets the same summary and report as one that wrote CSV."""
    from cytoprofile.recipe.provenance import write_output

    original, plates, _ = qc_workspace
    root = tmp_path / "ws"
    write_workspace(root)
    for table in sorted((root / "profiles").rglob("*.csv.gz")):
        write_output(pd.read_csv(table), str(table).replace(".csv.gz", ".h5ad"))
        table.unlink()
    result = qc.quality_control(root, "B1", plates, n_null=2000)
    assert sorted(Path(p).suffix for p in result.qc_profiles.values()) == [".h5ad"] * len(result.qc_profiles)
    summary = pd.read_csv(root / "quality_control/summary/summary.tsv", sep="\t")
    expected = pd.read_csv(original / "quality_control/summary/summary.tsv", sep="\t")
    pd.testing.assert_frame_equal(summary, expected)
    assert (root / "quality_control/heatmap/B1/P1/P1_cell_count.png").is_file()
    assert list((root / "quality_control").rglob("*.html"))
def test_missing_level_is_named_and_stale_figures_are_removed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "ws"
    write_workspace(root)  # batch-level profiles only
    qc.quality_control(root, "B1", ["P1", "P2"], n_null=100, report=False)
    heatmaps = root / "quality_control" / "heatmap" / "B1"
    assert (heatmaps / "P1" / "P1_correlation.png").exists()
    with caplog.at_level("WARNING", logger="cytoprofile.qc"):
        result = qc.quality_control(root, "B1", ["P1", "P2"], level="plate", n_null=100, report=False)
    assert not result.qc_profiles
    for plate in ("P1", "P2"):
        assert sorted(p.name for p in (heatmaps / plate).iterdir()) == [f"{plate}_cell_count.png"]
        said = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{plate}: no ")]
        assert len(said) == 1
        assert f"{plate}_normalized_feature_select_plate" in said[0]
        assert f"{plate}_normalized_feature_select_negcon_plate" in said[0]
        assert "percent-replicating" in said[0]


def test_plain_qc_says_which_profiles_it_reads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Without --level the QC picks a kind and level of profiles itself: it names the files it read."""
    root = tmp_path / "ws"
    write_workspace(root)  # batch-level profiles only
    with caplog.at_level("INFO", logger="cytoprofile.qc"):
        result = qc.quality_control(root, "B1", ["P1", "P2"], n_null=100, report=False)
    said = [r.getMessage() for r in caplog.records if "quality control reads" in r.getMessage()]
    assert len(said) == 1 and "of 2 plate(s)" in said[0], said
    assert all(os.path.basename(path) in said[0] for path in result.qc_profiles.values()), said


def test_quality_control_with_nothing_to_draw_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    write_workspace(root)
    for augmented in (root / "profiles" / "B1").glob("*/*_augmented.csv.gz"):
        augmented.unlink()
    with pytest.raises(InputError, match="no profiles to check"):
        qc.quality_control(root, "B1", ["P1", "P2"], level="plate", n_null=100)


def test_quality_control_reads_each_input_once_and_computes_the_position_effect_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from collections import Counter

    from cytoprofile import io as cpio
    from cytoprofile.qc import driver, metrics

    root = tmp_path / "ws"
    plates = write_workspace(root)
    reads: Counter[str] = Counter()
    effects: Counter[str] = Counter()
    read_table, position_effect = cpio.read_table, metrics.position_effect

    def counting_read(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        reads[str(path)] += 1
        return read_table(path, *args, **kwargs)

    def counting_effect(rows, *args, **kwargs):  # type: ignore[no-untyped-def]
        effects[str(rows["Metadata_Plate"].iloc[0])] += 1
        return position_effect(rows, *args, **kwargs)

    monkeypatch.setattr(cpio, "read_table", counting_read)
    for module in (driver, qc.figures):
        monkeypatch.setattr(module, "position_effect", counting_effect)
    qc.quality_control(root, "B1", plates, n_null=100)
    load_data = {p: n for p, n in reads.items() if "load_data" in p}
    assert load_data and set(load_data.values()) == {1}, load_data
    assert [p for p, n in reads.items() if n > 1] == [], reads
    assert effects and set(effects.values()) == {1}, effects


def test_one_plate_lacking_the_preferred_profiles_is_warned(qc_workspace, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """One plate without its negative-control normalized file: every plate falls back to the whole-plate
    kind (one kind for all panels), and the terminal says so and names the plate (it was one word in the report)."""
    original, _, _ = qc_workspace
    root = Path(shutil.copytree(original, tmp_path / "ws"))
    (root / "profiles" / "B1" / "P2" / "P2_normalized_feature_select_negcon_batch.csv.gz").unlink()
    with caplog.at_level("WARNING", logger="cytoprofile"):
        qc.quality_control(root, "B1", ["P1", "P2"], heatmaps=False, report=False, n_null=200)
    said = [r.getMessage() for r in caplog.records if "for every plate" in r.getMessage()]
    assert len(said) == 1 and "whole-plate normalized" in said[0] and "P2 lack(s)" in said[0], said
    caplog.clear()
    with caplog.at_level("WARNING", logger="cytoprofile"):
        qc.quality_control(shutil.copytree(original, tmp_path / "whole"), "B1", ["P1", "P2"], heatmaps=False,
                           report=False, n_null=200)
    assert not [r for r in caplog.records if "for every plate" in r.getMessage()]
