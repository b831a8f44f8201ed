"""The recipe end to end from the CLI, each step compared with pycytominer on the same inputs."""

from __future__ import annotations

import json
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cytoprofile import io
from cytoprofile.cli import main
from cytoprofile.collate import collate
from cytoprofile.config import config_template
from cytoprofile.synth import synth

from .reference import assert_profiles_equal, pycytominer_profiles

BATCHES = {"B1": ["P1", "P2"], "B2": ["P3"]}

_assert_frames = partial(assert_profiles_equal, rtol=1e-6, atol=1e-9)


def _config(ws: Path, *, float_format: str | None = None, level: str = "batch") -> Path:
    text = config_template(workspace=".", batch="B1", plates=BATCHES["B1"])
    text = text.replace('float_format: "%.5g"', f"float_format: {json.dumps(float_format)}")
    text = text.replace("level: batch", f"level: {level}")
    text = text.replace("gct: false", "gct: true")
    text += "---\nbatch: B2\nplates:\n  - name: P3\n    process: true\n  - name: P4\n    process: false\nprocess: true\n"
    path = ws / "config.yml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp("recipe")
    for i, (batch, plates) in enumerate(BATCHES.items()):
        synth(ws, batch=batch, plates=plates, wells=96, well_subset=24, sites=2, cells=12, features=24, seed=i)
        results = collate(ws, batch, plates, backend=("sqlite",))
        assert all(r.status == "done" for r in results)
    return ws


@pytest.fixture(scope="module")
def ran(workspace: Path) -> Path:
    config = _config(workspace)
    assert main(["run", str(config), "--quiet"]) == 0
    return workspace


def _plate(ws: Path, batch: str, plate: str, stem: str) -> pd.DataFrame:
    return io.read_table(ws / "profiles" / batch / plate / f"{plate}{stem}.csv.gz")


def test_outputs_have_the_recipe_names(ran: Path) -> None:
    for batch, plates in BATCHES.items():
        for plate in plates:
            folder = ran / "profiles" / batch / plate
            for stem in ("", "_augmented", "_normalized", "_normalized_negcon",
                         "_normalized_feature_select_batch", "_normalized_feature_select_negcon_batch"):
                assert (folder / f"{plate}{stem}.csv.gz").exists(), stem
                assert (folder / f"{plate}{stem}.csv.gz.provenance.json").exists()
        for tag in ("", "_negcon"):
            assert (ran / "gct" / batch / f"{batch}_normalized_feature_select{tag}_batch.gct").exists()
            assert (ran / "gct" / batch / f"{batch}_normalized_feature_select{tag}_batch.csv.gz").exists()
    # process: false is skipped
    assert not (ran / "profiles" / "B2" / "P4").exists()
    assert (ran / "quality_control" / "summary" / "summary.tsv").exists()
    assert (ran / "quality_control" / "report" / "B1.html").exists()


def test_aggregate_matches_reference(ran: Path) -> None:
    ours = _plate(ran, "B1", "P1", "")
    # the template asks for Count and Intensity (synthetic Image.csv has both, as CellProfiler's)
    ref = pycytominer_profiles(ran / "backend/B1/P1/P1.sqlite", image_features=True, categories=["Count", "Intensity"])
    _assert_frames(ours, ref, rtol=1e-9)


def test_annotate_and_normalize_match_reference(ran: Path) -> None:
    from pycytominer import annotate, normalize

    profiles = _plate(ran, "B1", "P2", "")
    platemap = pd.read_csv(ran / "metadata/platemaps/B1/platemap/PM-02.txt", sep="\t")
    platemap.columns = [c if c.startswith("Metadata_") else f"Metadata_{c}" for c in platemap.columns]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_aug = annotate(profiles=profiles, platemap=platemap, join_on=["Metadata_well_position", "Metadata_Well"])
    ours_aug = _plate(ran, "B1", "P2", "_augmented")
    _assert_frames(ours_aug, ref_aug)
    for stem, samples in (("_normalized", "all"), ("_normalized_negcon", "Metadata_control_type == 'negcon'")):
        ref = normalize(profiles=ours_aug, samples=samples, method="mad_robustize", mad_robustize_epsilon=0.0,
                        image_features=True)  # the template's image_features: true (Image_Intensity_*)
        _assert_frames(_plate(ran, "B1", "P2", stem), ref)


