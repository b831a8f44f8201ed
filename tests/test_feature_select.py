"""feature_select: compared with the reference implementation (pycytominer 1.7.1) on the same input."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cytoprofile.errors import ConfigError, InputError
from cytoprofile.feature_select import (
    default_blocklist,
    dropped_features,
    excluded_features,
    feature_select,
    selected_features,
)
from cytoprofile.step_data import FeatureAccount
from cytoprofile.vocabulary import infer_features

from .profiles import NEGCON, selection_profiles
from .reference import pycytominer_step

pycytominer = pytest.importorskip("pycytominer")
reference = partial(pycytominer_step, "feature_select")


# (our operation, our extra options, the reference's operation, its extra options)
CASES = [
    ("frequency_threshold", {}, "frequency_threshold", {}),
    # legacy meaning (recipe configs): variance_threshold = the frequency filter
    ("variance_threshold", {"variance_threshold_meaning": "frequency"}, "frequency_threshold", {}),
    # newer meaning: variance_threshold = variance <= min_variance
    ("variance_threshold", {"variance_threshold_meaning": "variance"}, "variance_threshold", {}),
    (
        "variance_threshold",
        {"variance_threshold_meaning": "variance", "min_variance": 0.5},
        "variance_threshold",
        {"min_variance": 0.5},
    ),
    ("frequency_threshold", {"freq_cut": 0.2, "unique_cut": 0.1}, "frequency_threshold", {"freq_cut": 0.2, "unique_cut": 0.1}),
    ("correlation_threshold", {}, "correlation_threshold", {}),
    ("correlation_threshold", {"corr_threshold": 0.5}, "correlation_threshold", {"corr_threshold": 0.5}),
    ("correlation_threshold", {"corr_method": "spearman"}, "correlation_threshold", {"corr_method": "spearman"}),
    ("correlation_threshold", {"corr_method": "kendall"}, "correlation_threshold", {"corr_method": "kendall"}),
    ("drop_na_columns", {}, "drop_na_columns", {}),
    ("drop_na_columns", {"na_cutoff": 0.01}, "drop_na_columns", {"na_cutoff": 0.01}),
    ("blocklist", {}, "blocklist", {}),
    ("drop_outliers", {}, "drop_outliers", {}),
    ("drop_outliers", {"outlier_cutoff": 5}, "drop_outliers", {"outlier_cutoff": 5}),
    (
        "noise_removal",
        {"noise_removal_perturb_groups": "Metadata_broad_sample", "noise_removal_stdev_cutoff": 1.0},
        "noise_removal",
        {"noise_removal_perturb_groups": "Metadata_broad_sample", "noise_removal_stdev_cutoff": 1.0},
    ),
]


@pytest.mark.parametrize(("op", "opts", "ref_op", "ref_opts"), CASES)
@pytest.mark.parametrize("samples", ["all", NEGCON])
def test_each_operation_matches_reference(
    op: str, opts: dict[str, object], ref_op: str, ref_opts: dict[str, object], samples: str
) -> None:
    df = selection_profiles()
    ours = feature_select(df, operations=[op], samples=samples, **opts)  # type: ignore[arg-type]
    ref = reference(df, operation=[ref_op], samples=samples, **ref_opts)
    pd.testing.assert_frame_equal(ours, ref)
    assert ours.shape[1] < df.shape[1]  # every case drops something


def test_default_meaning_is_the_frequency_filter() -> None:
    df = selection_profiles()
    pd.testing.assert_frame_equal(
        feature_select(df, operations="variance_threshold"),
        reference(df, operation="frequency_threshold"),
    )


@pytest.mark.parametrize("nan", [False, True])
def test_recipe_operations_match_reference(nan: bool) -> None:
    df = selection_profiles(nan=nan)
    ops = ["variance_threshold", "correlation_threshold", "drop_na_columns", "blocklist"]
    ref_ops = ["frequency_threshold", "correlation_threshold", "drop_na_columns", "blocklist"]
    pd.testing.assert_frame_equal(feature_select(df, operations=ops), reference(df, operation=ref_ops))
    pd.testing.assert_frame_equal(
        feature_select(df, operations=ops, samples=NEGCON), reference(df, operation=ref_ops, samples=NEGCON)
    )


def test_correlation_exact_duplicates_resolve_like_reference() -> None:
    # Exact duplicates (CellProfiler has e.g. Location_Center_X and AreaShape_Center_X)
    # tie on everything but rounding; without missing values the correlation matrix and
    # its column sums are computed as the reference computes them, so the same member
    # of each pair is dropped.
    df = selection_profiles(nan=False)
    df["Cells_Location_Center_X"] = df["Cells_AreaShape_Area_0"]
    df["Cells_AreaShape_Center_X"] = df["Cells_AreaShape_Area_0"]
    df["Nuclei_scaled"] = df["Cytoplasm_Intensity_MeanIntensity_DNA_1"] * 100
    for threshold in (0.9, 0.6):
        pd.testing.assert_frame_equal(
            feature_select(df, operations="correlation_threshold", corr_threshold=threshold),
            reference(df, operation="correlation_threshold", corr_threshold=threshold),
        )


def test_correlation_hand_computed() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=50)
    df = pd.DataFrame(
        {
            "Cells_a": a,
            "Cells_b": a + rng.normal(scale=0.01, size=50),  # ~ a
            "Cells_neg": -a,  # anticorrelated: kept
            "Cells_free": rng.normal(size=50),
        }
    )
    # a and b tie except for noise; the one with the larger sum of |r| is dropped
    sums = df.corr().abs().sum()
    loser = "Cells_a" if sums["Cells_a"] > sums["Cells_b"] else "Cells_b"
    assert excluded_features(df, operations=["correlation_threshold"]) == [loser]


def test_frequency_hand_computed() -> None:
    n = 100
    df = pd.DataFrame(
        {
            "Cells_dominated": [1.0] * 96 + [2.0] * 4,  # 4/96 < 0.05: dropped
            "Cells_balanced": [1.0] * 50 + [2.0] * 50,  # 2 values / 100 rows >= 0.01: kept
            "Cells_single": [5.0] * n,  # one value: dropped
            "Cells_few": [1.0] * 95 + [np.nan] * 5,  # one value among NaN: dropped
            "Cells_many": np.arange(n, dtype=float),
        }
    )
    assert excluded_features(df, operations=["frequency_threshold"]) == [
        "Cells_dominated",
        "Cells_single",
        "Cells_few",
    ]
    assert excluded_features(df, operations="frequency_threshold", unique_cut=0.03) == [
        "Cells_dominated",
        "Cells_balanced",
        "Cells_single",
        "Cells_few",
    ]


def test_operations_run_in_order_on_what_is_left() -> None:
    df = selection_profiles()
    ops = ["drop_outliers", "correlation_threshold", "drop_na_columns"]
    ours = feature_select(df, operations=ops, outlier_cutoff=5)
    pd.testing.assert_frame_equal(ours, reference(df, operation=ops, outlier_cutoff=5))
    reversed_ops = ops[::-1]
    pd.testing.assert_frame_equal(
        feature_select(df, operations=reversed_ops, outlier_cutoff=5),
        reference(df, operation=reversed_ops, outlier_cutoff=5),
    )


def test_selected_and_excluded_apply_to_each_plate() -> None:
    # batch level: fit on the plates together, then drop the same features from each
    df = selection_profiles(plates=3)
    ops = ["variance_threshold", "correlation_threshold"]
    dropped = excluded_features(df, operations=ops)
    kept = selected_features(df, operations=ops)
    features = infer_features(df)
    assert set(dropped) | set(kept) == set(features) and not set(dropped) & set(kept)
    whole = feature_select(df, operations=ops)
    for _, plate in df.groupby("Metadata_Plate"):
        pd.testing.assert_frame_equal(plate.drop(columns=dropped), whole.loc[plate.index])


def test_explicit_feature_list_and_image_features() -> None:
    df = selection_profiles()
    df["Image_Granularity_1_DNA"] = 2.0
    feats = [c for c in df.columns if c.startswith("Cells")][:10]
    pd.testing.assert_frame_equal(
        feature_select(df, features=feats, operations="frequency_threshold"),
        reference(df, features=feats, operation="frequency_threshold"),
    )
    pd.testing.assert_frame_equal(
        feature_select(df, image_features=True, operations="frequency_threshold"),
        reference(df, image_features=True, operation="frequency_threshold"),
    )
    assert "Image_Granularity_1_DNA" not in feature_select(
        df, image_features=True, operations="frequency_threshold"
    )


def test_blocklist_file_and_default() -> None:
    names = default_blocklist()
    assert len(names) == 55 and len(set(names)) == 55
    assert all(n.startswith("Nuclei_") for n in names)
    with open(pycytominer.__path__[0] + "/data/blocklist_features.txt") as fh:
        assert names == [line.strip() for line in fh.read().splitlines()[1:] if line.strip()]


def test_custom_blocklist(tmp_path: Path) -> None:
    df = selection_profiles()
    path = tmp_path / "blocklist.txt"
    path.write_text("blocklist\nCells_AreaShape_Area_0\nCells_not_there\n")
    ours = feature_select(df, operations="blocklist", blocklist_file=str(path))
    assert "Cells_AreaShape_Area_0" not in ours
    assert "Nuclei_Granularity_14_ER" in ours  # a given file replaces the default list
    assert list(feature_select(df, operations="blocklist", blocklist=["Cells_AreaShape_Area_0"]).columns) == list(
        ours.columns
    )


def test_blocklist_only_touches_the_selected_features() -> None:
    # Deliberate difference: the reference drops blocklisted columns even when they are
    # not among the features being selected; here only features are ever dropped.
    df = selection_profiles()
    feats = [c for c in df.columns if c.startswith("Cells")]
    ours = feature_select(df, features=feats, operations="blocklist")
    ref = reference(df, features=feats, operation="blocklist")
    assert "Nuclei_Granularity_14_ER" in ours.columns
    assert "Nuclei_Granularity_14_ER" not in ref.columns


def test_noise_removal_groups_by_position() -> None:
    # Deliberate difference: with per-row labels, the reference aligns the labels on the
    # DataFrame's index labels, so a frame whose index is not 0..n-1 (e.g. a subset or
    # a concatenation) gets its rows grouped wrongly. Labels follow row order here.
    rng = np.random.default_rng(0)
    groups = np.repeat([f"BRD-{i}" for i in range(12)], 8)
    effect = rng.normal(scale=5, size=(12, 6))
    x = np.repeat(effect, 8, axis=0) + rng.normal(scale=0.1, size=(96, 6))
    x[:, :3] += rng.normal(scale=3, size=(96, 3))  # noisy within groups
    df = pd.DataFrame(x, columns=[f"Cells_f{i}" for i in range(6)])
    df.insert(0, "Metadata_broad_sample", groups)
    df = df.sample(frac=1, random_state=3)
    labels = df["Metadata_broad_sample"].tolist()
    opts = {"operations": ["noise_removal"], "noise_removal_stdev_cutoff": 1.0}
    ours = feature_select(df, noise_removal_perturb_groups=labels, **opts)  # type: ignore[arg-type]
    assert list(ours.columns) == ["Metadata_broad_sample", "Cells_f3", "Cells_f4", "Cells_f5"]
    by_column = feature_select(df, noise_removal_perturb_groups="Metadata_broad_sample", **opts)  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(ours, by_column)
    ref_kwargs = {"operation": "noise_removal", "noise_removal_perturb_groups": labels, "noise_removal_stdev_cutoff": 1.0}
    assert list(reference(df.reset_index(drop=True), **ref_kwargs).columns) == list(ours.columns)
    assert list(reference(df, **ref_kwargs).columns) == ["Metadata_broad_sample"]  # misgrouped


def test_variance_filter_can_drop_everything() -> None:
    # Deliberate difference: the reference raises a bare ValueError when no feature
    # passes min_variance; here the features are simply all dropped.
    df = pd.DataFrame({"Metadata_Well": ["A01", "A02"], "Cells_a": [1.0, 1.0], "Cells_b": [2.0, 2.0]})
    with pytest.raises(ValueError):
        reference(df, operation="variance_threshold")
    out = feature_select(df, operations="variance_threshold", variance_threshold_meaning="variance")
    assert list(out.columns) == ["Metadata_Well"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"operations": ["variance"]}, ConfigError, "frequency_threshold"),
        ({"operations": ["variance_threshold"], "variance_threshold_meaning": "old"}, ConfigError, "frequency"),
        ({"features": ["Cells_nope"]}, ConfigError, "Cells_nope"),
        ({"corr_method": "cosine", "operations": "correlation_threshold"}, ConfigError, "pearson"),
        ({"corr_threshold": 2.0}, ConfigError, "corr_threshold"),
        ({"samples": "Metadata_nope == 1"}, ConfigError, "samples"),
        ({"operations": "noise_removal"}, ConfigError, "noise_removal_perturb_groups"),
        (
            {"operations": "noise_removal", "noise_removal_perturb_groups": "Metadata_broad_sample"},
            ConfigError,
            "noise_removal_stdev_cutoff",
        ),
        (
            {"operations": "noise_removal", "noise_removal_perturb_groups": ["a"], "noise_removal_stdev_cutoff": 1},
            ConfigError,
            "one label per row",
        ),
        ({"operations": "blocklist", "blocklist_file": "/nonexistent/blocklist.txt"}, InputError, "blocklist"),
    ],
)
def test_user_errors(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        feature_select(selection_profiles(n_features=24), **kwargs)  # type: ignore[arg-type]


def test_correlation_threshold_keeps_one_of_each_group_on_a_wide_plate() -> None:
    # 2,000 features x 384 wells, each copy correlating ~0.96 with one base feature: one
    # feature per correlated group is kept (speed is measured in bench/, not here).
    rng = np.random.default_rng(0)
    base = rng.normal(size=(384, 400))
    copies = base[:, rng.integers(0, 400, 1600)] + rng.normal(scale=0.3, size=(384, 1600))
    x = np.hstack([base, copies])
    df = pd.DataFrame(x, columns=[f"Cells_f{i}" for i in range(2000)])
    kept = selected_features(df, operations=["correlation_threshold"])
    assert 350 <= len(kept) <= 450


def test_correlation_with_missing_values_is_vectorised() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=(384, 400))
    x = np.hstack([base, base[:, rng.integers(0, 400, 1600)] + rng.normal(scale=0.3, size=(384, 1600))])
    x[::50, ::7] = np.nan  # pairwise-complete correlations
    df = pd.DataFrame(x, columns=[f"Cells_f{i}" for i in range(2000)])
    kept = selected_features(df, operations=["correlation_threshold"])
    assert 350 <= len(kept) <= 450


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16))
def test_column_order_does_not_matter(seed: int) -> None:
    # the rule depends on column order only through exact ties of the sums of |r|,
    # which random data does not produce
    df = selection_profiles(plates=1, n_features=30, seed=seed)
    features = infer_features(df)
    order = list(np.random.default_rng(seed).permutation(features))
    ops = ["frequency_threshold", "drop_na_columns", "correlation_threshold", "drop_outliers"]
    a = set(excluded_features(df, operations=ops, corr_threshold=0.5))
    b = set(excluded_features(df[[*df.columns[:4], *order]], operations=ops, corr_threshold=0.5))
    assert a == b


def _with_speckles(df: pd.DataFrame) -> pd.DataFrame:
    """Extra compartments' features: a constant, a duplicate and informative ones."""
    rng = np.random.default_rng(3)
    n = len(df)
    extra = pd.DataFrame(
        {
            "Speckles_AreaShape_Area": rng.normal(size=n),
            "Speckles_Intensity_MeanIntensity_DNA": np.full(n, 2.0),  # constant: variance drops it
            "Speckles_Texture_Contrast_DNA": rng.normal(size=n),
            "Cells_Cellpose3_AreaShape_Area": rng.normal(size=n),
        },
        index=df.index,
    )
    extra["Speckles_AreaShape_Perimeter"] = extra["Speckles_AreaShape_Area"] * 3 + 1  # correlated
    return pd.concat([df, extra], axis="columns")


