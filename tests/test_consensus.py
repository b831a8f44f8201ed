"""consensus: compared with the reference implementation (pycytominer 1.7.1) on the same input."""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from cytoprofile.consensus import consensus, modz_weights
from cytoprofile.errors import ConfigError, InputError

from .profiles import replicate_profiles
from .reference import pycytominer_step

pycytominer = pytest.importorskip("pycytominer")
reference = partial(pycytominer_step, "consensus")



REPLICATES = [
    ["Metadata_Plate", "Metadata_Well"],  # one row per group
    ["Metadata_broad_sample"],
    ["Metadata_Well", "Metadata_broad_sample"],  # 3 replicates each
    ["Metadata_Plate", "Metadata_control_type"],  # large groups
]


@pytest.mark.parametrize("operation", ["median", "mean", "modz"])
@pytest.mark.parametrize("replicates", REPLICATES)
def test_matches_reference(operation: str, replicates: list[str]) -> None:
    df = replicate_profiles()
    ours = consensus(df, replicate_columns=replicates, operation=operation)
    ref = reference(df, replicate_columns=replicates, operation=operation)
    assert list(ours.columns) == list(ref.columns)
    pd.testing.assert_frame_equal(ours[replicates], ref[replicates])
    assert_allclose(
        ours.drop(columns=replicates).to_numpy(), ref.drop(columns=replicates).to_numpy(), rtol=1e-6, atol=1e-9
    )


@pytest.mark.parametrize("method", ["pearson", "spearman", "kendall"])
def test_modz_options_match_reference(method: str) -> None:
    df = replicate_profiles(plates=4, n_features=30)
    reps = ["Metadata_Well", "Metadata_broad_sample"]
    ours = consensus(
        df, replicate_columns=reps, operation="modz", modz_method=method, modz_min_weight=0.3, modz_precision=2
    )
    ref = reference(
        df,
        replicate_columns=reps,
        operation="modz",
        modz_args={"method": method, "min_weight": 0.3, "precision": 2},
    )
    assert_allclose(ours.drop(columns=reps).to_numpy(), ref.drop(columns=reps).to_numpy(), rtol=1e-6, atol=1e-9)


def test_modz_weights_hand_computed() -> None:
    corr = np.array(
        [
            [1.0, 0.8, 0.6],
            [0.8, 1.0, -0.5],
            [0.6, -0.5, 1.0],
        ]
    )
    # mean correlation with the others, negatives as 0: 0.7, 0.4, 0.3 -> sum 1.4
    assert_allclose(modz_weights(corr), [0.5, 0.2857, 0.2143])
    assert_allclose(modz_weights(corr, precision=None), np.array([0.7, 0.4, 0.3]) / 1.4)
    # all anticorrelated: every weight is min_weight, so all count equally
    anti = np.array([[1.0, -0.9], [-0.9, 1.0]])
    assert_allclose(modz_weights(anti), [0.5, 0.5])
    # an undefined correlation (constant replicate) leaves that replicate out
    undefined = np.array([[1.0, np.nan, np.nan], [np.nan, 1.0, 0.5], [np.nan, 0.5, 1.0]])
    w = modz_weights(undefined)
    assert np.isnan(w[0])
    assert_allclose(w[1:], [0.5, 0.5])


def test_modz_downweights_a_discordant_replicate() -> None:
    rng = np.random.default_rng(1)
    signal = rng.normal(size=40)
    rows = np.vstack([signal + rng.normal(scale=0.1, size=40) for _ in range(3)] + [rng.normal(size=40)])
    df = pd.DataFrame(rows, columns=[f"Cells_f{i}" for i in range(40)])
    df.insert(0, "Metadata_broad_sample", "BRD-1")
    modz = consensus(df, replicate_columns=["Metadata_broad_sample"], operation="modz").iloc[0, 1:]
    mean = consensus(df, replicate_columns=["Metadata_broad_sample"], operation="mean").iloc[0, 1:]
    assert np.corrcoef(modz.to_numpy(float), signal)[0, 1] > np.corrcoef(mean.to_numpy(float), signal)[0, 1]


