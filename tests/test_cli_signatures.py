"""Every command is a thin adapter over one library function.

Each flag of ``cytoprofile STEP`` is a keyword argument of the step's function with
the same default, so ``cytoprofile normalize`` and ``normalize()`` cannot drift apart;
the few flags that only the command line has are listed with the reason. Every
option shows help, a readable placeholder and its default.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer.main

from cytoprofile.cli import app, main

# command → the library function it calls (module, name)
FUNCTIONS: dict[str, tuple[str, str]] = {
    "synth": ("cytoprofile.synth", "synth"),
    "collate": ("cytoprofile.collate", "collate"),
    "aggregate": ("cytoprofile.aggregate", "aggregate"),
    "csv2gz": ("cytoprofile.io", "csv2gz"),
    "annotate": ("cytoprofile.annotate", "annotate_files"),
    "normalize": ("cytoprofile.normalize", "normalize"),
    "feature-select": ("cytoprofile.feature_select", "feature_select"),
    "consensus": ("cytoprofile.consensus", "consensus"),
    "write-gct": ("cytoprofile.io", "write_gct"),
    "validate-metadata": ("cytoprofile.metadata", "validate_metadata"),
    "config-template": ("cytoprofile.config", "config_template"),
    "init": ("cytoprofile.config", "init_project"),
    "run": ("cytoprofile.pipeline", "run"),
    "qc": ("cytoprofile.qc", "quality_control"),
    "select-variant-features": ("cytoprofile.processing", "select_variant_features"),
    "mad-normalize": ("cytoprofile.processing", "mad_normalize"),
    "rank-int": ("cytoprofile.processing", "rank_int"),
    "correct-well-position": ("cytoprofile.processing", "correct_well_position"),
    "regress-cell-count": ("cytoprofile.processing", "regress_cell_count"),
    "remove-outliers": ("cytoprofile.processing", "remove_outliers"),
    "pca": ("cytoprofile.processing", "pca"),
    "sphere": ("cytoprofile.processing", "sphere"),
    "harmony": ("cytoprofile.processing", "harmony"),
    "process": ("cytoprofile.processing", "run_chain"),
    "map": ("cytoprofile.evaluate", "mean_average_precision"),
    "single-cells": ("cytoprofile.single_cells", "write_plates_single_cells"),
    "cell-qc": ("cytoprofile.cell_qc", "flag_single_cells"),
}

# flags only the command line has, and why
CLI_ONLY: dict[str, str] = {
    "quiet": "console verbosity and progress bars: a terminal concern",
    "float_format": "how the command writes its CSV output; functions return tables",
    "profile": "storage options: set once per process for every S3 read and write",
    "endpoint_url": "storage options",
    "no_sign_request": "storage options",
    "connect_timeout": "storage options",
    "read_timeout": "storage options",
    "retries": "storage options",
    "help": "Click's own",
    "output": "where the command writes what the function returns",
}

# flags a command turns into one argument of its function, and how
COMPOSED: dict[tuple[str, str], str] = {
    ("collate", "single_cell_format"): "with --single-cells: the formats of single_cells=",
    ("collate", "qc_sets"): "with --exclude-outlier-cells: the sets of exclude_outlier_cells=",
    ("cell-qc", "thresholds"): "read with cell_qc.load_thresholds into thresholds=",
    ("cell-qc", "qc_sets"): "the sets cell_qc.load_thresholds keeps",
    ("single-cells", "thresholds"): "read with cell_qc.load_thresholds into thresholds=",
    ("single-cells", "qc_sets"): "the sets cell_qc.load_thresholds keeps",
    ("single-cells", "cell_qc"): "thresholds= given (the shipped sets unless --thresholds)",
    ("process", "chain"): "parsed with processing.parse_chain into the chain argument",
    ("qc", "map_"): "checked as the recipe's quality_control.map block into map_settings=",
    **{("qc", f"map_{key}"): "a key of the quality_control.map block, composed into map_settings="
       for key in ("modes", "pert_column", "annotation_column", "multilabel_separator", "control_query",
                   "neg_sameby", "pos_diffby", "null_size", "threshold", "seed")},
}

# the command's spelling of "not given" that the function spells otherwise
SAME_DEFAULT: dict[str, tuple[Any, Any]] = {
    "features": (None, "infer"),  # no --features: the function infers them
    "single_cells": (False, []),  # collate --single-cells off: no single-cell formats
    "exclude_outlier_cells": (False, None),  # collate --exclude-outlier-cells off: no cell QC sets
}


def _group() -> Any:
    return typer.main.get_command(app)  # Typer carries its own copy of Click: matched by shape


def _is_option(param: Any) -> bool:
    return bool(param.param_type_name == "option")


def _function(command: str) -> Callable[..., Any]:
    module, name = FUNCTIONS[command]
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def _normal(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_normal(v) for v in value]
    return value


def test_every_command_maps_to_one_function() -> None:
    assert sorted(_group().commands) == sorted(FUNCTIONS)


@pytest.mark.parametrize("command", sorted(FUNCTIONS))
def test_flags_are_keyword_arguments_with_the_same_default(command: str) -> None:
    cmd = _group().commands[command]
    signature = inspect.signature(_function(command))
    problems = []
    for param in cmd.params:
        if not _is_option(param) or param.name in CLI_ONLY or (command, param.name) in COMPOSED:
            continue
        arg = signature.parameters.get(str(param.name))
        if arg is None or arg.kind is not inspect.Parameter.KEYWORD_ONLY:
            problems.append(f"--{param.name}: not a keyword-only argument of the function")
            continue
        cli_default, fn_default = _normal(param.default), _normal(arg.default)
        if (cli_default, fn_default) != SAME_DEFAULT.get(str(param.name)) and cli_default != fn_default:
            problems.append(f"--{param.name}: command default {cli_default!r}, function default {fn_default!r}")
    assert not problems, "\n".join(problems)


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(FUNCTIONS))
def test_help_shows_help_placeholder_and_default(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    cmd = _group().commands[command]
    text = _help([command, "--help"], capsys)
    flat = " ".join(text.split())
    assert not re.search(r"<(str|int|float|bool|path|list\[\w+\])>|\{\w+\}", text), f"Python types as placeholders:\n{text}"
    assert "--no-no-" not in text
    for param in cmd.params:
        if param.name == "help":
            continue
        assert getattr(param, "help", None), f"{command} {param.name}: no help"
        if _is_option(param) and not param.is_flag and param.default not in (None, (), []):
            shown = param.default if not isinstance(param.default, tuple | list) else ", ".join(map(str, param.default))
            assert f"[default: {shown}]" in flat, f"{command} --{param.name}: default {shown!r} not shown"


#: options taking one value of a fixed set: the help's placeholder lists the set
CHOICES: dict[tuple[str, str], str] = {
    **{(c, "operation"): "AGGREGATE_OPERATIONS" for c in ("aggregate", "collate")},
    ("consensus", "operation"): "CONSENSUS_OPERATIONS", ("collate", "profile_format"): "TABLE_FORMATS",
    ("collate", "count_check"): "COUNT_CHECKS", ("normalize", "method"): "NORMALIZE_METHODS",
    ("normalize", "spherize_method"): "SPHERIZE_METHODS", ("feature-select", "corr_method"): "CORRELATION_METHODS",
    ("annotate", "unmatched_wells"): "UNMATCHED_WELLS", ("validate-metadata", "unmatched_wells"): "UNMATCHED_WELLS",
    ("qc", "level"): "FEATURE_SELECT_LEVELS", ("rank-int", "ties"): "RANK_INT_TIES", ("map", "mode"): "MAP_MODES",
    ("feature-select", "variance_threshold_meaning"): "VARIANCE_THRESHOLD_MEANINGS", ("synth", "export"): "SYNTH_EXPORTS",
}


@pytest.mark.parametrize(("command", "flag", "choices"), [
    ("rank-int", "--ties", "random or average"), ("map", "--mode", "activity, distinctiveness or consistency"),
    ("feature-select", "--variance-threshold-meaning", "frequency or variance"),
])
def test_a_bad_choice_is_refused_before_the_input_is_read(command: str, flag: str, choices: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-profiles.csv"  # never opened: the flag is checked first
    argv = [command, str(missing), *([str(tmp_path / "out.csv")] if command != "map" else []), flag, "nope"]
    assert main(argv) == 1
    assert capsys.readouterr().err.strip() == f"error: {flag} nope: choose {choices}"


@pytest.mark.parametrize(("command", "option"), sorted(CHOICES))
def test_help_shows_the_choices_of_an_option(command: str, option: str, capsys: pytest.CaptureFixture[str]) -> None:
    import cytoprofile.vocabulary as vocabulary

    values = getattr(vocabulary, CHOICES[(command, option)])
    (param,) = [p for p in _group().commands[command].params if p.name == option]
    flat = " ".join(_help([command, "--help"], capsys).split())
    shown = "[" + "|".join(values) + "]"
    names = ", ".join(param.opts)  # an option's other name (aggregate's --method) is listed beside it
    assert f"{names} {shown}" in flat, f"{command} {names}: choices {shown} not shown"


def test_defaults_are_shown_one_way(capsys: pytest.CaptureFixture[str]) -> None:
    """A default is shown in brackets (``[default: 5.0]``, ``[default: (every well)]`` for what an unset option
    means), never in the help's prose as ``(default 5)`` or ``(default: every well)``."""
    problems = []
    for name, cmd in _group().commands.items():
        for param in cmd.params:
            if re.search(r"\(default\b", " ".join((getattr(param, "help", None) or "").split())):
                problems.append(f"{name} --{param.name}: default in prose: {param.help!r}")
    assert not problems, "\n".join(problems)


