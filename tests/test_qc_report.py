"""Tests of the QC report and workspace run: what a scientist sees, in the HTML and in Chromium."""

from __future__ import annotations

import base64
import io
import multiprocessing
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cytoprofile import qc

from .qc_builders import (
    FEATURES,
    MAP_SETTINGS,
    make_batch_profiles,
    make_load_data,
    make_wells,
    map_workspace,
    png_stats,
    write_workspace,
)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def qc_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], qc.QualityControlResult]:
    """A workspace whose plates' negcon profiles have different features, after one QC run."""
    root = tmp_path_factory.mktemp("qcreport") / "ws"
    plates = write_workspace(root)
    path = root / "profiles" / "B1" / "P2" / "P2_normalized_feature_select_negcon_batch.csv.gz"
    pd.read_csv(path).drop(columns=["Nuclei_F0"]).to_csv(path, index=False)
    return root, plates, qc.quality_control(root, "B1", plates, n_null=2000)


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_every_correlation_panel_uses_one_feature_set(qc_run) -> None:
    root, _, result = qc_run
    n = len(FEATURES) - 1  # P2's negcon profiles lack Nuclei_F0
    assert result.n_features == n
    assert result.replication is not None and result.replication["n_features"] == n
    assert {p: os.path.basename(s) for p, s in result.qc_profiles.items()} == {
        "P1": "P1_normalized_feature_select_negcon_batch.csv.gz",
        "P2": "P2_normalized_feature_select_negcon_batch.csv.gz",
    }
    text = _text((root / "quality_control" / "report" / "B1.html").read_text())
    assert f"use the same {n} features" in text
    assert "P1_normalized_feature_select_negcon_batch.csv.gz" in text
    assert "P2_normalized_feature_select_negcon_batch.csv.gz" in text
    assert f"across the 3 plates of this report; {n} features" in text


def test_quarantined_wells_are_listed_in_the_report(qc_run) -> None:
    root, _, result = qc_run
    lost = result.quarantine["P1"]
    assert lost is not None and list(lost["Metadata_Well"]) == ["A02"]
    assert result.quarantine["P2"] is None
    html = (root / "quality_control" / "report" / "B1.html").read_text()
    p1 = html[html.index('id="plate-P1"'):html.index('id="plate-P2"')]
    assert "1 well(s) lost sites to quarantine" in _text(p1)
    assert "<td>A02</td>" in p1 and "Cells.csv is missing" in p1
    p2 = html[html.index('id="plate-P2"'):html.index('id="plate-BIG"')]
    assert "quarantined sites unknown" in _text(p2)


def test_no_lock_file_is_left_behind(qc_run) -> None:
    root, _, _ = qc_run
    assert not [p for p in (root / "quality_control").rglob("*") if "lock" in p.name]
    assert sorted(p.name for p in (root / "quality_control" / "summary").iterdir()) == ["summary.tsv"]


def _summarize(root: str, plate: str) -> None:
    qc.quality_control(root, "B1", [plate], heatmaps=False, report=False)


def test_concurrent_summary_updates_keep_every_row_and_no_lock(tmp_path: Path) -> None:
    plates = [f"P{i}" for i in range(4)]
    for plate in plates:
        folder = tmp_path / "load_data_csv" / "B1" / plate
        folder.mkdir(parents=True)
        make_load_data(plate, {"A01": 2, "A02": 3}).to_csv(folder / "load_data.csv", index=False)
    context = multiprocessing.get_context("spawn")  # forking after Polars' threads started can hang
    workers = [context.Process(target=_summarize, args=(str(tmp_path), p)) for p in plates]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(300)
        assert worker.exitcode == 0
    summary = pd.read_csv(tmp_path / "quality_control" / "summary" / "summary.tsv", sep="\t")
    assert sorted(summary["Plate_Name"]) == plates
    assert [p.name for p in (tmp_path / "quality_control" / "summary").iterdir()] == ["summary.tsv"]


def test_small_numbers_keep_significant_digits_in_the_report() -> None:
    summary = qc.update_summary(None, [{
        "Batch_Name": "B1", "Plate_Name": "P1", "Well_Count": 96, "Images_per_site": 5,
        "Sites_per_well_Median": 9, "Sites_per_well_mad": 0.000234,
    }])
    replication = {"percent": 0.04, "threshold": 0.000123, "quantile": 0.95, "n_treatments": 2500,
                   "n_replicating": 1, "n_features": 3, "replicate_column": "Metadata_broad_sample",
                   "treatments": pd.DataFrame({"t": ["a"], "n_replicates": [4], "median_correlation": [0.0002],
                                               "replicating": [True]}),
                   "null": np.random.default_rng(0).normal(0, 0.0001, 100)}
    html = qc.render_report(batch="B1", summary=summary, figures={}, ingest_reports={"P1": None},
                            replication=replication)
    text = _text(html)
    assert "1 plate." in text and "1 plates" not in text
    assert "0.000234" in text and "0.0002" in text
    assert "Percent replicating: 0.04%" in text and "percentile (0.000123)" in text
    assert not re.search(r"(?<![\d.])0\.(?!\d)", text)


# --------------------------------------------------------------------------- headless Chromium


