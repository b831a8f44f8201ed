"""QC cell counts: wells dropped as not in the plate map, and one count for the summary and the map's title."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cytoprofile import qc

from .qc_builders import make_load_data, make_wells, qc_well_profiles

_SHAPES = [((8, 12), ["H10", "H11", "H12"], ["B05"]), ((16, 24), ["P24"], []), ((8, 12), ["A01", "D07"], ["A02", "H12"])]


def _workspace(root: Path, shape: tuple[int, int], dropped: list[str], lost: list[str]) -> pd.DataFrame:
    """One plate annotated with ``unmatched_wells: drop``: ``dropped`` wells had cells but are
    not in the annotated profile (its sidecar names them); ``lost`` wells lost a site to quarantine."""
    wells = make_wells(*shape)
    rng = np.random.default_rng(len(wells) + len(dropped))
    counts = rng.integers(40, 120, len(wells))
    counts[[wells.index(w) for w in lost]] = 3  # what was left after quarantine
    aggregated = qc_well_profiles("P1", wells, rng=rng, counts=counts)
    annotated = aggregated.loc[~aggregated["Metadata_Well"].isin(dropped)].reset_index(drop=True)
    folder = root / "profiles" / "B1" / "P1"
    folder.mkdir(parents=True)
    aggregated.to_csv(folder / "P1.csv.gz", index=False)
    annotated.to_csv(folder / "P1_augmented.csv.gz", index=False)
    sidecar = {"step": "annotate", "settings": {"unmatched_wells": "drop"},
               "wells": {"in": len(wells), "out": len(annotated), "dropped_unmatched": dropped}}
    (folder / "P1_augmented.csv.gz.provenance.json").write_text(json.dumps(sidecar))
    ld = root / "load_data_csv" / "B1" / "P1"
    ld.mkdir(parents=True)
    with gzip.open(ld / "load_data.csv.gz", "wt") as fh:
        make_load_data("P1", dict.fromkeys(wells, 2)).to_csv(fh, index=False)
    sites = [{"site": f"P1-{w}-{s}", "well": w, "status": "quarantined" if (w in lost and s == 1) else "ok",
              "reason": "Cells.csv is missing" if w in lost and s == 1 else None} for w in wells for s in (1, 2)]
    backend = root / "backend" / "B1" / "P1"
    backend.mkdir(parents=True)
    (backend / "P1.report.json").write_text(json.dumps({"plate": "P1", "batch": "B1", "sites": sites}))
    return annotated


@pytest.mark.parametrize(("shape", "dropped", "lost"), _SHAPES)
def test_wells_not_in_platemap_are_not_wells_without_cells(
    tmp_path: Path, shape: tuple[int, int], dropped: list[str], lost: list[str]
) -> None:
    annotated = _workspace(tmp_path, shape, dropped, lost)
    result = qc.quality_control(tmp_path, "B1", ["P1"], n_null=50)
    row = result.summary.set_index("Plate_Name").loc["P1"]
    kept = annotated.loc[~annotated["Metadata_Well"].isin(lost), "Metadata_Object_Count"]
    assert row["Wells_without_cells"] == 0
    assert row["Wells_not_in_platemap"] == len(dropped)
    assert row["Cells_per_well_Min"] == kept.min() > 0
    assert row["Cells_per_well_Median"] == pytest.approx(kept.median())
    table = pd.read_csv(tmp_path / "quality_control" / "summary" / "summary.tsv", sep="\t")
    assert table.loc[0, "Wells_not_in_platemap"] == len(dropped) and table.loc[0, "Wells_without_cells"] == 0
    html = (tmp_path / "quality_control" / "report" / "B1.html").read_text()
    assert f"{len(dropped)} well(s) not in the plate map" in html
    assert all(w in html for w in dropped)


@pytest.mark.parametrize(("shape", "dropped", "lost"), _SHAPES)
def test_cell_count_map_marks_wells_not_in_platemap(
    shape: tuple[int, int], dropped: list[str], lost: list[str]
) -> None:
    wells = make_wells(*shape)
    profiles = qc_well_profiles("P1", [w for w in wells if w not in dropped], rng=np.random.default_rng(0))
    fig = qc.cell_count_figure(profiles, plate="P1", quarantined=dict.fromkeys(lost, 1), not_in_platemap=dropped)
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert f"not in the plate map (dropped): {len(dropped)} well{'s' if len(dropped) != 1 else ''}" in labels
    assert "no profile for the well" in labels
    dotted = [p for p in fig.axes[0].patches if p.get_hatch() == ".."]
    assert len(dotted) == len(dropped)


def _title_numbers(fig) -> tuple[int, float, float]:
    title = fig.axes[0].get_title()
    found = re.search(r"wells counted: (\d+).*median ([\d.]+), min ([\d.]+)", title.replace("\n", " "))
    assert found, title
    return int(found[1]), float(found[2]), float(found[3])


@pytest.mark.parametrize(("shape", "dropped", "lost"), _SHAPES)
def test_cell_count_title_and_summary_show_the_same_numbers(
    tmp_path: Path, shape: tuple[int, int], dropped: list[str], lost: list[str]
) -> None:
    annotated = _workspace(tmp_path, shape, dropped, lost)
    result = qc.quality_control(tmp_path, "B1", ["P1"], heatmaps=False, report=False, n_null=50)
    row = result.summary.set_index("Plate_Name").loc["P1"]
    report = json.loads((tmp_path / "backend" / "B1" / "P1" / "P1.report.json").read_text())
    wells = make_wells(*shape)
    fig = qc.cell_count_figure(annotated, plate="P1", quarantined=dict.fromkeys(lost, 1), imaged=wells,
                               not_in_platemap=dropped)
    n, median, least = _title_numbers(fig)
    assert (median, least) == (row["Cells_per_well_Median"], row["Cells_per_well_Min"])
    assert n == len(wells) - len(dropped) - len(lost)
    direct = qc.summarize_plate(batch="B1", plate="P1", load_data=make_load_data("P1", dict.fromkeys(wells, 2)),
                                profiles=annotated, report=report, not_in_platemap=dropped)
    assert (direct["Cells_per_well_Median"], direct["Cells_per_well_Min"]) == (median, least)


@pytest.mark.parametrize("counts", [[0, 1, 2, 3], [1, 2], [5, 6, 7]])
def test_cell_count_colour_bar_ticks_are_whole_counts(counts: list[int]) -> None:
    wells = make_wells(2, 2)[: len(counts)]
    profiles = qc_well_profiles("P1", wells, rng=np.random.default_rng(0), counts=counts)
    fig = qc.cell_count_figure(profiles, plate="P1", quarantined={})
    bar_axes = [ax for ax in fig.axes if ax is not fig.axes[0]]
    ticks = [t for t in bar_axes[0].get_yticks() if min(counts) <= t <= max(counts)]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


@pytest.mark.parametrize(("same", "others"), [(4, 0), (2, 3), (3, 5)])
def test_map_scatter_says_how_many_groups_share_a_point(same: int, others: int) -> None:
    from cytoprofile.qc.batch_figures import map_figure

    table = pd.DataFrame({
        "Metadata_pert": [f"g{i}" for i in range(same + others)],
        "mean_average_precision": [1.0] * same + list(np.linspace(0.1, 0.6, others)),
        "corrected_p_value": [0.001] * same + list(np.linspace(0.2, 0.9, others)),
    })
    table["below_corrected_p"] = table["corrected_p_value"] < 0.05
    fig = map_figure(table, mode="activity", batch="B1", threshold=0.05, source=None, n_features=10)
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert labels == [f"×{same}"], labels


def _map_scatter(maps: list[float], ps: list[float]):  # type: ignore[no-untyped-def]
    from cytoprofile.qc.batch_figures import map_figure

    table = pd.DataFrame({"Metadata_pert": [f"g{i}" for i in range(len(maps))], "mean_average_precision": maps,
                          "corrected_p_value": ps})
    table["below_corrected_p"] = table["corrected_p_value"] < 0.05
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = map_figure(table, mode="activity", batch="B1", threshold=0.05, source=None, n_features=10)
    FigureCanvasAgg(fig).draw()
    return fig


@pytest.mark.parametrize(("maps", "ps", "expected"), [
    ([1.0, 0.9987, 1.0, 0.4], [0.001, 0.001, 0.001, 0.5], ["×3"]),
    ([1.0, 0.9995, 0.2, 0.2004], [0.001, 0.00101, 0.6, 0.6], ["×2", "×2"]),
    ([0.5, 0.5001, 0.5002, 0.5003, 0.9], [0.01, 0.01, 0.01, 0.01, 0.3], ["×4"]),
])
def test_map_scatter_counts_points_that_overlap_once_drawn(maps: list[float], ps: list[float],
                                                          expected: list[str]) -> None:
    fig = _map_scatter(maps, ps)
    assert sorted(t.get_text() for t in fig.axes[0].texts) == sorted(expected)


@pytest.mark.parametrize(("at_map", "at_p"), [(1.0, 1e-4), (0.0, 1e-4), (1.0, 0.9), (0.0, 0.9)])
def test_map_scatter_overlap_label_stays_inside_the_axes(at_map: float, at_p: float) -> None:
    fig = _map_scatter([at_map, at_map, 0.5, 0.3], [at_p, at_p, 0.02, 0.2])
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    (label,) = ax.texts
    extent = label.get_window_extent(renderer)
    assert box.x0 <= extent.x0 and extent.x1 <= box.x1 and box.y0 <= extent.y0 and extent.y1 <= box.y1, (extent, box)


@pytest.mark.parametrize("top_p", [0.049, 0.01, 1e-3, 1e-6])
def test_map_scatter_threshold_line_does_not_cross_the_legend(top_p: float) -> None:
    fig = _map_scatter([0.9, 0.5, 0.2], [top_p, 0.3, 0.9])
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    (line,) = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    line_box = line.get_window_extent(renderer)
    crosses = legend.y0 <= line_box.y0 <= legend.y1 and legend.x0 < line_box.x1 and line_box.x0 < legend.x1
    assert not crosses, (legend, line_box)


@pytest.mark.parametrize("n_null", [3, 12, 29, 35, 99, 500])
def test_percent_replicating_small_null_is_drawn_one_mark_each(n_null: int) -> None:
    from cytoprofile.qc.batch_figures import NULL_POINTS_BELOW

    null = np.random.default_rng(n_null).uniform(-0.5, 0.5, n_null)
    treatments = pd.DataFrame({"median_correlation": [0.1, 0.7], "replicating": [False, True]})
    fig = qc.replication_figure({"null": null, "treatments": treatments, "threshold": float(np.quantile(null, 0.95)),
                                 "percent": 50.0, "n_replicating": 1, "n_treatments": 2, "n_features": 10}, batch="B1")
    top = fig.axes[0]
    bars = [p for p in top.patches if p.get_height() > 0]
    rug = [line for line in top.lines if line.get_marker() == "|"]
    assert NULL_POINTS_BELOW >= 100  # a few dozen pairs (35 in a small plate) are a rug, not a density
    if n_null < NULL_POINTS_BELOW:
        assert not bars and len(rug) == 1 and len(rug[0].get_xdata()) == n_null
        assert top.get_ylabel() == "null pairs"
    else:
        assert bars and not rug and top.get_ylabel() == "null density"


@pytest.mark.parametrize(("lost", "dropped"), [(["A01", "A02", "A03"], ["A01", "B05"]), (["B02"], ["B02"]),
                                               (["A01", "C03"], ["C03", "D04", "A01"])])
def test_a_well_both_quarantined_and_dropped_is_left_out_once_and_marked_both_ways(
    lost: list[str], dropped: list[str],
) -> None:
    """The title's counts add up to the plate's imaged wells, and such a well is dotted and hatched."""
    wells = make_wells(8, 12)
    profiles = qc_well_profiles("P1", [w for w in wells if w not in dropped], rng=np.random.default_rng(1))
    fig = qc.cell_count_figure(profiles, plate="P1", quarantined=dict.fromkeys(lost, 1), imaged=wells,
                               not_in_platemap=dropped)
    title = fig.axes[0].get_title().replace("\n", " ")
    n, _, _ = _title_numbers(fig)
    only_lost = len(set(lost) - set(dropped))
    assert n + only_lost + len(dropped) == len(wells), title
    said = re.search(r"\(left out: (?:(\d+) with quarantined sites)?(?:, )?(?:(\d+) not in plate map)?\)", title)
    assert said, title
    assert int(said[1] or 0) == only_lost and int(said[2] or 0) == len(dropped)
    legend = [t.get_text() for t in fig.legends[0].get_texts()] if fig.legends else []
    also = len(set(lost) & set(dropped))
    quarantine_entry = next(t for t in legend if t.startswith("lost sites to quarantine"))
    assert quarantine_entry.endswith(f"({also} also not in the plate map)") == bool(also), legend
    patches = fig.axes[0].patches
    both = set(lost) & set(dropped)
    hatched = [p for p in patches if p.get_hatch() == "/"]
    dotted = [p for p in patches if p.get_hatch() == ".."]
    assert len(hatched) == len(lost) and len(dotted) == len(dropped)
    assert patches.index(hatched[0]) > max(patches.index(p) for p in dotted) if both else True


def _sidecar(root: Path) -> Path:
    return root / "profiles" / "B1" / "P1" / "P1_augmented.csv.gz.provenance.json"


def test_without_annotates_record_of_drops_the_count_is_unknown_not_0(tmp_path: Path) -> None:
    """An annotated profile whose record does not say which wells annotate dropped: n/a, not 0 wells."""
    _workspace(tmp_path, (8, 12), [], [])
    _sidecar(tmp_path).write_text(json.dumps({"step": "annotate"}))
    result = qc.quality_control(tmp_path, "B1", ["P1"], n_null=50)
    assert pd.isna(result.summary.set_index("Plate_Name").loc["P1", "Wells_not_in_platemap"])


@pytest.mark.parametrize("record", ["[1]", '{"wells": [1]}', '{"wells": {"dropped_unmatched": 5}}',
                                    '{"wells": {"dropped_unmatched": "A01"}}', "{not json"])
def test_a_damaged_annotate_record_is_named_with_the_fix(tmp_path: Path, record: str) -> None:
    from cytoprofile.errors import InputError

    _workspace(tmp_path, (8, 12), ["H12"], [])
    _sidecar(tmp_path).write_text(record)
    with pytest.raises(InputError, match=r"P1_augmented\.csv\.gz\.provenance\.json"):
        qc.quality_control(tmp_path, "B1", ["P1"], n_null=50)


@pytest.mark.parametrize("report", ["[]", '{"sites": ["x"]}', '{"sites": 3}'])
def test_a_damaged_collate_report_is_named_with_the_fix(tmp_path: Path, report: str) -> None:
    from cytoprofile.errors import InputError

    _workspace(tmp_path, (8, 12), [], [])
    (tmp_path / "backend" / "B1" / "P1" / "P1.report.json").write_text(report)
    with pytest.raises(InputError, match=r"P1\.report\.json: not a collate report.*collate again"):
        qc.quality_control(tmp_path, "B1", ["P1"], n_null=50)
