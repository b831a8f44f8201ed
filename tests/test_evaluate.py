"""mAP against copairs (the reference implementation) and hand-computed rankings."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cytoprofile import evaluate as ev
from cytoprofile.cli import main
from cytoprofile.errors import ConfigError, InputError
from tests.planted import planted_profiles
from tests.profiles import features_of

copairs_map = pytest.importorskip("copairs.map")
from copairs.map import multilabel  # noqa: E402
from copairs.matching import assign_reference_index  # noqa: E402

NEG = "Metadata_control_type == 'negcon'"


def _reference_activity(df: pd.DataFrame, *, neg_sameby: list[str], pos_diffby: list[str]) -> pd.DataFrame:
    meta = assign_reference_index(df[[c for c in df.columns if c.startswith("Metadata_")]], NEG,
                                  reference_col="Metadata_Reference_Index", default_value=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ap = copairs_map.average_precision(
            meta, df[features_of(df)].to_numpy(), pos_sameby=["Metadata_broad_sample", "Metadata_Reference_Index"],
            pos_diffby=pos_diffby, neg_sameby=neg_sameby,
            neg_diffby=["Metadata_broad_sample", "Metadata_Reference_Index"], progress_bar=False)
    return ap[(df["Metadata_control_type"] != "negcon").to_numpy()].reset_index(drop=True)


def _reference_map(ap: pd.DataFrame, sameby: list[str], tmp_path: Path, *, null_size: int, seed: int) -> pd.DataFrame:
    return copairs_map.mean_average_precision(ap, sameby, null_size=null_size, threshold=0.05, seed=seed,
                                              progress_bar=False, cache_dir=tmp_path / f"cache{seed}")


def _shaped(seed: int, *, ties: bool) -> pd.DataFrame:
    df = planted_profiles(plates=3, wells=48, features=12, negcon_per_plate=12, seed=seed)
    if ties:  # coarse values: many equal similarities between positives and negatives
        f = features_of(df)
        df[f] = np.round(df[f] / 10)
    return df


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("neg_sameby,pos_diffby", [([], []), (["Metadata_Plate"], []), ([], ["Metadata_Plate"])])
def test_activity_equals_copairs(tmp_path: Path, ties: bool, neg_sameby: list[str], pos_diffby: list[str]) -> None:
    df = _shaped(1, ties=ties)
    ref_ap = _reference_activity(df, neg_sameby=neg_sameby, pos_diffby=pos_diffby)
    ours_ap = ev.mode_average_precision(df, mode="activity", column="Metadata_broad_sample", control_query=NEG,
                                        neg_sameby=neg_sameby, pos_diffby=pos_diffby)
    np.testing.assert_allclose(ours_ap["average_precision"], ref_ap["average_precision"], atol=1e-9, rtol=0)
    np.testing.assert_allclose(ours_ap["normalized_average_precision"], ref_ap["normalized_average_precision"],
                               atol=1e-9, rtol=0)
    assert (ours_ap["n_total_pairs"].to_numpy() == ref_ap["n_total_pairs"].to_numpy()).all()
    for seed, null_size in ((0, 500), (7, 2000)):
        ref = _reference_map(ref_ap, ["Metadata_broad_sample"], tmp_path, null_size=null_size, seed=seed)
        ours = ev.mean_average_precision(df, mode="activity", pert_column="Metadata_broad_sample",
                                         neg_sameby=neg_sameby, pos_diffby=pos_diffby, null_size=null_size, seed=seed)
        assert list(ours["Metadata_broad_sample"]) == list(ref["Metadata_broad_sample"])
        np.testing.assert_allclose(ours["mean_average_precision"], ref["mean_average_precision"], atol=1e-9, rtol=0)
        assert (ours["p_value"].to_numpy() == ref["p_value"].to_numpy()).all()
        np.testing.assert_allclose(ours["corrected_p_value"], ref["corrected_p_value"], rtol=1e-12)
        assert (ours["below_corrected_p"].to_numpy() == ref["below_corrected_p"].to_numpy()).all()
        assert ours.attrs["fraction_retrieved"] == pytest.approx(ref["below_corrected_p"].mean())


def test_distinctiveness_equals_copairs(tmp_path: Path) -> None:
    df = _shaped(2, ties=False)
    trt = df[df["Metadata_control_type"] != "negcon"].reset_index(drop=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_ap = copairs_map.average_precision(
            trt[[c for c in trt.columns if c.startswith("Metadata_")]], trt[features_of(trt)].to_numpy(),
            pos_sameby=["Metadata_broad_sample"], pos_diffby=[], neg_sameby=["Metadata_Plate"],
            neg_diffby=["Metadata_broad_sample"], progress_bar=False)
    ref = _reference_map(ref_ap, ["Metadata_broad_sample"], tmp_path, null_size=1000, seed=3)
    ours = ev.mean_average_precision(df, mode="distinctiveness", pert_column="Metadata_broad_sample",
                                     neg_sameby=["Metadata_Plate"], null_size=1000, seed=3)
    np.testing.assert_allclose(ours["mean_average_precision"], ref["mean_average_precision"], atol=1e-9, rtol=0)
    assert (ours["p_value"].to_numpy() == ref["p_value"].to_numpy()).all()


@pytest.mark.parametrize("multilabel_targets", [False, True])
def test_consistency_equals_copairs(tmp_path: Path, multilabel_targets: bool) -> None:
    df = _shaped(3, ties=False)
    trt = df[df["Metadata_control_type"] != "negcon"]
    cons = trt.groupby("Metadata_broad_sample", as_index=False)[features_of(df)].median()
    rng = np.random.default_rng(0)
    pool = ["EGFR", "HDAC", "TUBB", "MTOR", "BRD4", "CDK"]
    if multilabel_targets:
        targets = ["|".join(sorted(set(rng.choice(pool, size=rng.integers(1, 3))))) for _ in range(len(cons))]
    else:
        targets = list(rng.choice(pool, size=len(cons)))
    cons.insert(1, "Metadata_target", targets)
    feats = cons[features_of(cons)].to_numpy()
    meta = cons[["Metadata_broad_sample", "Metadata_target"]].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if multilabel_targets:
            meta["Metadata_target"] = meta["Metadata_target"].str.split("|")
            ref_ap = multilabel.average_precision(meta, feats, pos_sameby=["Metadata_target"], pos_diffby=[],
                                                  neg_sameby=[], neg_diffby=["Metadata_target"],
                                                  multilabel_col="Metadata_target", progress_bar=False)
        else:
            ref_ap = copairs_map.average_precision(meta, feats, pos_sameby=["Metadata_target"], pos_diffby=[],
                                                   neg_sameby=[], neg_diffby=["Metadata_target"], progress_bar=False)
    ref = _reference_map(ref_ap, ["Metadata_target"], tmp_path, null_size=1000, seed=0)
    ours = ev.mean_average_precision(cons, mode="consistency", annotation_column="Metadata_target",
                                     control_query=None, null_size=1000, seed=0,
                                     multilabel_separator="|" if multilabel_targets else None)
    assert list(ours["Metadata_target"]) == list(ref["Metadata_target"])
    np.testing.assert_allclose(ours["mean_average_precision"], ref["mean_average_precision"], atol=1e-9, rtol=0)
    assert (ours["p_value"].to_numpy() == ref["p_value"].to_numpy()).all()


def test_average_precision_by_hand() -> None:
    # query q=[1,0]; positives a (cos 1), b (cos 0); negatives c (cos 0.6), d (cos -1)
    # ranking a(+), c(-), b(+), d(-): AP = (1/1 + 2/3) / 2
    df = pd.DataFrame({
        "Metadata_g": ["x", "x", "x", "y", "z"],
        "Cells_a": [1.0, 2.0, 0.0, 0.6, -1.0],
        "Cells_b": [0.0, 0.0, 1.0, 0.8, 0.0],
    })
    ap = ev.average_precision(df, pos_sameby=["Metadata_g"], neg_diffby=["Metadata_g"])
    assert ap.loc[0, "average_precision"] == pytest.approx((1 + 2 / 3) / 2, abs=1e-12)
    assert ap.loc[0, "n_pos_pairs"] == 2 and ap.loc[0, "n_total_pairs"] == 4
    assert np.isnan(ap.loc[3, "average_precision"])


def test_tie_between_positive_and_negative_ranks_positive_first() -> None:
    df = pd.DataFrame({"Metadata_g": ["x", "x", "y"], "Cells_a": [1.0, 2.0, 3.0], "Cells_b": [1.0, 2.0, 3.0]})
    ap = ev.average_precision(df, pos_sameby=["Metadata_g"], neg_diffby=["Metadata_g"])
    assert ap.loc[0, "average_precision"] == 1.0


def test_benjamini_hochberg_equals_statsmodels() -> None:
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.random(200) ** 3, [0.01, 0.01, 0.5, 0.5]])
    np.testing.assert_array_equal(ev.benjamini_hochberg(p), multitest.multipletests(p, method="fdr_bh")[1])


def test_null_distributions_equal_copairs(tmp_path: Path) -> None:
    from copairs import compute

    confs = np.array([[1, 5], [2, 70], [3, 300], [5, 12]])
    ref = compute.get_null_dists(confs, 300, seed=11, cache_dir=tmp_path, progress_bar=False)
    np.testing.assert_array_equal(ev.null_distributions(confs, null_size=300, seed=11), ref)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 100))
def test_ap_bounds_and_scale_invariance(seed: int, scale: float) -> None:
    df = planted_profiles(plates=2, wells=24, features=5, negcon_per_plate=8, seed=seed)
    ap = ev.mode_average_precision(df, mode="activity", column="Metadata_broad_sample")
    scaled = df.copy()
    scaled[features_of(df)] *= scale
    again = ev.mode_average_precision(scaled, mode="activity", column="Metadata_broad_sample")
    assert ((ap["average_precision"] >= 0) & (ap["average_precision"] <= 1)).all()
    # cosine similarity ignores the scale
    np.testing.assert_allclose(again["average_precision"], ap["average_precision"], atol=1e-9)


def test_planted_actives_score_higher() -> None:
    df = planted_profiles(plates=4, wells=96, features=30, plate_effect=0, well_effect=0, batch_effect=0, seed=5)
    # no plate effect planted: every plate's controls are negatives
    table = ev.mean_average_precision(df, mode="activity", pert_column="Metadata_broad_sample", neg_sameby=[],
                                      null_size=1000)
    active = df.drop_duplicates("Metadata_broad_sample").set_index("Metadata_broad_sample")["Metadata_active"]
    flags = active.reindex(table["Metadata_broad_sample"]).to_numpy()
    assert table.loc[flags, "mean_average_precision"].mean() > table.loc[~flags, "mean_average_precision"].mean() + 0.3
    assert table.loc[flags, "below_corrected_p"].mean() > 0.6
    assert table.loc[~flags, "below_corrected_p"].mean() < 0.1


def test_refusals() -> None:
    df = _shaped(4, ties=False)
    with pytest.raises(ConfigError, match="unknown mAP mode"):
        ev.mean_average_precision(df, mode="percent")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="annotation_column"):
        ev.mean_average_precision(df, mode="consistency")
    bad = df.copy()
    bad.loc[3, features_of(df)[0]] = np.nan
    with pytest.raises(InputError, match="missing feature values"):
        ev.mean_average_precision(bad)
    with pytest.raises(InputError, match="no negative controls"):
        ev.mean_average_precision(df, control_query="Metadata_control_type == 'none'")
    with pytest.raises(ConfigError, match="Metadata_nope"):
        ev.mean_average_precision(df, neg_sameby=["Metadata_nope"])


def test_map_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    df = _shaped(5, ties=False)
    src, out = tmp_path / "p.csv", tmp_path / "map.csv"
    df.to_csv(src, index=False)
    assert main(["map", str(src), str(out), "--neg-sameby", "Metadata_Plate", "--null-size", "500", "-q"]) == 0
    table = pd.read_csv(out)
    expected = ev.mean_average_precision(df, neg_sameby=["Metadata_Plate"], null_size=500)
    np.testing.assert_allclose(table["mean_average_precision"], expected["mean_average_precision"], rtol=1e-6)
    assert "retrieved at FDR 0.05" in capsys.readouterr().out
    assert main(["map", str(src), "--mode", "consistency"]) == 1


def test_map_defaults_are_one_per_mode_everywhere(tmp_path: Path) -> None:
    """Without ``neg_sameby``, activity compares with the same plate's controls (as JUMP,
    the QC block and the processing chain do), the other modes with every negative; the
    command, the function and the QC block give the same numbers."""
    from cytoprofile import config, recipe_options
    from cytoprofile.qc.metrics import map_tables

    df = _shaped(4, ties=False)
    plate = ev.mean_average_precision(df, neg_sameby=["Metadata_Plate"], null_size=300)
    every = ev.mean_average_precision(df, neg_sameby=[], null_size=300)
    assert not np.allclose(plate["mean_average_precision"], every["mean_average_precision"])
    ours = ev.mean_average_precision(df, null_size=300)
    np.testing.assert_array_equal(ours["mean_average_precision"], plate["mean_average_precision"])
    distinct = ev.mean_average_precision(df, mode="distinctiveness", null_size=300)
    np.testing.assert_array_equal(distinct["mean_average_precision"], ev.mean_average_precision(
        df, mode="distinctiveness", neg_sameby=[], null_size=300)["mean_average_precision"])
    src, out, out_none = tmp_path / "p.csv", tmp_path / "map.csv", tmp_path / "none.csv"
    df.to_csv(src, index=False)
    assert main(["map", str(src), str(out), "--null-size", "300", "-q"]) == 0
    assert main(["map", str(src), str(out_none), "--null-size", "300", "--neg-sameby", "none", "-q"]) == 0
    np.testing.assert_allclose(pd.read_csv(out)["mean_average_precision"], plate["mean_average_precision"], rtol=1e-9)
    np.testing.assert_allclose(pd.read_csv(out_none)["mean_average_precision"], every["mean_average_precision"],
                               rtol=1e-9)
    settings = recipe_options.map_options(config.MapConfig.model_validate({"perform": True, "null_size": 300}))
    assert settings is not None
    settings.pop("modes")
    qc = map_tables(df, features=features_of(df), modes=["activity"], **settings)["activity"]
    np.testing.assert_array_equal(qc["mean_average_precision"], plate["mean_average_precision"])
    with pytest.raises(ConfigError, match=r"same Metadata_Plate by default.*--neg-sameby none"):
        ev.mean_average_precision(df.drop(columns="Metadata_Plate"), null_size=300)


def test_map_log_line_names_its_plates(caplog: pytest.LogCaptureFixture) -> None:
    df = planted_profiles(plates=3, wells=96, features=10, seed=2)
    plates = sorted(df["Metadata_Plate"].astype(str).unique())
    with caplog.at_level("INFO", logger="cytoprofile"):
        ev.mean_average_precision(df, mode="activity", pert_column="Metadata_broad_sample", null_size=200)
        one = df.assign(Metadata_Plate=plates[0])
        ev.mean_average_precision(one, mode="activity", pert_column="Metadata_broad_sample", null_size=200)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("mAP")]
    assert lines[0].startswith(f"mAP (activity) of 3 plates ({', '.join(plates)}): "), lines
    assert lines[1].startswith(f"mAP (activity) of plate {plates[0]}: "), lines