class _Images(HTMLParser):
    """Every <img> src, every <figure>'s caption, and section ids of a rendered DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.captions: list[str] = []
        self.sections: list[str] = []
        self.figures = 0
        self._caption: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.images.append(values.get("src") or "")
        elif tag == "figure":
            self.figures += 1
        elif tag == "figcaption":
            self._caption = []
        elif tag == "section":
            self.sections.append(values.get("id") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "figcaption" and self._caption is not None:
            self.captions.append("".join(self._caption).strip())
            self._caption = None

    def handle_data(self, data: str) -> None:
        if self._caption is not None:
            self._caption.append(data)


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing; CI must install Debian's chromium (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium); the report is not rendered")
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
        f"--user-data-dir={profile}", *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_report_in_headless_chromium(qc_run, tmp_path: Path) -> None:
    root, plates, _ = qc_run
    report = root / "quality_control" / "report" / "B1.html"
    dom = _chromium(["--virtual-time-budget=10000", "--dump-dom", report.as_uri()], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    parsed = _Images()
    parsed.feed(dom.stdout)
    assert parsed.sections == [f"plate-{p}" for p in plates]
    for plate in plates:
        assert f"Plate {plate}" in dom.stdout
    # No broken image: every <img> is an inline PNG that decodes, and the browser loaded each.
    assert len(parsed.images) == 2 * 3 + 1 + 1
    for src in parsed.images:
        assert src.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))
        assert image.format == "PNG" and image.size[0] > 100
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body and f'data-images-ok="{len(parsed.images)}"' in body.group(0), body
    # Legends: a caption under every figure, the quarantine legend and the shared feature set.
    assert parsed.figures == len(parsed.captions) == len(parsed.images)
    assert all(len(c) > 40 for c in parsed.captions)
    assert any("Hatched wells lost sites to quarantine" in c for c in parsed.captions)
    assert any("chance level" in c for c in parsed.captions)
    assert "Wells that lost sites to quarantine" in dom.stdout
    shot = tmp_path / "report.png"
    run = _chromium([f"--screenshot={shot}", "--window-size=1400,4000", "--hide-scrollbars", report.as_uri()],
                    tmp_path)
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    size, std, colours = png_stats(shot.read_bytes())
    assert size == (1400, 4000)
    assert std > 5 and colours > 50
    keep = os.environ.get("CYTOPROFILE_QC_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


# --- mAP panels ---

@pytest.mark.parametrize("later", [None, ["activity"], ["consistency"]])
def test_rerun_without_a_map_mode_removes_its_earlier_tables(tmp_path: Path, later: list[str] | None,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "ws"
    plates, _ = map_workspace(root)
    folder = root / "quality_control" / "map" / "B1"
    qc.quality_control(root, "B1", plates, n_null=100, heatmaps=False, report=False, map_settings=dict(MAP_SETTINGS))
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"B1_map_{m}{s}.csv" for m in ("activity", "consistency") for s in ("", "_by_plate"))
    settings = None if later is None else {**MAP_SETTINGS, "modes": later}
    with caplog.at_level("WARNING", logger="cytoprofile.qc"):
        qc.quality_control(root, "B1", plates, n_null=100, heatmaps=False, report=False, map_settings=settings)
    kept = sorted(f"B1_map_{m}{s}.csv" for m in (later or []) for s in ("", "_by_plate"))
    assert sorted(p.name for p in folder.iterdir()) == kept
    removed = [r.getMessage() for r in caplog.records if "of an earlier run" in r.getMessage()]
    assert len(removed) == 4 - len(kept), removed


def test_map_panels_equal_evaluate(tmp_path: Path) -> None:
    from cytoprofile.evaluate import mean_average_precision

    root = tmp_path / "ws"
    plates, profiles = map_workspace(root)
    result = qc.quality_control(root, "B1", plates, n_null=500, heatmaps=False, map_settings=dict(MAP_SETTINGS))
    text = _text((root / "quality_control" / "report" / "B1.html").read_text())
    assert result.mean_ap is not None and result.mean_ap["n_features"] == len(FEATURES)
    assert f"mAP of PLATE_normalized_feature_select_negcon_batch.csv.gz of 2 plates ({len(FEATURES)} features)" in text
    for mode in ("activity", "consistency"):
        options = {k: v for k, v in MAP_SETTINGS.items() if k != "modes"}
        expected = mean_average_precision(profiles, mode=mode, features=FEATURES, **options)  # type: ignore[arg-type]
        written = pd.read_csv(root / "quality_control" / "map" / "B1" / f"B1_map_{mode}.csv")
        assert len(written) == len(expected) > 1
        for column in ("mean_average_precision", "p_value", "corrected_p_value"):
            np.testing.assert_allclose(written[column], expected[column], rtol=1e-9, err_msg=column)
        assert written["below_corrected_p"].tolist() == expected["below_corrected_p"].tolist()
        share = expected.attrs["fraction_retrieved"]
        n_retrieved = int(expected["below_corrected_p"].sum())
        assert f"Retrieved ({mode}): {qc.format_number(share * 100, decimals=1)}%" in text
        assert f"({n_retrieved} of {len(expected)} groups" in text
        assert f"Table: quality_control/map/B1/B1_map_{mode}.csv" in text
    activity = mean_average_precision(profiles, mode="activity", features=FEATURES,
                                      **{k: v for k, v in MAP_SETTINGS.items() if k != "modes"})  # type: ignore[arg-type]
    assert 0 < activity.attrs["fraction_retrieved"] < 1  # strong treatments retrieved, null ones not
    assert 'alt="mAP (activity) for batch B1"' in (root / "quality_control" / "report" / "B1.html").read_text()


def test_no_map_panel_unless_asked(qc_run) -> None:
    root, _, result = qc_run
    assert result.mean_ap is None
    assert "Mean average precision" not in (root / "quality_control" / "report" / "B1.html").read_text()
    assert not (root / "quality_control" / "map").exists()


def test_map_by_plate_equals_evaluate_on_each_plate(tmp_path: Path) -> None:
    from cytoprofile.evaluate import mean_average_precision

    root = tmp_path / "ws"
    plates, profiles = map_workspace(root)
    result = qc.quality_control(root, "B1", plates, n_null=500, heatmaps=False, map_settings=dict(MAP_SETTINGS))
    html = (root / "quality_control" / "report" / "B1.html").read_text()
    text = _text(html)
    options = {k: v for k, v in MAP_SETTINGS.items() if k != "modes"}
    assert result.mean_ap is not None
    for mode in ("activity", "consistency"):
        written = pd.read_csv(root / "quality_control" / "map" / "B1" / f"B1_map_{mode}_by_plate.csv")
        assert sorted(written["Metadata_Plate"].unique()) == ["P1", "P2"]
        for plate in ("P1", "P2"):
            alone = profiles[profiles["Metadata_Plate"] == plate].reset_index(drop=True)
            expected = mean_average_precision(alone, mode=mode, features=FEATURES, **options)  # type: ignore[arg-type]
            ours = written[written["Metadata_Plate"] == plate].reset_index(drop=True)
            assert len(ours) == len(expected) > 1
            assert ours.iloc[:, 1].astype(str).tolist() == expected.iloc[:, 0].astype(str).tolist()
            for column in ("mean_average_precision", "p_value", "corrected_p_value"):
                np.testing.assert_allclose(ours[column], expected[column], rtol=1e-9, err_msg=f"{mode} {plate} {column}")
            assert ours["below_corrected_p"].tolist() == expected["below_corrected_p"].tolist()
            # the report's per-plate row: groups, mean mAP, retrieved, share
            row = (f"{plate} {len(expected)} {qc.format_number(float(expected['mean_average_precision'].mean()))} "
                   f"{int(expected['below_corrected_p'].sum())} {qc.format_number(expected.attrs['fraction_retrieved'])}")
            assert row in text, row
        assert f'alt="mAP ({mode}) by plate for batch B1"' in html
        assert f"Table: quality_control/map/B1/B1_map_{mode}_by_plate.csv" in text
    # one row per plate and group, not the batch's table repeated: a group's mAP on one plate is its own
    batch = pd.read_csv(root / "quality_control" / "map" / "B1" / "B1_map_activity.csv")
    by_plate = pd.read_csv(root / "quality_control" / "map" / "B1" / "B1_map_activity_by_plate.csv")
    assert len(by_plate) == 2 * len(batch)
    p1 = by_plate[by_plate["Metadata_Plate"] == "P1"].merge(batch, on="Metadata_broad_sample", suffixes=("", "_batch"))
    assert not np.allclose(p1["mean_average_precision"], p1["mean_average_precision_batch"])


def test_map_by_plate_names_the_plates_it_cannot_score() -> None:
    from .qc_builders import make_batch_profiles

    profiles = make_batch_profiles()
    lone = profiles[profiles["Metadata_Plate"] == "P2"].drop_duplicates("Metadata_broad_sample").assign(Metadata_Plate="P3")
    no_controls = profiles[(profiles["Metadata_Plate"] == "P2") & (profiles["Metadata_control_type"] != "negcon")]
    frame = pd.concat([profiles, lone, no_controls.assign(Metadata_Plate="P4")], ignore_index=True)
    frame = frame.dropna(subset=["Metadata_broad_sample"]).reset_index(drop=True)
    options = {k: v for k, v in MAP_SETTINGS.items() if k not in ("modes", "annotation_column")}
    tables = qc.metrics.map_by_plate(frame, features=FEATURES, modes=["activity"], **options)
    table = tables["activity"]
    assert sorted(table["Metadata_Plate"].unique()) == ["P1", "P2"]
    not_scored = table.attrs["not_scored"]
    assert sorted(not_scored) == ["P3", "P4"]
    assert "replicate" in not_scored["P3"] and "negative controls" in not_scored["P4"], not_scored
    summary = qc.metrics.plate_map_summary(table)
    assert summary["n_groups"].tolist() == table.groupby("Metadata_Plate").size().tolist()
    html = qc.render_report(batch="B1", summary=qc.update_summary(None, []), figures={}, ingest_reports={},
                            replication=None, notes={}, replication_note="none",
                            mean_ap={"tables": {"activity": table[table["Metadata_Plate"] == "P1"].iloc[:, 1:]},
                                     "by_plate": tables, "source": "x.parquet", "n_features": len(FEATURES),
                                     "threshold": 0.05, "paths": {}})
    assert "Plate P3 not scored on its own: " in _text(html) and "Plate P4 not scored on its own: " in _text(html)


def test_qc_command_map_options_are_the_recipe_block(tmp_path: Path) -> None:
    from cytoprofile.cli import main
    from cytoprofile.config import MapConfig
    from cytoprofile.evaluate import mean_average_precision

    root = tmp_path / "ws"
    plates, profiles = map_workspace(root)
    assert main(["qc", str(root), "B1", *plates, "--quiet", "--map", "--map-modes", "activity", "--map-modes",
                 "consistency", "--map-annotation-column", "Metadata_moa", "--map-null-size", "2000"]) == 0
    defaults = MapConfig()
    options = {"pert_column": defaults.pert_column, "control_query": defaults.control_query,
               "neg_sameby": defaults.neg_sameby, "pos_diffby": defaults.pos_diffby, "threshold": defaults.threshold,
               "seed": defaults.seed, "annotation_column": "Metadata_moa", "null_size": 2000}
    for mode in ("activity", "consistency"):
        expected = mean_average_precision(profiles, mode=mode, features=FEATURES, **options)  # type: ignore[arg-type]
        written = pd.read_csv(root / "quality_control" / "map" / "B1" / f"B1_map_{mode}.csv")
        np.testing.assert_allclose(written["p_value"], expected["p_value"], rtol=1e-9)
        np.testing.assert_allclose(written["mean_average_precision"], expected["mean_average_precision"], rtol=1e-9)
    assert (root / "quality_control" / "map" / "B1" / "B1_map_activity_by_plate.csv").exists()


@pytest.mark.parametrize("args,needle", [
    (["--map-null-size", "100"], "--map-null-size has no effect without --map"),
    (["--map", "--map-null-size", "0"], "--map-null-size"),
    (["--map", "--map-modes", "sometimes"], "--map-modes"),
    (["--map", "--map-modes", "consistency"], "annotation_column"),
    (["--map", "--map-threshold", "2"], "--map-threshold"),
])
def test_qc_command_refuses_bad_map_options(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                            needle: str) -> None:
    from cytoprofile.cli import main

    root = tmp_path / "ws"
    plates = write_workspace(root)
    assert main(["qc", str(root), "B1", *plates, "--quiet", *args]) == 1
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err, err
    assert not (root / "quality_control").exists()


def _cell_qc_section(html: str) -> str | None:
    match = re.search(r'<h3 id="[^"]*-cell-qc">Single-cell QC</h3>(.*?)<h3>Ingest</h3>', html, re.S)
    return None if match is None else match.group(1)


def test_cell_qc_section_shows_flagged_shares_after_collate_excluded_outliers(tmp_path: Path) -> None:
    """collate --exclude-outlier-cells: the plate's section has a map per set (and any set) and the counts;
    without it the section is absent and the report is still made."""
    import json

    from cytoprofile.collate import collate_plate
    from cytoprofile.synth import synth

    ws = tmp_path / "ws"
    synth(ws, plates=["P1"], wells=96, well_subset=6, sites=2, cells=20, features=8, seed=7)
    sets = tmp_path / "sets.yml"
    sets.write_text(json.dumps({"thresholds": {"big": {"Nuclei_AreaShape_Area": 1.0},
                                               "odd": {"Nuclei_AreaShape_Eccentricity": -0.5, "Nuclei_AreaShape_FormFactor": 0.5}}}))
    result = collate_plate(ws, "BATCH1", "P1", exclude_outlier_cells=["big", "odd"], cell_qc_thresholds=str(sets))
    assert result.status == "done" and result.report is not None
    counts = result.report["cell_qc"]
    assert 0 < counts["excluded"] < counts["cells"]
    (ws / "profiles/BATCH1/P1").mkdir(parents=True)
    shutil.copy(result.outputs["profiles"], ws / "profiles/BATCH1/P1/P1.csv")
    html = Path(qc.quality_control(ws, "BATCH1", ["P1"], n_null=100).report_path or "").read_text()
    section = _cell_qc_section(html)
    assert section is not None
    text = _text(section)
    share = counts["excluded"] / counts["cells"] * 100
    assert f"{counts['cells']:,} cells; {counts['excluded']:,} ({qc.format_number(share, decimals=1)}%) flagged" in text
    assert len(re.findall(r'alt="P1 cells flagged \((any set|big|odd)\)"', section)) == 3
    by_well = {r["Metadata_Well"]: r for r in counts["per_well"]}
    top = max(r["excluded"] / r["cells"] for r in by_well.values())
    worst = by_well[sorted(w for w, r in by_well.items() if r["excluded"] / r["cells"] == top)[0]]  # wells A01..A06
    rows = {m.group(1): m.group(0) for m in re.finditer(r"<tr><td>([^<]+)</td>.*?</tr>", section)}
    assert set(rows) == {"big", "odd", "any set"}
    for name in ("big", "odd"):
        assert f'<td class="num">{counts["flagged"][name]}</td>' in rows[name]
    assert f"<td>{worst['Metadata_Well']}</td>" in rows["any set"]
    assert f"{qc.format_number(worst['excluded'] / worst['cells'] * 100, decimals=1)}%" in rows["any set"]

    plain = collate_plate(ws, "BATCH1", "P1")
    assert plain.status == "done" and "cell_qc" not in (plain.report or {})
    shutil.copy(plain.outputs["profiles"], ws / "profiles/BATCH1/P1/P1.csv")
    html = Path(qc.quality_control(ws, "BATCH1", ["P1"], n_null=100).report_path or "").read_text()
    assert _cell_qc_section(html) is None and "Single-cell QC" not in html and "Plate P1" in html


# --- grey position-effect maps say why ---


def _figure_text(fig) -> str:
    from matplotlib.text import Text

    return " ".join(" ".join(t.get_text().split()) for t in fig.findobj(Text))


@pytest.mark.parametrize("wells,expected", [
    ([f"A{c:02d}" for c in range(1, 13)], "all 12 wells are in row A"),
    ([f"{r}05" for r in "ABCDEFGH"], "all 8 wells are in column 5"),
    ([f"B{c:02d}" for c in range(1, 25)], "all 24 wells are in row B"),
    (["A01", "A02", "B01", "B02", "D07"], "not computed for 1 of 5 wells (1 well: no other well with data in its row or column)"),
    (["A01", "A02", "A03", "B01"], "not computed for 1 of 4 wells (1 well: no well shares neither its row nor its column"),
])
def test_position_effect_map_says_why_wells_have_no_value(wells: list[str], expected: str) -> None:
    from .qc_builders import qc_well_profiles

    profiles = qc_well_profiles("R1", wells, rng=np.random.default_rng(3))
    effect = qc.position_effect(profiles, features=FEATURES)
    missing = set(effect.loc[effect["Position_Effect"].isna(), "Metadata_Well"])
    assert set(effect.attrs["why_missing"]) == missing and missing
    note = qc.position_effect_note(effect)
    assert note is not None and expected in note, note
    text = _figure_text(qc.position_effect_figure(profiles, plate="R1", features=FEATURES))
    assert expected in text, text
    if len(missing) == len(wells):  # nothing to see on the map: the reason is written across it
        assert f"Position effect {note}." in text
    full = qc.metrics.position_effect(qc_well_profiles("R2", make_wells(8, 12), rng=np.random.default_rng(3)),
                                      features=FEATURES)
    assert qc.position_effect_note(full) is None and full.attrs["why_missing"] == {}


def test_one_row_plate_report_says_why_its_position_effect_is_grey(tmp_path: Path) -> None:
    from .qc_builders import qc_well_profiles

    root = tmp_path / "ws"
    wells = [f"A{c:02d}" for c in range(1, 13)]
    folder = root / "profiles" / "B1" / "R1"
    folder.mkdir(parents=True)
    frame = qc_well_profiles("R1", wells, rng=np.random.default_rng(5))
    frame["Metadata_broad_sample"] = [f"t{i // 2}" for i in range(len(wells))]
    frame.to_csv(folder / "R1_normalized_feature_select_negcon_batch.csv.gz", index=False)
    frame.to_csv(folder / "R1_augmented.csv.gz", index=False)
    (root / "load_data_csv" / "B1" / "R1").mkdir(parents=True)
    make_load_data("R1", dict.fromkeys(wells, 2)).to_csv(root / "load_data_csv" / "B1" / "R1" / "load_data.csv", index=False)
    result = qc.quality_control(root, "B1", ["R1"], n_null=200)
    html = Path(result.report_path or "").read_text()
    parsed = _Images()
    parsed.feed(html)
    caption = next(c for c in parsed.captions if c.startswith(CAPTION_START))
    assert "Position effect not computed: all 12 wells are in row A" in " ".join(caption.split()), caption
    assert result.figure_notes["R1"]["position_effect"].startswith("Position effect not computed")


CAPTION_START = qc.report.CAPTIONS["position_effect"][:30]


# --- few mAP groups are drawn as points ---


def _map_table(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 0.2, n)
    return pd.DataFrame({"Metadata_broad_sample": [f"t{i}" for i in range(n)],
                         "mean_average_precision": rng.uniform(0, 1, n), "p_value": p,
                         "corrected_p_value": p, "below_corrected_p": p < 0.05})


@pytest.mark.parametrize("n", [1, 3, 8, 29])
def test_map_panel_draws_few_groups_one_point_each(n: int) -> None:
    from matplotlib.collections import PathCollection
    from matplotlib.patches import Rectangle

    table = _map_table(n)
    fig = qc.batch_figures.map_figure(table, mode="activity", batch="B1", threshold=0.05, source="x.csv", n_features=5)
    right = fig.axes[1]
    assert not [p for p in right.patches if isinstance(p, Rectangle)], "a histogram of a handful of values"
    points = np.concatenate([c.get_offsets()[:, 0] for c in right.collections if isinstance(c, PathCollection)])
    np.testing.assert_allclose(np.sort(points), np.sort(table["mean_average_precision"]))
    assert f"{n} group{'' if n == 1 else 's'}, one point each" in _figure_text(fig)


def test_map_panel_keeps_a_histogram_for_many_groups() -> None:
    table = _map_table(qc.batch_figures.MAP_POINTS_BELOW)
    fig = qc.batch_figures.map_figure(table, mode="activity", batch="B1", threshold=0.05, source="x.csv", n_features=5)
    heights = [p.get_height() for p in fig.axes[1].patches]
    assert len(heights) == 20 and sum(heights) == len(table)


# --- the quarantine table says what each column counts ---


def test_quarantine_table_headers_say_what_they_count() -> None:
    sites = [{"site": f"P1-B03-{i}", "well": "B03", "status": "quarantined" if i < 3 else "ok",
              "reason": "Cells.csv is missing" if i < 3 else None} for i in range(1, 5)]
    sites.append({"site": "P1-C01-1", "well": "C01", "status": "quarantined", "reason": "Image.csv is empty"})
    html = qc.render_report(batch="B1", summary=qc.update_summary(None, []), figures={},
                            ingest_reports={"P1": {"sites": sites}}, replication=None)
    section = html[html.index("<h3>Wells that lost sites to quarantine</h3>"):html.index("<h3>Ingest</h3>")]
    headers = [_text(h).strip() for h in re.findall(r"<th>(.*?)</th>", section)]
    assert headers == ["Well", "Sites quarantined (left out)", "Sites of the well (all, incl. quarantined)",
                       "Why the sites were quarantined"]
    rows = [[_text(c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", r)] for r in re.findall(r"<tr><td.*?</tr>", section)]
    assert rows == [["B03", "2", "4", "Cells.csv is missing"], ["C01", "1", "1", "Image.csv is empty"]]
    assert "Sites</th>" not in html


# --- what else a scientist could misread ---


@pytest.mark.parametrize("replicates", [2, 3])
def test_correlation_map_leaves_out_each_wells_self_correlation(replicates: int) -> None:
    from .qc_builders import qc_well_profiles

    wells = make_wells(4, 6)
    frame = qc_well_profiles("P1", wells, rng=np.random.default_rng(replicates))
    frame["Metadata_broad_sample"] = [f"t{i // replicates}" for i in range(len(wells))]
    fig = qc.correlation_figure(frame, plate="P1", features=FEATURES)
    shown = fig.axes[0].images[0].get_array()
    order = list(qc.treatment_order(frame, "Metadata_broad_sample")["Metadata_Well"])
    expected = qc.well_correlation(frame, features=FEATURES, order=order).to_numpy()
    assert np.ma.getmaskarray(shown).diagonal().all(), "a well's correlation with itself colours its block"
    off = ~np.eye(len(wells), dtype=bool)
    np.testing.assert_allclose(np.ma.filled(shown, np.nan)[off], expected[off], atol=1e-12)
    assert "a well with itself (the diagonal)" in _figure_text(fig)


def test_unknown_summary_values_read_n_a_not_blank() -> None:
    summary = qc.update_summary(None, [
        {"Batch_Name": "B1", "Plate_Name": "P1", "Well_Count": 96, "Sites_quarantined": 0, "Wells_quarantined": 0,
         "Features_selected": 12},
        {"Batch_Name": "B1", "Plate_Name": "P2", "Well_Count": 96, "Sites_quarantined": float("nan"),
         "Wells_quarantined": float("nan"), "Features_selected": float("nan")}])
    html = qc.render_report(batch="B1", summary=summary, figures={}, ingest_reports={"P1": None, "P2": None},
                            replication=None)
    table = html[html.index("<h2>Summary</h2>"):html.index("<h2>Profiles used")]
    headers = [_text(h).strip().replace(" ", "") for h in re.findall(r"<th>(.*?)</th>", table)]
    rows = {r[1]: dict(zip(headers, r, strict=True)) for r in
            ([_text(c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row)] for row in re.findall(r"<tr><td.*?</tr>", table))}
    for column in ("Sites_quarantined", "Wells_quarantined", "Features_selected"):
        assert rows["P1"][column] == ("12" if column == "Features_selected" else "0")
        assert rows["P2"][column] == "n/a"
    assert "n/a: not known for the plate" in _text(table)


def test_map_by_plate_legend_hides_no_point() -> None:
    table = pd.concat([_map_table(12, seed=s).assign(Metadata_Plate=p) for s, p in enumerate(["P1", "P2"])])
    table = table[["Metadata_Plate", *[c for c in table.columns if c != "Metadata_Plate"]]]
    fig = qc.batch_figures.map_by_plate_figure(table, mode="activity", batch="B1", source="x.csv", n_features=5)
    fig.canvas.draw()
    assert fig.axes[0].get_legend() is None and len(fig.legends) == 1
    box = fig.legends[0].get_window_extent()
    assert box.y1 <= fig.axes[0].get_window_extent().y0, "the legend overlaps the plot"


def test_cell_count_caption_says_when_quarantine_is_unknown(qc_run) -> None:
    root, _, _ = qc_run
    html = (root / "quality_control" / "report" / "B1.html").read_text()
    for plate, end, unknown in (("P1", 'id="plate-P2"', False), ("P2", 'id="plate-BIG"', True)):
        section = html[html.index(f'id="plate-{plate}"'):html.index(end)]
        parsed = _Images()
        parsed.feed(section)
        caption = " ".join(parsed.captions[0].split())
        assert caption.startswith("Cells per well") and ("no ingest report" in caption) == unknown, caption


def test_summary_file_writes_whole_numbers_without_a_decimal_point(tmp_path: Path) -> None:
    for plate, sites in (("P0", {"A01": 2, "A02": 3}), ("P1", {"A01": 2, "A02": 2})):
        folder = tmp_path / "load_data_csv" / "B1" / plate
        folder.mkdir(parents=True)
        make_load_data(plate, sites).to_csv(folder / "load_data.csv", index=False)
    qc.quality_control(str(tmp_path), "B1", ["P0", "P1"], heatmaps=False, report=False)
    lines = (tmp_path / "quality_control" / "summary" / "summary.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    rows = {line.split("\t")[1]: dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]}
    assert rows["P0"]["Sites_per_well_Median"] == "2.5"
    assert rows["P1"]["Sites_per_well_Median"] == "2"  # not "2.0" beside P0's 2.5
    assert rows["P0"]["Sites_per_well_mad"] == "0.5" and rows["P1"]["Sites_per_well_mad"] == "0"


def test_a_one_plate_report_marks_the_plates_it_did_not_check(qc_run, tmp_path: Path) -> None:
    root = tmp_path / "ws"
    shutil.copytree(qc_run[0], root)  # the module's run stays as it was for the other tests
    qc.quality_control(str(root), "B1", ["P2"], heatmaps=False)
    html = (root / "quality_control" / "report" / "B1.html").read_text()
    note = html[html.index('id="summary-earlier"'):]
    note = note[:note.index("</p>")]
    assert "earlier QC run" in note and "P1" in note and "BIG" in note and "P2" not in note
    text = _text(html)  # percent replicating says it used this report's plate, not the batch
    assert "across the 1 plate of this report, not P1, BIG of the summary;" in text or "across the 1 plate of this report, not BIG, P1 of the summary;" in text
    full = (root / "quality_control" / "summary" / "summary.tsv").read_text()
    assert all(p in full for p in ("P1", "P2", "BIG"))  # the table still keeps every plate


@pytest.mark.parametrize("singles", [0, 1, 3])
def test_treatments_with_a_single_well_are_said_not_scored(singles: int) -> None:
    profiles = make_batch_profiles(n_strong=3, n_null=3)
    treated = profiles.index[profiles["Metadata_control_type"] == "trt"]
    for i in range(singles):  # one well of a treatment of its own
        profiles.loc[treated[i], "Metadata_broad_sample"] = f"single-{i}"
    result = qc.percent_replicating(profiles, n_null=500, seed=0)
    assert result["n_single_well"] == singles
    assert result["n_treatments"] == 6 and "single-0" not in set(result["treatments"]["Metadata_broad_sample"])
    html = qc.render_report(batch="B1", summary=qc.update_summary(None, []), figures={}, ingest_reports={},
                            replication=result, notes={})
    said = f"{singles} treatment{'' if singles == 1 else 's'} with a single well"
    assert (said in _text(html)) == bool(singles)


def test_a_one_plate_report_is_titled_by_its_plate(qc_run, tmp_path: Path) -> None:
    root = tmp_path / "ws"
    shutil.copytree(qc_run[0], root)
    qc.quality_control(str(root), "B1", ["P2"], heatmaps=False)
    html = (root / "quality_control" / "report" / "B1.html").read_text()
    assert "<h1>Quality control: plate P2 (batch B1)</h1>" in html
    assert "<title>Quality control: plate P2 (batch B1)</title>" in html
    assert "for batch B1" not in html and 'alt="percent replicating for plate P2 (batch B1)"' in html


@pytest.mark.parametrize("plates,scope", [(["P2"], "Plate P2"), (["P1", "P2"], "Batch B1"), ([], "Batch B1")])
def test_batch_figures_name_what_they_cover(plates: list[str], scope: str) -> None:
    from cytoprofile.qc import batch_figures

    profiles = make_batch_profiles(n_strong=3, n_null=3)
    replication = qc.percent_replicating(profiles, n_null=200, seed=0)
    table = _map_table(8).assign(Metadata_Plate="P2")
    figs = [batch_figures.replication_figure(replication, batch="B1", plates=plates),
            batch_figures.map_figure(table, mode="activity", batch="B1", threshold=0.05, source="x.csv",
                                     n_features=5, plates=plates),
            batch_figures.map_by_plate_figure(table, mode="activity", batch="B1", source="x.csv", n_features=5,
                                              plates=plates)]
    for fig in figs:
        text = _figure_text(fig)
        assert f"{scope}:" in text and ({"Plate P2:", "Batch B1:"} - {f"{scope}:"}).pop() not in text


@pytest.mark.parametrize("shape", ["singles", "no treatment", "one treatment"])
def test_percent_replicating_with_nothing_to_score_says_why(shape: str) -> None:
    from cytoprofile.qc import batch_figures

    profiles = make_batch_profiles(n_strong=2, n_null=2)
    treated = profiles.index[profiles["Metadata_control_type"] == "trt"]
    if shape == "singles":  # every treatment a single well
        profiles.loc[treated, "Metadata_broad_sample"] = [f"single-{i}" for i in range(len(treated))]
    elif shape == "no treatment":  # every well a negative control
        profiles = profiles.loc[profiles["Metadata_control_type"] != "trt"]
    else:  # one compound on the plate: replicates, but no other treatment's wells for a null
        profiles.loc[treated, "Metadata_broad_sample"] = "only-compound"
    result = qc.percent_replicating(profiles, n_null=200, seed=0)
    assert result["n_treatments"] == (1 if shape == "one treatment" else 0)
    assert result["n_single_well"] == (len(treated) if shape == "singles" else 0)
    reason = {"singles": f"not scored: no treatment has two wells ({len(treated)} treatments with a single well)",
              "no treatment": "not scored: no treatment other than negative controls",
              "one treatment": "not scored: 1 treatment with replicates but no wells of another treatment, so no "
                               "null to compare with"}[shape]
    assert reason in _figure_text(batch_figures.replication_figure(result, batch="B1"))
    html = qc.render_report(batch="B1", summary=qc.update_summary(None, []), figures={}, ingest_reports={},
                            replication=result, notes={})
    text = _text(html)
    assert f"Percent replicating: {reason}" in text
    assert "percentile ()" not in text and "Percent replicating: n/a" not in text


@pytest.mark.parametrize("image_features", [False, True])
def test_a_well_without_cells_leaves_the_feature_set_whole(tmp_path: Path, image_features: bool) -> None:
    """One well with no cells (every compartment feature missing, as a zero-cell site's profile is) is left out
    of the panels and named; the batch's other wells keep every feature (they kept only the image features)."""
    root = tmp_path / "ws"
    plates = write_workspace(root)
    path = root / "profiles" / "B1" / "P2" / "P2_normalized_feature_select_negcon_batch.csv.gz"
    frame = pd.read_csv(path)
    if image_features:
        frame["Image_Granularity_1_DNA"] = np.random.default_rng(0).normal(size=len(frame))
        for p in ("P1", "BIG"):
            other = root / "profiles" / "B1" / p / f"{p}_normalized_feature_select_negcon_batch.csv.gz"
            if other.exists():
                o = pd.read_csv(other)
                o.assign(Image_Granularity_1_DNA=np.random.default_rng(1).normal(size=len(o))).to_csv(other, index=False)
        frame.to_csv(path, index=False)
    whole = qc.quality_control(root, "B1", plates, n_null=500, heatmaps=False)
    compartments = [c for c in frame.columns if c.startswith(("Cells_", "Cytoplasm_", "Nuclei_"))]
    frame.loc[frame["Metadata_Well"] == "C07", compartments] = np.nan
    frame.to_csv(path, index=False)
    got = qc.quality_control(root, "B1", plates, n_null=500, heatmaps=False)
    assert got.n_features == whole.n_features and got.n_features > len(compartments) // 2
    assert any("C07" in n and "without cells" in n for n in got.notes["P2"]), got.notes["P2"]
    assert not any("without cells" in n for n in got.notes.get("P1", []))
    html = (root / "quality_control" / "report" / "B1.html").read_text()
    assert f"same {got.n_features} features" in _text(html) and "C07" in _text(html)


def test_percent_replicating_says_its_chance_level() -> None:
    """About 5% of treatments pass the 95th percentile by chance: the report says so beside the percent."""
    profiles = make_batch_profiles(n_strong=3, n_null=30)
    for quantile, chance in ((0.95, "5%"), (0.9, "10%")):
        result = qc.percent_replicating(profiles, n_null=500, seed=0, quantile=quantile)
        html = qc.render_report(batch="B1", summary=qc.update_summary(None, []), figures={}, ingest_reports={},
                                replication=result, notes={})
        assert f"chance level {chance}:" in _text(html)


@pytest.mark.parametrize("shape", ["singles", "no negcon"])
def test_map_the_profiles_cannot_support_is_said_in_the_report(tmp_path: Path, shape: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """mAP asked for on profiles with no replicate groups, or no negative controls: the report is written with
    every other panel and says why mAP is missing (the whole QC failed, exit 1, no report)."""
    root = tmp_path / "ws"
    plates, _ = map_workspace(root)
    for plate in ("P1", "P2"):
        path = root / "profiles" / "B1" / plate / f"{plate}_normalized_feature_select_negcon_batch.csv.gz"
        frame = pd.read_csv(path)
        if shape == "singles":
            frame["Metadata_broad_sample"] = [f"{plate}-only-{i}" for i in range(len(frame))]
        else:
            frame["Metadata_control_type"] = "trt"
        frame.to_csv(path, index=False)
    settings = {**MAP_SETTINGS, "modes": ["activity"]}
    with caplog.at_level("WARNING", logger="cytoprofile.qc"):
        result = qc.quality_control(root, "B1", plates, n_null=200, heatmaps=False, map_settings=settings)
    assert result.mean_ap is None and result.mean_ap_note
    import html

    text = html.unescape(_text((root / "quality_control" / "report" / "B1.html").read_text()))
    assert "Mean average precision (mAP)" in text and f"Not computed: {result.mean_ap_note}" in text
    assert "Replicate correlation" in text and result.report_path
    assert any("mAP not computed" in r.getMessage() for r in caplog.records)