@pytest.mark.parametrize("compartments", [["cells", "cytoplasm", "nuclei", "speckles"],
                                          ["Cells", "Cytoplasm", "Nuclei", "Speckles"]])
def test_extra_compartments_are_selected_like_the_rest(compartments: list[str]) -> None:
    df = _with_speckles(selection_profiles(n_features=30))
    ops = ["variance_threshold", "correlation_threshold", "drop_na_columns", "blocklist"]
    ours = feature_select(df, operations=ops, compartments=compartments)
    features = [c for c in df.columns if not c.startswith("Metadata_")]
    ref_ops = ["frequency_threshold", *ops[1:]]
    pd.testing.assert_frame_equal(ours, reference(df, operation=ref_ops, features=features))
    assert "Speckles_Texture_Contrast_DNA" in ours.columns
    assert "Speckles_Intensity_MeanIntensity_DNA" not in ours.columns
    # by default the extra compartment is not a feature: it is left alone, not dropped
    default = feature_select(df, operations=ops)
    assert "Speckles_Intensity_MeanIntensity_DNA" in default.columns


def test_each_dropped_feature_names_its_operation() -> None:
    df = _with_speckles(selection_profiles(n_features=30))
    ops = ["variance_threshold", "correlation_threshold", "drop_na_columns", "blocklist"]
    compartments = ["Cells", "Cytoplasm", "Nuclei", "Speckles"]
    dropped = dropped_features(df, operations=ops, compartments=compartments)
    accounts: list[FeatureAccount] = []
    out = feature_select(df, operations=ops, compartments=compartments, on_account=accounts.append)
    (account,) = accounts
    assert account.dropped == dropped
    assert set(dropped.values()) <= set(ops)
    # each operation alone, on what the previous ones left, drops exactly its features
    left = infer_features(df, compartments=compartments)
    for op in ops:
        gone = excluded_features(df, features=left, operations=[op])
        assert sorted(gone) == sorted(f for f, o in dropped.items() if o == op), op
        left = [f for f in left if f not in gone]
    assert account.features_out == tuple(left)
    assert [c for c in out.columns if not c.startswith("Metadata_")] == left
    assert len(account.features_in) == len(account.features_out) + len(dropped)
    assert dropped["Speckles_Intensity_MeanIntensity_DNA"] == "variance_threshold"
    assert dropped["Nuclei_Granularity_14_ER"] == "blocklist"
    assert account.as_dict()["dropped"] == dropped
    assert "feature_select:" in account.summary() and "by blocklist" in account.summary()


