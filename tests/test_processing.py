"""Processing steps against their references: the JUMP recipe's formulas on hand-made
inputs, scipy/statsmodels/scikit-learn/harmonypy and pycytominer."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cytoprofile import processing as pr
from cytoprofile.cli import main
from cytoprofile.errors import ConfigError, InputError
from cytoprofile.normalize import normalize
from tests.planted import planted_profiles
from tests.profiles import features_of
from tests.reference import rank_int_array

NEG = "Metadata_control_type == 'negcon'"


# ------------------------------------------------------------------ var and mad


def _var_case() -> pd.DataFrame:
    df = planted_profiles(plates=3, wells=96, features=8, seed=2)
    f = features_of(df)
    neg = df["Metadata_control_type"] == "negcon"
    p1 = df["Metadata_Plate"] == "P001"
    df.loc[neg & p1, f[0]] = 7.0                      # MAD 0 on one plate
    df.loc[neg, f[1]] = df.loc[neg, f[1]] - df.loc[neg].groupby("Metadata_Plate")[f[1]].transform("median")  # median 0
    df[f[2]] = 1e6 + df[f[2]] * 1e-3                  # |MAD/median| tiny
    df.loc[5, f[3]] = np.nan                          # NaN anywhere
    df.loc[9, f[4]] = np.inf                          # inf anywhere
    return df


def _reference_variant(df: pd.DataFrame, threshold: float = 1e-3) -> list[str]:
    kept = []
    for feat in features_of(df):
        if not np.isfinite(df[feat]).all():
            continue
        ok = True
        for _, plate in df[df["Metadata_control_type"] == "negcon"].groupby("Metadata_Plate"):
            med = np.float32(plate[feat].median())
            mad = np.float32(stats.median_abs_deviation(plate[feat], nan_policy="omit"))
            ratio = np.abs(mad / med) if med != 0 else np.float32(0)
            ok &= bool(mad != 0 and ratio > threshold)
        if ok:
            kept.append(feat)
    return kept


def test_select_variant_features_equals_definition() -> None:
    df = _var_case()
    out = pr.select_variant_features(df)
    expected = _reference_variant(df)
    assert features_of(out) == expected
    f = features_of(df)
    assert not {f[0], f[1], f[2], f[3], f[4]} & set(expected)
    assert len(out) == len(df) and list(out.columns[:7]) == list(df.columns[:7])


def test_select_variant_features_all_wells() -> None:
    df = planted_profiles(plates=2, wells=96, features=6, seed=1)
    df.loc[df["Metadata_Plate"] == "P000", features_of(df)[0]] = 3.0
    out = pr.select_variant_features(df, samples="all")
    assert features_of(out) == features_of(df)[1:]


def test_plates_without_controls_are_refused_or_dropped() -> None:
    df = planted_profiles(plates=3, wells=96, features=6, seed=3)
    df.loc[df["Metadata_Plate"] == "P002", "Metadata_control_type"] = "trt"
    with pytest.raises(InputError, match="P002.*plates_without_controls"):
        pr.select_variant_features(df)
    with pytest.raises(InputError, match="P002"):
        pr.mad_normalize(df)
    out = pr.mad_normalize(df, plates_without_controls="drop")
    assert sorted(out["Metadata_Plate"].unique()) == ["P000", "P001"] and len(out) == 192


def test_chain_report_names_a_dropped_plate_at_the_step_that_dropped_it() -> None:
    df = planted_profiles(plates=3, wells=96, features=6, seed=3)
    df.loc[df["Metadata_Plate"] == "P002", "Metadata_control_type"] = "trt"
    report: list[dict[str, object]] = []
    pr.run_chain(df, ["var", "mad", "int"], plates_without_controls="drop", report=report)
    assert [r["dropped_plates"] for r in report] == [["P002"], [], []]


def test_mad_normalize_unscaled_mad() -> None:
    df = planted_profiles(plates=3, wells=96, features=10, seed=4)
    out = pr.mad_normalize(df)
    f = features_of(df)
    for _, rows in df.groupby("Metadata_Plate"):
        neg = rows[rows["Metadata_control_type"] == "negcon"][f]
        med = neg.median().to_numpy()
        mad = stats.median_abs_deviation(neg.to_numpy(), axis=0)
        expected = (rows[f].to_numpy() - med) / mad
        np.testing.assert_allclose(out.loc[rows.index, f].to_numpy(), expected, rtol=2e-5, atol=2e-5)
        # pycytominer's mad_robustize divides by 1.4826 * MAD (+ eps)
        robust = normalize(rows, method="mad_robustize", samples=NEG)
        np.testing.assert_allclose(robust[f].to_numpy() * 1.4826, expected, rtol=1e-4, atol=1e-4)
    assert out[f].dtypes.eq(np.float32).all()


def test_mad_zero_is_refused() -> None:
    df = planted_profiles(plates=2, wells=96, features=4, seed=5)
    df.loc[df["Metadata_control_type"] == "negcon", features_of(df)[0]] = 1.0
    with pytest.raises(InputError, match="MAD 0"):
        pr.mad_normalize(df)


# ------------------------------------------------------------------ INT


def test_rank_int_by_hand() -> None:
    df = pd.DataFrame({"Metadata_id": [0, 1, 2, 3], "Cells_a": [3.0, 1.0, 2.0, 10.0]})
    out = pr.rank_int(df)
    # ranks 3, 1, 2, 4; n = 4: (r - 3/8) / (4 - 3/4 + 1)
    expected = stats.norm.ppf((np.array([3, 1, 2, 4]) - 0.375) / 4.25)
    np.testing.assert_allclose(out["Cells_a"], expected, rtol=1e-6)


def test_rank_int_negative_zero_ties_with_zero() -> None:
    df = pd.DataFrame({"Cells_a": [0.0, -0.0, 1.0]})
    expected = stats.norm.ppf((np.array([1.5, 1.5, 3.0]) - 0.375) / 3.25)
    np.testing.assert_allclose(pr.rank_int(df, ties="average")["Cells_a"], expected, rtol=1e-6)
    np.testing.assert_allclose(pr.rank_int(df)["Cells_a"], rank_int_array(np.array([0.0, -0.0, 1.0])), rtol=1e-6)


@pytest.mark.parametrize("ties", ["random", "average"])
@pytest.mark.parametrize("rows", [7, 100, 1001])
def test_rank_int_equals_recipe(ties: str, rows: int) -> None:
    rng = np.random.default_rng(rows)
    x = np.round(rng.normal(size=(rows, 5)), 1)  # ties
    df = pd.DataFrame(x, columns=[f"Nuclei_f{i}" for i in range(5)])
    out = pr.rank_int(df, ties=ties)  # type: ignore[arg-type]
    for j, col in enumerate(df.columns):
        expected = rank_int_array(x[:, j], stochastic=ties == "random")
        np.testing.assert_allclose(out[col], expected, rtol=2e-6, atol=1e-6)


def test_rank_int_missing_values_stay_missing() -> None:
    df = pd.DataFrame({"Cells_a": [3.0, np.nan, 1.0, 2.0]})
    out = pr.rank_int(df)
    assert np.isnan(out.loc[1, "Cells_a"])
    np.testing.assert_allclose(out["Cells_a"].dropna(), rank_int_array(np.array([3.0, 1.0, 2.0])), rtol=1e-6)


@pytest.mark.parametrize("rows,quantiles", [(40, 1000), (2500, 1000), (600, 50)])
@pytest.mark.parametrize("samples", ["all", NEG])
def test_inverse_normal_equals_pycytominer(rows: int, quantiles: int, samples: str) -> None:
    from pycytominer import normalize as reference

    rng = np.random.default_rng(rows)
    df = pd.DataFrame(rng.lognormal(size=(rows, 4)), columns=[f"Cells_f{i}" for i in range(4)])
    df["Cells_f1"] = np.round(df["Cells_f1"])
    df.loc[3, "Cells_f2"] = np.nan
    df.insert(0, "Metadata_control_type", np.where(np.arange(rows) % 3 == 0, "negcon", "trt"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = reference(df, method="inverse_normal", samples=samples, inverse_normal_n_quantiles=quantiles)
    ours = normalize(df, method="inverse_normal", samples=samples, inverse_normal_n_quantiles=quantiles)
    pd.testing.assert_frame_equal(ours.reset_index(drop=True), expected.reset_index(drop=True), check_dtype=False)


@pytest.mark.parametrize("quantiles", [50, 1000])
def test_normalize_command_inverse_normal_quantiles_equal_pycytominer(tmp_path: Path, quantiles: int) -> None:
    from pycytominer import normalize as reference

    rng = np.random.default_rng(quantiles)
    df = pd.DataFrame(rng.lognormal(size=(300, 3)), columns=[f"Cells_f{i}" for i in range(3)])
    df.insert(0, "Metadata_Well", [f"W{i:03d}" for i in range(300)])
    df.to_parquet(tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    assert main(["normalize", str(tmp_path / "in.parquet"), str(out), "--method", "inverse_normal",
                 "--inverse-normal-n-quantiles", str(quantiles), "--quiet"]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = reference(df, method="inverse_normal", samples="all", inverse_normal_n_quantiles=quantiles)
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected.reset_index(drop=True), check_dtype=False)
    if quantiles != 1000:  # the option has an effect
        default = reference(df, method="inverse_normal", samples="all")
        assert not np.allclose(pd.read_parquet(out)["Cells_f0"], default["Cells_f0"])


# ------------------------------------------------------------------ plate-effect corrections


def test_correct_well_position_equals_group_means() -> None:
    df = planted_profiles(plates=4, wells=96, features=6, seed=6)
    f = features_of(df)
    df.loc[7, f[2]] = np.nan
    out = pr.correct_well_position(df)
    expected = df[f] - df.groupby("Metadata_Well")[f].transform("mean")
    np.testing.assert_allclose(out[f].to_numpy(), expected.to_numpy(), rtol=1e-5, atol=1e-4)
    assert np.isnan(out.loc[7, f[2]]) and len(out) == len(df)


def test_regress_cell_count_equals_statsmodels() -> None:
    sm = pytest.importorskip("statsmodels.api")
    df = planted_profiles(plates=3, wells=96, features=6, cell_effect=3.0, seed=7)
    f = features_of(df)
    df[f[5]] = np.round(df[f[5]] / 10)  # few distinct values: left alone
    df.loc[4, "Metadata_Count_Cells"] = np.nan
    out = pr.regress_cell_count(df)
    complete = df["Metadata_Count_Cells"].notna()
    design = sm.add_constant(df.loc[complete, "Metadata_Count_Cells"].astype(float))
    for feat in f[:5]:
        resid = sm.OLS(df.loc[complete, feat], design).fit().resid
        np.testing.assert_allclose(out.loc[complete, feat], resid, rtol=1e-4, atol=1e-4)
        assert out.loc[4, feat] == pytest.approx(df.loc[4, feat], rel=1e-6)  # no residual: original kept
    np.testing.assert_allclose(out[f[5]], df[f[5]], rtol=1e-6)


def test_regress_cell_count_needs_the_column() -> None:
    df = planted_profiles(plates=1, wells=96, features=3).drop(columns="Metadata_Count_Cells")
    with pytest.raises(ConfigError, match="Metadata_Count_Cells"):
        pr.regress_cell_count(df)


def test_remove_outliers_by_hand() -> None:
    x = np.zeros((100, 3))
    x[:, 0] = np.linspace(-50, 50, 100)
    x[:1, 1] = 1000.0             # one extreme row: the 99th percentile is 10 → kept, clipped
    x[:, 2] = np.linspace(0, 300, 100)  # 99th percentile 297 > 100 → dropped
    df = pd.DataFrame(x, columns=["Cells_a", "Cells_b", "Cells_c"]).assign(Metadata_id=range(100))
    out = pr.remove_outliers(df)
    assert features_of(out) == ["Cells_a", "Cells_b"] and len(out) == 100
    assert out["Cells_b"].max() == 100.0
    np.testing.assert_allclose(out["Cells_a"], x[:, 0], rtol=1e-6)


def test_drop_na_features() -> None:
    df = pd.DataFrame({"Cells_a": [1.0, np.nan], "Cells_b": [1.0, 2.0], "Cells_c": [np.inf, 1.0]})
    assert features_of(pr.drop_na_features(df)) == ["Cells_b"]


# ------------------------------------------------------------------ projections


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.98])
def test_pca_equals_scikit_learn(fraction: float) -> None:
    from sklearn.decomposition import PCA

    df = planted_profiles(plates=2, wells=96, features=20, seed=8)
    out = pr.pca(df, variance_fraction=fraction)
    ref = PCA(n_components=fraction, svd_solver="full").fit_transform(df[features_of(df)].to_numpy())
    pcs = [c for c in out.columns if c.startswith("PC")]
    assert len(pcs) == ref.shape[1]
    np.testing.assert_allclose(out[pcs].to_numpy(), ref, rtol=1e-4, atol=1e-4)


def test_sphere_single_epsilon_is_spherize() -> None:
    df = planted_profiles(plates=2, wells=96, features=8, seed=9)
    out = pr.sphere(df, epsilon=1e-3)
    ref = normalize(df, method="spherize", samples=NEG, spherize_epsilon=1e-3)
    np.testing.assert_allclose(out[features_of(df)].to_numpy(), ref[features_of(df)].to_numpy(), rtol=1e-5, atol=1e-5)


def test_sphere_grid_chooses_best_map() -> None:
    from cytoprofile.evaluate import mode_average_precision

    df = planted_profiles(plates=3, wells=96, features=8, negcon_per_plate=24, seed=10)
    grid = [1e-5, 1.0, 1e3]
    out = pr.sphere(df, epsilon=grid)
    scores = {}
    for eps in grid:
        one = pr.sphere(df, epsilon=eps)
        parts = [mode_average_precision(one, mode=m, column="Metadata_broad_sample",
                                        neg_sameby=["Metadata_Plate"] if m == "activity" else [])
                 .groupby("Metadata_broad_sample")["average_precision"].mean().mean()
                 for m in ("activity", "distinctiveness")]
        scores[eps] = float(np.mean(parts))
    assert out.attrs["sphering"]["epsilon"] == max(scores, key=lambda e: scores[e])
    assert out.attrs["sphering"]["scores"] == pytest.approx(scores)


def test_harmony_equals_harmonypy() -> None:
    harmonypy = pytest.importorskip("harmonypy")
    df = planted_profiles(plates=4, wells=96, features=6, batch_effect=3.0, seed=11)
    out = pr.harmony(df, seed=1)
    ref = harmonypy.run_harmony(df[features_of(df)].to_numpy(), df[["Metadata_Batch"]], ["Metadata_Batch"],
                                random_state=1, verbose=False).Z_corr
    np.testing.assert_allclose(out[features_of(df)].to_numpy(), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="single value"):
        pr.harmony(df.assign(Metadata_Batch="B0"))


# ------------------------------------------------------------------ chains


@pytest.mark.parametrize("text,steps", [
    ("profiles_var_mad_int_featselect_harmony", ["var", "mad", "int", "featselect", "harmony"]),
    ("profiles", []),
    ("wellpos_cc_outlier_dropna_pca_sphering", ["wellpos", "cc", "outlier", "dropna", "pca", "sphering"]),
    (["var", "mad"], ["var", "mad"]),
])
def test_parse_chain(text: str | list[str], steps: list[str]) -> None:
    assert pr.parse_chain(text) == steps


@pytest.mark.parametrize("text", ["profiles_var_zscore", ["var", "combat"]])
def test_parse_chain_refuses_unknown_steps_by_name(text: str | list[str]) -> None:
    with pytest.raises(ConfigError, match="zscore|combat"):
        pr.parse_chain(text)


def test_run_chain_reports_each_step() -> None:
    df = planted_profiles(plates=4, wells=96, features=12, seed=12)
    report: list[dict[str, object]] = []
    out = pr.run_chain(df, "profiles_var_mad_wellpos_cc_int_outlier_featselect_pca_harmony", report=report)
    assert [r["step"] for r in report] == ["var", "mad", "wellpos", "cc", "int", "outlier", "featselect", "pca", "harmony"]
    assert all(r["rows_out"] == len(df) for r in report)
    assert [c for c in out.columns if c.startswith("Metadata_")] == [c for c in df.columns if c.startswith("Metadata_")]
    assert any(c.startswith("PC") for c in out.columns)
    step = pr.mad_normalize(pr.select_variant_features(df))
    first_two = pr.run_chain(df, ["var", "mad"])
    pd.testing.assert_frame_equal(first_two, step)


def test_corrections_raise_map_of_planted_actives() -> None:
    from cytoprofile.evaluate import mode_average_precision

    df = planted_profiles(plates=6, wells=96, features=24, plate_effect=2.0, well_effect=1.5, seed=13)

    def score(frame: pd.DataFrame) -> float:
        ap = mode_average_precision(frame, mode="activity", column="Metadata_broad_sample",
                                    neg_sameby=["Metadata_Plate"])
        return float(ap[ap["Metadata_active"]]["average_precision"].mean())

    raw = score(df)
    mad = score(pr.run_chain(df, "var_mad"))
    wellpos = score(pr.run_chain(df, "var_mad_wellpos"))
    assert raw < mad < wellpos


def test_process_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    df = planted_profiles(plates=2, wells=96, features=6, seed=14)
    src, out = tmp_path / "p.parquet", tmp_path / "o.parquet"
    df.to_parquet(src)
    assert main(["process", str(src), str(out), "--chain", "profiles_var_mad_int", "-q"]) == 0
    np.testing.assert_allclose(pd.read_parquet(out)[features_of(df)].to_numpy(),
                               pr.run_chain(df, "var_mad_int")[features_of(df)].to_numpy(), rtol=1e-6)
    assert "int: 192 → 192 rows" in capsys.readouterr().out
    assert main(["process", str(src), str(out), "--chain", "profiles_var_zscore", "-q"]) == 1
    assert main(["rank-int", str(src), str(tmp_path / "r.csv"), "--ties", "average", "-q"]) == 0


#: each step's command with options off their defaults, and the same call of its function
COMMAND_CALLS = {
    "select-variant-features": (["--threshold", "0.05"], "select_variant_features", {"threshold": 0.05}),
    "mad-normalize": (["--epsilon", "0.5"], "mad_normalize", {"epsilon": 0.5}),
    "rank-int": (["--ties", "average", "--c", "0.5"], "rank_int", {"ties": "average", "c": 0.5}),
    "correct-well-position": ([], "correct_well_position", {}),
    "regress-cell-count": (["--min-unique", "5"], "regress_cell_count", {"min_unique": 5}),
    "remove-outliers": (["--bound", "2", "--percentile", "90"], "remove_outliers", {"bound": 2.0, "percentile": 90.0}),
    "pca": (["--variance-fraction", "0.9", "--prefix", "Z"], "pca", {"variance_fraction": 0.9, "prefix": "Z"}),
    "sphere": (["--epsilon", "0.1", "--epsilon", "1", "--neg-sameby", "Metadata_Plate", "--method", "PCA"], "sphere",
               {"epsilon": [0.1, 1.0], "neg_sameby": ["Metadata_Plate"], "method": "PCA"}),
    "harmony": (["--seed", "3", "--max-iter", "2"], "harmony", {"seed": 3, "max_iter": 2}),
}


@pytest.mark.parametrize("command", sorted(COMMAND_CALLS))
def test_each_step_command_is_its_function(tmp_path: Path, command: str) -> None:
    """A step's command, given options off their defaults, writes what its function returns with them."""
    flags, function, options = COMMAND_CALLS[command]
    df = planted_profiles(plates=2, wells=96, features=6, seed=3)
    src, out = tmp_path / "p.parquet", tmp_path / "o.parquet"
    df.to_parquet(src)
    assert main([command, str(src), str(out), *flags, "-q"]) == 0
    expected = getattr(pr, function)(df, **options)
    got = pd.read_parquet(out)
    assert list(got.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True), check_dtype=False)


