"""One command per profiling step on per-well tables, plus the project and metadata helpers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from ..errors import InputError, about
from ..vocabulary import (
    AGGREGATE_OPERATIONS,
    CONSENSUS_OPERATIONS,
    CORRELATION_METHODS,
    NONE_WORDS,
    NORMALIZE_METHODS,
    SPHERIZE_METHODS,
    UNMATCHED_WELLS,
    VARIANCE_THRESHOLD_MEANINGS,
)
from .common import (
    COMPARTMENTS_HELP,
    CompartmentFeaturesOpt,
    CompartmentsOpt,
    ImageFeaturesOpt,
    QuietOpt,
    app,
    check_float_format,
    log,
    one_of,
    setup_logging,
    split_values,
    timed,
)
from .generate import StepSpec, io_arguments, step_command

__all__ = ['aggregate', 'annotate', 'config_template', 'consensus', 'csv2gz_cmd', 'feature_select', 'init', 'normalize', 'validate_metadata', 'write_gct']


@app.command("csv2gz")
def csv2gz_cmd(
    source: Annotated[str, typer.Argument(help="A CSV file.")],
    dest: Annotated[str | None, typer.Argument(help="Output .csv.gz.", show_default="beside the source")] = None,
    float_format: Annotated[str | None, typer.Option(help="Float format; 'none' keeps full precision.")] = "%.5g",
) -> None:
    """Rewrite a CSV as deterministic gzip CSV (same bytes on every run)."""
    from ..io import check_output, csv2gz

    fmt = check_float_format(None if float_format is None or float_format in NONE_WORDS else float_format)
    check_output("x.csv.gz", float_format=fmt)
    typer.echo(csv2gz(source, dest, float_format=fmt))


def _sample_filter(values: list[str] | None) -> dict[str, list[str]] | None:
    """``COLUMN=V1,V2`` options as a structured filter."""
    if not values:
        return None
    out: dict[str, list[str]] = {}
    for item in values:
        if "=" not in item:
            raise InputError(f"--sample-filter {item!r}: write COLUMN=VALUE[,VALUE...]")
        column, _, rest = item.partition("=")
        out.setdefault(column.strip(), []).extend(v.strip() for v in rest.split(",") if v.strip())
    return out


def _profile_step(step: str, profiles: str, output: str, float_format: str | None, quiet: bool,
                  call: Callable[[Any, Callable[[Any], None]], Any],
                  said: str = "wrote {rows} rows × {columns} columns to {output}") -> None:
    """Read PROFILES, run one step on it (``call(table, on_account)``), write OUTPUT and its
    provenance record, then say what was written."""
    from .. import io
    from ..recipe.provenance import write_step_provenance

    setup_logging(quiet)
    io.check_output(output, float_format=float_format)
    accounts: list[Any] = []
    with about(profiles):
        df = call(io.read_table(profiles), accounts.append)
    io.write_table(df, output, float_format=float_format)
    write_step_provenance(output, step, [profiles], accounts[0])
    log.info("%s", said.format(rows=len(df), columns=df.shape[1], output=output))


def _run_profile_step(spec: StepSpec, fixed: dict[str, Any], given: dict[str, Any]) -> None:
    features = split_values(fixed["features"]) or "infer"
    _profile_step(spec.step, fixed["profiles"], fixed["output"], fixed["float_format"], fixed["quiet"],
                  lambda table, on_account: spec.function(table, **given, features=features, on_account=on_account),
                  said=spec.said)


def _handbook_step(command: str, function: Callable[..., Any], summary: str, help: dict[str, str], **more: Any) -> StepSpec:
    """A handbook step's command over its function (provenance written beside the output)."""
    shared = {"image_features": "Include Image_* features when inferring.",
              "compartments": COMPARTMENTS_HELP,
              "samples": "Wells to fit on: all, or a query such as \"Metadata_control_type == 'negcon'\".",
              "sample_filter": "Fit on wells where COLUMN=VALUE[,VALUE] (repeatable)."}
    return StepSpec(command, function, function.__name__, summary, {**shared, **help}, _run_profile_step,
                    skip=("on_account", *more.pop("skip", ())), tail=("features", "float_format", "quiet"),
                    parse={"sample_filter": _sample_filter}, types={"sample_filter": list[str] | None, **more.pop("types", {})},
                    metavars={"sample_filter": "COLUMN=VALUE[,VALUE]"},
                    unset={"compartments": "Cells, Cytoplasm, Nuclei", **more.pop("unset", {})}, **more)