@pytest.mark.parametrize(
    "ops",
    [["variance_threshold"], ["frequency_threshold"], ["correlation_threshold"],
     ["variance_threshold", "correlation_threshold", "drop_na_columns", "blocklist"]],
)
@pytest.mark.parametrize("meaning", ["frequency", "variance"])
def test_one_well_table_is_an_error(ops: list[str], meaning: str) -> None:
    # Our choice (listed under differences): the frequency filter on one row drops
    # every feature in the reference.
    df = selection_profiles(n_features=24, plates=1).iloc[[5]]
    if ops == ["frequency_threshold"]:
        assert list(reference(df, operation="frequency_threshold").columns) == list(df.columns[:4])
    with pytest.raises(InputError, match="at least 2 rows") as info:
        feature_select(df, operations=ops, variance_threshold_meaning=meaning)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


def test_one_fit_row_from_samples_is_an_error() -> None:
    df = selection_profiles(n_features=24, plates=1)
    df.loc[df.index[1:], "Metadata_control_type"] = "trt"
    with pytest.raises(InputError, match="got 1"):
        feature_select(df, operations="variance_threshold", samples=NEGCON)


def test_one_well_operations_that_need_no_comparison_still_work() -> None:
    df = selection_profiles(n_features=24, plates=1).iloc[[5]]
    out = feature_select(df, operations=["blocklist", "drop_na_columns", "drop_outliers"])
    assert "Nuclei_Granularity_14_ER" not in out.columns and out.shape[1] == df.shape[1] - 2