def test_a_comma_list_of_columns_is_split(tmp_path: Path) -> None:
    df = planted_profiles(plates=2, wells=96, features=6, seed=3)
    src, out = tmp_path / "p.parquet", tmp_path / "o.parquet"
    df.to_parquet(src)
    assert main(["sphere", str(src), str(out), "--epsilon", "1", "--neg-sameby", "Metadata_Plate,Metadata_Batch", "-q"]) == 0
    expected = pr.sphere(df, epsilon=[1.0], neg_sameby=["Metadata_Plate", "Metadata_Batch"])
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected.reset_index(drop=True), check_dtype=False)


# ------------------------------------------------------------------ the recipe key processing:

CHAIN_BATCHES = {"B1": ["P1", "P2"], "B2": ["P3"]}
JUMP_CHAIN = "profiles_var_mad_int_featselect_harmony"


def _chain_config(ws: Path, chain: str, options: str = "", name: str = "config.yml", qc_map: bool = False) -> Path:
    from cytoprofile.config import config_template

    text = config_template(workspace=".", batch="B1", plates=CHAIN_BATCHES["B1"])
    if qc_map:
        old = "    perform: false                         # [cytoprofile] compute mAP"
        assert old in text
        text = text.replace(old, old.replace("false", "true "), 1)
    text = text.replace("processing: null ", f"processing: {chain} ", 1)
    if options:
        text = text.replace("processing_options: null ", f"processing_options: {options} ", 1)
    text += "---\nbatch: B2\nplates:\n  - name: P3\n"
    path = ws / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def chain_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cytoprofile.collate import collate
    from cytoprofile.synth import synth

    ws = tmp_path_factory.mktemp("chain")
    for i, (batch, plates) in enumerate(CHAIN_BATCHES.items()):
        synth(ws, batch=batch, plates=plates, wells=96, well_subset=32, sites=1, cells=10, features=12, seed=i)
        assert all(r.status == "done" for r in collate(ws, batch, plates, backend=("sqlite",)))
    assert main(["run", str(_chain_config(ws, JUMP_CHAIN, qc_map=True)), "--quiet"]) == 0
    return ws


