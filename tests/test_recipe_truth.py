"""The recipe tells the truth: no feature or well lost without a word, old configs mean what they meant."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cytoprofile import io
from cytoprofile.cli import main
from cytoprofile.collate import collate
from cytoprofile.config import config_template
from cytoprofile.pipeline import run
from cytoprofile.synth import synth

from .test_config import CONFIG_2021

PLATES = ["P1", "P2"]
CANONICAL = ("Cells", "Cytoplasm", "Nuclei")
STEMS = ("_augmented", "_normalized", "_normalized_negcon", "_normalized_feature_select_batch",
         "_normalized_feature_select_negcon_batch")


def add_compartment(ws: Path, name: str, *, seed: int = 0) -> None:
    """A non-canonical object table in every site: Nuclei.csv's shape, its own values."""
    rng = np.random.default_rng(seed)
    for nuclei in sorted((ws / "analysis").rglob("Nuclei.csv")):
        df = pd.read_csv(nuclei)
        for col in df.columns:
            if col not in ("ImageNumber", "ObjectNumber") and not col.startswith(("Number_", "Children_")):
                df[col] = df[col] * rng.uniform(0.5, 1.5, len(df)) + rng.normal(0, 1, len(df))
        df.to_csv(nuclei.with_name(f"{name}.csv"), index=False)


def _workspace(ws: Path, *, speckles: bool, wells: int = 16) -> Path:
    synth(ws, batch="B1", plates=PLATES, wells=96, well_subset=wells, sites=1, cells=8, features=8, seed=3)
    compartments: tuple[str, ...] = CANONICAL
    if speckles:
        add_compartment(ws, "Speckles")
        compartments += ("Speckles",)
    results = collate(ws, "B1", PLATES, backend=("sqlite",), compartments=compartments)
    assert all(r.status == "done" for r in results), [r.message for r in results]
    return ws


def _config(ws: Path, *, compartments: str | None = None, aggregate: bool = True, extra: str = "",
            replace: dict[str, str] | None = None) -> Path:
    text = config_template(workspace=".", batch="B1", plates=PLATES).replace("gct: false", "gct: true")
    if compartments is not None:
        text = text.replace("compartments:  ", f"compartments: {compartments}  ", 1)
        text = text.replace("  - cells\n  - cytoplasm\n  - nuclei\n", "", 1)
    if not aggregate:
        head, _, tail = text.partition("\naggregate:")
        text = head + "\naggregate:" + tail.replace("perform: true", "perform: false", 1)
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new, 1)
    text = text.replace("---\nbatch:", extra + "---\nbatch:", 1) if extra else text
    path = ws / "config.yml"
    path.write_text(text)
    return path


def _plate(ws: Path, plate: str, stem: str) -> pd.DataFrame:
    return io.read_table(ws / "profiles" / "B1" / plate / f"{plate}{stem}.csv.gz")


def _sidecar(path: Path) -> dict[str, Any]:
    return dict(json.loads(Path(f"{path}.provenance.json").read_text()))


def _speckles(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith("Speckles_")]


@pytest.fixture(scope="module")
def speckled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _workspace(tmp_path_factory.mktemp("speckled"), speckles=True)


def _check_speckles_carry_through(ws: Path, root: Path) -> None:
    from pycytominer import normalize

    for plate in PLATES:
        augmented = _plate(root, plate, "_augmented")
        assert len(_speckles(augmented)) == len([c for c in augmented.columns if c.startswith("Nuclei_")])
        normalized = _plate(root, plate, "_normalized")
        assert _speckles(normalized) == _speckles(augmented)
        features = [c for c in augmented.columns if c.startswith((*CANONICAL, "Speckles", "Image"))]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = normalize(augmented, features=features, samples="all", method="mad_robustize",
                            mad_robustize_epsilon=0.0)
        for col in _speckles(augmented):
            np.testing.assert_allclose(normalized[col].to_numpy(float), ref[col].to_numpy(float), rtol=1e-4,
                                       atol=1e-9, equal_nan=True, err_msg=col)
        for stem in ("_normalized_feature_select_batch", "_normalized_feature_select_negcon_batch"):
            path = root / "profiles" / "B1" / plate / f"{plate}{stem}.csv.gz"
            selected = io.read_table(path)
            kept = _speckles(selected)
            assert kept, stem
            dropped = _sidecar(path)["features"]["dropped"]
            source = _speckles(_plate(root, plate, stem.replace("_feature_select", "").replace("_batch", "")))
            assert sorted(kept + [c for c in dropped if c.startswith("Speckles_")]) == sorted(source)
    gct = (root / "gct/B1/B1_normalized_feature_select_batch.gct").read_text().splitlines()
    stacked = io.read_table(root / "gct/B1/B1_normalized_feature_select_batch.csv.gz")
    assert _speckles(stacked) and all(any(line.startswith(f"{c}\t") for line in gct) for c in _speckles(stacked))


