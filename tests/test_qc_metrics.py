"""Tests of the QC maths and figures that must not mislead: quarantine marks, one feature set,
the position effect's definition and chance level, replicate points, treatment blocks, number text."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from matplotlib.collections import PathCollection
from matplotlib.patches import Rectangle

from cytoprofile import qc
from cytoprofile.qc import batch_figures

from .qc_builders import FEATURES, make_batch_profiles, make_wells, qc_well_profiles

# --------------------------------------------------------------------------- quarantine


@pytest.mark.parametrize(
    ("sites", "expected"),
    [
        (
            [{"well": "A1", "status": "quarantined", "reason": "Cells.csv is missing"},
             {"well": "a01", "status": "quarantined", "reason": "Cells.csv is missing"},
             {"well": "A01", "status": "ok"},
             {"well": "B02", "status": "quarantined", "reason": "cut-off row"},
             {"well": "C03", "status": "ok"}],
            [("A01", 2, 3, "Cells.csv is missing"), ("B02", 1, 1, "cut-off row")],
        ),
        (
            [{"well": "AF48", "status": "quarantined", "reason": "empty"},
             {"well": None, "status": "quarantined", "reason": "no keys"},
             {"well": "AF48", "status": "quarantined", "reason": "0-byte"}],
            [("AF48", 2, 2, "empty; 0-byte"), ("?", 1, 1, "no keys")],
        ),
        ([{"well": "A01", "status": "ok"}], []),
        ([], []),
    ],
)
def test_quarantined_wells_lists_wells_that_lost_sites(sites, expected) -> None:
    table = qc.quarantined_wells({"sites": sites})
    assert list(table.columns) == ["Metadata_Well", "Sites_quarantined", "Sites_in_well", "Reasons"]
    assert [tuple(r) for r in table.itertuples(index=False, name=None)] == expected


def _hatched(fig) -> set[tuple[int, int]]:
    """(row, column) of every hatched well rectangle on the plate axes."""
    return {
        (round(p.get_y() + 0.5), round(p.get_x() + 0.5))
        for p in fig.axes[0].patches
        if isinstance(p, Rectangle) and p.get_hatch()
    }


@pytest.mark.parametrize(
    ("n_rows", "n_cols", "lost"),
    [(8, 12, {"A02": 1}), (16, 24, {"P24": 3, "B7": 1}), (32, 48, {"AF48": 2, "AA01": 1, "C03": 9})],
)
def test_cell_count_figure_marks_quarantined_wells(n_rows: int, n_cols: int, lost: dict[str, int]) -> None:
    frame = qc_well_profiles("P1", make_wells(n_rows, n_cols), rng=np.random.default_rng(n_rows))
    fig = qc.cell_count_figure(frame, plate="P1", quarantined=lost)
    assert _hatched(fig) == {qc.well_to_grid(w) for w in lost}
    assert all(len(p.get_hatch() or "") <= 1 for p in fig.axes[0].patches)  # sparse: the well's colour shows
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert f"lost sites to quarantine: {len(lost)} well" in legend
    assert "no profile for the well" in legend
    unknown = qc.cell_count_figure(frame, plate="P1")
    assert not _hatched(unknown)
    assert "no ingest report" in " ".join(t.get_text() for t in unknown.legends[0].get_texts())


@pytest.mark.parametrize("lost", [{}, {"A02": 0}, {"B03": 0, "C04": 0}])
def test_cell_count_legend_leaves_out_quarantine_when_no_well_lost_a_site(lost: dict[str, int]) -> None:
    frame = qc_well_profiles("P1", make_wells(8, 12), rng=np.random.default_rng(1))
    fig = qc.cell_count_figure(frame, plate="P1", quarantined=lost)
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "quarantine" not in legend and "no profile for the well" in legend, legend
    assert not _hatched(fig)


def test_a_fully_quarantined_well_is_hatched_though_it_has_no_profile() -> None:
    frame = qc_well_profiles("P1", [w for w in make_wells(8, 12) if w != "D05"], rng=np.random.default_rng(0))
    fig = qc.cell_count_figure(frame, plate="P1", quarantined={"D05": 4})
    assert _hatched(fig) == {(3, 4)}
    assert fig.axes[0].images[0].get_array().mask[3, 4]  # no data: grey under the hatching


def test_an_imaged_well_without_a_profile_is_drawn_as_the_title_counts_it() -> None:
    """A well imaged (in load_data) with no CellProfiler output: the title counts it 0 cells (min 0), so the map
    draws it at 0 with a cross and a legend entry, not grey as a well never imaged (they disagreed)."""
    wells = make_wells(8, 12)
    frame = qc_well_profiles("P1", [w for w in wells if w != "D05"], rng=np.random.default_rng(0))
    fig = qc.cell_count_figure(frame, plate="P1", imaged=wells, quarantined={})
    image = fig.axes[0].images[0].get_array()
    assert not image.mask[3, 4] and image[3, 4] == 0
    assert "min 0" in fig.axes[0].get_title()
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "imaged, no profile (counted as 0 cells): 1 well" in legend
    crosses = [c for c in fig.axes[0].collections if isinstance(c, PathCollection)]
    assert [tuple(o) for c in crosses for o in c.get_offsets()] == [(4, 3)]
    lost = qc.cell_count_figure(frame, plate="P1", imaged=wells, quarantined={"D05": 4})  # quarantined: hatched
    assert "imaged, no profile" not in " ".join(t.get_text() for t in lost.legends[0].get_texts())
    assert lost.axes[0].images[0].get_array().mask[3, 4]


# --------------------------------------------------------------------------- one feature set


def test_shared_features_are_common_and_finite_everywhere() -> None:
    rng = np.random.default_rng(2)
    a = qc_well_profiles("P1", make_wells(8, 12), rng=rng)
    b = qc_well_profiles("P2", make_wells(8, 12), rng=rng).drop(columns=["Cells_F3"])
    b.loc[5, "Nuclei_F1"] = np.nan
    a.loc[0, "Image_F4"] = np.inf
    shared = qc.shared_features([a, b])
    assert shared == [f for f in FEATURES if f not in {"Cells_F3", "Nuclei_F1", "Image_F4"}]
    corr = qc.correlation_figure(a, plate="P1", features=shared, source="P1_x.csv.gz")
    assert f"{len(shared)} features (the batch’s shared set) of P1_x.csv.gz" in corr.axes[0].get_title()
    alone = qc.correlation_figure(a, plate="P1", source="P1_x.csv.gz")  # the file's own features: no "shared"
    assert "shared" not in alone.axes[0].get_title() and "features of P1_x.csv.gz" in alone.axes[0].get_title()
    pos = qc.position_effect_figure(b, plate="P2", features=shared, source="P2_x.csv.gz")
    assert f"{len(shared)} features (the batch’s shared set) of P2_x.csv.gz" in " ".join(pos.axes[0].get_title().split())
    both = pd.concat([a, b], ignore_index=True)
    both["Metadata_broad_sample"] = [f"t{i % 40}" for i in range(len(both))]
    result = qc.percent_replicating(both, features=shared, n_null=500)
    assert result["n_features"] == len(shared)
    fig = qc.replication_figure(result, batch="B", source="PLATE_x.csv.gz of 2 plates")
    assert f"{len(shared)} features of PLATE_x.csv.gz of 2 plates" in fig.axes[0].get_title()


# --------------------------------------------------------------------------- position effect


def _recipe_position_effect(frame: pd.DataFrame, quantile: float = 0.95) -> pd.Series:
    """The recipe's position effect written out pair by pair (without its substring matching
    and without counting a well's correlation with itself)."""
    corr = qc.well_correlation(frame)
    out = {}
    for well in corr.index:
        row, col = qc.well_to_grid(well)
        same, null = [], []
        for other in corr.columns:
            if other == well:
                continue
            o_row, o_col = qc.well_to_grid(other)
            (same if (o_row == row or o_col == col) else null).append(corr.loc[well, other])
        threshold = np.nanpercentile(null, quantile * 100)
        out[well] = float(np.mean(np.asarray(same) > threshold)) if same and null else np.nan
    return pd.Series(out)


