"""One command per profiling step on per-well tables, plus the project and metadata helpers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from ..errors import InputError, about
from ..vocabulary import (
    CONSENSUS_OPERATIONS,
    CORRELATION_METHODS,
    DEFAULT_COMPARTMENTS,
    DEFAULT_IMAGE_FEATURE_CATEGORIES,
    DEFAULT_STRATA,
    NONE_WORDS,
    NORMALIZE_METHODS,
    SPHERIZE_METHODS,
    UNMATCHED_WELLS,
    VARIANCE_THRESHOLD_MEANINGS,
)
from .common import (
    AddImageFeaturesOpt,
    AggregateCompartmentsOpt,
    AggregateOperationOpt,
    CompartmentFeaturesOpt,
    CompartmentsOpt,
    FeaturesOpt,
    FloatFormatOpt,
    ImageFeaturesOpt,
    OutputArg,
    QuietOpt,
    StrataOpt,
    app,
    check_float_format,
    choice_option,
    log,
    one_of,
    setup_logging,
    split_values,
    timed,
)

__all__ = ['aggregate', 'annotate', 'config_template', 'consensus', 'csv2gz_cmd', 'feature_select', 'init', 'normalize', 'validate_metadata', 'write_gct']


@app.command()
def aggregate(
    backend_path: Annotated[str, typer.Argument(metavar="BACKEND", help="PLATE.sqlite or PLATE_Image.parquet.")],
    output: Annotated[str, typer.Argument(help="Output table (.csv, .csv.gz or .parquet).")],
    operation: AggregateOperationOpt = "median",
    compartments: AggregateCompartmentsOpt = list(DEFAULT_COMPARTMENTS),
    image_feature_categories: Annotated[list[str], typer.Option(help="Image categories to add as features.")] = list(DEFAULT_IMAGE_FEATURE_CATEGORIES),
    image_features: AddImageFeaturesOpt = True,
    strata: StrataOpt = list(DEFAULT_STRATA),
    float_format: Annotated[str | None, typer.Option(help="printf-style float format for CSV output, e.g. %.5g.", show_default="full precision",
                                                     callback=check_float_format)] = None,
    quiet: QuietOpt = False,
) -> None:
    """Per-well profiles from an existing single-cell backend."""
    from .. import io
    from ..aggregate import aggregate as _aggregate

    setup_logging(quiet)
    io.check_output(output, float_format=float_format)
    with timed("aggregate"):
        df = _aggregate(backend_path, operation=operation,  # type: ignore[arg-type]
                        strata=split_values(strata) or list(DEFAULT_STRATA),
                        compartments=split_values(compartments) or list(DEFAULT_COMPARTMENTS),
                        image_features=image_features,
                        image_feature_categories=split_values(image_feature_categories) or list(DEFAULT_IMAGE_FEATURE_CATEGORIES))
    io.write_table(df, output, float_format=float_format)
    log.info("wrote %d wells × %d columns to %s", len(df), df.shape[1], output)


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


@app.command()
def annotate(
    profiles: Annotated[str, typer.Argument(help="Per-well profiles (.csv, .csv.gz or .parquet).")],
    platemap: Annotated[str, typer.Argument(help="Plate map (tab-separated .txt).")],
    output: Annotated[str, typer.Argument(help="Annotated output table.")],
    join_on: Annotated[list[str], typer.Option(help="Plate map column, profile column.")] = ["Metadata_well_position", "Metadata_Well"],
    external: Annotated[str | None, typer.Option(help="External metadata file (.tsv) to merge.")] = None,
    merge_column: Annotated[str | None, typer.Option(help="Key column shared by the plate map and the external metadata.")] = None,
    unmatched_wells: Annotated[str, typer.Option(metavar=one_of(UNMATCHED_WELLS), help="Profile wells missing from the plate map: error, or drop (and say how many).")] = "error",
    compartments: CompartmentsOpt = None,
    float_format: FloatFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Join plate map (and external metadata) onto per-well profiles."""
    from .. import io
    from ..annotate import annotate_files
    from ..recipe.provenance import write_step_provenance

    setup_logging(quiet)
    io.check_output(output, float_format=float_format)
    accounts: list[Any] = []
    df = annotate_files(profiles, platemap, join_on=split_values(join_on) or ["Metadata_well_position", "Metadata_Well"],
                        external=external, merge_column=merge_column, unmatched_wells=unmatched_wells,
                        compartments=split_values(compartments), on_account=accounts.append)
    io.write_table(df, output, float_format=float_format)
    write_step_provenance(output, "annotate", [profiles, platemap, *([external] if external else [])], accounts[0],
                          wells=df.attrs.get("wells"))
    log.info("wrote %d rows × %d columns to %s", len(df), df.shape[1], output)