def test_extra_compartment_carries_through_every_step(speckled: Path, tmp_path: Path) -> None:
    """``speckles`` added to ``compartments:`` is aggregated, annotated, normalized, selected, in GCT."""
    out = tmp_path / "out"
    config = _config(speckled, compartments="cells,cytoplasm,nuclei,speckles")
    run(config, root=out)
    _check_speckles_carry_through(speckled, out)
    # the selected profiles' features, Speckles_ ones included, go into consensus profiles
    from pycytominer import consensus as reference

    from cytoprofile.consensus import consensus

    selected = io.read_table(out / "profiles/B1/P1/P1_normalized_feature_select_batch.csv.gz")
    features = [c for c in selected.columns if not c.startswith("Metadata_")]
    ours = consensus(selected, replicate_columns=["Metadata_broad_sample"], features=features)
    ref = reference(selected, replicate_columns=["Metadata_broad_sample"], features=features)
    assert _speckles(ours) == _speckles(selected) == _speckles(ref)
    np.testing.assert_allclose(ours[features].to_numpy(float), ref[features].to_numpy(float), rtol=1e-9)


def test_every_table_collate_aggregated_carries_through(speckled: Path, tmp_path: Path) -> None:
    """Profiles taken from collate's PLATE.csv keep every table it aggregated, named or not."""
    out = tmp_path / "out"
    shutil.copytree(speckled / "metadata", out / "metadata")
    config = _config(speckled, aggregate=False)
    run(config, root=out)
    _check_speckles_carry_through(speckled, out)


def test_nothing_lost_every_sidecar_accounts_for_every_feature(speckled: Path, tmp_path: Path) -> None:
    """Each step's sidecar: features in → out, and every dropped feature's operation."""
    out = tmp_path / "out"
    run(_config(speckled, compartments="[cells, cytoplasm, nuclei, speckles]"), root=out)
    sidecars = sorted(out.rglob("*.provenance.json"))
    assert any(p.name.endswith(".gct.provenance.json") for p in sidecars)
    ops = set()
    for side in sidecars:
        record = json.loads(side.read_text())
        feats = record["features"]
        assert record["pipeline"] == "profiling"
        if feats["in"] is None:
            continue
        assert feats["in"] - feats["out"] == len(feats["dropped"]), side
        assert "unexplained" not in feats["dropped"].values(), side
        ops |= set(feats["dropped"].values())
    assert {"feature_select: correlation_threshold", "feature_select: variance_threshold"} <= ops
    for plate in PLATES:
        aug = _sidecar(out / f"profiles/B1/{plate}/{plate}_augmented.csv.gz")["features"]
        assert aug["in"] == aug["out"] and not aug["dropped"]