@pytest.mark.parametrize(("n_rows", "n_cols", "drop"), [(8, 12, 0), (8, 12, 7), (16, 24, 30)])
def test_position_effect_is_the_recipes_per_well_definition(n_rows: int, n_cols: int, drop: int) -> None:
    rng = np.random.default_rng(n_rows + drop)
    wells = make_wells(n_rows, n_cols)
    wells = [w for i, w in enumerate(wells) if i not in set(rng.choice(len(wells), drop, replace=False))]
    frame = qc_well_profiles("P1", wells, rng=rng)
    frame.loc[frame["Metadata_Well"].str.endswith("03"), FEATURES] += 2 * rng.normal(size=len(FEATURES))
    effect = qc.position_effect(frame).set_index("Metadata_Well")["Position_Effect"]
    expected = _recipe_position_effect(frame).reindex(effect.index)
    np.testing.assert_allclose(effect.to_numpy(), expected.to_numpy(), atol=1e-12)


def test_position_effect_sits_at_chance_without_artefacts() -> None:
    shares = [
        qc.position_effect(qc_well_profiles("P1", make_wells(16, 24), rng=np.random.default_rng(s)))[
            "Position_Effect"
        ].mean()
        for s in range(3)
    ]
    assert np.mean(shares) == pytest.approx(0.05, abs=0.015)


