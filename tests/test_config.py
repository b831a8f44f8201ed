"""Recipe config: recipe files load unchanged, mistakes fail with the key path and file."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from cytoprofile import config as cfg
from cytoprofile.config import (
    INIT_DIRS,
    FeatureSelectConfig,
    NormalizeConfig,
    Recipe,
    RecipeConfig,
    config_template,
    config_to_dict,
    init_project,
    load_config,
    parse_config,
)
from cytoprofile.config_diagnostics import edit_distance, model_in
from cytoprofile.errors import ConfigError

# The profiling recipe's own template, as it is distributed (placeholders and all,
# including the stray space in "external :" and "perform :"). ``subgroup_col`` exists only
# on an unreleased recipe branch and is refused (see test_subgroup_col_is_refused).
RECIPE_TEMPLATE = """\
---
pipeline: <PIPELINE NAME>
output_dir: profiles
platemap_well_column: Metadata_well_position
compartments:
  - cells
  - cytoplasm
  - nuclei
aggregate:
  perform: true
  plate_column: Metadata_Plate
  well_column: Metadata_Well
  method: median
  fields: all
  image_feature_categories:
    - Count
    - Intensity
annotate:
  perform: true
  well_column: Metadata_Well
  external :
    perform: true
    file: <metadata file name>
    merge_column: <Column to merge on>
normalize:
  perform: true
  method: mad_robustize
  features: infer
  mad_robustize_fudge_factor: 0
  image_features: true
  subgroups: false
  min_cells: 1
normalize_negcon:
  perform: true
  method: mad_robustize
  features: infer
  mad_robustize_fudge_factor: 0
  image_features: true
  subgroups: false
  min_cells: 1
feature_select:
  perform: true
  features: infer
  level: batch
  gct: false
  image_features: true
  operations:
    - variance_threshold
    - correlation_threshold
    - drop_na_columns
    - blocklist
  subgroups: false
  min_cells: 1
feature_select_negcon:
  perform: true
  features: infer
  level: batch
  gct: false
  image_features: true
  operations:
    - variance_threshold
    - correlation_threshold
    - drop_na_columns
    - blocklist
  subgroups: false
  min_cells: 1
quality_control:
  perform: true
  summary:
    perform: true
    row: Metadata_Row
    column: Metadata_Col
  heatmap:
    perform : true
options:
  compression: gzip
  float_format: "%.5g"
  samples: all
---
batch: <FIRST BATCH NAME>
plates:
  - name: <FIRST PLATE NAME>
    process: true
  - name: <SECOND PLATE NAME>
    process: true
process: true
---
batch: <SECOND BATCH NAME>
plates:
  - name: <FIRST PLATE NAME>
    process: true
  - name: <SECOND PLATE NAME>
    process: true
process: true
"""

# A config from before min_cells, image_features, gct, subgroups and the fudge factor.
OLD_CONFIG = """\
pipeline: old_analysis
output_dir: profiles
platemap_well_column: Metadata_well_position
compartments: [cells, cytoplasm, nuclei]
aggregate:
  perform: true
  plate_column: Metadata_Plate
  well_column: Metadata_Well
  method: median
  fields: all
annotate:
  perform: true
  well_column: Metadata_Well
  external:
    perform: false
normalize:
  perform: true
  method: mad_robustize
  features: infer
normalize_negcon:
  perform: true
  method: mad_robustize
  features: infer
feature_select:
  perform: true
  features: infer
  level: all
  operations: [variance_threshold, correlation_threshold, drop_na_columns, blocklist]
options:
  compression: gzip
---
batch: 2020_11_04_CPJUMP1
plates:
  - name: BR00116991
    process: true
  - name: BR00116992
    process: false