def _chain_file(ws: Path, steps: list[str]) -> Path:
    return ws / "profiles" / "processing" / ("_".join(["profiles", *steps]) + ".parquet")


def _stacked_profiles(ws: Path, stem: str = "_augmented") -> pd.DataFrame:
    from cytoprofile import io

    frames = []
    for batch, plates in CHAIN_BATCHES.items():
        for plate in plates:
            df = io.read_table(ws / "profiles" / batch / plate / f"{plate}{stem}.csv.gz")
            df["Metadata_Batch"] = batch
            meta = [c for c in df.columns if c.startswith("Metadata_")]
            frames.append(df[meta + [c for c in df.columns if c.startswith(("Cells_", "Cytoplasm_", "Nuclei_"))]])
    return pd.concat(frames, ignore_index=True)


def test_recipe_processing_writes_each_intermediate_equal_to_the_functions(chain_workspace: Path) -> None:
    import json

    from cytoprofile.feature_select import feature_select

    frame = _stacked_profiles(chain_workspace)
    expected = {}
    frame = pr.select_variant_features(frame, features=features_of(frame))
    expected["var"] = frame
    frame = pr.mad_normalize(frame, features=features_of(frame))
    expected["mad"] = frame
    frame = pr.rank_int(frame, features=features_of(frame))
    expected["int"] = frame
    frame = feature_select(frame, features=features_of(frame),
                           operations=["variance_threshold", "correlation_threshold", "blocklist"])
    expected["featselect"] = frame
    expected["harmony"] = pr.harmony(frame, features=features_of(frame), batch_key="Metadata_Batch")
    steps = pr.parse_chain(JUMP_CHAIN)
    for i, step in enumerate(steps):
        path = _chain_file(chain_workspace, steps[: i + 1])
        ours = pd.read_parquet(path)
        ref = expected[step]
        assert list(ours.columns) == list(ref.columns), step
        np.testing.assert_allclose(ours[features_of(ref)].to_numpy(float), ref[features_of(ref)].to_numpy(float),
                                   rtol=1e-5, atol=1e-6, err_msg=step)
        side = json.loads(Path(f"{path}.provenance.json").read_text())
        assert side["processing"]["step"] == step and side["processing"]["rows_out"] == len(ref)
        before = len(features_of(expected[steps[i - 1]])) if i else None
        if before is not None:
            assert side["features"]["in"] == before
            assert side["features"]["out"] == len(features_of(ref))
            assert set(side["features"]["dropped"]) == set(features_of(expected[steps[i - 1]])) - set(features_of(ref))
            assert set(side["features"]["dropped"].values()) <= {f"processing: {step}"}
    assert len(features_of(expected["var"])) < len(features_of(_stacked_profiles(chain_workspace)))  # var dropped some
    assert set(pd.read_parquet(_chain_file(chain_workspace, steps))["Metadata_Batch"]) == {"B1", "B2"}