def test_batch_level_feature_selection_matches_reference(ran: Path) -> None:
    from pycytominer import feature_select

    frames = [_plate(ran, "B1", p, "_normalized").assign(Metadata_batch="B1") for p in BATCHES["B1"]]
    stacked = pd.concat(frames, ignore_index=True)
    # the recipe's variance_threshold is pycytominer 1.7's frequency_threshold
    ref = feature_select(stacked, operation=["frequency_threshold", "correlation_threshold", "drop_na_columns", "blocklist"],
                         image_features=True)
    for plate in BATCHES["B1"]:
        ours = _plate(ran, "B1", plate, "_normalized_feature_select_batch")
        expected = ref.loc[ref["Metadata_Plate"].astype(str) == plate].drop(columns=["Metadata_batch"]).reset_index(drop=True)
        _assert_frames(ours, expected)


_TO_NUMERIC = pd.to_numeric


def _to_numeric_ignore(values: pd.Series, errors: str = "raise") -> pd.Series:
    """pandas 3 dropped ``errors="ignore"``, which cmapPy's GCT parser still passes."""
    try:
        return _TO_NUMERIC(values)
    except (ValueError, TypeError):
        if errors == "ignore":
            return values
        raise


def test_gct_is_readable_by_cmappy(ran: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cmapPy.pandasGEXpress import parse_gct
    from cmapPy.pandasGEXpress.parse import parse

    monkeypatch.setattr(parse_gct.pd, "to_numeric", _to_numeric_ignore)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gct = parse(str(ran / "gct/B1/B1_normalized_feature_select_batch.gct"))
    stacked = io.read_table(ran / "gct/B1/B1_normalized_feature_select_batch.csv.gz")
    features = [c for c in stacked.columns if not c.startswith(("Metadata_", "Image_"))]  # GCT: no Image_ features
    assert gct.data_df.shape == (len(features), len(stacked))
    np.testing.assert_allclose(gct.data_df.loc[features[0]].to_numpy(float), stacked[features[0]].to_numpy(float), rtol=1e-6)  # cmapPy reads float32
    assert "Well" in gct.col_metadata_df.columns


def test_rerun_skips_current_steps_and_force_redoes(ran: Path, tmp_path: Path) -> None:
    from cytoprofile.pipeline import run

    config = ran / "config.yml"
    events: list[tuple[str, int, int]] = []
    again = run(config, progress=lambda *event: events.append(event))
    total = sum(len(p) for p in BATCHES.values()) + 1  # each plate, then the batch steps
    assert events[0] == ("recipe", 0, total)  # shown before the first plate is done
    assert events[-1] == ("recipe", total, total)
    assert [n for _, n, _ in events] == sorted(n for _, n, _ in events)
    assert not [r for r in again.ran if not r.startswith("quality_control")]
    assert len(again.skipped) >= 10
    forced = run(config, force=True)
    assert any(r.startswith("normalize") for r in forced.ran)
    # a changed setting re-runs that step and the ones after it
    text = config.read_text().replace("method: mad_robustize", "method: standardize", 1)
    changed = tmp_path / "changed.yml"
    changed.write_text(text.replace("workspace: \".\"", f"workspace: {json.dumps(str(ran))}"))
    result = run(changed)
    assert any(r.startswith("normalize:") for r in result.ran)
    assert not any(r.startswith("annotate") for r in result.ran)


def test_plate_level_and_float_format(workspace: Path, tmp_path: Path) -> None:
    from cytoprofile.pipeline import run

    config = _config(workspace, float_format="%.3g", level="plate")
    out = tmp_path / "out"
    run(config, root=out)
    df = io.read_table(out / "profiles/B1/P1/P1_normalized_feature_select_plate.csv.gz")
    assert len(df) == 24
    import gzip

    with gzip.open(out / "profiles/B1/P1/P1_normalized.csv.gz", "rt") as fh:
        text = fh.read().splitlines()[1]
    numbers = [float(v) for v in text.split(",") if v.replace(".", "").replace("-", "").replace("e", "").isdigit() and "." in v]
    assert numbers and all(float(f"{v:.3g}") == v for v in numbers)
    assert not all(float(f"{v:.2g}") == v for v in numbers)


def test_missing_backend_gives_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    synth(tmp_path, batch="B1", plates=["P1"], wells=96, well_subset=2, sites=1, cells=3, features=4)
    config = tmp_path / "config.yml"
    config.write_text(config_template(workspace=".", batch="B1", plates=["P1"]))
    assert main(["run", str(config)]) == 1
    err = capsys.readouterr().err
    assert "P1.sqlite" in err and "collate" in err


def test_bad_plate_map_stops_the_run_with_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    synth(tmp_path, batch="B1", plates=["P1"], wells=96, well_subset=2, sites=1, cells=3, features=4)
    collate(tmp_path, "B1", ["P1"])
    platemap = tmp_path / "metadata/platemaps/B1/platemap/PM-01.txt"
    lines = platemap.read_text().splitlines()
    platemap.write_text("\n".join([*lines, lines[1]]) + "\n")  # a duplicated well
    config = tmp_path / "config.yml"
    config.write_text(config_template(workspace=".", batch="B1", plates=["P1"]))
    assert main(["run", str(config), "-q"]) == 1
    err = capsys.readouterr().err
    assert "PM-01.txt" in err and "A01" in err
    assert not (tmp_path / "profiles/B1/P1/P1_augmented.csv.gz").exists()


def _duplicate_names(frame: pd.DataFrame) -> dict[str, str]:
    """Each feature that exactly repeats an earlier column, mapped to that column's name.

    Which of several identical columns the correlation filter keeps is decided by the
    last bit of a floating-point sum (memory layout, library versions): both keeping
    any one of them is right, so comparisons name each by its group's first member.
    """
    seen: dict[bytes, str] = {}
    out: dict[str, str] = {}
    for c in frame.columns:
        if c.startswith("Metadata_"):
            continue
        key = frame[c].to_numpy(float).tobytes()
        out[c] = seen.setdefault(key, c)
    return out


def test_level_all_selects_over_every_batch(workspace: Path, tmp_path: Path) -> None:
    from pycytominer import feature_select

    from cytoprofile.pipeline import run

    out = tmp_path / "out"
    run(_config(workspace, level="all"), root=out)
    frames = [_plate(out, b, p, "_normalized").assign(Metadata_batch=b) for b, plates in BATCHES.items() for p in plates]
    all_normalized = pd.concat(frames, ignore_index=True)
    ref = feature_select(all_normalized,
                         operation=["frequency_threshold", "correlation_threshold", "drop_na_columns", "blocklist"])
    for batch, plates in BATCHES.items():
        for plate in plates:
            ours = _plate(out, batch, plate, "_normalized_feature_select_all")
            expected = ref.loc[ref["Metadata_Plate"].astype(str) == plate].drop(columns=["Metadata_batch"]).reset_index(drop=True)
            names = _duplicate_names(all_normalized)
            ours, expected = ours.rename(columns=names), expected.rename(columns=names)
            tied = {v for k, v in names.items() if k != v}
            kept = [c for c in ours.columns if c not in tied]
            assert kept == [c for c in expected.columns if c not in tied]  # the order of the rest is kept
            assert sorted(ours.columns) == sorted(expected.columns)
            _assert_frames(ours[list(expected.columns)], expected)
        gct = io.read_table(out / "gct" / batch / f"{batch}_normalized_feature_select_all.csv.gz")
        assert set(gct["Metadata_batch"]) == {batch}


def test_consensus_command(ran: Path, tmp_path: Path) -> None:
    from pycytominer import consensus

    src = ran / "profiles/B1/P1/P1_normalized.csv.gz"
    out = tmp_path / "consensus.csv"
    assert main(["consensus", str(src), str(out), "--replicate-columns", "Metadata_broad_sample", "-q"]) == 0
    ref = consensus(io.read_table(src), replicate_columns=["Metadata_broad_sample"], operation="median")
    _assert_frames(io.read_table(out), ref)


def test_plate_map_edit_reruns_annotate(tmp_path: Path) -> None:
    from cytoprofile.pipeline import run

    synth(tmp_path, batch="B1", plates=["P1"], wells=96, well_subset=8, sites=1, cells=4, features=5)
    collate(tmp_path, "B1", ["P1"])
    config = tmp_path / "config.yml"
    config.write_text(config_template(workspace=".", batch="B1", plates=["P1"]))
    run(config)
    platemap = tmp_path / "metadata/platemaps/B1/platemap/PM-01.txt"
    platemap.write_text(platemap.read_text().replace("\ttrt", "\tnegcon"))
    again = run(config)
    assert any(r.startswith("annotate") for r in again.ran)
    augmented = _plate(tmp_path, "B1", "P1", "_augmented")
    assert set(augmented["Metadata_control_type"]) == {"negcon"}


def test_recipe_layout_with_init_and_workspace_two_levels_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cytoprofile.pipeline import run

    ws = tmp_path / "workspace"
    synth(ws, batch="B1", plates=["P1"], wells=96, well_subset=4, sites=1, cells=4, features=5)
    collate(ws, "B1", ["P1"])
    repo = ws / "software" / "repo"
    assert main(["init", str(repo)]) == 0  # empty metadata/ and load_data_csv/ must not hide the workspace's
    config = repo / "config_files" / "config.yml"
    config.write_text(config_template(batch="B1", plates=["P1"]))
    monkeypatch.chdir(repo)
    run(config)
    assert (repo / "profiles/B1/P1/P1_normalized_feature_select_negcon_batch.csv.gz").exists()
    assert (repo / "quality_control/summary/summary.tsv").exists()


def test_collate_and_recipe_per_well_tables_hold_the_same_numbers(workspace: Path, tmp_path: Path) -> None:
    """README: both per-well tables carry the same compartment features and counts, the
    recipe's rounded to 5 significant digits (the generated config's ``float_format``),
    collate's in full."""
    from cytoprofile.pipeline import run

    text = config_template(workspace=".", batch="B1", plates=BATCHES["B1"])
    assert 'float_format: "%.5g"' in text
    config = workspace / "config_generated.yml"
    config.write_text(text)
    out = tmp_path / "out"
    run(config, root=out)
    for plate in BATCHES["B1"]:
        collated = io.read_table(workspace / "backend" / "B1" / plate / f"{plate}.csv")
        recipe = io.read_table(out / "profiles" / "B1" / plate / f"{plate}.csv.gz")
        keys = ["Metadata_Plate", "Metadata_Well"]
        shared = [c for c in collated.columns if c in recipe.columns and c not in keys
                  and (c.startswith(("Cells_", "Cytoplasm_", "Nuclei_")) or "Count" in c)]
        assert sum(c.startswith("Cells_") for c in shared) >= 10 and any("Count" in c for c in shared)
        left = collated.set_index(keys)[shared].sort_index()
        right = recipe.set_index(keys)[shared].sort_index()
        assert list(left.index) == list(right.index)
        assert not left.equals(right)  # collate's are not rounded: the comparison below can fail
        rounded = left.map(lambda v: float(f"{v:.5g}") if pd.notna(v) else v)
        pd.testing.assert_frame_equal(rounded, right, check_dtype=False, rtol=0, atol=0)