@app.command()
def normalize(
    profiles: Annotated[str, typer.Argument(help="Annotated profiles.")],
    output: Annotated[str, typer.Argument(help="Normalized output table.")],
    method: Annotated[str, typer.Option(metavar=one_of(NORMALIZE_METHODS), help="standardize (the default, as pycytominer's; a recipe config's is mad_robustize), robustize, mad_robustize, spherize or inverse_normal.")] = "standardize",
    samples: Annotated[str, typer.Option(help="Wells to fit on: all, or a query such as \"Metadata_control_type == 'negcon'\".")] = "all",
    sample_filter: Annotated[list[str] | None, typer.Option(metavar="COLUMN=VALUE[,VALUE]", help="Fit on wells where COLUMN=VALUE[,VALUE] (repeatable).")] = None,
    features: FeaturesOpt = None,
    image_features: ImageFeaturesOpt = False,
    mad_robustize_epsilon: Annotated[float, typer.Option("--mad-robustize-epsilon", "--mad-robustize-fudge-factor", help="ε added to the scaled MAD (--mad-robustize-fudge-factor: the recipe's normalize.mad_robustize_fudge_factor).")] = 1e-18,
    spherize_method: Annotated[str, typer.Option(metavar=one_of(SPHERIZE_METHODS), help="PCA, ZCA, PCA-cor or ZCA-cor.")] = "ZCA-cor",
    spherize_epsilon: Annotated[float, typer.Option(help="Spherize regularization.")] = 1e-6,
    min_cells: Annotated[int | None, typer.Option(help="Fit only on wells with at least this many cells.", show_default="every well")] = None,
    compartments: CompartmentsOpt = None,
    inverse_normal_n_quantiles: Annotated[int, typer.Option(help="inverse_normal: quantiles of the fitted transform.")] = 1000,
    float_format: FloatFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Normalize profiles against all wells or a subset (e.g. negcon wells)."""
    from ..normalize import normalize as _normalize

    _profile_step("normalize", profiles, output, float_format, quiet, lambda table, on_account: _normalize(
        table, features=split_values(features) or "infer", image_features=image_features,
        samples=samples, sample_filter=_sample_filter(sample_filter), method=method,
        mad_robustize_epsilon=mad_robustize_epsilon, spherize_method=spherize_method,
        spherize_epsilon=spherize_epsilon, min_cells=min_cells, compartments=split_values(compartments),
        inverse_normal_n_quantiles=inverse_normal_n_quantiles, on_account=on_account))


@app.command("feature-select")
def feature_select(
    profiles: Annotated[str, typer.Argument(help="Normalized profiles.")],
    output: OutputArg,
    operations: Annotated[list[str], typer.Option(help="Operations in order: variance_threshold, frequency_threshold, correlation_threshold, drop_na_columns, blocklist, drop_outliers, noise_removal (a recipe config's default: variance_threshold, correlation_threshold, drop_na_columns, blocklist).")] = ["variance_threshold"],
    variance_threshold_meaning: Annotated[str, choice_option(VARIANCE_THRESHOLD_MEANINGS, help="What variance_threshold means: frequency (the recipe's) or variance.")] = "frequency",
    features: FeaturesOpt = None,
    image_features: ImageFeaturesOpt = False,
    na_cutoff: Annotated[float, typer.Option(help="drop_na_columns: largest NaN fraction kept.")] = 0.05,
    corr_threshold: Annotated[float, typer.Option(help="correlation_threshold: largest correlation kept.")] = 0.9,
    freq_cut: Annotated[float, typer.Option(help="frequency test: 2nd/1st most common value ratio.")] = 0.05,
    unique_cut: Annotated[float, typer.Option(help="frequency test: distinct values / rows.")] = 0.01,
    outlier_cutoff: Annotated[float, typer.Option(help="drop_outliers: largest |value| kept.")] = 500,
    blocklist_file: Annotated[str | None, typer.Option(help="blocklist: a file of features.", show_default="the standard list")] = None,
    corr_method: Annotated[str, typer.Option(metavar=one_of(CORRELATION_METHODS), help="correlation_threshold: pearson, spearman or kendall.")] = "pearson",
    min_variance: Annotated[float, typer.Option(help="variance_threshold with --variance-threshold-meaning variance: smallest variance kept.")] = 1e-6,
    noise_removal_perturb_groups: Annotated[str | None, typer.Option(help="noise_removal: the column naming each well's perturbation group (needed by noise_removal).")] = None,
    noise_removal_stdev_cutoff: Annotated[float | None, typer.Option(help="noise_removal: largest mean within-group standard deviation kept (needed by noise_removal).")] = None,
    samples: Annotated[str, typer.Option(help="Rows the statistics are computed on: all, or a query such as \"Metadata_control_type == 'negcon'\".")] = "all",
    compartments: CompartmentsOpt = None,
    float_format: FloatFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Drop uninformative features."""
    from ..feature_select import feature_select as _feature_select

    _profile_step("feature_select", profiles, output, float_format, quiet, lambda table, on_account: _feature_select(
        table, features=split_values(features) or "infer", image_features=image_features,
        operations=split_values(operations) or ["variance_threshold"],
        variance_threshold_meaning=variance_threshold_meaning,  # type: ignore[arg-type]
        na_cutoff=na_cutoff, corr_threshold=corr_threshold, freq_cut=freq_cut, unique_cut=unique_cut,
        outlier_cutoff=outlier_cutoff, blocklist_file=blocklist_file, corr_method=corr_method,
        min_variance=min_variance, noise_removal_perturb_groups=noise_removal_perturb_groups,
        noise_removal_stdev_cutoff=noise_removal_stdev_cutoff, samples=samples,
        compartments=split_values(compartments), on_account=on_account), said="kept {columns} columns; wrote {output}")


@app.command()
def consensus(
    profiles: Annotated[str, typer.Argument(help="Profiles to summarise.")],
    output: OutputArg,
    replicate_columns: Annotated[list[str], typer.Option(help="Columns that define a replicate group.")] = ["Metadata_Plate", "Metadata_Well"],
    operation: Annotated[str, typer.Option(metavar=one_of(CONSENSUS_OPERATIONS), help="median, mean or modz.")] = "median",
    features: CompartmentFeaturesOpt = None,
    compartments: CompartmentsOpt = None,
    image_features: ImageFeaturesOpt = False,
    float_format: FloatFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """One profile per replicate group (median, mean or MODZ)."""
    from ..consensus import consensus as _consensus

    _profile_step("consensus", profiles, output, float_format, quiet, lambda table, on_account: _consensus(
        table, replicate_columns=split_values(replicate_columns) or ["Metadata_Plate", "Metadata_Well"],
        operation=operation, features=split_values(features) or "infer", compartments=split_values(compartments),
        image_features=image_features, on_account=on_account), said="wrote {rows} consensus profiles to {output}")


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