def test_recipe_processing_list_form_and_resume(chain_workspace: Path, tmp_path: Path) -> None:
    from cytoprofile.pipeline import run

    shutil_copy(chain_workspace, tmp_path / "ws")
    ws = tmp_path / "ws"
    listed = _chain_config(ws, "[var, mad, int, featselect, harmony]", name="listed.yml")
    result = run(str(listed))
    assert not [r for r in result.ran if r.startswith("processing")], result.ran  # same chain: all current
    assert sum(r.startswith("processing") for r in result.skipped) == 5
    steps = ["var", "mad", "int", "featselect", "harmony"]
    last = _chain_file(ws, steps)
    reference = pd.read_parquet(last)
    # a run killed after int: featselect's and harmony's outputs never written
    _chain_file(ws, steps[:4]).unlink()
    last.unlink()
    result = run(str(listed))
    ran = [r for r in result.ran if r.startswith("processing")]
    assert [r.split(":")[0] for r in ran] == ["processing featselect", "processing harmony"]
    pd.testing.assert_frame_equal(pd.read_parquet(last), reference)
    # an option of one step reruns that step and those after it, not the ones before
    changed = _chain_config(ws, "[var, mad, int, featselect, harmony]", "{ties: average}", name="changed.yml")
    result = run(str(changed))
    ran = [r.split(":")[0] for r in result.ran if r.startswith("processing")]
    assert ran == ["processing int", "processing featselect", "processing harmony"]
    expected = pr.rank_int(pd.read_parquet(_chain_file(ws, steps[:2])),
                           features=features_of(pd.read_parquet(_chain_file(ws, steps[:2]))), ties="average")
    np.testing.assert_allclose(pd.read_parquet(_chain_file(ws, steps[:3]))[features_of(expected)].to_numpy(float),
                               expected[features_of(expected)].to_numpy(float), rtol=1e-6)


