"""Processing steps beyond the handbook, and mAP."""

from __future__ import annotations

import inspect
import typing
from collections import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer

from ..errors import about
from ..vocabulary import MAP_MODES, NEGCON_QUERY, RANK_INT_TIES, SPHERIZE_METHODS
from .common import (
    FeaturePrefixOpt,
    FeaturesOpt,
    FloatFormatOpt,
    NoControlsOpt,
    OutputArg,
    PlateColumnOpt,
    QuietOpt,
    ReferenceOpt,
    app,
    choice_option,
    feature_args,
    log,
    none_or_values,
    setup_logging,
    split_values,
    timed,
)

__all__ = ['correct_well_position_cmd', 'harmony_cmd', 'mad_normalize_cmd', 'map_cmd', 'pca_cmd', 'process_cmd', 'rank_int_cmd', 'regress_cell_count_cmd', 'remove_outliers_cmd', 'select_variant_features_cmd', 'sphere_cmd']


def _process(step: str, profiles: str, output: str, float_format: str | None, quiet: bool, call: Any) -> None:
    """Read PROFILES, apply one processing step, write OUTPUT."""
    from .. import io

    setup_logging(quiet)
    io.check_output(output, float_format=float_format)
    with about(profiles), timed(step):
        df = call(io.read_table(profiles))
    io.write_table(df, output, float_format=float_format)
    log.info("wrote %d rows × %d columns to %s", len(df), df.shape[1], output)


@dataclass(frozen=True)
class _Step:
    """A processing step's command: its function's keyword arguments are its options (names, types and
    defaults from the signature), with the help said here once."""

    command: str
    function: str
    step: str
    summary: str
    help: dict[str, str]
    choices: dict[str, Sequence[str]] = field(default_factory=dict)
    profiles_help: str = "Per-well profiles."
    output_help: str = "Output table."


#: help of the options several steps share
_SHARED_HELP = {
    "plate_column": "Column naming the plate.",
    "samples": "Reference wells for per-plate statistics: all, or a query.",
    "plates_without_controls": "Plates without reference wells: error or drop (their wells).",
}

_STEPS = {step.step: step for step in (
    _Step("select-variant-features", "select_variant_features", "var",
          "Keep features that vary on every plate's negative controls (var).",
          {"threshold": "Smallest |MAD / median| kept (on every plate)."}),
    _Step("mad-normalize", "mad_normalize", "mad",
          "(x − plate median) / plate MAD of negative controls, unscaled (mad).", {"epsilon": "Added to the MAD."}),
    _Step("rank-int", "rank_int", "int", "Rank-based inverse normal transform per feature (int).",
          {"c": "Blom's constant.", "ties": "random (seeded permutation) or average.",
           "seed": "Seed of the tie-breaking permutation."}, {"ties": RANK_INT_TIES}),
    _Step("correct-well-position", "correct_well_position", "wellpos",
          "Subtract each well position's mean across plates (wellpos).",
          {"well_column": "Column naming the well position."}, profiles_help="Per-well profiles of several plates."),
    _Step("regress-cell-count", "regress_cell_count", "cc", "Replace features by OLS residuals on the cell count (cc).",
          {"cell_count_column": "Column holding the well's cell count.",
           "min_unique": "Regress only features with more distinct values than this."}),
    _Step("remove-outliers", "remove_outliers", "outlier", "Drop features with extreme values, clip the rest (outlier).",
          {"bound": "Largest |value| kept; the rest is clipped.",
           "percentile": "Drop features whose this percentile of |x| exceeds the bound."}),
    _Step("pca", "pca", "pca", "Principal components explaining a share of the variance (pca).",
          {"variance_fraction": "Share of the variance the components keep.", "prefix": "Name prefix of the components."},
          profiles_help="Per-well profiles without missing values.", output_help="Output table (features PC1, PC2, ...)."),
    _Step("sphere", "sphere", "sphering", "Whitening fitted on negative controls, ε chosen by mAP (sphering).",
          {"method": "PCA, ZCA, PCA-cor or ZCA-cor.", "epsilon": "Regularization; repeat to choose the best by mAP.",
           "pert_column": "Perturbation column for the mAP choice.",
           "neg_sameby": "Negative controls must share these columns."},
          {"method": SPHERIZE_METHODS}, profiles_help="Per-well profiles without missing values."),
    _Step("harmony", "harmony", "harmony", "Harmony batch correction (harmony).",
          {"batch_key": "Column naming the batch.", "seed": "Random seed.", "max_iter": "Harmony iterations.",
           "n_clusters": "Clusters (unset: min(rows/30, 100)).", "theta": "Diversity penalty (unset: harmonypy's).",
           "threads": "Threads for harmonypy (0: one per physical core)."},
          profiles_help="Per-well profiles without missing values (usually after pca)."),
)}

