"""annotate: compared with the reference implementation (pycytominer 1.7.1) on the same input."""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cytoprofile.annotate import annotate
from cytoprofile.cli import main
from cytoprofile.errors import ConfigError, InputError, MetadataError
from cytoprofile.vocabulary import prefix_metadata

from .profiles import WELLS, plate_profiles
from .reference import pycytominer_step

pycytominer = pytest.importorskip("pycytominer")
reference = partial(pycytominer_step, "annotate")


def make_platemap(name: str = "C-7161-01-LM6-006", seed: int = 0) -> pd.DataFrame:
    """A plate map as read from the tab-separated file (unprefixed handbook columns)."""
    rng = np.random.default_rng(seed)
    samples = [np.nan if i % 6 == 0 else f"BRD-K{i % 20:08d}-001-01-{i % 3}" for i in range(96)]
    return pd.DataFrame(
        {
            "plate_map_name": name,
            "well_position": WELLS,
            "broad_sample": samples,
            "mg_per_ml": rng.uniform(0, 5, 96).round(3),
            "mmoles_per_liter": rng.choice([0.1, 1.0, 10.0], 96),
            "solvent": "DMSO",
            "control_type": ["negcon" if i % 6 == 0 else "" for i in range(96)],
        }
    )


def test_matches_reference() -> None:
    profiles, platemap = plate_profiles(), make_platemap()
    ours = annotate(profiles, platemap)
    pd.testing.assert_frame_equal(ours, reference(profiles, platemap))
    assert list(ours.columns[:8]) == [
        "Metadata_plate_map_name",
        "Metadata_broad_sample",
        "Metadata_mg_per_ml",
        "Metadata_mmoles_per_liter",
        "Metadata_solvent",
        "Metadata_control_type",
        "Metadata_Plate",
        "Metadata_Well",
    ]
    assert "Metadata_well_position" not in ours.columns
    assert len(ours) == 96


def test_inner_join_and_plate_map_order() -> None:
    # profiles miss some wells, the plate map misses others, both in scrambled order
    profiles = plate_profiles().sample(frac=1, random_state=0).iloc[:80]
    platemap = make_platemap().sample(frac=1, random_state=1).iloc[10:]
    ours = annotate(profiles, platemap, unmatched_wells="drop")
    pd.testing.assert_frame_equal(ours, reference(profiles, platemap))
    expected = [w for w in platemap["well_position"] if w in set(profiles["Metadata_Well"])]
    assert ours["Metadata_Well"].tolist() == expected


def test_name_clash_gets_platemap_suffix() -> None:
    profiles = plate_profiles()
    platemap = make_platemap().assign(Plate="from-map", Object_Count=1)
    ours = annotate(profiles, platemap)
    pd.testing.assert_frame_equal(ours, reference(profiles, platemap))
    assert {"Metadata_Plate_platemap", "Metadata_Object_Count_platemap"} <= set(ours.columns)
    assert (ours["Metadata_Plate"] == "SQ00015167").all()


def test_already_prefixed_plate_map_and_no_prefixing() -> None:
    profiles = plate_profiles()
    platemap = make_platemap()
    platemap.columns = pd.Index(prefix_metadata(list(platemap.columns)))
    pd.testing.assert_frame_equal(annotate(profiles, platemap), reference(profiles, platemap))
    kwargs = dict(add_metadata_id_to_platemap=False)
    pd.testing.assert_frame_equal(
        annotate(profiles, platemap, **kwargs),  # type: ignore[arg-type]
        reference(profiles, platemap, **kwargs),
    )


def test_custom_join_columns() -> None:
    profiles = plate_profiles().rename(columns={"Metadata_Well": "Metadata_well_position"})
    platemap = make_platemap()
    kwargs = dict(join_on=["Metadata_well_position", "Metadata_well_position"])
    ours = annotate(profiles, platemap, **kwargs)  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(ours, reference(profiles, platemap, **kwargs))
    assert "Metadata_well_position" in ours.columns