#: options left unset by default whose unset value is not "off" ("*": in every command): the help says what it means
SAYS_ITS_DEFAULT = {
    ("*", "float_format"): "default: full precision", ("run", "jobs"): "default: the config's executor.jobs",
    ("run", "scheduler"): "default: the config's executor.scheduler", ("qc", "level"): "default: the first of",
    ("qc", "replicate_column"): "default: the first present", ("normalize", "min_cells"): "default: every well",
    ("synth", "well_subset"): "default: every well", ("validate-metadata", "plates"): "default: every plate",
}


def test_unset_options_say_what_unset_means() -> None:
    problems = []
    for name, cmd in _group().commands.items():
        for param in cmd.params:
            said = SAYS_ITS_DEFAULT.get((name, str(param.name))) or SAYS_ITS_DEFAULT.get(("*", str(param.name)))
            shown = f"default: {param.show_default}" if isinstance(param.show_default, str) else ""
            if said and _is_option(param) and param.default is None and said not in " ".join(f"{param.help} {shown}".split()):
                problems.append(f"{name} --{param.name}: help does not say {said!r}")
    assert not problems, "\n".join(problems)


def test_comma_placeholders_only_where_commas_are_read() -> None:
    """``NAME,...`` promises a comma list: only text lists are split at commas."""
    import typing

    problems = []
    for name, cmd in _group().commands.items():
        for param in cmd.params:
            if _is_option(param) and str(param.metavar or "").endswith(",..."):
                element = typing.get_args(param.type_descriptor.annotation)
                if element and element[0] is not str:
                    problems.append(f"{name} --{param.name}: {param.metavar} but {element[0]} values are not split")
    assert not problems, "\n".join(problems)