#: options every step takes the same way: the features (given to the function) and how the output is written
_TAIL = ("features", "feature_prefixes", "float_format", "quiet")
_TAIL_TYPES: dict[str, Any] = {"features": FeaturesOpt, "feature_prefixes": FeaturePrefixOpt,
                               "float_format": FloatFormatOpt, "quiet": QuietOpt}


def _option(spec: _Step, name: str, parameter: inspect.Parameter) -> inspect.Parameter:
    """One keyword argument of the step's function as a command-line option, with its default: a sequence is
    a repeatable option, a Literal or a listed set of values a choice."""
    said = spec.help.get(name) or _SHARED_HELP[name]
    annotation, default = parameter.annotation, parameter.default
    literal = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else ()
    sequence = [m for m in (annotation, *typing.get_args(annotation))
                if isinstance(typing.get_origin(m), type) and issubclass(typing.get_origin(m), abc.Sequence)]
    kind = str if literal else list[typing.get_args(sequence[0])[0]] if sequence else annotation  # type: ignore[misc]
    choices = spec.choices.get(name) or literal
    opt = choice_option(choices, help=said) if choices else typer.Option(help=said)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[kind, opt],
                             default=list(default) if isinstance(default, tuple) else default)


def _given(value: Any, default: Any) -> Any:
    """A repeatable option's values (comma-separated lists split); none given: the function's default."""
    if not isinstance(value, list):
        return value
    values = split_values(value) if all(isinstance(v, str) for v in value) else value
    return values or default


def _step_command(spec: _Step) -> Callable[..., None]:
    """The command of one processing step: PROFILES OUTPUT, then the function's keyword arguments."""
    from .. import processing

    function = getattr(processing, spec.function)
    keywords = {n: p for n, p in inspect.signature(function, eval_str=True).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in _TAIL}

    def command(profiles: str, output: str, *, features: list[str] | None = None, feature_prefixes: list[str] | None = None,
                float_format: str | None = None, quiet: bool = False, **options: Any) -> None:
        given = {n: _given(v, keywords[n].default) for n, v in options.items()}
        _process(spec.step, profiles, output, float_format, quiet,
                 lambda df: function(df, **given, **feature_args(features, feature_prefixes)))

    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter("profiles", positional, annotation=Annotated[str, typer.Argument(help=spec.profiles_help)]),
              inspect.Parameter("output", positional, annotation=Annotated[str, typer.Argument(help=spec.output_help)]),
              *(_option(spec, n, p) for n, p in keywords.items()),
              *(inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None if n != "quiet" else False,
                                  annotation=_TAIL_TYPES[n]) for n in _TAIL)]
    command.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = spec.summary
    command.__name__ = f"{spec.function}_cmd"
    return app.command(spec.command)(command)


select_variant_features_cmd = _step_command(_STEPS["var"])
mad_normalize_cmd = _step_command(_STEPS["mad"])
rank_int_cmd = _step_command(_STEPS["int"])
correct_well_position_cmd = _step_command(_STEPS["wellpos"])
regress_cell_count_cmd = _step_command(_STEPS["cc"])
remove_outliers_cmd = _step_command(_STEPS["outlier"])
pca_cmd = _step_command(_STEPS["pca"])
sphere_cmd = _step_command(_STEPS["sphering"])
harmony_cmd = _step_command(_STEPS["harmony"])