def _handbook_steps() -> tuple[StepSpec, ...]:
    from ..consensus import consensus
    from ..feature_select import feature_select
    from ..normalize import normalize

    return (
        _handbook_step("normalize", normalize, "Normalize profiles against all wells or a subset (e.g. negcon wells).", {
            "method": "standardize (the default, as pycytominer's; a recipe config's is mad_robustize), robustize, "
                      "mad_robustize, spherize or inverse_normal.",
            "mad_robustize_epsilon": "ε added to the scaled MAD (--mad-robustize-fudge-factor: the recipe's "
                                     "normalize.mad_robustize_fudge_factor).",
            "spherize_center": "spherize: centre the data first.", "spherize_method": "PCA, ZCA, PCA-cor or ZCA-cor.",
            "spherize_epsilon": "Spherize regularization.", "min_cells": "Fit only on wells with at least this many cells.",
            "object_count_column": "min_cells: the column holding each well's cell count.",
            "inverse_normal_n_quantiles": "inverse_normal: quantiles of the fitted transform."},
            choices={"method": NORMALIZE_METHODS, "spherize_method": SPHERIZE_METHODS}, skip=("meta_features",),
            aliases={"mad_robustize_epsilon": ("--mad-robustize-fudge-factor",)}, unset={"min_cells": "every well"},
            arguments=io_arguments("Annotated profiles.", "Normalized output table.")),
        _handbook_step("feature-select", feature_select, "Drop uninformative features.", {
            "operations": "Operations in order: variance_threshold, frequency_threshold, correlation_threshold, "
                          "drop_na_columns, blocklist, drop_outliers, noise_removal (a recipe config's default: "
                          "variance_threshold, correlation_threshold, drop_na_columns, blocklist).",
            "variance_threshold_meaning": "What variance_threshold means: frequency (the recipe's) or variance.",
            "samples": "Rows the statistics are computed on: all, or a query such as "
                       "\"Metadata_control_type == 'negcon'\".",
            "sample_filter": "Rows where COLUMN=VALUE[,VALUE] (repeatable): the statistics are computed on them.",
            "na_cutoff": "drop_na_columns: largest NaN fraction kept.",
            "corr_threshold": "correlation_threshold: largest correlation kept.",
            "corr_method": "correlation_threshold: pearson, spearman or kendall.",
            "freq_cut": "frequency test: 2nd/1st most common value ratio.",
            "unique_cut": "frequency test: distinct values / rows.",
            "min_variance": "variance_threshold with --variance-threshold-meaning variance: smallest variance kept.",
            "blocklist_file": "blocklist: a file of features.", "outlier_cutoff": "drop_outliers: largest |value| kept.",
            "noise_removal_perturb_groups": "noise_removal: the column naming each well's perturbation group "
                                            "(needed by noise_removal).",
            "noise_removal_stdev_cutoff": "noise_removal: largest mean within-group standard deviation kept "
                                          "(needed by noise_removal)."},
            choices={"corr_method": CORRELATION_METHODS, "variance_threshold_meaning": VARIANCE_THRESHOLD_MEANINGS},
            skip=("blocklist",), unset={"blocklist_file": "the standard list"},
            types={"blocklist_file": str | None, "noise_removal_perturb_groups": str | None},
            arguments=io_arguments("Normalized profiles."), said="kept {columns} columns; wrote {output}"),
        _handbook_step("consensus", consensus, "One profile per replicate group (median, mean or MODZ).", {
            "replicate_columns": "Columns that define a replicate group.", "operation": "median, mean or modz.",
            "modz_method": "modz: correlation of the replicates weighting them (spearman or pearson).",
            "modz_min_weight": "modz: smallest weight of a replicate.",
            "modz_precision": "modz: decimals the weights are rounded to (unset: none)."},
            choices={"operation": CONSENSUS_OPERATIONS}, arguments=io_arguments("Profiles to summarise."),
            said="wrote {rows} consensus profiles to {output}"),
    )


def _run_aggregate(spec: StepSpec, fixed: dict[str, Any], given: dict[str, Any]) -> None:
    from .. import io

    setup_logging(fixed["quiet"])
    io.check_output(fixed["output"], float_format=fixed["float_format"])
    with timed("aggregate"):
        df = spec.function(fixed["backend"], **given)
    io.write_table(df, fixed["output"], float_format=fixed["float_format"])
    log.info("wrote %d wells × %d columns to %s", len(df), df.shape[1], fixed["output"])


def _run_annotate(spec: StepSpec, fixed: dict[str, Any], given: dict[str, Any]) -> None:
    from .. import io
    from ..recipe.provenance import write_step_provenance

    setup_logging(fixed["quiet"])
    profiles, platemap, output = fixed["profiles"], fixed["platemap"], fixed["output"]
    io.check_output(output, float_format=fixed["float_format"])
    accounts: list[Any] = []
    df = spec.function(profiles, platemap, **given, on_account=accounts.append)
    io.write_table(df, output, float_format=fixed["float_format"])
    external = given.get("external")
    write_step_provenance(output, "annotate", [profiles, platemap, *([external] if external else [])], accounts[0],
                          wells=df.attrs.get("wells"))
    log.info("wrote %d rows × %d columns to %s", len(df), df.shape[1], output)