def test_position_effect_figure_marks_the_chance_level() -> None:
    frame = qc_well_profiles("P1", make_wells(8, 12), rng=np.random.default_rng(4))
    fig = qc.position_effect_figure(frame, plate="P1")
    bar = fig.axes[1]
    labels = [t.get_text() for t in bar.get_yticklabels()]
    assert "0.05 chance" in labels
    assert any(abs(line.get_ydata()[0] - 0.05) < 1e-12 for line in bar.lines)
    assert "chance level 0.05" in fig.axes[0].get_title()


# --------------------------------------------------------------------------- replicates


@pytest.mark.parametrize(("n_strong", "n_null"), [(4, 4), (20, 20), (2, 1)])
def test_replication_figure_draws_one_point_per_treatment(n_strong: int, n_null: int) -> None:
    result = qc.percent_replicating(make_batch_profiles(n_strong=n_strong, n_null=n_null), n_null=2000)
    fig = qc.replication_figure(result, batch="B1")
    points = [c for ax in fig.axes for c in ax.collections if isinstance(c, PathCollection)]
    assert sum(len(c.get_offsets()) for c in points) == result["n_treatments"] == n_strong + n_null
    from cytoprofile.qc.batch_figures import NULL_POINTS_BELOW

    bars = [p for p in fig.axes[0].patches if isinstance(p, Rectangle)]
    # the null's histogram only (a small null is a rug instead); treatments are never binned
    assert len(bars) == (80 if len(result["null"]) >= NULL_POINTS_BELOW else 0)
    assert fig.axes[1].get_ylabel() == "treatments"


def test_correlation_matrix_is_ordered_by_treatment() -> None:
    rng = np.random.default_rng(6)
    frame = qc_well_profiles("P1", make_wells(8, 12), rng=rng)
    names = ["DMSO"] * 16 + [f"t{i:02d}" for i in range(40)] * 2  # replicates 40 wells apart
    frame["Metadata_broad_sample"] = names
    for name in set(names) - {"DMSO"}:
        members = frame["Metadata_broad_sample"] == name
        frame.loc[members, FEATURES] += 3 * rng.normal(size=len(FEATURES))
    fig = qc.correlation_figure(frame, plate="P1")
    order = qc.treatment_order(frame, "Metadata_broad_sample")
    assert list(order["treatment"]) == sorted(names)
    matrix = fig.axes[0].images[0].get_array()
    expected = qc.well_correlation(frame, order=order["Metadata_Well"]).to_numpy()
    np.testing.assert_allclose(matrix, expected)
    # Each replicate pair is a 2 × 2 block on the diagonal right after the 16 DMSO wells.
    blocks = [matrix[16 + 2 * k, 17 + 2 * k] for k in range(40)]
    assert min(blocks) > 0.5
    assert "ordered by Metadata_broad_sample" in fig.axes[0].get_title()
    plain = qc.correlation_figure(frame.drop(columns="Metadata_broad_sample"), plate="P1")
    np.testing.assert_allclose(plain.axes[0].images[0].get_array(), qc.well_correlation(frame).to_numpy())


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.0004, "0.0004"), (0.000123456, "0.000123"), (0.00049, "0.00049"), (1.234e-7, "1.23e-07"),
     (0.5, "0.5"), (0.1234567, "0.123"), (1234.5678, "1234.568"), (12345.0, "12,345"), (3.0, "3"),
     (-0.000251, "-0.000251"), (math.nan, ""), (math.inf, "inf"),
     (0.9995, "0.9995"), (0.99999, "0.99999"), (2.0004, "2.0004"), (-0.99996, "-0.99996")],
)
def test_format_number_keeps_significant_digits(value: float, text: str) -> None:
    assert qc.format_number(value) == text


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).filter(lambda x: not float(x).is_integer()))
def test_format_number_never_prints_a_fraction_as_a_whole_number(value: float) -> None:
    """A correlation of 0.9996 must not read as 1 (a perfect correlation)."""
    assert "." in qc.format_number(value) or "e" in qc.format_number(value)