@app.command("process")
def process_cmd(
    profiles: Annotated[str, typer.Argument(help="Per-well profiles (e.g. every plate of a set of batches).")],
    output: OutputArg,
    chain: Annotated[str, typer.Option(help="Steps, e.g. profiles_var_mad_int_featselect_harmony or var,mad,int.")] = "profiles_var_mad_int_featselect",
    plate_column: PlateColumnOpt = "Metadata_Plate",
    samples: ReferenceOpt = NEGCON_QUERY,
    plates_without_controls: NoControlsOpt = "error",
    batch_key: Annotated[str, typer.Option(help="Column naming the batch (harmony).")] = "Metadata_Batch",
    cell_count_column: Annotated[str, typer.Option(help="Cell count column (cc).")] = "Metadata_Count_Cells",
    pert_column: Annotated[str, typer.Option(help="Perturbation column (sphering's mAP choice).")] = "Metadata_broad_sample",
    seed: Annotated[int, typer.Option(help="Random seed (int ties, harmony).")] = 0,
    features: FeaturesOpt = None,
    feature_prefixes: FeaturePrefixOpt = None,
    float_format: FloatFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Run a processing chain and print what each step did."""
    from ..processing import parse_chain, run_chain

    steps = parse_chain(chain.split(",") if "," in chain else chain)
    report: list[dict[str, Any]] = []
    _process("processing", profiles, output, float_format, quiet, lambda df: run_chain(
        df, steps, plate_column=plate_column, samples=samples,
        plates_without_controls=plates_without_controls,  # type: ignore[arg-type]
        batch_key=batch_key, cell_count_column=cell_count_column, pert_column=pert_column, seed=seed,
        report=report, **feature_args(features, feature_prefixes)))
    for entry in report:
        typer.echo(f"{entry['step']}: {entry['rows_in']} → {entry['rows_out']} rows, "
                   f"{entry['features_in']} → {entry['features_out']} features ({entry['seconds']:.1f}s)")


@app.command("map")
def map_cmd(
    profiles: Annotated[str, typer.Argument(help="Profiles (per well; consensus profiles for consistency).")],
    output: Annotated[str | None, typer.Argument(help="Write the per-group table here (.csv, .csv.gz or .parquet).")] = None,
    mode: Annotated[str, choice_option(MAP_MODES, help="activity (vs negative controls), distinctiveness (vs other perturbations) or consistency (by an annotation).")] = "activity",
    pert_column: Annotated[str | None, typer.Option(help="Perturbation column.", show_default="the first of Metadata_broad_sample, Metadata_pert_iname, ...")] = None,
    annotation_column: Annotated[str | None, typer.Option(help="consistency: the annotation (e.g. Metadata_target).")] = None,
    multilabel_separator: Annotated[str | None, typer.Option(help="consistency: separator of several labels in one cell, e.g. '|'.")] = None,
    control_query: Annotated[str, typer.Option(help="Negative controls (query); 'none' for no controls.")] = NEGCON_QUERY,
    neg_sameby: Annotated[list[str] | None, typer.Option(help="Negatives must share these columns; 'none' for every negative.  [default: Metadata_Plate for activity, none otherwise]")] = None,
    pos_diffby: Annotated[list[str], typer.Option(help="Replicates must differ in these columns.")] = [],
    null_size: Annotated[int, typer.Option(help="Draws in each null distribution.")] = 10000,
    threshold: Annotated[float, typer.Option(help="FDR level for 'retrieved'.")] = 0.05,
    seed: Annotated[int, typer.Option(help="Seed of the null distributions.")] = 0,
    features: FeaturesOpt = None,
    feature_prefixes: FeaturePrefixOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Mean average precision per perturbation, p-values, fraction retrieved."""
    from .. import io
    from ..evaluate import mean_average_precision

    setup_logging(quiet)
    if output:
        io.check_output(output)
    with about(profiles), timed("mAP"):
        table = mean_average_precision(
            io.read_table(profiles), mode=mode,  # type: ignore[arg-type]
            pert_column=pert_column, annotation_column=annotation_column,
            control_query=None if control_query.lower() in ("none", "") else control_query,
            neg_sameby=none_or_values(neg_sameby), pos_diffby=split_values(pos_diffby) or [],
            multilabel_separator=multilabel_separator, null_size=null_size, threshold=threshold, seed=seed,
            **feature_args(features, feature_prefixes))
    if output:
        io.write_table(table, output)
    retrieved = int(table["below_corrected_p"].sum())
    typer.echo(f"mAP ({mode}): mean {table['mean_average_precision'].mean():.4f}; {retrieved} of {len(table)} "
               f"retrieved at FDR {threshold:g} ({100 * table.attrs['fraction_retrieved']:.1f}%)")