def test_gct_outputs_get_provenance(speckled: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(_config(speckled), root=out)
    for tag in ("", "_negcon"):
        gct = out / f"gct/B1/B1_normalized_feature_select{tag}_batch.gct"
        record = _sidecar(gct)
        assert record["step"] == f"feature_select{tag}_gct" and record["inputs"]
        assert record["settings_hash"] == _sidecar(out / f"gct/B1/B1_normalized_feature_select{tag}_batch.csv.gz")["settings_hash"]
    again = run(_config(speckled), root=out)
    assert not [r for r in again.ran if "gct" in r]


def test_unknown_columns_stop_the_run_with_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws = _workspace(tmp_path, speckles=False, wells=4)
    for plate in PLATES:
        path = ws / f"backend/B1/{plate}/{plate}.csv"
        df = io.read_table(path)
        df["Speckles_Area"] = 1.0
        io.write_table(df, path)  # a per-well table from elsewhere: no report of ours vouches for it
        for ours in (path.with_name(f"{plate}.csv.generation"), path.with_name(f"{plate}.report.json")):
            ours.unlink()
    assert main(["run", str(_config(ws, aggregate=False)), "-q"]) == 1
    err = capsys.readouterr().err
    assert "Speckles_Area" in err and "compartments:" in err


def test_a_per_well_table_cut_after_collate_stops_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A per-well CSV cut after collate wrote it (its sidecar intact) is not profiled as if whole: one line, exit 1."""
    ws = _workspace(tmp_path, speckles=False, wells=4)
    path = ws / f"backend/B1/{PLATES[0]}/{PLATES[0]}.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))
    assert main(["run", str(_config(ws, aggregate=False)), "-q"]) == 1
    err = capsys.readouterr().err
    assert "changed since collate wrote it" in err and "Traceback" not in err


# --- wells missing from the plate map ---


@pytest.fixture()
def unmatched(tmp_path: Path) -> Path:
    ws = _workspace(tmp_path, speckles=False, wells=12)
    platemap = ws / "metadata/platemaps/B1/platemap/PM-01.txt"
    lines = platemap.read_text().splitlines()
    kept = [line for line in lines if not line.split("\t")[1:2] or line.split("\t")[1] not in ("A01", "A03", "A05")]
    assert len(kept) == len(lines) - 3
    platemap.write_text("\n".join(kept) + "\n")
    return ws


def test_wells_missing_from_the_plate_map_stop_run(unmatched: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(_config(unmatched)), "-q"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "A01, A03, A05" in err and "annotate.unmatched_wells: drop" in err
    assert err.count("unmatched_wells: drop") == 1, err  # the advice, once
    assert not (unmatched / "profiles/B1/P1/P1_augmented.csv.gz").exists()


def test_unmatched_wells_drop_says_how_many(unmatched: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = _config(unmatched, replace={"  unmatched_wells: error": "  unmatched_wells: drop"})
    with caplog.at_level("WARNING", logger="cytoprofile"):
        run(config)
    notes = [r.getMessage() for r in caplog.records if "unmatched_wells: drop" in r.getMessage()]
    assert len(notes) == 1 and "3 of 12 well(s) dropped" in notes[0] and "A01, A03, A05" in notes[0]
    augmented = _plate(unmatched, "P1", "_augmented")
    assert len(augmented) == 9 and not {"A01", "A03", "A05"} & set(augmented["Metadata_Well"])
    record = _sidecar(unmatched / "profiles/B1/P1/P1_augmented.csv.gz")
    assert record["wells"] == {"in": 12, "out": 9, "dropped_unmatched": ["A01", "A03", "A05"]}


# --- old configs and keys that now have their effect ---


def test_config_2021_runs_as_the_recipe_did(tmp_path: Path) -> None:
    """String compartments, ``external: FILE`` from metadata/moa, negcon flags, QC operations."""
    ws = _workspace(tmp_path, speckles=False, wells=12)
    (ws / "metadata/moa").mkdir()
    moa = pd.read_csv(ws / "metadata/external_metadata/external_metadata.tsv", sep="\t")
    moa.assign(moa_class="kinase").to_csv(ws / "metadata/moa/moa.tsv", sep="\t", index=False)
    config_2021 = CONFIG_2021.replace("moa_annotations.tsv", "moa.tsv").replace(
        "batch: 2021_01_01_Batch\nplates:\n  - name: P1\n", "batch: B1\nplates:\n  - name: P1\n  - name: P2\n")
    (ws / "config.yml").write_text(config_2021.replace("pipeline: early_analysis", "pipeline: early\nworkspace: ."))
    run(ws / "config.yml")
    for plate in PLATES:
        augmented = _plate(ws, plate, "_augmented")
        assert set(augmented["Metadata_moa_class"]) == {"kinase"} and len(augmented) == 12
        for stem in STEMS:
            assert (ws / f"profiles/B1/{plate}/{plate}{stem}.csv.gz").exists(), stem
    from pycytominer import normalize

    ref = normalize(_plate(ws, "P1", "_augmented"), samples="Metadata_control_type == 'negcon'",
                    method="mad_robustize", mad_robustize_epsilon=1e-18)
    ours = _plate(ws, "P1", "_normalized_negcon")
    np.testing.assert_allclose(ours.filter(like="Cells_").to_numpy(float), ref.filter(like="Cells_").to_numpy(float),
                               rtol=1e-4, atol=1e-9)
    assert (ws / "quality_control/summary/summary.tsv").exists()
    assert not (ws / "quality_control/heatmap").exists()


def test_options_samples_narrows_the_normalize_fit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from pycytominer import normalize

    ws = _workspace(tmp_path, speckles=False, wells=16)
    query = "Metadata_Well != 'A02'"
    config = _config(ws, replace={"  samples: all                             # pandas query: fit normalize":
                                  f'  samples: "{query}" # pandas query: fit normalize',
                                  "  min_cells: 1                             # fit only": "  min_cells: 8 # fit only"})
    with caplog.at_level("WARNING", logger="cytoprofile"):
        run(config)
    notes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("options.samples")]
    assert len(notes) == 1 and "differ from those the recipe made" in notes[0]
    augmented = _plate(ws, "P1", "_augmented")
    assert (augmented["Metadata_Object_Count"] < 8).any() and (augmented["Metadata_Object_Count"] >= 8).any()
    ref = normalize(augmented, samples=f"{query} & Metadata_Object_Count >= 8", method="mad_robustize",
                    mad_robustize_epsilon=0.0, image_features=True)
    ours = _plate(ws, "P1", "_normalized")
    features = [c for c in ref.columns if not c.startswith("Metadata_")]
    np.testing.assert_allclose(ours[features].to_numpy(float), ref[features].to_numpy(float), rtol=1e-4, atol=1e-9)
    # normalize_negcon keeps its own fit: negative controls (and min_cells) only
    negcon = normalize(augmented, samples="Metadata_control_type == 'negcon'", method="mad_robustize",
                       mad_robustize_epsilon=0.0, image_features=True)
    np.testing.assert_allclose(_plate(ws, "P1", "_normalized_negcon")[features].to_numpy(float),
                               negcon[features].to_numpy(float), rtol=1e-4, atol=1e-9)


def test_feature_select_min_cells_fits_on_those_wells(tmp_path: Path) -> None:
    from pycytominer import feature_select

    ws = _workspace(tmp_path, speckles=False, wells=16)
    replace = {"  min_cells: 1                             # select on": "  min_cells: 8 # select on"}
    run(_config(ws, replace=replace))
    frames = [_plate(ws, p, "_normalized").assign(Metadata_batch="B1") for p in PLATES]
    stacked = pd.concat(frames, ignore_index=True)
    assert (stacked["Metadata_Object_Count"] < 8).any()
    ref = feature_select(stacked, samples="Metadata_Object_Count >= 8", image_features=True,
                         operation=["frequency_threshold", "correlation_threshold", "drop_na_columns", "blocklist"])
    every_well = feature_select(stacked, image_features=True, operation=["frequency_threshold",
                                "correlation_threshold", "drop_na_columns", "blocklist"])
    assert list(every_well.columns) != list(ref.columns)  # the key changes the selection here
    ours = _plate(ws, "P1", "_normalized_feature_select_batch")
    assert list(ours.columns) == [c for c in ref.columns if c != "Metadata_batch"]
    assert len(ours) == 16


def test_summary_row_and_column_group_the_sites(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, speckles=False, wells=12)
    for plate in PLATES:
        path = ws / f"load_data_csv/B1/{plate}/load_data.csv"
        df = pd.read_csv(path)
        df = df.assign(Plate_Row=df["Metadata_Well"].str[0], Plate_Column=df["Metadata_Well"].str[1:])
        df.drop(columns=["Metadata_Well"]).to_csv(path, index=False)
    replace = {"    row: Metadata_Row ": "    row: Plate_Row ", "    column: Metadata_Col ": "    column: Plate_Column "}
    run(_config(ws, replace=replace))
    summary = pd.read_csv(ws / "quality_control/summary/summary.tsv", sep="\t")
    assert summary["Well_Count"].tolist() == [12, 12]
    bad = _config(ws, replace={"    row: Metadata_Row ": "    row: Plate_Rows "})
    assert main(["run", str(bad), "-q", "--force"]) == 1


# --- config mistakes through the CLI ---


def _cli_config(tmp_path: Path, snippet: str) -> Path:
    text = config_template(workspace=".", batch="B1", plates=["P1"])
    path = tmp_path / "config.yml"
    path.write_text(text.replace("options:                                   # how", snippet + "options: # how", 1))
    return path


def test_misspelled_block_stops_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``feature_selct:`` used to skip feature selection and exit 0."""
    path = _cli_config(tmp_path, "feature_selct:\n  perform: true\n")
    line = next(i for i, text in enumerate(path.read_text().splitlines(), start=1) if text.startswith("feature_selct"))
    assert main(["run", str(path), "-q"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert f"{path}:{line}: feature_selct: unknown key; did you mean 'feature_select'?" in err


def test_allow_unknown_keys_turns_the_error_into_one_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from cytoprofile import cli

    monkeypatch.setattr(cli.console, "width", 1000)
    path = _cli_config(tmp_path, "normalize_negcon_extra: 1\nfeature_selct:\n  perform: true\n")
    assert main(["run", str(path), "-q", "--allow-unknown-keys"]) == 1  # no workspace here: stops later
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "unknown key" in line]
    assert len(notes) == 2, err
    assert any("feature_selct: unknown key, ignored; did you mean 'feature_select'?" in n for n in notes)
    assert "warnings.warn" not in err and "Warning:" not in err and ".py:" not in err


# --- a key the schema declares is a key the code uses ---

#: Keys whose only accepted value is the recipe's behaviour: any other value is refused.
REFUSED_OTHERWISE = {
    "aggregate.object_feature": "Cells_Number_Object_Number",
    "normalize.subgroups": True,
    "normalize_negcon.subgroups": True,
    "feature_select.subgroups": True,
    "feature_select_negcon.subgroups": True,
}


def _fields(model: Any, prefix: str = "") -> dict[tuple[int, str], str]:
    """(id of the block, key) -> dotted key path, for every key of every settings block."""
    from pydantic import BaseModel

    out: dict[tuple[int, str], str] = {}
    for name in type(model).model_fields:
        out[(id(model), name)] = prefix + name
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            out |= _fields(value, f"{prefix}{name}.")
    return out


def test_every_declared_key_is_used(speckled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every step with the template's settings and record which keys the code reads."""
    from cytoprofile import config as cfg
    from cytoprofile.config import load_config
    from cytoprofile.errors import ConfigError

    out = tmp_path / "out"
    shutil.copytree(speckled / "metadata", out / "metadata")
    config = _config(speckled, replace={"    perform: false                         # join it (default: false)": "    perform: true"})
    recipe = load_config(config)
    keys = _fields(recipe.settings)
    reads: set[tuple[int, str]] = set()
    from cytoprofile.config_blocks import Block

    original = Block.__getattribute__

    def tracking(self: Any, name: str) -> Any:
        if not name.startswith("_") and name in type(self).model_fields:
            reads.add((id(self), name))
        return original(self, name)

    monkeypatch.setattr(Block, "__getattribute__", tracking)
    run(recipe, root=out)
    monkeypatch.undo()
    assert _plate(out, "P1", "_augmented")["Metadata_moa"].notna().all()  # external metadata was joined
    unused = sorted(path for key, path in keys.items() if key not in reads and path not in REFUSED_OTHERWISE)
    assert unused == [], f"declared but never used: {unused}"
    for path, value in REFUSED_OTHERWISE.items():
        block, key = path.split(".")
        text = f"pipeline: p\n{block}:\n  {key}: {json.dumps(value)}\n---\nbatch: b\nplates: [{{name: p}}]\n"
        with pytest.raises(ConfigError, match=key):
            cfg.parse_config(text)


def test_storage_timeouts_from_the_config(tmp_path: Path) -> None:
    from cytoprofile.errors import InputError

    path = _cli_config(tmp_path, "")
    text = path.read_text()
    for key, value in (("connect_timeout", "1"), ("read_timeout", "2.5"), ("retries", "0")):
        text = text.replace(f"  {key}: null ", f"  {key}: {value} ", 1)
    path.write_text(text)
    before = io.current_storage()
    io.configure_storage({"config_kwargs": {"connect_timeout": 5, "read_timeout": 15}, "anon": False})
    try:
        with pytest.raises(InputError):  # nothing to run here; the settings apply first
            run(path)
        assert io.current_storage() == {"anon": False, "config_kwargs": {
            "connect_timeout": 1.0, "read_timeout": 2.5, "retries": {"max_attempts": 0, "mode": "standard"}}}
    finally:
        io.configure_storage(before)


@pytest.mark.parametrize("image_features", [False, True])
def test_image_features_are_accounted_for(speckled: Path, tmp_path: Path, image_features: bool) -> None:
    """Image_* columns: normalized and selected with image_features, else carried or said dropped."""
    flag = "true" if image_features else "false"
    replace = {"    - Intensity\n": "    - Granularity\n"}
    config = _config(speckled, replace=replace)
    config.write_text(config.read_text().replace("image_features: true ", f"image_features: {flag} "))
    out = tmp_path / "out"
    run(config, root=out)
    image = [c for c in _plate(out, "P1", "_augmented").columns if c.startswith("Image_Granularity")]
    assert image
    assert all(c in _plate(out, "P1", "_normalized").columns for c in image)
    path = out / "profiles/B1/P1/P1_normalized_feature_select_batch.csv.gz"
    kept = [c for c in io.read_table(path).columns if c.startswith("Image_")]
    dropped = _sidecar(path)["features"]["dropped"]
    assert sorted(kept + [c for c in dropped if c.startswith("Image_")]) == sorted(image)
    if not image_features:
        assert kept == [] and all("image_features: false" in dropped[c] for c in image)
    gct = out / "gct/B1/B1_normalized_feature_select_batch.gct"
    gct_dropped = _sidecar(gct)["features"]["dropped"]
    assert sorted(gct_dropped) == sorted(kept) and all(v.startswith("write_gct") for v in gct_dropped.values())


# --- every command that infers features takes every compartment ---

EXTRA = ("Speckles", "preNuclei_Cellpose3")


def _extra_table(path: Path, *, rows: int = 12) -> list[str]:
    rng = np.random.default_rng(5)
    df = pd.DataFrame({"Metadata_Plate": "P1", "Metadata_Well": [f"A{i + 1:02d}" for i in range(rows)],
                       "Metadata_broad_sample": [f"s{i % 3}" for i in range(rows)],
                       "Metadata_control_type": ["negcon" if i % 3 == 0 else "trt" for i in range(rows)]})
    features = [f"{c}_AreaShape_Area" for c in (*CANONICAL, *EXTRA)] + ["Cells_Cellpose3_Intensity_MeanIntensity_DNA"]
    for name in features:
        df[name] = rng.normal(10, 2, rows)
    io.write_table(df, path)
    return features


def _extra_commands(src: Path, out: Path, tmp_path: Path) -> dict[str, list[str]]:
    platemap = tmp_path / "PM.txt"
    pd.DataFrame({"plate_map_name": "PM", "well_position": [f"A{i + 1:02d}" for i in range(12)],
                  "pert": "x"}).to_csv(platemap, sep="\t", index=False)
    return {
        "annotate": ["annotate", str(src), str(platemap), str(out)],
        "normalize": ["normalize", str(src), str(out)],
        "feature-select": ["feature-select", str(src), str(out), "--operations", "blocklist"],
        "consensus": ["consensus", str(src), str(out), "--replicate-columns", "Metadata_broad_sample"],
        "write-gct": ["write-gct", str(src), str(out)],
    }


@pytest.mark.parametrize("command", ["annotate", "normalize", "feature-select", "consensus", "write-gct"])
def test_every_command_carries_every_compartment_named(tmp_path: Path, command: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """``--compartments`` keeps Speckles_ and preNuclei_Cellpose3_ features; the sidecar says in → out."""
    src = tmp_path / "in.csv"
    features = _extra_table(src)
    out = tmp_path / ("out.gct" if command == "write-gct" else "out.csv")
    args = _extra_commands(src, out, tmp_path)[command]
    assert main([*args, "--compartments", ",".join((*CANONICAL, *EXTRA)), "-q"]) == 0
    if command == "write-gct":
        rows = [line.split("\t")[0] for line in out.read_text().splitlines()[3:]]
        assert [r for r in rows if r in features] == features
    else:
        assert [c for c in io.read_table(out).columns if not c.startswith("Metadata_")] == features
    record = _sidecar(out)
    assert record["features"] == {"in": len(features), "out": len(features), "dropped": {}}, record
    # left to the default compartments, the extra ones are named as left out, never silently
    if command == "annotate":
        return  # annotate carries every column whatever the compartments
    out.unlink()
    capsys.readouterr()
    assert main([*args, "-q"]) == 0
    warned = "".join(capsys.readouterr().err.split())
    extra = [f for f in features if f.startswith(EXTRA)]
    assert all(f in warned for f in extra) and "--compartments" in warned, warned  # the command line's fix
    if command == "feature-select":  # kept as they are, not selected
        assert all(f in io.read_table(out).columns for f in extra) and not _sidecar(out)["features"]["dropped"]
    else:
        assert _sidecar(out)["features"]["dropped"] == dict.fromkeys(extra, "not_a_feature")


@pytest.mark.parametrize("command", ["consensus", "write-gct"])
def test_image_columns_left_out_name_the_image_features_flag(tmp_path: Path, command: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Image_* columns a command leaves out are named with the flag that keeps them (the warning gave only
    the Python keyword for compartments, which does not keep Image columns)."""
    src = tmp_path / "in.csv"
    _extra_table(src)
    table = io.read_table(src)
    table["Image_Intensity_MeanIntensity_DNA"] = np.linspace(1, 2, len(table))
    io.write_table(table, src)
    out = tmp_path / ("out.gct" if command == "write-gct" else "out.csv")
    args = _extra_commands(src, out, tmp_path)[command]
    assert main([*args, "-q"]) == 0
    warned = " ".join(capsys.readouterr().err.split())
    assert "Image_Intensity_MeanIntensity_DNA" in warned and "--image-features" in warned, warned
    out.unlink()
    assert main([*args, "--image-features", "-q"]) == 0
    assert "Image_Intensity_MeanIntensity_DNA" not in _sidecar(out)["features"]["dropped"]


def test_template_config_runs_on_a_synth_workspace_without_a_warning(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """``make demo``'s recipe step: the template's image categories (Count, Intensity) exist in Image.csv."""
    ws = _workspace(tmp_path, speckles=False, wells=12)
    with caplog.at_level("WARNING", logger="cytoprofile"):
        run(_config(ws))
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []
    augmented = _plate(ws, "P1", "_augmented")
    assert [c for c in augmented.columns if c.startswith("Image_Intensity_")]
    assert [c for c in augmented.columns if c.startswith("Metadata_Count_")]


def _step_off(config: Path, block: str) -> Path:
    head, _, tail = config.read_text().partition(f"\n{block}:")
    config.write_text(head + f"\n{block}:" + tail.replace("perform: true", "perform: false", 1))
    return config


@pytest.mark.parametrize(("off", "reader"), [("normalize", "feature_select"), ("normalize_negcon", "feature_select_negcon"),
                                              ("annotate", "normalize")])
def test_a_step_off_needs_its_output_from_an_earlier_run(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         off: str, reader: str) -> None:
    """``normalize.perform: false`` with feature selection on: stop before any work, naming both keys."""
    ws = _workspace(tmp_path, speckles=False, wells=12)
    config = _step_off(_config(ws), off)
    assert main(["run", str(config), "-q"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert f"{reader}.perform is true but {off}.perform is false" in err and "does not exist" in err, err
    assert not (ws / "profiles").exists()
    if off != "normalize":
        return
    # made by an earlier run, the output is read as the recipe read it
    run(_config(ws))
    selected = ws / "profiles/B1/P1/P1_normalized_feature_select_batch.csv.gz"
    before = selected.read_bytes()
    run(_step_off(_config(ws), off), force=True)
    assert selected.read_bytes() == before


@pytest.mark.parametrize("fmt", ["%d", "%.0f", "%.3f", "%s", "%10.5g"])
@pytest.mark.parametrize("command", ["normalize", "feature-select", "consensus", "csv2gz"])
def test_float_formats_that_truncate_are_refused_on_the_command_line_too(tmp_path: Path, command: str, fmt: str,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """``--float-format %d`` used to write every feature as an integer, exit 0."""
    src = tmp_path / "in.csv"
    _extra_table(src)
    out = tmp_path / ("out.csv.gz" if command == "csv2gz" else "out.csv")
    assert main([command, str(src), str(out), "--float-format", fmt]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert f"float format '{fmt}' would truncate" in err and "%.5g" in err
    assert not out.exists()


# --- external metadata keys that would annotate the wrong wells or none ---

_EXTERNAL_ON = {"    perform: false                         # join it": "    perform: true                          # join it"}


@pytest.fixture(scope="module")
def annotated_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _workspace(tmp_path_factory.mktemp("external"), speckles=False, wells=12)


def _copy(ws: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    dest = tmp_path / "ws"
    shutil.copytree(ws, dest)
    return (dest, dest / "metadata/platemaps/B1/platemap/PM-01.txt",
            dest / "metadata/external_metadata/external_metadata.tsv")


def _edit_column(path: Path, column: str, edit: Any, *, rows: Any = None) -> None:
    lines = path.read_text().splitlines()
    i = lines[0].split("\t").index(column)
    out = [lines[0]]
    for n, line in enumerate(lines[1:]):
        cells = line.split("\t")
        if rows is None or n in rows:
            cells[i] = edit(cells[i])
        out.append("\t".join(cells))
    path.write_text("\n".join(out) + "\n")


@pytest.mark.parametrize(("where", "edit"), [("external", lambda k: k + " "), ("external", lambda k: " " + k),
                                             ("platemap", lambda k: k + " "), ("platemap", lambda k: "  " + k)])
def test_keys_equal_but_for_spaces_are_refused(annotated_ws: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               where: str, edit: Any) -> None:
    ws, platemap, external = _copy(annotated_ws, tmp_path)
    if where == "external":
        _edit_column(external, "broad_sample", edit)
    else:
        _edit_column(platemap, "broad_sample", edit, rows={0, 1, 2})
    assert main(["run", str(_config(ws, replace=_EXTERNAL_ON)), "-q"]) == 1
    err = capsys.readouterr().err
    assert "only when spaces are ignored" in err and "Traceback" not in err
    assert not (ws / "profiles/B1/P1/P1_augmented.csv.gz").exists()


@pytest.mark.parametrize("empty_wells", [("A01",), ("A01", "A02", "A07")])
def test_external_row_without_a_key_annotates_no_well(annotated_ws: Path, tmp_path: Path,
                                                      empty_wells: tuple[str, ...]) -> None:
    ws, platemap, external = _copy(annotated_ws, tmp_path)
    lines = platemap.read_text().splitlines()
    wells = [line.split("\t")[1] for line in lines[1:]]
    _edit_column(platemap, "broad_sample", lambda _: "", rows={wells.index(w) for w in empty_wells})
    external.write_text(external.read_text() + "\tGHOST\tghost\n")
    assert main(["run", str(_config(ws, replace=_EXTERNAL_ON)), "-q"]) == 0
    augmented = _plate(ws, "P1", "_augmented")
    assert len(augmented) == 12 and "GHOST" not in set(augmented["Metadata_pert_iname"].dropna())
    empty = augmented[augmented["Metadata_Well"].isin(empty_wells)]
    assert len(empty) == len(empty_wells) and empty["Metadata_pert_iname"].isna().all()
    assert augmented.loc[~augmented["Metadata_Well"].isin(empty_wells), "Metadata_pert_iname"].notna().all()


@pytest.mark.parametrize(("edit", "shown"), [(lambda b, m: (b + " ", m), "'P1 '"), (lambda b, m: (" " + b, m), "' P1'"),
                                             (lambda b, m: (b, m + " "), "Plate_Map_Name")])
def test_barcode_platemap_values_with_spaces_are_named(annotated_ws: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str], edit: Any, shown: str) -> None:
    ws, _, _ = _copy(annotated_ws, tmp_path)
    barcodes = ws / "metadata/platemaps/B1/barcode_platemap.csv"
    lines = barcodes.read_text().splitlines()
    out = [lines[0]]
    for line in lines[1:]:
        barcode, name = line.split(",")
        out.append(",".join(edit(barcode, name)) if barcode == "P1" else line)
    barcodes.write_text("\n".join(out) + "\n")
    assert main(["run", str(_config(ws)), "-q"]) == 1
    err = capsys.readouterr().err
    assert "has spaces around it" in err and shown in err and "Traceback" not in err