@pytest.mark.parametrize("start,stem", [("normalized", "_normalized"), ("normalized_negcon", "_normalized_negcon")])
def test_recipe_processing_input_option_starts_from_that_stage(chain_workspace: Path, tmp_path: Path, start: str,
                                                               stem: str) -> None:
    import json

    from cytoprofile.pipeline import run

    shutil_copy(chain_workspace, tmp_path / "ws")
    ws = tmp_path / "ws"
    config = _chain_config(ws, "[var, mad]", f"{{input: {start}}}", name="from-normalized.yml")
    result = run(str(config))
    assert [r.split(":")[0] for r in result.ran if r.startswith("processing")] == ["processing var", "processing mad"]
    stacked = _stacked_profiles(ws, stem)
    augmented = _stacked_profiles(ws)
    assert not np.allclose(stacked[features_of(stacked)].to_numpy(float), augmented[features_of(stacked)].to_numpy(float))
    variant = pr.select_variant_features(stacked, features=features_of(stacked))
    expected = pr.mad_normalize(variant, features=features_of(variant))
    ours = pd.read_parquet(_chain_file(ws, ["var", "mad"]))
    assert list(ours.columns) == list(expected.columns)
    np.testing.assert_allclose(ours[features_of(expected)].to_numpy(float), expected[features_of(expected)].to_numpy(float),
                               rtol=1e-6, atol=1e-9)
    side = json.loads(Path(f"{_chain_file(ws, ['var'])}.provenance.json").read_text())
    assert side["settings"]["input"] == start
    assert sorted(side["inputs"]) == sorted(f"profiles/{b}/{p}/{p}{stem}.csv.gz"
                                            for b, plates in CHAIN_BATCHES.items() for p in plates)
    # back to the default input: the chain's first step is stale and reruns from the annotated profiles
    result = run(str(_chain_config(ws, "[var, mad]", name="from-augmented.yml")))
    assert [r.split(":")[0] for r in result.ran if r.startswith("processing")] == ["processing var", "processing mad"]
    first = pd.read_parquet(_chain_file(ws, ["var"]))
    reference = pr.select_variant_features(augmented, features=features_of(augmented))
    np.testing.assert_allclose(first[features_of(reference)].to_numpy(float), reference[features_of(reference)].to_numpy(float),
                               rtol=1e-6, atol=1e-9)