def test_string_blocklist_is_one_feature() -> None:
    df = selection_profiles(n_features=24)
    for one in ("C", "N", "_"):
        df[one] = 1.0  # one-letter columns that a set of characters would match
    features = [c for c in df.columns if not c.startswith("Metadata_")]
    ours = feature_select(df, features=features, operations="blocklist", blocklist="Cells_AreaShape_Area_0")
    assert "Cells_AreaShape_Area_0" not in ours.columns
    assert {"C", "N", "_"} <= set(ours.columns)
    assert "Nuclei_Granularity_14_ER" in ours.columns  # a given list replaces the default
    ref = reference(df, features=features, operation="blocklist", blocklist="Cells_AreaShape_Area_0")
    assert list(ours.columns) == list(ref.columns)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_variance": "0.1", "operations": "variance_threshold", "variance_threshold_meaning": "variance"},
        {"min_variance": None},
        {"freq_cut": "x"},
        {"unique_cut": [0.1]},
        {"na_cutoff": "0.05"},
        {"corr_threshold": "0.9"},
        {"corr_method": 1},
        {"outlier_cutoff": "500"},
        {"noise_removal_stdev_cutoff": "1", "operations": "noise_removal",
         "noise_removal_perturb_groups": "Metadata_broad_sample"},
        {"operations": 3},
        {"operations": [1, 2]},
        {"blocklist": 5, "operations": "blocklist"},
        {"blocklist": [1], "operations": "blocklist"},
        {"blocklist_file": 5, "operations": "blocklist"},
        {"image_features": "False"},
        {"samples": None},
        {"sample_filter": "Metadata_Plate"},
        {"features": 3},
        {"compartments": 7},
        {"freq_cut": True},
        {"freq_cut": float("nan")},
    ],
)
def test_wrong_types_are_config_errors(kwargs: dict[str, object]) -> None:
    df = selection_profiles(n_features=24)
    for call in (feature_select, excluded_features, selected_features, dropped_features):
        with pytest.raises(ConfigError) as info:
            call(df, **kwargs)
        assert isinstance(info.value, ValueError)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    ops=st.lists(st.sampled_from(["variance_threshold", "correlation_threshold", "drop_na_columns",
                                  "blocklist", "drop_outliers"]), min_size=1, max_size=5, unique=True),
    extra=st.integers(0, 3),
)
def test_account_adds_up(seed: int, ops: list[str], extra: int) -> None:
    # every feature in is either out or dropped by exactly one of the operations asked for
    df = selection_profiles(n_features=24, plates=1, seed=seed)
    rng = np.random.default_rng(seed)
    for i in range(extra):
        df[f"Speckles_f{i}"] = rng.choice([0.0, 1.0, rng.normal()], size=len(df))
    compartments = ["Cells", "Cytoplasm", "Nuclei", "Speckles"]
    accounts: list[FeatureAccount] = []
    out = feature_select(df, operations=ops, compartments=compartments, on_account=accounts.append)
    (account,) = accounts
    assert set(account.features_out).isdisjoint(account.dropped)
    assert set(account.features_in) == set(account.features_out) | set(account.dropped)
    assert set(account.dropped.values()) <= set(ops)
    assert list(out.columns) == [c for c in df.columns if c not in account.dropped]