def test_cellprofiler_image_metadata_renamed() -> None:
    profiles = plate_profiles().rename(columns={"Metadata_Plate": "Image_Metadata_Plate"})
    profiles["Image_Metadata_Site"] = 1
    profiles["Image_Granularity_1_DNA"] = 0.5
    platemap = make_platemap()
    ours = annotate(profiles, platemap)
    pd.testing.assert_frame_equal(ours, reference(profiles, platemap))
    assert {"Metadata_Plate", "Metadata_Site"} <= set(ours.columns)
    assert ours.columns[-1] == "Image_Granularity_1_DNA"  # features stay after metadata
    kept = annotate(profiles, platemap, clean_cellprofiler=False)
    pd.testing.assert_frame_equal(kept, reference(profiles, platemap, clean_cellprofiler=False))
    assert "Image_Metadata_Plate" in kept.columns


def make_external() -> pd.DataFrame:
    samples = sorted({f"BRD-K{i % 20:08d}-001-01-{i % 3}" for i in range(96) if i % 6})
    return pd.DataFrame(
        {
            "broad_sample": samples[:-3],  # some compounds lack external metadata
            "pert_iname": [f"compound-{i}" for i in range(len(samples) - 3)],
            "moa": "kinase inhibitor",
            "solvent": "water",  # clashes with the plate map's solvent
        }
    )


def test_external_metadata_matches_reference() -> None:
    profiles, platemap, external = plate_profiles(), make_platemap(), make_external()
    key = ["Metadata_broad_sample"]
    ours = annotate(profiles, platemap, external_metadata=external, external_join_left=key, external_join_right=key)
    ref = reference(profiles, platemap, external_metadata=external, external_join_on=key)
    pd.testing.assert_frame_equal(ours, ref)
    assert {"Metadata_pert_iname", "Metadata_moa", "Metadata_solvent_external"} <= set(ours.columns)
    assert len(ours) == 96  # left join: wells without external metadata stay
    assert ours["Metadata_pert_iname"].isna().sum() > 0
    # the right key defaults to the left one
    pd.testing.assert_frame_equal(annotate(profiles, platemap, external_metadata=external, external_join_left=key), ours)


def test_external_metadata_with_a_different_key_name() -> None:
    profiles, platemap = plate_profiles(), make_platemap()
    external = make_external().rename(columns={"broad_sample": "compound"})
    ours = annotate(
        profiles,
        platemap,
        external_metadata=external,
        external_join_left="Metadata_broad_sample",
        external_join_right="Metadata_compound",
    )
    ref = reference(
        profiles, platemap, external_metadata=make_external(), external_join_on=["Metadata_broad_sample"]
    )
    assert ours["Metadata_pert_iname"].equals(ref["Metadata_pert_iname"])
    assert "Metadata_compound" in ours.columns


def test_format_broad_cmap_matches_reference() -> None:
    profiles, platemap = plate_profiles(), make_platemap()
    platemap["pert_iname"] = "x"
    ours = annotate(profiles, platemap, format_broad_cmap=True)
    pd.testing.assert_frame_equal(ours, reference(profiles, platemap, format_broad_cmap=True))
    assert {"Metadata_pert_id", "Metadata_pert_type", "Metadata_cell_id"} <= set(ours.columns)


