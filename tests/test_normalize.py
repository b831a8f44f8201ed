"""normalize: compared with the reference implementation (pycytominer 1.7.1) on the same input."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from cytoprofile.errors import ConfigError, InputError
from cytoprofile.normalize import fit_rows, normalize

from .profiles import NEGCON, make_profiles
from .reference import assert_profiles_equal, pycytominer_step

pycytominer = pytest.importorskip("pycytominer")
reference = partial(pycytominer_step, "normalize")
assert_same = partial(assert_profiles_equal, rtol=1e-6, atol=1e-9, check_index=True, exact_metadata=True)


@pytest.mark.parametrize("method", ["standardize", "robustize", "mad_robustize"])
@pytest.mark.parametrize("samples", ["all", NEGCON])
@pytest.mark.parametrize("nan", [False, True])
def test_matches_reference(method: str, samples: str, nan: bool) -> None:
    df = make_profiles(nan=nan)
    assert_same(normalize(df, method=method, samples=samples), reference(df, method=method, samples=samples))


@pytest.mark.parametrize(
    ("spherize_method", "center"),
    [("PCA", True), ("PCA", False), ("ZCA", True), ("ZCA", False), ("PCA-cor", True), ("ZCA-cor", True)],
)
def test_spherize_matches_reference(spherize_method: str, center: bool) -> None:
    df = make_profiles(n_features=40, nan=False, degenerate=False)
    kwargs = dict(method="spherize", spherize_method=spherize_method, spherize_center=center)
    ours = normalize(df, **kwargs)  # type: ignore[arg-type]
    assert_same(ours, reference(df, **kwargs))
    if spherize_method.startswith("PCA"):
        assert list(ours.columns[-3:]) == ["PC38", "PC39", "PC40"]


@pytest.mark.parametrize(
    ("spherize_method", "center"),
    [("PCA", True), ("PCA", False), ("ZCA", True), ("ZCA", False), ("PCA-cor", True), ("ZCA-cor", True)],
)
@pytest.mark.parametrize(("n_features", "samples"), [(60, NEGCON), (32, NEGCON), (200, "all")])
def test_spherize_no_more_rows_than_features_is_an_error(
    spherize_method: str, center: bool, n_features: int, samples: str
) -> None:
    # Our choice (listed under differences): with n fit rows <= d features the
    # covariance is singular; the reference returns values it could not whiten.
    df = make_profiles(n_features=n_features, nan=False, degenerate=False)
    n = 32 if samples == NEGCON else len(df)
    kwargs = dict(method="spherize", spherize_method=spherize_method, spherize_center=center, samples=samples)
    ref = reference(df, **kwargs)  # the reference "succeeds"
    assert ref.shape[0] == len(df)
    with pytest.raises(InputError, match=f"more fit rows than features, got {n} rows for {n_features}"):
        normalize(df, **kwargs)  # type: ignore[arg-type]


def test_spherize_one_more_row_than_features_whitens() -> None:
    # 32 negcon wells, 31 features: the smallest fit that can be whitened
    df = make_profiles(n_features=31, nan=False, degenerate=False)
    kwargs = dict(method="spherize", spherize_method="ZCA", samples=NEGCON, spherize_epsilon=0)
    out = normalize(df, **kwargs)  # type: ignore[arg-type]
    fit = out[out["Metadata_control_type"] == "negcon"].iloc[:, 5:].to_numpy()
    assert fit.shape == (32, 31)
    assert_allclose(np.cov(fit, rowvar=False), np.eye(31), atol=1e-7)
    assert_same(out, reference(df, **kwargs))


def test_spherize_whitens_the_fit_rows() -> None:
    df = make_profiles(n_features=20, nan=False, degenerate=False)
    out = normalize(df, method="spherize", spherize_method="ZCA", spherize_epsilon=0)
    cov = np.cov(out.iloc[:, 5:].to_numpy(), rowvar=False)
    assert_allclose(cov, np.eye(20), atol=1e-8)


def test_spherize_rank_deficient_is_an_error() -> None:
    # Deliberate difference. The reference means to reject a rank-deficient fit
    # matrix, but its check `not self.center & (r == n)` parses as
    # `not (center & (r == n))` and never fires: it divides by a singular value of
    # ~0 (+ epsilon 1e-6), and any row off that degenerate direction is blown up.
    # Here a feature is an exact function of another on the negcon wells only.
    df = make_profiles(n_features=20, nan=False, degenerate=False)
    negcon = (df["Metadata_control_type"] == "negcon").to_numpy()
    noise = np.random.default_rng(5).normal(scale=0.1, size=len(df))
    df["Cells_dup"] = df["Cells_AreaShape_Area_0"] * 2 + 1 + np.where(negcon, 0.0, noise)
    ref = reference(df, method="spherize", spherize_method="ZCA", samples=NEGCON)
    assert np.abs(ref.iloc[:, 5:].to_numpy()[~negcon]).max() > 1e3
    with pytest.raises(InputError, match="rank 20, expected 21"):
        normalize(df, method="spherize", spherize_method="ZCA", samples=NEGCON)


def test_spherize_cor_constant_feature_is_an_error() -> None:
    df = make_profiles(n_features=10, nan=False, degenerate=False)
    df["Cells_const"] = 1.0
    with pytest.raises(InputError, match="Cells_const"):
        normalize(df, method="spherize")


def test_spherize_leaves_incomplete_rows_out_of_the_fit() -> None:
    df = make_profiles(n_features=10, nan=False, degenerate=False)
    df.loc[3, "Cells_AreaShape_Area_0"] = np.nan
    ours = normalize(df, method="spherize", spherize_method="ZCA")
    ref = reference(df.drop(index=3), method="spherize", spherize_method="ZCA")
    assert_allclose(ours.drop(index=3).iloc[:, 5:].to_numpy(), ref.iloc[:, 5:].to_numpy(), rtol=1e-6, atol=1e-9)
    assert ours.loc[3].iloc[5:].isna().all()


def test_hand_computed() -> None:
    df = pd.DataFrame(
        {
            "Metadata_Well": ["A01", "A02", "A03", "A04", "A05"],
            "Cells_a": [1.0, 2.0, 3.0, 4.0, 100.0],
            "Cells_const": [7.0] * 5,
            "Nuclei_b": [1.0, np.nan, 3.0, 3.0, 5.0],
        }
    )
    std = normalize(df, method="standardize")
    a = df["Cells_a"].to_numpy()
    assert_allclose(std["Cells_a"], (a - a.mean()) / a.std())
    assert (std["Cells_const"] == 0).all()  # zero std: scale 1
    b = np.array([1.0, 3.0, 3.0, 5.0])
    assert_allclose(std["Nuclei_b"].dropna(), (b - b.mean()) / b.std())
    assert np.isnan(std.loc[1, "Nuclei_b"])

    rob = normalize(df, method="robustize")
    assert_allclose(rob["Cells_a"], (a - 3.0) / (4.0 - 2.0))  # median 3, IQR 2
    mad = normalize(df, method="mad_robustize", mad_robustize_epsilon=0)
    assert_allclose(mad["Cells_a"], (a - 3.0) / 1.4826)  # MAD of |a-3| = 1
    assert mad["Cells_const"].isna().all()  # 0 / (0 + epsilon 0), as in the reference
    assert (normalize(df, method="mad_robustize")["Cells_const"] == 0).all()


def test_samples_sample_filter_and_min_cells() -> None:
    df = make_profiles()
    by_query = normalize(df, samples=NEGCON)
    by_filter = normalize(df, sample_filter={"Metadata_control_type": ["negcon"]})
    pd.testing.assert_frame_equal(by_query, by_filter)
    # min_cells: fit on wells with at least that many cells, as the recipe does
    ours = normalize(df, samples=NEGCON, min_cells=150, method="mad_robustize")
    ref = reference(
        df, samples=f"{NEGCON} and Metadata_Object_Count >= 150", method="mad_robustize"
    )
    assert_same(ours, ref)
    assert_same(normalize(df, min_cells=1), reference(df))  # 1 means: no filter
    mask = fit_rows(df, samples=NEGCON, sample_filter={"Metadata_Plate": "SQ00000"}, min_cells=100)
    expect = (
        (df["Metadata_control_type"] == "negcon")
        & (df["Metadata_Plate"] == "SQ00000")
        & (df["Metadata_Object_Count"] >= 100)
    )
    assert (mask == expect.to_numpy()).all()


def test_explicit_features_meta_and_image_passthrough() -> None:
    df = make_profiles(n_features=12)
    df["Image_Granularity_1_DNA"] = np.arange(len(df), dtype=float)
    df["TableNumber"] = 1
    feats = ["Cells_AreaShape_Area_0", "Nuclei_Texture_Contrast_RNA_3_00_256_2"]
    meta = ["Metadata_Well", "Metadata_Plate"]
    kwargs = dict(features=feats, meta_features=meta, method="robustize")
    ours = normalize(df, **kwargs)  # type: ignore[arg-type]
    assert list(ours.columns) == [*meta, "Image_Granularity_1_DNA", *feats]
    assert_same(ours, reference(df, **kwargs))
    with_image = normalize(df, image_features=True)
    assert_same(with_image, reference(df, image_features=True))
    assert with_image["Image_Granularity_1_DNA"].mean() == pytest.approx(0, abs=1e-12)


def test_index_and_row_order_kept() -> None:
    df = make_profiles(n_features=8).sample(frac=1, random_state=1)
    df.index = df.index.astype(str) + "x"
    assert_same(normalize(df, samples=NEGCON), reference(df, samples=NEGCON))


def test_missing_value_strings_become_nan() -> None:
    df = make_profiles(n_features=6, nan=False)
    df["Cells_AreaShape_Area_0"] = df["Cells_AreaShape_Area_0"].astype(object)
    df.loc[2, "Cells_AreaShape_Area_0"] = "nan"
    out = normalize(df)
    assert np.isnan(out.loc[2, "Cells_AreaShape_Area_0"])
    assert out["Cells_AreaShape_Area_0"].notna().sum() == len(df) - 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(method="zscore"), ConfigError, "standardize"),
        (dict(method="spherize", spherize_method="XYZ"), ConfigError, "ZCA-cor"),
        (dict(method="spherize", spherize_method="ZCA-cor", spherize_center=False), ConfigError, "center"),
        (dict(features=["Cells_nope"]), ConfigError, "Cells_nope"),
        (dict(meta_features=["Metadata_nope"]), ConfigError, "Metadata_nope"),
        (dict(meta_features=["Metadata_Well", "Metadata_Well"]), ConfigError, "Metadata_Well more than once"),
        (dict(samples="Metadata_nope == 1"), ConfigError, "samples"),
        (dict(samples="Metadata_control_type == 'none'"), InputError, "no rows"),
        (dict(sample_filter={"Metadata_nope": ["x"]}), ConfigError, "Metadata_nope"),
        (dict(min_cells=50, object_count_column="Metadata_Count_Cells"), ConfigError, "min_cells"),
        (dict(min_cells=10**6), InputError, "min_cells"),
    ],
)
def test_user_errors(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        normalize(make_profiles(n_features=6), **kwargs)  # type: ignore[arg-type]


def test_non_numeric_feature_is_an_input_error() -> None:
    df = make_profiles(n_features=6)
    df["Cells_label"] = "x"
    with pytest.raises(InputError, match="Cells_label"):
        normalize(df)


def test_no_features_found() -> None:
    with pytest.raises(InputError, match="features"):
        normalize(pd.DataFrame({"Metadata_Well": ["A01"], "x": [1.0]}))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    method=st.sampled_from(["standardize", "robustize", "mad_robustize", "spherize"]),
)
def test_row_order_invariance(seed: int, method: str) -> None:
    df = make_profiles(plates=1, n_features=8, nan=method != "spherize", degenerate=False, seed=seed)
    perm = np.random.default_rng(seed).permutation(len(df))
    shuffled = df.iloc[perm]
    a = normalize(df, method=method, samples=NEGCON).loc[shuffled.index]
    b = normalize(shuffled, method=method, samples=NEGCON)
    assert_allclose(a.iloc[:, 5:].to_numpy(), b.iloc[:, 5:].to_numpy(), rtol=1e-7, atol=1e-9)


def _with_extra_compartments(df: pd.DataFrame) -> pd.DataFrame:
    """Profiles with features of non-canonical object tables (as collate aggregates them)."""
    rng = np.random.default_rng(7)
    extra = {
        "Speckles_AreaShape_Area": rng.normal(10, 2, len(df)),
        "Speckles_Intensity_MeanIntensity_DNA": rng.normal(0.3, 0.05, len(df)),
        "Cells_Cellpose3_AreaShape_Area": rng.normal(900, 50, len(df)),
        "PreNuclei_Cellpose3_AreaShape_Area": rng.normal(300, 20, len(df)),
    }
    return pd.concat([df, pd.DataFrame(extra, index=df.index)], axis="columns")


@pytest.mark.parametrize("method", ["standardize", "robustize", "mad_robustize"])
@pytest.mark.parametrize(
    "compartments",
    [["Cells", "Cytoplasm", "Nuclei", "Speckles", "PreNuclei"],
     ["cells", "cytoplasm", "nuclei", "speckles", "PreNuclei_Cellpose3"]],
)
def test_extra_compartments_carry_through(method: str, compartments: list[str]) -> None:
    df = _with_extra_compartments(make_profiles(n_features=12))
    accounts: list[object] = []
    ours = normalize(df, method=method, compartments=compartments, on_account=accounts.append)
    features = [c for c in df.columns if not c.startswith("Metadata_")]
    assert [c for c in ours.columns if not c.startswith("Metadata_")] == features
    assert_same(ours, reference(df, method=method, features=features))
    (account,) = accounts
    assert account.features_in == account.features_out == tuple(features)  # type: ignore[attr-defined]
    assert account.dropped == {}  # type: ignore[attr-defined]


def test_columns_outside_the_compartments_are_named(caplog: pytest.LogCaptureFixture) -> None:
    df = _with_extra_compartments(make_profiles(n_features=6))
    accounts: list[object] = []
    with caplog.at_level("DEBUG", logger="cytoprofile"):
        out = normalize(df, on_account=accounts.append)
    assert "Speckles_AreaShape_Area" not in out.columns  # default compartments, as the reference
    dropped = accounts[0].dropped  # type: ignore[attr-defined]
    assert dropped == dict.fromkeys(
        ["Speckles_AreaShape_Area", "Speckles_Intensity_MeanIntensity_DNA", "PreNuclei_Cellpose3_AreaShape_Area"],
        "not_a_feature",
    )
    assert "Cells_Cellpose3_AreaShape_Area" in out.columns  # starts with Cells
    assert "Speckles_AreaShape_Area" in caplog.text and "compartments=" in caplog.text
    assert "normalize (standardize): 7 features in, 7 out" in caplog.text


@pytest.mark.parametrize("method", ["standardize", "robustize", "mad_robustize", "spherize"])
@pytest.mark.parametrize("where", ["fit", "other", "both"])
def test_infinite_value_is_an_error_naming_feature_and_rows(method: str, where: str) -> None:
    # Our choice (listed under differences): before, the feature became NaN for
    # every well; the reference refuses inf in standardize but accepts it in
    # mad_robustize (the row stays infinite).
    df = make_profiles(n_features=8, nan=False, degenerate=False)
    rows = {"fit": [0, 6], "other": [1], "both": [0, 1]}[where]
    value = [np.inf, -np.inf][len(rows) % 2]
    df.loc[rows, "Nuclei_Texture_Contrast_RNA_3_00_256_2"] = value
    wells = [f"{df.loc[r, 'Metadata_Plate']}/{df.loc[r, 'Metadata_Well']}" for r in rows]
    with pytest.raises(InputError, match="Nuclei_Texture_Contrast_RNA_3_00_256_2") as info:
        normalize(df, method=method, samples=NEGCON)
    assert all(w in str(info.value) for w in wells)
    ref = reference(df, method="mad_robustize")
    assert np.isinf(ref["Nuclei_Texture_Contrast_RNA_3_00_256_2"].to_numpy()[rows]).all()


def test_infinite_value_without_well_names_names_the_index() -> None:
    df = make_profiles(n_features=4, nan=False, degenerate=False).drop(columns=["Metadata_Plate", "Metadata_Well"])
    df.index = [f"w{i}" for i in range(len(df))]
    df.iloc[5, -1] = np.inf
    with pytest.raises(InputError, match="row 'w5'"):
        normalize(df)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(mad_robustize_epsilon="0.1"),
        dict(mad_robustize_epsilon=None),
        dict(spherize_epsilon="1e-6"),
        dict(spherize_center="False"),
        dict(method=1),
        dict(method="spherize", spherize_method=None),
        dict(min_cells="10"),
        dict(min_cells=2.5),
        dict(image_features="yes"),
        dict(samples=1),
        dict(sample_filter=["Metadata_control_type"]),
        dict(features=3),
        dict(compartments=3),
        dict(object_count_column=3, min_cells=2),
    ],
)
def test_wrong_types_are_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as info:
        normalize(make_profiles(n_features=6), **kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert next(iter(kwargs)) in str(info.value) or "method" in str(info.value)


def test_function_defaults_are_pycytominer_defaults() -> None:
    import inspect

    ours = inspect.signature(normalize).parameters
    ref = inspect.signature(pycytominer.normalize).parameters
    shared = [p for p in ours if p in ref and p != "profiles"]
    assert {"method", "samples", "features", "meta_features", "spherize_method", "spherize_epsilon"} <= set(shared)
    for name in shared:
        assert ours[name].default == ref[name].default, name


def test_command_default_method_is_pycytominer_default(tmp_path: Path) -> None:
    from cytoprofile.cli import main

    df = make_profiles(n_features=8)
    source, out = tmp_path / "annotated.csv", tmp_path / "normalized.csv"
    df.to_csv(source, index=False)
    assert main(["normalize", str(source), str(out), "-q"]) == 0
    assert_same(pd.read_csv(out), reference(pd.read_csv(source)))