def _table_steps() -> tuple[StepSpec, ...]:
    """aggregate (a backend in, per-well profiles out) and annotate (profiles and a plate map in)."""
    from ..aggregate import aggregate
    from ..annotate import annotate_files

    return (
        StepSpec("aggregate", aggregate, "aggregate", "Per-well profiles from an existing single-cell backend.", {
            "operation": "median or mean (--method: the recipe's aggregate.method).",
            "strata": "Columns that define a profile.", "compartments": "Object tables to aggregate.",
            "image_features": "Add image features.", "image_feature_categories": "Image categories to add as features."},
            _run_aggregate, choices={"operation": AGGREGATE_OPERATIONS}, aliases={"operation": ("--method",)},
            skip=("sites", "exclude", "progress"), tail=("float_format", "quiet"),
            arguments=(("backend", "PLATE.sqlite or PLATE_Image.parquet.", "BACKEND"),
                       ("output", "Output table (.csv, .csv.gz or .parquet).", None))),
        StepSpec("annotate", annotate_files, "annotate", "Join plate map (and external metadata) onto per-well profiles.", {
            "join_on": "Plate map column, profile column.", "external": "External metadata file (.tsv) to merge.",
            "merge_column": "Key column shared by the plate map and the external metadata.",
            "unmatched_wells": "Profile wells missing from the plate map: error, or drop (and say how many).",
            "compartments": COMPARTMENTS_HELP},
            _run_annotate, choices={"unmatched_wells": UNMATCHED_WELLS}, skip=("on_account",),
            tail=("float_format", "quiet"), unset={"compartments": "Cells, Cytoplasm, Nuclei"},
            arguments=(("profiles", "Per-well profiles (.csv, .csv.gz or .parquet).", None),
                       ("platemap", "Plate map (tab-separated .txt).", None), ("output", "Annotated output table.", None))),
    )


aggregate, annotate = (step_command(spec) for spec in _table_steps())
normalize, feature_select, consensus = (step_command(spec) for spec in _handbook_steps())


@app.command("write-gct")
def write_gct(
    profiles: Annotated[str, typer.Argument(help="Profiles table.")],
    output: Annotated[str, typer.Argument(help="Output .gct file.")],
    features: CompartmentFeaturesOpt = None,
    compartments: CompartmentsOpt = None,
    image_features: ImageFeaturesOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write profiles as GCT 1.3, which opens in Morpheus.

    cmapPy 4.0.1 cannot read GCT files under pandas 3.
    """
    from .. import io
    from ..recipe.provenance import write_step_provenance

    setup_logging(quiet)
    accounts: list[Any] = []
    with about(profiles):
        df = io.read_table(profiles)
        io.write_gct(df, output, features=split_values(features) or "infer", compartments=split_values(compartments),
                     image_features=image_features, on_account=accounts.append)
    write_step_provenance(output, "write_gct", [profiles], accounts[0])
    typer.echo(output)


@app.command("validate-metadata")
def validate_metadata(
    workspace: Annotated[str, typer.Argument(help="Folder holding metadata/platemaps/BATCH/.")],
    batch: Annotated[str, typer.Argument(help="Batch name.")],
    plates: Annotated[list[str] | None, typer.Option("--plate", help="Check only these plates.", show_default="every plate of the batch")] = None,
    external_metadata: Annotated[str | None, typer.Option("--external", help="External metadata file to check too.")] = None,
    merge_column: Annotated[str | None, typer.Option(help="Its key column.")] = None,
    profile_files: Annotated[list[str] | None, typer.Option("--profiles", help="Per-well profiles whose wells to check against their plate maps (repeatable; plates from Metadata_Plate).")] = None,
    unmatched_wells: Annotated[str, typer.Option(metavar=one_of(UNMATCHED_WELLS), help="Profile wells missing from the plate map: error, or drop (a warning).")] = "error",
) -> None:
    """Check barcode map, plate maps and external metadata, naming each fault."""
    from ..metadata import validate_metadata as _validate

    notes = _validate(workspace, batch, plates=split_values(plates), external_metadata=external_metadata, merge_column=merge_column,
                      profile_files=split_values(profile_files), unmatched_wells=unmatched_wells)
    setup_logging(False)
    for note in notes:
        log.warning("%s", note)
    typer.echo(f"metadata of {batch}: ok" + (f" ({len(notes)} warning(s))" if notes else ""))


@app.command("config-template")
def config_template(
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")] = None,
    workspace: Annotated[str | None, typer.Option(help="Fill the workspace key.")] = None,
    batch: Annotated[str | None, typer.Option(help="Batch name for the batch document.")] = None,
    plates: Annotated[list[str] | None, typer.Option("--plate", help="Plates of that batch.")] = None,
) -> None:
    """Print a commented recipe config to start from."""
    from .. import io
    from ..config import config_template as _template

    text = _template(batch=batch, plates=split_values(plates), workspace=workspace)
    if output:
        with io.atomic_open(output) as fh:
            fh.write(text)
    else:
        typer.echo(text, nl=False)


@app.command()
def init(directory: Annotated[str, typer.Argument(help="Profiling project folder.")] = ".") -> None:
    """Make the profiling project's folders."""
    from ..config import init_project

    made = init_project(directory)
    typer.echo(f"created {len(made)} folder(s) in {directory}" + (f": {', '.join(made)}" if made else ""))