def test_modz_missing_values() -> None:
    # Deliberate difference: the reference sums weight * value skipping NaN, so a
    # replicate's missing value counts as 0 (pulling the consensus towards 0) and a
    # feature missing in every replicate becomes 0.0. Here the weights are
    # renormalized over the replicates that have a value, and all-missing stays NaN.
    df = replicate_profiles(plates=3, n_features=12)
    reps = ["Metadata_Well", "Metadata_broad_sample"]
    df.loc[df["Metadata_Well"] == "A02", "Cells_Intensity_MeanIntensity_DNA_0"] = np.nan
    first = df.index[(df["Metadata_Well"] == "A03") & (df["Metadata_Plate"] == "SQ00000")][0]
    df.loc[first, "Nuclei_Intensity_MeanIntensity_DNA_2"] = np.nan
    ours = consensus(df, replicate_columns=reps, operation="modz").set_index("Metadata_Well")
    ref = reference(df, replicate_columns=reps, operation="modz").set_index("Metadata_Well")
    assert np.isnan(ours.loc["A02", "Cells_Intensity_MeanIntensity_DNA_0"])
    assert ref.loc["A02", "Cells_Intensity_MeanIntensity_DNA_0"] == 0.0
    a03 = df[df["Metadata_Well"] == "A03"]
    present = a03["Nuclei_Intensity_MeanIntensity_DNA_2"].dropna()
    value = ours.loc["A03", "Nuclei_Intensity_MeanIntensity_DNA_2"]
    assert present.min() <= value <= present.max()  # a weighted mean of what is there
    untouched = [c for c in ours.columns if c.startswith(("Cells", "Cytoplasm", "Nuclei"))]
    untouched.remove("Nuclei_Intensity_MeanIntensity_DNA_2")
    untouched.remove("Cells_Intensity_MeanIntensity_DNA_0")
    assert_allclose(ours[untouched].to_numpy(), ref[untouched].to_numpy(), rtol=1e-6, atol=1e-9)


def test_median_with_missing_values_matches_reference() -> None:
    df = replicate_profiles(plates=3, n_features=8)
    df.iloc[::7, 5] = np.nan
    for op in ("median", "mean"):
        ours = consensus(df, replicate_columns=["Metadata_broad_sample"], operation=op)
        ref = reference(df, replicate_columns=["Metadata_broad_sample"], operation=op)
        pd.testing.assert_frame_equal(ours, ref)