process: true
"""

BATCH = "---\nbatch: b1\nplates:\n  - name: p1\n"


def _write(tmp_path: Path, text: str, name: str = "config.yml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


class _Notes(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _load_noting(path: Path, **options: Any) -> tuple[Recipe, list[str]]:
    """The recipe and the warnings the loader logged."""
    handler = _Notes()
    logger = logging.getLogger("cytoprofile.config")
    logger.addHandler(handler)
    try:
        return load_config(path, **options), handler.messages
    finally:
        logger.removeHandler(handler)


def _load_quietly(path: Path) -> Recipe:
    recipe, notes = _load_noting(path)
    assert notes == []
    return recipe


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


# --- configs written for the recipe ---


def test_recipe_template_loads_unchanged(tmp_path: Path) -> None:
    recipe = _load_quietly(_write(tmp_path, RECIPE_TEMPLATE))
    s = recipe.settings
    assert s.pipeline == "<PIPELINE NAME>"
    assert s.compartments == ["cells", "cytoplasm", "nuclei"]
    assert s.aggregate.method == "median" and s.aggregate.fields == "all"
    assert s.aggregate.image_feature_categories == ["Count", "Intensity"]
    assert s.annotate.external.perform and s.annotate.external.file == "<metadata file name>"
    assert s.normalize.mad_robustize_fudge_factor == 0.0
    assert s.normalize.image_features is True
    assert s.normalize.fit_query() == "all"
    assert s.normalize_negcon.fit_query() == "Metadata_control_type == 'negcon'"
    assert s.feature_select.operations == [
        "variance_threshold",
        "correlation_threshold",
        "drop_na_columns",
        "blocklist",
    ]
    assert s.feature_select_negcon.level == "batch"
    assert s.quality_control.heatmap.perform and s.quality_control.summary.row == "Metadata_Row"
    assert s.options.compression == "gzip" and s.options.float_format == "%.5g"
    assert [b.batch for b in recipe.batches] == ["<FIRST BATCH NAME>", "<SECOND BATCH NAME>"]
    assert recipe.path == str(tmp_path / "config.yml")
    # Extensions take their defaults.
    assert s.executor.jobs == 1 and s.executor.scheduler is None and s.workspace is None
    assert s.feature_select.parameters.corr_threshold == 0.9


def test_float_format_null_means_no_formatting(tmp_path: Path) -> None:
    text = RECIPE_TEMPLATE.replace('float_format: "%.5g"', "float_format: null")
    assert _load_quietly(_write(tmp_path, text)).settings.options.float_format is None


def test_old_config_takes_the_defaults_it_ran_with(tmp_path: Path) -> None:
    recipe = _load_quietly(_write(tmp_path, OLD_CONFIG))
    s = recipe.settings
    assert s.normalize.min_cells == 1 and s.feature_select.min_cells == 1
    assert s.normalize.image_features is False and s.feature_select.image_features is False
    assert s.normalize.mad_robustize_fudge_factor == 1e-18
    assert s.feature_select.gct is False and s.normalize.subgroups is False
    assert s.aggregate.image_feature_categories == []
    assert s.options.float_format is None and s.options.samples == "all"
    # Absent step blocks are skipped, as in the recipe.
    assert s.feature_select_negcon.perform is False and s.quality_control.perform is False
    assert s.normalize_negcon.perform is True
    assert recipe.selected_plates() == {"2020_11_04_CPJUMP1": ["BR00116991"]}


def test_settings_document_may_come_last(tmp_path: Path) -> None:
    settings, batch = OLD_CONFIG.split("---\n")
    recipe = _load_quietly(_write(tmp_path, f"---\n{batch}---\n{settings}"))
    assert recipe.settings.pipeline == "old_analysis"
    assert [b.batch for b in recipe.batches] == ["2020_11_04_CPJUMP1"]


def test_names_keep_their_written_text(tmp_path: Path) -> None:
    text = (
        "pipeline: 2021\n---\nbatch: 2021_04_26\nplates:\n"
        "  - name: 0123\n  - name: 2021-04-26\n  - name: 1:30\n  - name: 1086292\n"
    )
    recipe = _load_quietly(_write(tmp_path, text))
    assert recipe.settings.pipeline == "2021"
    assert recipe.selected_plates() == {"2021_04_26": ["0123", "2021-04-26", "1:30", "1086292"]}


def test_batch_process_false_leaves_it_out(tmp_path: Path) -> None:
    text = "pipeline: p\n" + BATCH + "---\nbatch: b2\nprocess: false\nplates: [{name: q}]\n"
    assert _load_quietly(_write(tmp_path, text)).selected_plates() == {"b1": ["p1"]}


# --- mistakes ---


def test_bad_operation_names_path_file_and_choices(tmp_path: Path) -> None:
    text = (
        "pipeline: p\nfeature_select:\n  operations:\n    - variance_threshold\n"
        "    - blocklist\n    - corelation_threshold\n" + BATCH
    )
    message = _error(_write(tmp_path, text))
    assert "config.yml: feature_select.operations[2]: 'corelation_threshold' is not a " in message
    assert "feature-selection operation" in message
    assert "did you mean 'correlation_threshold'" in message
    assert "noise_removal" in message and "(line 6)" in message


@pytest.mark.parametrize(
    ("snippet", "path"),
    [
        ("normalize:\n  min_cells: many\n", "normalize.min_cells"),
        ("normalize:\n  method: zscore\n", "normalize.method"),
        ("normalize_negcon:\n  features: 3\n", "normalize_negcon.features"),
        ("feature_select:\n  level: plates\n", "feature_select.level"),
        ("feature_select:\n  operations: []\n", "feature_select.operations"),
        ("aggregate:\n  fields: [1, two]\n", "aggregate.fields"),
        ("aggregate:\n  method: sum\n", "aggregate.method"),
        ("annotate:\n  external:\n    perform: true\n", "annotate.external"),
        ("options:\n  float_format: 5\n", "options.float_format"),
        ("options:\n  compression: None\n", "options.compression"),
        ("compartments: []\n", "compartments"),
        ("quality_control:\n  summary: yes\n", "quality_control.summary"),
        ("executor:\n  jobs: 0\n", "executor.jobs"),
        (
            "feature_select:\n  operations: [noise_removal]\n",
            "feature_select",
        ),
    ],
)
def test_bad_value_names_its_key_path(tmp_path: Path, snippet: str, path: str) -> None:
    message = _error(_write(tmp_path, "pipeline: p\n" + snippet + BATCH))
    assert message.startswith(f"{tmp_path / 'config.yml'}: {path}: "), message
    assert re.search(r"\(line \d+\)$", message)


def test_every_problem_on_its_own_line(tmp_path: Path) -> None:
    text = "pipeline: p\nnormalize:\n  method: x\nfeature_select:\n  level: y\n" + BATCH
    lines = _error(_write(tmp_path, text)).splitlines()
    assert len(lines) == 2
    assert all(line.startswith(str(tmp_path / "config.yml")) for line in lines)


def test_bad_batch_names_the_batch(tmp_path: Path) -> None:
    text = "pipeline: p\n---\nbatch: b1\nplates:\n  - name: p1\n  - process: true\n"
    message = _error(_write(tmp_path, text))
    assert "batch 'b1': plates[1].name: required key is missing" in message


def test_duplicate_plates_batches_and_keys(tmp_path: Path) -> None:
    twice = "pipeline: p\n" + BATCH + "  - name: p1\n"
    assert "plate 'p1' is listed twice" in _error(_write(tmp_path, twice, "a.yml"))
    two_docs = "pipeline: p\n" + BATCH + BATCH
    assert "two documents for this batch" in _error(_write(tmp_path, two_docs, "b.yml"))
    key = "pipeline: p\noutput_dir: a\noutput_dir: b\n" + BATCH
    assert "output_dir: key written twice (lines 2 and 3)" in _error(_write(tmp_path, key, "c.yml"))


def test_unknown_keys_warn_with_path_and_are_ignored(tmp_path: Path) -> None:
    text = (
        "pipeline: p\nnormalize:\n  perform: true\n  fudge: 1\nnew_step: {}\n"
        "---\nbatch: b1\nplates:\n  - name: p1\n    procss: false\n"
    )
    path = _write(tmp_path, text)
    recipe, messages = _load_noting(path, allow_unknown_keys=True)
    assert f"{path}:4: normalize.fudge: unknown key, ignored" in messages
    assert f"{path}:5: new_step: unknown key, ignored" in messages
    assert any("plates[0].procss" in m and "did you mean 'process'" in m for m in messages)
    assert all("\n" not in m for m in messages)
    assert recipe.selected_plates() == {"b1": ["p1"]}
    assert "fudge" not in recipe.settings_dict()["normalize"]


def test_unknown_keys_still_warn_when_invalid(tmp_path: Path) -> None:
    text = "pipeline: p\nnormalize: {perform: often}\nnew_step: 1\n" + BATCH
    handler = _Notes()
    logging.getLogger("cytoprofile.config").addHandler(handler)
    try:
        with pytest.raises(ConfigError, match="normalize.perform"):
            load_config(_write(tmp_path, text))
    finally:
        logging.getLogger("cytoprofile.config").removeHandler(handler)
    assert any("new_step: unknown key" in m for m in handler.messages)


def test_yaml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    text = "pipeline: p\nnormalize:\n  method: [mad_robustize\n  perform: true\n"
    message = _error(_write(tmp_path, text))
    assert message.startswith(f"{tmp_path / 'config.yml'}: line ")
    assert "invalid YAML" in message


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "the file is empty"),
        ("# only a comment\n", "the file is empty"),
        ("batch: b\nplates: []\n", "no settings document"),
        ("pipeline: p\n", "no batch document"),
        ("pipeline: p\n---\nplates: []\n", "neither 'pipeline:'"),
        ("pipeline: p\n---\n- a\n", "not a mapping"),
        ("pipeline: p\n---\npipeline: q\n" + BATCH, "2 settings documents"),
    ],
)
def test_structure_problems_say_how_to_fix(tmp_path: Path, text: str, needle: str) -> None:
    message = _error(_write(tmp_path, text))
    assert needle in message and str(tmp_path / "config.yml") in message


def test_missing_file(tmp_path: Path) -> None:
    assert "no such config file" in _error(tmp_path / "absent.yml")


# --- the template, dumping, folders ---


def _fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    out: list[str] = []
    for name, info in model.model_fields.items():
        out.append(prefix + name)
        sub = model_in(info.annotation)
        if sub is not None:
            out += _fields(sub, f"{prefix}{name}.")
    return out


def _keys(data: Any, prefix: str = "") -> list[str]:
    if not isinstance(data, dict):
        return []
    out: list[str] = []
    for key, value in data.items():
        out.append(prefix + key)
        out += _keys(value, f"{prefix}{key}.")
    return out


def test_template_loads_without_warnings(tmp_path: Path) -> None:
    recipe = _load_quietly(_write(tmp_path, config_template()))
    assert len(recipe.batches) == 1 and len(recipe.batches[0].plates) == 2
    settings = next(d for d in yaml.safe_load_all(config_template()) if "pipeline" in d)
    assert sorted(_keys(settings)) == sorted(_fields(RecipeConfig))


def test_template_comments_every_key() -> None:
    for line in config_template().splitlines():
        key = re.match(r"\s*(- )?[A-Za-z_]+\s*:\s*(\S?)", line)
        if key is None:
            continue
        assert re.search(r"\s# \S", line), f"no comment: {line}"
        if key.group(2) != "#":  # a key with a value, not a block
            assert "default" in line or "required" in line, f"no default: {line}"


def test_dump_round_trips(tmp_path: Path) -> None:
    for text in (config_template(), RECIPE_TEMPLATE, OLD_CONFIG):
        recipe = _load_quietly(_write(tmp_path, text))
        again = _load_quietly(_write(tmp_path, recipe.to_yaml(), "again.yml"))
        assert again.settings == recipe.settings and again.batches == recipe.batches
    plain = config_to_dict(recipe)
    assert plain["settings"] == recipe.settings_dict()
    assert plain["batches"][0]["plates"][0] == {"name": "BR00116991", "process": True}
    yaml.safe_dump(plain)  # plain data only


def test_fit_query_combines_filters() -> None:
    plain = NormalizeConfig(samples="all", min_cells=50)
    assert plain.fit_query() == "Metadata_Object_Count >= 50"
    negcon = cfg.NormalizeNegconConfig(min_cells=50)
    assert negcon.fit_query() == ("Metadata_control_type == 'negcon' & Metadata_Object_Count >= 50")
    narrowed = NormalizeConfig.model_validate(
        {"samples": "a == 1 | b == 2", "sample_filter": {"Metadata_cell line": "A549"}}
    )
    assert narrowed.fit_query() == "(a == 1 | b == 2) & `Metadata_cell line` == 'A549'"


def test_operation_names_are_the_step_modules() -> None:
    from cytoprofile.vocabulary import NORMALIZE_METHODS

    assert cfg.NORMALIZE_METHODS == NORMALIZE_METHODS
    assert FeatureSelectConfig(operations=["frequency_threshold"]).operations == [  # type: ignore[list-item]
        "frequency_threshold"
    ]


def test_init_project_creates_the_folders_once(tmp_path: Path) -> None:
    root = tmp_path / "project"
    assert init_project(root) == list(INIT_DIRS)
    assert sorted(p.name for p in root.iterdir()) == sorted(INIT_DIRS)
    (root / "profiles").rmdir()
    assert init_project(root) == ["profiles"]
    assert init_project(root) == []
    assert len(INIT_DIRS) == 11 and "single_cell" in INIT_DIRS


def test_init_project_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "log").write_text("not a folder")
    with pytest.raises(ConfigError, match="not a folder"):
        init_project(tmp_path)


def test_parse_config_names_its_source() -> None:
    recipe = parse_config("pipeline: p\n" + BATCH, source="inline")
    assert recipe.path == "inline" and recipe.selected_plates() == {"b1": ["p1"]}
    with pytest.raises(ConfigError, match=r"^inline: normalize\.perform: "):
        parse_config("pipeline: p\nnormalize: {perform: often}\n" + BATCH, source="inline")


# --- every recipe config version (2021 -> 2023) loads and means what it meant ---

# A config written from the recipe's template before July 2021.
CONFIG_2021 = """\
pipeline: early_analysis
output_dir: profiles
platemap_well_column: Metadata_well_position
compartments: cells,cytoplasm, nuclei
aggregate:
  perform: true
  plate_column: Metadata_Plate
  well_column: Metadata_Well
  method: median
  features: infer