def test_real_extra_object_table_carries_through_the_steps(tmp_path: Path, shared_data: Path) -> None:
    # CellProfiler's ExampleHuman output has a fourth object table, PH3 (22 objects)
    from cytoprofile import io
    from cytoprofile.annotate import annotate
    from cytoprofile.collate import collate_plate
    from cytoprofile.consensus import consensus
    from cytoprofile.normalize import normalize

    from .conftest import link_sites

    link_sites(tmp_path / "ws", "B", "P", {"P-A01-1": shared_data / "examplehuman"})
    compartments = ["Cells", "Cytoplasm", "Nuclei", "PH3"]
    result = collate_plate(tmp_path / "ws", "B", "P", compartments=compartments, image_features=False)
    profiles = io.read_table(result.outputs["profiles"])
    ph3 = [c for c in profiles.columns if c.startswith("PH3_")]
    assert len(ph3) >= 3
    platemap = pd.DataFrame({"plate_map_name": ["PM"], "well_position": ["A01"], "broad_sample": ["DMSO"]})
    accounts: list[FeatureAccount] = []
    step = annotate(profiles, platemap, compartments=compartments)
    step = normalize(step, compartments=compartments, on_account=accounts.append)
    step = feature_select(step, operations=["blocklist", "drop_na_columns"], compartments=compartments,
                          on_account=accounts.append)
    step = consensus(step, replicate_columns=["Metadata_broad_sample"], compartments=compartments,
                     on_account=accounts.append)
    kept = [c for c in ph3 if c in step.columns]
    assert kept, "PH3 features vanished"
    for account in accounts:
        assert set(ph3) <= set(account.features_in)
        assert not {f for f, op in account.dropped.items() if op == "not_a_feature"}
    dropped_ph3 = {f: op for f, op in accounts[1].dropped.items() if f.startswith("PH3_")}
    assert set(ph3) == set(kept) | set(dropped_ph3)  # every PH3 feature kept or dropped by name