def test_hand_computed_median_mean() -> None:
    df = pd.DataFrame(
        {
            "Metadata_broad_sample": ["b", "a", "a", "a", "b"],
            "Cells_x": [10.0, 1.0, 2.0, 6.0, 20.0],
        }
    )
    med = consensus(df, replicate_columns=["Metadata_broad_sample"])
    assert med.to_dict("list") == {"Metadata_broad_sample": ["a", "b"], "Cells_x": [2.0, 15.0]}
    mean = consensus(df, replicate_columns="Metadata_broad_sample", operation="mean")  # type: ignore[arg-type]
    assert mean["Cells_x"].tolist() == [3.0, 15.0]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"operation": "max"}, ConfigError, "modz"),
        ({"operation": "modz", "modz_method": "cosine"}, ConfigError, "spearman"),
        ({"replicate_columns": ["Metadata_nope"]}, ConfigError, "Metadata_nope"),
        ({"features": ["Cells_nope"]}, ConfigError, "Cells_nope"),
    ],
)
def test_user_errors(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        consensus(replicate_profiles(plates=1, n_features=4), **kwargs)  # type: ignore[arg-type]


def test_no_features() -> None:
    with pytest.raises(InputError):
        consensus(pd.DataFrame({"Metadata_Plate": ["p"], "Metadata_Well": ["A01"], "x": [1.0]}))


@pytest.mark.parametrize("operation", ["median", "mean", "modz"])
@pytest.mark.parametrize("replicates", [["Metadata_Plate", "Metadata_Well"], ["Metadata_broad_sample"]])
def test_no_rows_is_an_error(operation: str, replicates: list[str]) -> None:
    # Our choice (listed under differences): the reference returns a header-only table.
    empty = replicate_profiles(plates=1, n_features=4).iloc[0:0]
    with pytest.raises(InputError, match="no rows") as info:
        consensus(empty, replicate_columns=replicates, operation=operation)
    assert isinstance(info.value, ValueError)


def test_extra_compartments_carry_through(caplog: pytest.LogCaptureFixture) -> None:
    df = replicate_profiles(plates=1, n_features=6)
    rng = np.random.default_rng(2)
    df["Speckles_AreaShape_Area"] = rng.normal(size=len(df))
    df["Cells_Cellpose3_Intensity_MeanIntensity_DNA"] = rng.normal(size=len(df))
    keys = ["Metadata_broad_sample"]
    accounts: list[object] = []
    ours = consensus(df, replicate_columns=keys, compartments=["cells", "cytoplasm", "nuclei", "speckles"],
                     on_account=accounts.append)
    features = [c for c in df.columns if not c.startswith("Metadata_")]
    assert list(ours.columns) == [*keys, *features]
    ref = reference(df, replicate_columns=keys, features=features)
    np.testing.assert_allclose(ours[features].to_numpy(), ref[features].to_numpy(), rtol=1e-12)
    assert accounts[0].dropped == {}  # type: ignore[attr-defined]
    with caplog.at_level("WARNING", logger="cytoprofile"):
        default = consensus(df, replicate_columns=keys)
    assert "Speckles_AreaShape_Area" not in default.columns
    assert "Speckles_AreaShape_Area" in caplog.text


@pytest.mark.parametrize(
    "kwargs",
    [
        {"operation": 1},
        {"operation": None},
        {"operation": "modz", "modz_method": 2},
        {"operation": "modz", "modz_min_weight": "0.01"},
        {"operation": "modz", "modz_precision": "4"},
        {"operation": "modz", "modz_precision": 2.5},
        {"replicate_columns": 3},
        {"features": 3},
        {"compartments": 3},
    ],
)
def test_wrong_types_are_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as info:
        consensus(replicate_profiles(plates=1, n_features=4), **kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


def test_image_features_are_kept_when_asked_and_counted_apart_when_not(caplog: pytest.LogCaptureFixture) -> None:
    df = replicate_profiles()
    df["Image_Intensity_MeanIntensity_DNA"] = np.random.default_rng(3).normal(size=len(df))
    replicates = ["Metadata_broad_sample"]
    features = [c for c in df.columns if not c.startswith("Metadata_")]
    kept = consensus(df, replicate_columns=replicates, image_features=True)
    ref = reference(df, replicate_columns=replicates, features=features)
    assert list(kept.columns) == list(ref.columns)
    assert_allclose(kept[features].to_numpy(), ref[features].to_numpy(), rtol=1e-6, atol=1e-9)
    accounts: list = []
    with caplog.at_level("WARNING"):
        left = consensus(df, replicate_columns=replicates, on_account=accounts.append)
    assert "Image_Intensity_MeanIntensity_DNA" not in left.columns
    n = len(features) - 1
    assert accounts[0].summary() == f"consensus (median): {n} features in, {n} out; 1 other column(s) left out (not features)"
    assert "Image_Intensity_MeanIntensity_DNA" in caplog.text


def test_a_replicate_column_named_twice_is_refused() -> None:
    """``--replicate-columns Metadata_Well,Metadata_Well`` crashed in pandas' grouping (exit 3)."""
    df = replicate_profiles(plates=1, n_features=4)
    with pytest.raises(ConfigError, match="Metadata_Well more than once"):
        consensus(df, replicate_columns=["Metadata_Well", "Metadata_Well"])