def test_format_number_never_prints_a_bare_zero_for_a_small_number() -> None:
    for value in np.geomspace(1e-9, 0.0005, 60):
        shown = qc.format_number(value)
        assert float(shown) == pytest.approx(value, rel=5e-3), (value, shown)


def test_outlier_shares_and_set_summary_hand_computed() -> None:
    """Per-well shares of flagged cells from a plate report's cell_qc counts (rows of a well summed)."""
    from cytoprofile.qc.metrics import ANY_OUTLIER_SET, outlier_set_summary, outlier_shares

    section = {
        "cells": 70, "flagged": {"big": 5, "odd": 3}, "excluded": 7,
        "per_well": [
            {"Metadata_Plate": "P1", "Metadata_Well": "B03", "cells": 20, "big": 4, "odd": 1, "excluded": 4},
            {"Metadata_Plate": "P1", "Metadata_Well": "A1", "cells": 10, "big": 1, "odd": 0, "excluded": 1},
            {"Metadata_Plate": "P1", "Metadata_Well": "A01", "cells": 30, "big": 0, "odd": 2, "excluded": 2},
            {"Metadata_Plate": "P1", "Metadata_Well": "H12", "cells": 0, "big": 0, "odd": 0, "excluded": 0},
            {"Metadata_Plate": "P1", "Metadata_Well": "C02", "cells": 10, "big": 0, "odd": 0, "excluded": 0},
        ],
    }
    shares = outlier_shares(section)
    assert shares is not None
    assert shares["Metadata_Well"].tolist() == ["A01", "B03", "C02", "H12"]  # plate order, A1 is A01
    assert shares["cells"].tolist() == [40, 20, 10, 0]
    np.testing.assert_allclose(shares["big"], [1 / 40, 4 / 20, 0, np.nan])
    np.testing.assert_allclose(shares["odd"], [2 / 40, 1 / 20, 0, np.nan])
    np.testing.assert_allclose(shares[ANY_OUTLIER_SET], [3 / 40, 4 / 20, 0, np.nan])
    table = outlier_set_summary(section, shares).set_index("set")
    assert table.loc["big", "cells_flagged"] == 5 and table.loc["big", "share_of_cells"] == pytest.approx(5 / 70)
    assert table.loc["odd", "wells_with_flagged_cells"] == 2
    assert table.loc[ANY_OUTLIER_SET, "highest_well"] == "B03"
    assert table.loc[ANY_OUTLIER_SET, "highest_well_share"] == pytest.approx(0.2)
    assert outlier_shares({"cells": 3, "flagged": {"big": 1}, "per_well": [{"Metadata_Site": 1, "big": 1}]}) is None
    assert outlier_shares({}) is None
# --------------------------------------------------------------------------- titles fit


def _texts_outside(fig) -> list[str]:
    """Texts (titles, labels) that run past the figure's edge once drawn."""
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    out = []
    for ax in fig.axes:
        for text in (ax.title, ax._left_title, ax._right_title):
            if text.get_text():
                extent = text.get_window_extent(renderer)
                if extent.x0 < box.x0 - 1 or extent.x1 > box.x1 + 1 or extent.y1 > box.y1 + 1:
                    out.append(text.get_text())
    return out


@pytest.mark.parametrize("n_plates", [1, 3, 30])
@pytest.mark.parametrize("source", ["PLATE_normalized_feature_select_negcon_batch.csv.gz",
                                    "SQ00014812_normalized_feature_select_negcon_all_" + "x" * 40 + ".parquet"])
def test_map_figure_titles_fit_inside_the_figure(n_plates: int, source: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    rng = np.random.default_rng(n_plates)
    rows = [{"Metadata_Plate": f"PLATE{p}", "mean_average_precision": rng.uniform(), "below_corrected_p": g % 2 == 0,
             "corrected_p_value": rng.uniform()} for p in range(n_plates) for g in range(8)]
    table = pd.DataFrame(rows)
    for fig in (batch_figures.map_by_plate_figure(table, mode="activity", batch="BATCH_2026_with_a_long_name", source=source,
                                       n_features=121),
                batch_figures.map_figure(table, mode="activity", batch="BATCH_2026_with_a_long_name", threshold=0.05,
                              source=source, n_features=121)):
        FigureCanvasAgg(fig)
        fig.canvas.draw()
        assert not _texts_outside(fig)
        title = " ".join(t.get_text() for ax in fig.axes for t in (ax.title, ax._left_title))
        assert "121 features" in title
        assert source.replace(" ", "") in title.replace("\n", "").replace(" ", "")
