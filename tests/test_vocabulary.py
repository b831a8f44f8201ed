"""vocabulary: each definition of the data model's names, and that it stays the only one."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cytoprofile import vocabulary as v
from cytoprofile.annotate import annotate
from cytoprofile.config import ExternalMetadataConfig
from cytoprofile.errors import ConfigError, InputError

SRC = Path(__file__).resolve().parents[1] / "src" / "cytoprofile"

names = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20)
grid = st.tuples(st.integers(0, 31), st.integers(0, 47))


# ---------------------------------------------------------------- wells


@pytest.mark.parametrize(
    ("raw", "well"),
    [("A1", "A01"), ("A01", "A01"), ("a01", "A01"), (" a1 ", "A01"), ("r01c01", "A01"),
     ("R08C12", "H12"), ("r16c24", "P24"), ("r27c01", "AA01"), ("r32c48", "AF48"), ("af48", "AF48")],
)
def test_normalise_well(raw: str, well: str) -> None:
    assert v.normalise_well(raw) == well


@pytest.mark.parametrize("raw", ["", "X", "1A", "A1x", "r53c01", "well 3", "r1c1f1"])
def test_normalise_well_leaves_other_names(raw: str) -> None:
    assert v.normalise_well(raw) == raw


@given(grid)
def test_well_spellings_agree(position: tuple[int, int]) -> None:
    """Every spelling of one plate position gives the one well name, on every path."""
    well = v.grid_to_well(*position)
    row, col = position
    assert v.WELL_NAME.match(well) and v.well_name_problem(well) is None
    assert v.well_to_grid(well) == position
    phenix = f"r{row + 1:02d}c{col + 1:02d}"
    for spelling in (well, well.lower(), f"{v.row_label(row)}{col + 1}", phenix):
        assert v.normalise_well(spelling) == well
    for spelling in (well, well.lower(), f"{v.row_label(row)}{col + 1}", f" {v.row_label(row)} 0{col + 1} "):
        assert v.normal_well(spelling) == well


@pytest.mark.parametrize(("bad", "hint"), [("b3", "'B03'"), ("a 01", "'A01'"), ("A001", "'A01'")])
def test_well_name_problem_suggests(bad: str, hint: str) -> None:
    assert hint in str(v.well_name_problem(bad))


@pytest.mark.parametrize("bad", ["A00", "A49", "AG01", "A100", ""])
def test_well_name_problem_refuses(bad: str) -> None:
    assert v.well_name_problem(bad) is not None


def test_well_to_grid_refuses_non_wells() -> None:
    for bad in ("1A", "A0", "r01c01", "ABC1"):
        with pytest.raises(InputError):
            v.well_to_grid(bad)
        assert v.normal_well(bad) == bad


@pytest.mark.parametrize(("wells", "shape"), [([], (8, 12)), (["H12"], (8, 12)), (["A13"], (16, 24)),
                                              (["Q01"], (32, 48)), (["AF48"], (32, 48))])
def test_plate_layout(wells: list[str], shape: tuple[int, int]) -> None:
    assert v.plate_layout(wells) == shape
    assert shape in v.PLATE_FORMATS


# ---------------------------------------------------------------- features and metadata


def _profiles() -> pd.DataFrame:
    return pd.DataFrame({
        "Metadata_Plate": ["P"], "Metadata_Well": ["A01"], "Cells_Area": [1.0], "Nuclei_X": [2.0],
        "Speckles_Count": [3.0], "Image_Quality": [4.0], "Image_Name": ["x"], "PC1": [5.0], "PC2": [6.0],
        "DINO_0": [7.0], "Metadata": ["no underscore"], 0: [8.0],
    })


def test_feature_metadata_split_cellprofiler() -> None:
    df = _profiles()
    assert v.metadata_columns(df.columns) == ["Metadata_Plate", "Metadata_Well"]
    assert v.infer_features(df) == ["Cells_Area", "Nuclei_X"]
    assert v.infer_features(df, compartments=["Cells", "Nuclei", "speckles"]) == ["Cells_Area", "Nuclei_X", "Speckles_Count"]
    # numeric Image columns only, with image_features
    assert v.infer_features(df, image_features=True) == ["Cells_Area", "Nuclei_X", "Image_Quality"]
    assert v.resolve_features(df, ["PC1"]) == ["PC1"]


def test_feature_split_with_configured_prefixes() -> None:
    """Non-CellProfiler names (PCA output, a deep-learning model's) are features by their prefix."""
    df = _profiles()
    assert v.prefixed_features(df.columns, ["PC"]) == ["PC1", "PC2"]
    assert v.prefixed_features(df.columns, ["DINO_", "PC"]) == ["PC1", "PC2", "DINO_0"]
    assert v.resolve_features(df, "infer", feature_prefixes=["DINO_"]) == ["DINO_0"]
    assert v.infer_features(df, compartments=["PC", "DINO"]) == ["PC1", "PC2", "DINO_0"]
    with pytest.raises(InputError):
        v.infer_features(df, compartments=["Zebra"])


def test_feature_prefixes_forms() -> None:
    assert v.feature_prefixes() == v.CANONICAL_COMPARTMENTS
    assert v.feature_prefixes("cells_cellpose3") == ("cells_cellpose3", "Cells_cellpose3", "Cells_Cellpose3")
    for bad in ([], [""], 3, [None]):
        with pytest.raises(ConfigError):
            v.feature_prefixes(bad)  # type: ignore[arg-type]


@given(st.lists(st.one_of(names, st.integers()), max_size=12))
def test_metadata_and_features_never_overlap(columns: list[object]) -> None:
    meta = v.metadata_columns(columns)
    assert all(isinstance(c, str) and c.startswith("Metadata_") for c in meta)
    assert not set(meta) & set(v.prefixed_features(columns, v.CANONICAL_COMPARTMENTS))
    assert set(meta) == {c for c in columns if v.is_metadata(c)}


def test_compartment_features_leave_keys_and_links() -> None:
    columns = ["TableNumber", "ImageNumber", "ObjectNumber", "Cytoplasm_Parent_Cells", "Cytoplasm_Area", "Cells_Area"]
    assert v.compartment_features("Cytoplasm", columns) == ["Cytoplasm_Area"]


# ---------------------------------------------------------------- Metadata_ prefixing


@given(names)
def test_metadata_prefix_idempotent(name: str) -> None:
    once = v.with_metadata_prefix(name)
    assert v.is_metadata(once)
    assert v.with_metadata_prefix(once) == once
    assert once == name if name.startswith("Metadata_") else once == f"Metadata_{name}"


@given(st.lists(st.one_of(names, st.integers(), st.none()), max_size=10))
def test_prefix_metadata_idempotent(columns: list[object]) -> None:
    once = v.prefix_metadata(columns)
    assert v.prefix_metadata(once) == once
    assert [c for c in once if not isinstance(c, str)] == [c for c in columns if not isinstance(c, str)]


@pytest.mark.parametrize(("merge_column", "joined"), [
    ("broad_sample", "Metadata_broad_sample"),
    ("Metadata_broad_sample", "Metadata_broad_sample"),
    ("MetadataBroad", "Metadata_MetadataBroad"),
    ("Metadata", "Metadata_Metadata"),
])
def test_config_join_column_is_prefixed_like_the_tables(merge_column: str, joined: str) -> None:
    """The recipe's external-metadata key is named as annotate names the external columns."""
    ext = ExternalMetadataConfig(perform=True, file="moa.tsv", merge_column=merge_column)
    assert ext.join_column == joined
    profiles = pd.DataFrame({"Metadata_Plate": ["P", "P"], "Metadata_Well": ["A01", "A02"], "Cells_x": [1.0, 2.0]})
    platemap = pd.DataFrame({"Metadata_plate_map_name": ["m", "m"], "Metadata_well_position": ["A01", "A02"],
                             v.with_metadata_prefix(merge_column): ["k1", "k2"]})
    external = pd.DataFrame({merge_column: ["k1", "k2"], "moa": ["a", "b"]})
    out = annotate(profiles, platemap, external_metadata=external,
                   external_join_left=[ext.join_column], external_join_right=[ext.join_column])
    assert out["Metadata_moa"].tolist() == ["a", "b"]


# ---------------------------------------------------------------- choice lists


def test_choice_lists_are_the_steps_own() -> None:
    from cytoprofile import (
        aggregate,
        config,
        consensus,
        evaluate,
        normalize,
        processing,
    )

    assert normalize.METHODS is v.NORMALIZE_METHODS is config.NORMALIZE_METHODS
    assert config.FEATURE_SELECT_OPERATIONS is v.FEATURE_SELECT_OPERATIONS
    assert consensus.OPERATIONS is v.CONSENSUS_OPERATIONS
    assert config.LEVELS is v.FEATURE_SELECT_LEVELS
    assert evaluate.MODES is v.MAP_MODES
    assert processing.CHAIN_STEPS is v.PROCESSING_STEPS
    assert aggregate.DEFAULT_COMPARTMENTS is v.DEFAULT_COMPARTMENTS
    assert set(v.AGGREGATE_OPERATIONS) == set(v.AggregateOperation.__args__)  # type: ignore[attr-defined]
    assert set(v.TABLE_FORMATS) == set(v.TableFormat.__args__)  # type: ignore[attr-defined]


def test_missing_tokens_read_as_missing() -> None:
    from cytoprofile.step_data import feature_matrix

    df = pd.DataFrame({"Cells_a": [1.0, *sorted(v.MISSING_TOKENS)]}, dtype=object)
    x = feature_matrix(df, ["Cells_a"])
    assert x[0, 0] == 1.0 and np.isnan(x[1:, 0]).all()


# ---------------------------------------------------------------- the structure stays

# modules allowed a second definition (none: the list only shrinks)
_PENDING: set[str] = set()


def _sources() -> list[tuple[str, str]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel != "vocabulary.py":
            out.append((rel, path.read_text(encoding="utf-8")))
    return out


@pytest.mark.parametrize(("what", "pattern"), [
    ("a test for 'Metadata' without the underscore", r"""startswith\(\s*["']Metadata["']"""),
    ("an inline metadata test", r"""startswith\(\s*["']Metadata_["']"""),
    ("an inline Metadata_ prefixing", r"""f["']Metadata_\{"""),
    ("a feature-inference function", r"def (infer_features|resolve_features|feature_prefixes|compartment_features|prefix_metadata)\("),
    ("a well parser", r"def (well_to_grid|normal_well|normalise_well|well_name_problem|grid_to_well|row_label)\("),
    ("a well regex", r"re\.compile\(r?[\"'][^\"']*\[A-Za-z\]\{1,2\}|re\.compile\(r?[\"'][^\"']*\[rR\]"),
    ("the canonical compartments", r"""["']Cells["'],\s*["']Cytoplasm["'],\s*["']Nuclei["']"""),
    ("the key columns", r"""["']TableNumber["'],\s*["']ImageNumber["'],\s*["']ObjectNumber["']"""),
    ("a choice list", r"""(=|\bin)\s*\(\s*"(standardize", "robustize|median", "mean|pearson", "spearman", "kendall"""
                      r"""|variance_threshold",\s*"frequency_threshold",\s*"correlation_threshold",\s*"drop_na_columns"""
                      r"""|activity", "distinctiveness", "consistency|PCA", "ZCA|plate", "batch", "all|var", "mad|error", "drop)"\s*[,)]"""),
    ("the negcon query", r"""=\s*["']Metadata_control_type == 'negcon'["']"""),
    ("an inline test of both metadata spellings", r"METADATA_PREFIX\s*,\s*IMAGE_METADATA_PREFIX"),
    ("the words for no value", r"""["']none["'],\s*["']null["']"""),
    ("the single-cell formats", r"""["']parquet["'],\s*["']anndata["']\s*[,)]"""),
    ("another choice list", r"""=\s*\(\s*"(augmented", "normalized|all", "batch", "plate|csv", "parquet", "anndata|spearman", "pearson)"\s*[,)]"""),
])
def test_no_second_definition(what: str, pattern: str) -> None:
    found = [f"{rel}:{text.count(chr(10), 0, m.start()) + 1}"
             for rel, text in _sources() if rel not in _PENDING
             for m in re.finditer(pattern, text)]
    assert not found, f"{what} outside vocabulary.py: {', '.join(found)}; use cytoprofile.vocabulary"


def test_no_step_takes_feature_inference_from_feature_select() -> None:
    pattern = re.compile(r"from \.feature_select import[^\n]*\b(infer_features|resolve_features|feature_prefixes|FEATURE_PREFIXES)\b"
                         r"|from \.feature_select import \([^)]*\b(infer_features|resolve_features|feature_prefixes|FEATURE_PREFIXES)\b")
    found = [rel for rel, text in _sources() if pattern.search(text)]
    assert not found


@settings(max_examples=25)
@given(st.sampled_from(sorted(v.__all__)))
def test_public_names_exist(name: str) -> None:
    assert hasattr(v, name)