def test_command_summaries_are_whole(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(["--help"], capsys)
    listing = text.split("Commands:")[1]
    assert "..." not in listing and "…" not in listing, listing
    for name, cmd in _group().commands.items():
        first = (cmd.help or "").strip().splitlines()[0]
        assert first.endswith(".") and len(first) <= 72, f"{name}: {first!r}"
        def flat(text: str) -> str:
            return re.sub(r"-\s+", "-", " ".join(text.split()))  # a wrapped "per-\nwell" reads "per-well"

        assert flat(first) in flat(listing), name


def test_no_sign_request_is_one_flag(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("collate", "qc", "run"):
        text = _help([command, "--help"], capsys)
        assert "--no-sign-request" in text and "--no-no-sign-request" not in text and "--sign-request" not in text


@pytest.mark.parametrize(("adapter", "block", "function"), [
    ("aggregate_options", "AggregateConfig", ("cytoprofile.aggregate", "aggregate")),
    ("annotate_options", "AnnotateConfig", ("cytoprofile.annotate", "annotate")),
    ("normalize_options", "NormalizeConfig", ("cytoprofile.normalize", "normalize")),
    ("feature_select_options", "FeatureSelectConfig", ("cytoprofile.feature_select", "feature_select")),
    ("quality_control_options", "QualityControlConfig", ("cytoprofile.qc", "quality_control")),
])
def test_recipe_blocks_translate_to_keyword_arguments(adapter: str, block: str, function: tuple[str, str]) -> None:
    """The recipe adapter hands a config block to its step under the function's own names."""
    from cytoprofile import config, recipe_options

    made = getattr(config, block)()
    if block == "AnnotateConfig":
        made = config.AnnotateConfig.model_validate({"external": {"perform": True, "file": "moa.csv",
                                                                  "merge_column": "broad_sample"}})
    translate = getattr(recipe_options, adapter)
    options = (translate(made, ["cells", "Speckles"]) if adapter == "aggregate_options"
               else translate(made, "Metadata_well_position", external=True) if adapter == "annotate_options"
               else translate(made))
    signature = inspect.signature(getattr(importlib.import_module(function[0]), function[1]))
    keywords = {n for n, p in signature.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert set(options) <= keywords, set(options) - keywords
    if adapter == "aggregate_options":
        assert options["operation"] == made.method and options["compartments"] == ["Cells", "Speckles"]
    if adapter == "normalize_options":
        assert options["mad_robustize_epsilon"] == made.mad_robustize_fudge_factor
    if adapter == "annotate_options":
        assert options["join_on"] == ["Metadata_well_position", made.well_column]
        assert options["external_join_left"] == options["external_join_right"] == [made.external.join_column]
    if adapter == "quality_control_options":
        assert options["summary_well_columns"] is None and options["map_settings"] is None  # mAP off by default


def test_processing_and_map_blocks_translate_to_keyword_arguments() -> None:
    """``processing_options`` keys are run_chain's (``input`` picks the chain's start); an
    on ``quality_control.map`` block gives quality_control's ``map_settings``."""
    from cytoprofile import config, recipe_options
    from cytoprofile.processing import run_chain

    options = recipe_options.processing_options({"input": "normalized", "seed": 3, "batch_key": "Metadata_B"})
    keywords = {n for n, p in inspect.signature(run_chain).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert options == {"seed": 3, "batch_key": "Metadata_B"} and set(options) <= keywords
    block = config.MapConfig.model_validate({"perform": True, "neg_sameby": ["Metadata_Plate"]})
    settings = recipe_options.map_options(block)
    assert settings is not None and settings["neg_sameby"] == ["Metadata_Plate"] and settings["modes"] == list(block.modes)
    assert recipe_options.map_options(config.MapConfig()) is None


@pytest.mark.parametrize(("command", "option", "step"), [
    ("normalize", "method", "normalize"), ("feature-select", "operations", "feature_select"),
])
def test_help_names_the_recipe_configs_other_default(command: str, option: str, step: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Where a recipe config's default differs from the command's, the option's help says the config's."""
    from cytoprofile.recipe_options import TEMPLATE_DEFAULTS

    value = TEMPLATE_DEFAULTS[(step, option)]
    shown = ",".join(value) if isinstance(value, list) else str(value)
    flat = " ".join(_help([command, "--help"], capsys).split())
    assert "a recipe config's" in flat and shown in flat.replace(", ", ","), f"{command} --{option}"


@pytest.mark.parametrize(("block", "function", "differ"), [
    ("MapConfig", ("cytoprofile.evaluate", "mean_average_precision"), {}),
    ("ProcessingOptions", ("cytoprofile.processing", "run_chain"), {"featselect": "None and {} both: no options over the defaults"}),
])
def test_recipe_block_defaults_are_the_functions(block: str, function: tuple[str, str], differ: dict[str, str]) -> None:
    """A key of a recipe block named as its function's keyword has the function's default (the QC
    block's mAP and ``cytoprofile map`` give the same numbers unless told otherwise)."""
    from cytoprofile import config

    model = getattr(config, block)
    signature = inspect.signature(getattr(importlib.import_module(function[0]), function[1]))
    shared = [n for n in model.model_fields if n in signature.parameters and n not in differ]
    assert shared, block
    made = model()
    wrong = {n: (_normal(getattr(made, n)), _normal(signature.parameters[n].default)) for n in shared
             if _normal(getattr(made, n)) != _normal(signature.parameters[n].default)}
    assert not wrong, wrong