def shutil_copy(src: Path, dest: Path) -> None:
    import shutil

    shutil.copytree(src, dest, symlinks=True)


@pytest.mark.parametrize("chain,options,needle", [
    ("profiles_var_mad_zscore", "", "processing: unknown step(s) 'zscore'"),
    ("[var, combat]", "", "unknown step(s) 'combat'"),
    ("profiles_var_mad", "{batch_kye: Metadata_Plate}", "batch_kye"),
    ("profiles_var_mad", "{batch_key: Metadata_Plate}", "'batch_key' has no effect"),
    ("profiles_var_featselect", "{featselect: {corr_treshold: 0.8}}", "corr_treshold"),
    ("profiles_var_int", "{ties: sometimes}", "ties"),
])
def test_recipe_processing_refuses_bad_chains_with_file_and_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], chain: str, options: str, needle: str) -> None:
    config = _chain_config(tmp_path, chain, options)
    assert main(["run", str(config), "--quiet"]) == 1
    err = capsys.readouterr().err
    line = next(i for i, text in enumerate(config.read_text().splitlines(), 1)
                if text.startswith("processing_options:" if options else "processing:"))
    assert needle in err and f"{config}" in err and f"(line {line})" in err, err
    assert "Traceback" not in err


def test_recipe_quality_control_map_scores_the_chain_output(chain_workspace: Path) -> None:
    from cytoprofile.evaluate import mean_average_precision

    final = pd.read_parquet(_chain_file(chain_workspace, pr.parse_chain(JUMP_CHAIN)))
    for batch, plates in CHAIN_BATCHES.items():
        profiles = final[final["Metadata_Plate"].isin(plates)].reset_index(drop=True)
        expected = mean_average_precision(profiles, mode="activity", features=features_of(final), control_query=NEG,
                                          neg_sameby=["Metadata_Plate"], null_size=10000, seed=0)
        written = pd.read_csv(chain_workspace / "quality_control" / "map" / batch / f"{batch}_map_activity.csv")
        assert len(written) == len(expected) > 1
        np.testing.assert_allclose(written["mean_average_precision"], expected["mean_average_precision"], rtol=1e-9)
        np.testing.assert_allclose(written["corrected_p_value"], expected["corrected_p_value"], rtol=1e-9)
        html = (chain_workspace / "quality_control" / "report" / f"{batch}.html").read_text()
        assert f"{JUMP_CHAIN}.parquet</code> ({len(features_of(final))} features)" in html
        assert f"({int(expected['below_corrected_p'].sum())} of {len(expected)} groups" in html