@pytest.mark.parametrize(("op", "opts", "ref_op", "ref_opts"), [c for c in CASES if c[1]])
def test_each_operation_is_reachable_from_the_command(
    op: str, opts: dict[str, object], ref_op: str, ref_opts: dict[str, object], tmp_path: Path
) -> None:
    """Every operation the command offers can be configured from its flags (and gives the reference's result)."""
    from cytoprofile.cli import main

    df = selection_profiles()
    src, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    df.to_parquet(src)
    flags = [x for k, v in opts.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    argv = ["feature-select", str(src), str(out), "--operations", op, "--samples", NEGCON, *flags, "-q"]
    assert main(argv) == 0
    ref = reference(df, operation=[ref_op], samples=NEGCON, **ref_opts)
    pd.testing.assert_frame_equal(pd.read_parquet(out), ref)


def test_pairwise_pearson_with_nan_holds_no_extra_features_by_features_array() -> None:
    import tracemalloc

    from cytoprofile.correlation import pairwise_pearson_nan

    d, n = 1500, 40  # many features, few rows: the d x d sums are what is held
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d))
    x[rng.uniform(size=x.shape) < 0.2] = np.nan
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(d)])
    tracemalloc.start()
    try:
        pairwise_pearson_nan(frame, list(frame.columns))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 6.6 * d * d * 8, peak / (d * d * 8)  # the four sums, one product, blocks: no fifth array


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), d=st.integers(2, 12), n=st.integers(3, 30), share=st.floats(0.0, 0.5))
def test_pairwise_pearson_with_nan_matches_pandas(seed: int, d: int, n: int, share: float) -> None:
    from cytoprofile.correlation import pairwise_pearson_nan

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    x[rng.uniform(size=x.shape) < share] = np.nan
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(d)])
    ours = pairwise_pearson_nan(frame, list(frame.columns))
    theirs = frame.corr(min_periods=2).to_numpy()
    both = np.isfinite(ours) & np.isfinite(theirs)
    np.testing.assert_allclose(ours[both], theirs[both], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("threads", [1, 2])
def test_frequency_filter_over_many_column_blocks_equals_the_reference(monkeypatch: pytest.MonkeyPatch, threads: int) -> None:
    """20,000 rows make blocks of 13 columns, spread over threads: the answer is the reference's."""
    from cytoprofile.processing import columns

    monkeypatch.setattr(columns, "_MAX_THREADS", threads)
    rng = np.random.default_rng(11)
    values = rng.normal(size=(20_000, 60))
    values[:, ::7] = rng.integers(0, 3, size=(20_000, 9))  # few distinct values: dropped
    values[:, 5] = np.where(rng.random(20_000) < 0.01, 1.0, 0.0)  # one rare value: dropped
    values[rng.random(values.shape) < 0.01] = np.nan
    df = pd.DataFrame(values, columns=[f"Cells_f{i}" for i in range(60)])
    ours = feature_select(df, operations="frequency_threshold")
    expected = reference(df, operation="frequency_threshold")
    assert list(ours.columns) == list(expected.columns) and len(ours.columns) < 60


def test_a_binary_blocklist_file_is_one_line(tmp_path: Path) -> None:
    """A SQLite file given as the blocklist: a UnicodeDecodeError that printed the whole file (exit 3)."""
    from cytoprofile.feature_select import feature_select

    path = tmp_path / "plate.sqlite"
    path.write_bytes(b"SQLite format 3\x00" + b"\xff\x00" * 50_000)
    df = pd.DataFrame({"Metadata_Well": ["A01", "A02"], "Cells_a": [1.0, 2.0]})
    with pytest.raises(InputError, match="is not UTF-8 text") as info:
        feature_select(df, operations=["blocklist"], blocklist_file=path)
    assert len(str(info.value)) < 300