def test_per_site_profiles_follow_plate_map_then_profile_order() -> None:
    profiles = pd.concat([plate_profiles().assign(Metadata_Site=s) for s in (2, 1)], ignore_index=True)
    platemap = make_platemap().iloc[::-1]
    ours = annotate(profiles, platemap)
    pd.testing.assert_frame_equal(ours, reference(profiles, platemap))
    assert ours["Metadata_Well"].iloc[:2].tolist() == ["H12", "H12"]
    assert ours["Metadata_Site"].iloc[:2].tolist() == [2, 1]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"join_on": ["Metadata_well_position"]}, ConfigError, "join_on"),
        ({"join_on": ["Metadata_nope", "Metadata_Well"]}, InputError, "plate map"),
        ({"join_on": ["Metadata_well_position", "Metadata_nope"]}, InputError, "profiles"),
        ({"external_metadata": pd.DataFrame({"broad_sample": ["x"]})}, ConfigError, "external_join_left"),
        (
            {"external_metadata": pd.DataFrame({"x": ["y"]}), "external_join_left": "Metadata_broad_sample"},
            InputError,
            "same name",
        ),
        (
            {"external_metadata": pd.DataFrame({"x": ["y"]}), "external_join_left": "Metadata_nope"},
            InputError,
            "plate map column",
        ),
    ],
)
def test_user_errors(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        annotate(plate_profiles(), make_platemap(), **kwargs)  # type: ignore[arg-type]


def test_broad_cmap_needs_broad_sample() -> None:
    with pytest.raises(InputError, match="broad_sample"):
        annotate(plate_profiles(), make_platemap().drop(columns="broad_sample"), format_broad_cmap=True)


def test_inputs_not_modified() -> None:
    profiles, platemap = plate_profiles(), make_platemap()
    before_p, before_m = profiles.copy(), platemap.copy()
    annotate(profiles, platemap, external_metadata=make_external(), external_join_left="Metadata_broad_sample")
    pd.testing.assert_frame_equal(profiles, before_p)
    pd.testing.assert_frame_equal(platemap, before_m)


def _unmatched_cases() -> list[tuple[pd.DataFrame, pd.DataFrame, list[str]]]:
    """(profiles, plate map, wells the plate map lacks) in the shapes seen in the field."""
    profiles, platemap = plate_profiles(), make_platemap()
    partial = platemap.iloc[:39]  # a plate map that covers 39 of 96 wells
    unpadded = platemap.assign(well_position=[f"{w[0]}{int(w[1:])}" for w in WELLS])  # A1, not A01
    per_site = pd.concat([profiles.assign(Metadata_Site=s) for s in (1, 2)], ignore_index=True)
    stray = pd.concat([profiles, profiles.iloc[[0]].assign(Metadata_Well="I01")], ignore_index=True)
    return [
        (profiles, partial, WELLS[39:]),
        (profiles, unpadded, [w for w in WELLS if w[1] == "0"]),
        (per_site, partial, WELLS[39:]),
        (stray, platemap, ["I01"]),
    ]


@pytest.mark.parametrize("case", range(4))
def test_wells_missing_from_the_plate_map_are_an_error(case: int) -> None:
    profiles, platemap, missing = _unmatched_cases()[case]
    with pytest.raises(MetadataError) as info:
        annotate(profiles, platemap)
    message = str(info.value)
    assert f"lacks {len(missing)} well(s)" in message and "unmatched_wells: drop" in message
    assert all(w in message for w in missing[:10])
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("case", range(4))
def test_unmatched_wells_drop_says_how_many(case: int, caplog: pytest.LogCaptureFixture) -> None:
    profiles, platemap, missing = _unmatched_cases()[case]
    with caplog.at_level("WARNING", logger="cytoprofile"):
        ours = annotate(profiles, platemap, unmatched_wells="drop")
    pd.testing.assert_frame_equal(ours, reference(profiles, platemap))  # the reference drops silently
    assert f"{len(missing)} of {profiles['Metadata_Well'].nunique()} well(s) dropped" in caplog.text
    rows = int(profiles["Metadata_Well"].isin(missing).sum())
    assert f"({rows} profile row(s))" in caplog.text
    assert len(ours) == len(profiles) - rows


def test_missing_well_values_are_unmatched() -> None:
    profiles = plate_profiles()
    profiles.loc[3, "Metadata_Well"] = None
    with pytest.raises(MetadataError, match="lacks 1 well"):
        annotate(profiles, make_platemap())
    assert len(annotate(profiles, make_platemap(), unmatched_wells="drop")) == 95


def test_plate_map_wells_without_profiles_are_fine() -> None:
    profiles = plate_profiles().iloc[:40]
    ours = annotate(profiles, make_platemap())
    assert len(ours) == 40


@pytest.mark.parametrize("repeats", [[0], [0, 1, 2], list(range(24))])
def test_external_repeated_key_is_refused(repeats: list[int]) -> None:
    profiles, platemap, external = plate_profiles(), make_platemap(), make_external()
    again = external.iloc[repeats].assign(pert_iname="another name")
    doubled = pd.concat([external, again], ignore_index=True)
    key = "Metadata_broad_sample"
    ref = reference(profiles, platemap, external_metadata=doubled, external_join_on=[key])
    assert len(ref) > 96  # the reference repeats wells
    with pytest.raises(MetadataError) as info:
        annotate(profiles, platemap, external_metadata=doubled, external_join_left=key)
    message = str(info.value)
    assert f"96 -> {len(ref)} rows" in message
    assert all(s in message for s in external["broad_sample"].iloc[repeats[:10]])


def test_external_identical_or_unused_repeats_are_harmless() -> None:
    profiles, platemap, external = plate_profiles(), make_platemap(), make_external()
    key = "Metadata_broad_sample"
    expected = annotate(profiles, platemap, external_metadata=external, external_join_left=key)
    same = pd.concat([external, external.iloc[:5]], ignore_index=True)
    unused = pd.concat([external, pd.DataFrame({"broad_sample": ["BRD-X", "BRD-X"], "pert_iname": ["a", "b"],
                                                "moa": "m", "solvent": "s"})], ignore_index=True)
    for ext in (same, unused):
        out = annotate(profiles, platemap, external_metadata=ext, external_join_left=key)
        pd.testing.assert_frame_equal(out, expected)


def test_extra_compartments_in_external_metadata_keep_their_names() -> None:
    profiles, platemap = plate_profiles(), make_platemap()
    external = make_external().assign(Speckles_reference_area=1.0)
    key = "Metadata_broad_sample"
    out = annotate(profiles, platemap, external_metadata=external, external_join_left=key,
                   compartments=["cells", "cytoplasm", "nuclei", "speckles"])
    assert "Speckles_reference_area" in out.columns
    default = annotate(profiles, platemap, external_metadata=external, external_join_left=key)
    assert "Metadata_Speckles_reference_area" in default.columns


@pytest.mark.parametrize(
    "kwargs",
    [
        {"join_on": "ab"},
        {"join_on": 5},
        {"unmatched_wells": "warn"},
        {"unmatched_wells": None},
        {"add_metadata_id_to_platemap": "False"},
        {"format_broad_cmap": 1},
        {"clean_cellprofiler": "yes"},
        {"external_metadata": make_external(), "external_join_left": 3},
        {"compartments": 3, "external_metadata": make_external(), "external_join_left": "Metadata_broad_sample"},
    ],
)
def test_wrong_types_are_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as info:
        annotate(plate_profiles(), make_platemap(), **kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


def _write_inputs(tmp_path: Path, platemap: pd.DataFrame) -> tuple[Path, Path]:
    profiles_path = tmp_path / "SQ00015167.csv"
    plate_profiles().to_csv(profiles_path, index=False)
    map_path = tmp_path / "C-7161-01-LM6-006.txt"
    platemap.to_csv(map_path, sep="\t", index=False)
    return profiles_path, map_path


def test_command_refuses_wells_missing_from_the_plate_map(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profiles_path, map_path = _write_inputs(tmp_path, make_platemap().iloc[:39])
    out = tmp_path / "augmented.csv"
    assert main(["annotate", str(profiles_path), str(map_path), str(out)]) == 1
    err = capsys.readouterr().err
    assert "lacks 57 well(s)" in err and "D04" in err and "--unmatched-wells drop" in err
    assert not out.exists()
    assert main(["annotate", str(profiles_path), str(map_path), str(out), "--unmatched-wells", "drop"]) == 0
    assert f"57 of 96 well(s) dropped (57 profile row(s)), not in the plate map {map_path.name}" in capsys.readouterr().err
    assert len(pd.read_csv(out)) == 39
    record = json.loads((tmp_path / "augmented.csv.provenance.json").read_text())
    assert record["wells"]["in"] == 96 and record["wells"]["out"] == 39  # QC reads the dropped wells here
    assert len(record["wells"]["dropped_unmatched"]) == 57 and "D04" in record["wells"]["dropped_unmatched"]


def test_command_refuses_a_plate_map_matching_no_well(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = "MNOP"  # wells of a 384-well plate, none of them the profiles' A01-H12
    platemap = make_platemap().assign(well_position=[f"{r}{c:02d}" for r in rows for c in range(1, 25)])
    profiles_path, map_path = _write_inputs(tmp_path, platemap)
    out = tmp_path / "augmented.csv"
    assert main(["annotate", str(profiles_path), str(map_path), str(out), "--unmatched-wells", "drop"]) == 1
    assert "none of the profiles' 96 well(s)" in capsys.readouterr().err
    assert not out.exists()


def test_command_refuses_a_repeated_external_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profiles_path, map_path = _write_inputs(tmp_path, make_platemap())
    external = make_external()
    repeated = pd.concat([external, external.iloc[:4].assign(pert_iname="other")], ignore_index=True)
    ext_path = tmp_path / "external_metadata.tsv"
    repeated.to_csv(ext_path, sep="\t", index=False)
    out = tmp_path / "augmented.csv"
    argv = ["annotate", str(profiles_path), str(map_path), str(out), "--external", str(ext_path),
            "--merge-column", "broad_sample"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert external["broad_sample"].iloc[0] in err and "appears again" in err and f"{ext_path}:" in err
    assert not out.exists()
    external.to_csv(ext_path, sep="\t", index=False)
    assert main(argv) == 0
    assert len(pd.read_csv(out)) == 96


def test_validate_metadata_command_checks_the_profiles_wells(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "metadata" / "platemaps" / "B1"
    (base / "platemap").mkdir(parents=True)
    (base / "barcode_platemap.csv").write_text("Assay_Plate_Barcode,Plate_Map_Name\nSQ00015167,C-7161-01-LM6-006\n")
    make_platemap().iloc[:39].to_csv(base / "platemap" / "C-7161-01-LM6-006.txt", sep="\t", index=False)
    profiles_path = tmp_path / "SQ00015167.csv"
    plate_profiles().to_csv(profiles_path, index=False)
    assert main(["validate-metadata", str(tmp_path), "B1"]) == 0  # without profiles: the files are fine
    capsys.readouterr()
    assert main(["validate-metadata", str(tmp_path), "B1", "--profiles", str(profiles_path)]) == 1
    err = capsys.readouterr().err
    assert "57 well(s) the plate map lacks" in err and "unmatched_wells: drop" in err
    assert main(["validate-metadata", str(tmp_path), "B1", "--profiles", str(profiles_path),
                 "--unmatched-wells", "drop"]) == 0
    assert "annotation drops them" in capsys.readouterr().err


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    profile_wells=st.lists(st.sampled_from([*WELLS, "I01", "A1"]), min_size=1, max_size=40, unique=True),
    map_wells=st.lists(st.sampled_from(WELLS), min_size=1, max_size=96, unique=True),
)
def test_unmatched_wells_invariants(profile_wells: list[str], map_wells: list[str]) -> None:
    profiles = plate_profiles().iloc[: len(profile_wells)].assign(Metadata_Well=profile_wells)
    platemap = make_platemap().set_index("well_position").loc[map_wells].reset_index()
    missing = [w for w in profile_wells if w not in set(map_wells)]
    if missing:
        expected = "none of the profiles" if len(missing) == len(profile_wells) else f"lacks {len(missing)} well"
        with pytest.raises(MetadataError, match=expected):
            annotate(profiles, platemap)
    else:
        assert len(annotate(profiles, platemap)) == len(profile_wells)
    if len(missing) == len(profile_wells):  # dropping every well would leave an empty table: a wrong plate map
        with pytest.raises(MetadataError, match="none of the profiles"):
            annotate(profiles, platemap, unmatched_wells="drop")
        return
    dropped = annotate(profiles, platemap, unmatched_wells="drop")
    assert len(dropped) == len(profile_wells) - len(missing)
    assert dropped["Metadata_Well"].tolist() == [w for w in map_wells if w in set(profile_wells)]
    assert dropped.attrs["wells"] == {"in": len(profile_wells), "out": len(dropped), "dropped_unmatched": missing}


def test_annotate_files_is_annotate_on_the_files(tmp_path: Path) -> None:
    """The command's one library call: the same table as annotate() on the loaded inputs, its
    features in and out handed on, errors naming the profiles file."""
    from cytoprofile.annotate import annotate_files, prefixed_platemap
    from cytoprofile.metadata import load_platemap
    from cytoprofile.step_data import FeatureAccount

    profiles_path, map_path = _write_inputs(tmp_path, make_platemap())
    accounts: list[FeatureAccount] = []
    got = annotate_files(str(profiles_path), str(map_path), on_account=accounts.append)
    expected = annotate(pd.read_csv(profiles_path), prefixed_platemap(load_platemap(str(map_path))))
    pd.testing.assert_frame_equal(got, expected)
    features = tuple(c for c in got.columns if not c.startswith("Metadata_"))
    assert accounts == [FeatureAccount(step="annotate", features_in=features, features_out=features)]
    with pytest.raises(ConfigError, match="--external needs --merge-column") as info:
        annotate_files(str(profiles_path), str(map_path), external=str(map_path))
    assert isinstance(info.value, ValueError)
    with pytest.raises(ConfigError, match="--merge-column needs --external"):  # was ignored without a word
        annotate_files(str(profiles_path), str(map_path), merge_column="broad_sample")
    _write_inputs(tmp_path, make_platemap().iloc[:39])
    both = rf"^{re.escape(str(profiles_path))} with plate map {re.escape(str(map_path))}: "
    with pytest.raises(MetadataError, match=both + "the plate map lacks 57 well"):
        annotate_files(str(profiles_path), str(map_path))
    with pytest.raises(InputError, match=both + "the plate map has no column 'Metadata_plate_position'"):
        annotate_files(str(profiles_path), str(map_path), join_on=["Metadata_plate_position", "Metadata_Well"])


def test_validate_metadata_checks_every_profiles_file_of_a_plate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two --profiles files holding the same plate: the wells of both are checked (the later
    file's rows used to replace the earlier's, so a bad well in the first went unseen)."""
    base = tmp_path / "metadata" / "platemaps" / "B1"
    (base / "platemap").mkdir(parents=True)
    (base / "barcode_platemap.csv").write_text("Assay_Plate_Barcode,Plate_Map_Name\nSQ00015167,C-7161-01-LM6-006\n")
    make_platemap().iloc[:39].to_csv(base / "platemap" / "C-7161-01-LM6-006.txt", sep="\t", index=False)
    first, second = tmp_path / "part1.csv", tmp_path / "part2.csv"
    plate_profiles().iloc[39:].to_csv(first, index=False)  # wells the plate map lacks
    plate_profiles().iloc[:39].to_csv(second, index=False)  # wells it has
    argv = ["validate-metadata", str(tmp_path), "B1", "--profiles", str(first), "--profiles", str(second)]
    assert main(argv) == 1
    assert "57 well(s) the plate map lacks" in capsys.readouterr().err