# ------------------------------------------------------------------ memory of the featselect step


def test_featselect_correlation_work_space_is_bounded() -> None:
    """The correlation filter holds the float64 matrix and one transposed copy, no more."""
    import tracemalloc

    from cytoprofile.feature_select import feature_select

    rng = np.random.default_rng(21)
    x = rng.normal(size=(4000, 200)).astype(np.float32)
    x[:, 1] = x[:, 0] * 2 + np.float32(0.01) * x[:, 2]  # one correlated pair
    df = pd.DataFrame(x, columns=[f"Cells_f{i}" for i in range(x.shape[1])])
    df.insert(0, "Metadata_Plate", "P1")
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    out = feature_select(df, operations=["correlation_threshold"])
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    assert out.shape[1] == df.shape[1] - 1
    assert peak <= 4.6 * x.nbytes, peak / x.nbytes


@pytest.mark.parametrize("settings,needle", [
    ("processing_options: {seed: 1}\n", "processing_options without processing has no effect"),
    ("processing: [var, mad]\nprocessing_options: {input: raw}\n", "input"),
    ("processing: 7\n", "processing must be a chain string or a list of step names"),
    ("processing: profiles\n", "processing names no step"),
    ("quality_control:\n  map: {perform: true, modes: [consistency]}\n", "annotation_column"),
    ("quality_control:\n  map: {perform: true, modes: [activty]}\n", "modes"),
])
def test_processing_and_map_keys_are_checked_at_load(settings: str, needle: str) -> None:
    from cytoprofile.config import parse_config

    with pytest.raises(ConfigError, match=needle):
        parse_config(f"pipeline: p\n{settings}---\nbatch: b\nplates: [{{name: p}}]\n", source="c.yml")


def test_processing_options_are_kept_as_written() -> None:
    from cytoprofile.config import parse_config

    recipe = parse_config("pipeline: p\nprocessing: profiles_var_mad_int_harmony\nprocessing_options:\n"
                          "  batch_key: Metadata_Plate\n  ties: average\n  input: normalized\n"
                          "---\nbatch: b\nplates: [{name: p}]\n")
    assert recipe.settings.processing_options == {"batch_key": "Metadata_Plate", "ties": "average",
                                                  "input": "normalized"}