annotate:
  perform: true
  well_column: Metadata_Well
  external: moa_annotations.tsv
normalize:
  perform: true
  method: mad_robustize
  features: infer
  negcon: true
feature_select:
  perform: true
  features: infer
  level: batch
  negcon: true
  operations: [variance_threshold, correlation_threshold, drop_na_columns, blocklist]
quality_control:
  perform: true
  operations: [summary]
options:
  compression: gzip
  float_format: "%.5g"
---
batch: 2021_01_01_Batch
plates:
  - name: P1
    process: true
"""


def test_config_2021_loads_unchanged_and_means_what_it_meant(tmp_path: Path) -> None:
    s = _load_quietly(_write(tmp_path, CONFIG_2021)).settings
    assert s.compartments == ["cells", "cytoplasm", "nuclei"]
    ext = s.annotate.external
    assert ext.perform and ext.file == "moa_annotations.tsv" and ext.folder == "moa"
    assert ext.join_column == "Metadata_broad_sample"
    # negcon: true inside the main blocks makes the negcon steps, fitted on negative controls
    assert s.normalize_negcon.perform and s.normalize_negcon.method == "mad_robustize"
    assert s.normalize_negcon.fit_query() == "Metadata_control_type == 'negcon'"
    assert s.normalize.fit_query() == "all"
    assert s.feature_select_negcon.perform and s.feature_select_negcon.level == "batch"
    assert s.feature_select_negcon.operations == s.feature_select.operations
    # quality_control.operations chose the outputs
    assert s.quality_control.summary.perform and not s.quality_control.heatmap.perform


@pytest.mark.parametrize("value", ["false", "''", "null"])
def test_external_false_or_empty_means_none(tmp_path: Path, value: str) -> None:
    text = f"pipeline: p\nannotate:\n  perform: true\n  external: {value}\n" + BATCH
    assert not _load_quietly(_write(tmp_path, text)).settings.annotate.external.perform


@pytest.mark.parametrize(("ops", "summary", "heatmap"), [("[summary, heatmap]", True, True),
                                                        ("[heatmap]", False, True), ("[]", False, False)])
def test_quality_control_operations_pick_the_outputs(tmp_path: Path, ops: str, summary: bool, heatmap: bool) -> None:
    text = f"pipeline: p\nquality_control:\n  perform: true\n  operations: {ops}\n" + BATCH
    qc = _load_quietly(_write(tmp_path, text)).settings.quality_control
    assert (qc.summary.perform, qc.heatmap.perform) == (summary, heatmap)


def test_negcon_false_makes_no_negcon_step(tmp_path: Path) -> None:
    text = "pipeline: p\nnormalize:\n  negcon: false\nfeature_select:\n  negcon: false\n" + BATCH
    s = _load_quietly(_write(tmp_path, text)).settings
    assert s.normalize.perform and not s.normalize_negcon.perform and not s.feature_select_negcon.perform


def test_aggregate_features_other_than_infer_is_refused(tmp_path: Path) -> None:
    text = "pipeline: p\naggregate:\n  features: [Cells_A]\n" + BATCH
    assert f"{tmp_path / 'config.yml'}:3: aggregate.features" in _error(_write(tmp_path, text))


# --- keys without effect are refused ---


def test_subgroup_col_is_refused(tmp_path: Path) -> None:
    text = "pipeline: p\nnormalize:\n  subgroups: false\n  subgroup_col: Metadata_x\n" + BATCH
    message = _error(_write(tmp_path, text))
    assert message.startswith(f"{tmp_path / 'config.yml'}:4: normalize.subgroup_col")
    assert "exists only on an unreleased recipe branch" in message


@pytest.mark.parametrize(
    ("snippet", "needle"),
    [
        ("normalize:\n  subgroups: true\n", "unreleased recipe branch"),
        ("feature_select:\n  subgroups: true\n", "unreleased recipe branch"),
        ("aggregate:\n  object_feature: Cells_Number\n", "Metadata_ObjectNumber"),
        ("options:\n  samples: ''\n", "options.samples"),
    ],
)
def test_settings_without_an_effect_are_refused(tmp_path: Path, snippet: str, needle: str) -> None:
    assert needle in _error(_write(tmp_path, "pipeline: p\n" + snippet + BATCH))


# --- misspelled keys ---


@pytest.mark.parametrize(
    ("snippet", "line", "key", "close"),
    [
        ("feature_selct:\n  perform: true\n", 2, "feature_selct", "feature_select"),
        ("normalize:\n  methd: standardize\n", 3, "normalize.methd", "method"),
        ("normalize:\n  mehtod: standardize\n", 3, "normalize.mehtod", "method"),  # a swap is one edit
        ("quality_control:\n  heatmap:\n    preform: false\n", 4, "quality_control.heatmap.preform", "perform"),
        ("optoins:\n  float_format: null\n", 2, "optoins", "options"),
        ("annotate:\n  external:\n    merge_colum: x\n", 4, "annotate.external.merge_colum", "merge_column"),
    ],
)
def test_misspelled_key_is_an_error(tmp_path: Path, snippet: str, line: int, key: str, close: str) -> None:
    path = _write(tmp_path, "pipeline: p\n" + snippet + BATCH)
    message = _error(path)
    assert message.startswith(f"{path}:{line}: {key}: unknown key; did you mean '{close}'?"), message
    assert "--allow-unknown-keys" in message
    recipe, notes = _load_noting(path, allow_unknown_keys=True)
    assert notes == [f"{path}:{line}: {key}: unknown key, ignored; did you mean '{close}'?"]


def test_misspelled_plate_key_is_an_error(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, "pipeline: p\n---\nbatch: b1\nplates:\n  - nmae: p1\n"))
    assert ":5: batch 'b1': plates[0].nmae: unknown key; did you mean 'name'?" in message


@pytest.mark.parametrize("snippet", ["normalize:\n  fudge: 1\n", "gc: true\n", "feature_select:\n  lvl: x\n",
                                     "my_notes: {}\n"])
def test_other_unknown_keys_warn_on_one_line(tmp_path: Path, snippet: str) -> None:
    recipe, notes = _load_noting(_write(tmp_path, "pipeline: p\n" + snippet + BATCH))
    assert len(notes) == 1 and "unknown key, ignored" in notes[0] and "\n" not in notes[0]


def test_edit_distance_counts_swaps_as_one() -> None:
    assert edit_distance("methd", "method") == 1
    assert edit_distance("mehtod", "method") == 1
    assert edit_distance("feature_selct", "feature_select") == 1
    assert edit_distance("abc", "abc") == 0
    assert edit_distance("samples", "sample_filter") > 2


# --- values that would crash or truncate later ---


@pytest.mark.parametrize("value", ['"%.5g"', '"%.1e"', '"%.12g"', "null", '"%.3E"'])
def test_float_formats_that_keep_values_usable(tmp_path: Path, value: str) -> None:
    text = f"pipeline: p\noptions:\n  float_format: {value}\n" + BATCH
    _load_quietly(_write(tmp_path, text))


@pytest.mark.parametrize("value", ['"%d"', '"%.0f"', '"%.0g"', '"%.3f"', '"%s"', '"%.5g%%"', '"x%.5g"', '"%5g"'])
def test_float_formats_that_truncate_are_refused(tmp_path: Path, value: str) -> None:
    text = f"pipeline: p\noptions:\n  float_format: {value}\n" + BATCH
    message = _error(_write(tmp_path, text))
    assert "options.float_format" in message and "%.Ng" in message and "(line 3)" in message


@pytest.mark.parametrize("value", ["../../x", "..", "/tmp/profiles", "a/../../b", "s3://bucket/x", "~/profiles", "'~'",
                                   "'..\\x'", "'C:\\profiles'", "'a\\..\\..\\b'"])
def test_output_dir_outside_the_workspace_is_refused(tmp_path: Path, value: str) -> None:
    message = _error(_write(tmp_path, f"pipeline: p\noutput_dir: {value}\n" + BATCH))
    assert "output_dir" in message and "outside the workspace" in message


@pytest.mark.parametrize("value", ["profiles", "out/profiles", "./profiles", "a/../b"])
def test_output_dir_inside_the_workspace(tmp_path: Path, value: str) -> None:
    assert _load_quietly(_write(tmp_path, f"pipeline: p\noutput_dir: {value}\n" + BATCH)).settings.output_dir == value


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("  negcon: true\nfeature_select", "  negcon: 'yes please'\nfeature_select", "normalize.negcon: 'yes please': write true"),
    ("  negcon: true\n  operations", "  negcon: 1\n  operations", "feature_select.negcon: 1: write true"),
    ("  operations: [summary]", "  operations: [summary]\n  heatmap:\n    perform: true",
     "quality_control.heatmap.perform: True contradicts quality_control.operations ['summary']"),
])
def test_2021_forms_with_a_value_they_cannot_mean_are_refused(tmp_path: Path, old: str, new: str, expected: str) -> None:
    """A non-boolean ``negcon`` used to be dropped (no negcon outputs); operations vs an explicit block."""
    assert old in CONFIG_2021
    path = _write(tmp_path, CONFIG_2021.replace(old, new, 1))
    with pytest.raises(ConfigError, match=re.escape(expected)) as info:
        load_config(path)
    assert f"{path}:" in str(info.value) and "\n" not in str(info.value)


def test_aggregate_features_other_than_infer_is_one_error_not_also_ignored(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    path = _write(tmp_path, CONFIG_2021.replace("  features: infer\nannotate", "  features: [Cells_A]\nannotate", 1))
    with caplog.at_level("WARNING", logger="cytoprofile"), pytest.raises(ConfigError, match="aggregate.features"):
        load_config(path)
    assert not [r for r in caplog.records if "aggregate.features" in r.getMessage()]


@pytest.mark.parametrize(("key", "value", "meant"), [("method", "MAD_ROBUSTIZE", "mad_robustize"),
                                                     ("method", "Standardize", "standardize"),
                                                     ("method", "mad_robustise", "mad_robustize")])
def test_a_choice_in_the_wrong_case_or_spelling_says_what_was_meant(tmp_path: Path, key: str, value: str,
                                                                     meant: str) -> None:
    message = _error(_write(tmp_path, f"pipeline: p\nnormalize:\n  {key}: {value}\n" + BATCH))
    assert f"normalize.{key}: '{value}' is not" in message and f"did you mean '{meant}'?" in message
