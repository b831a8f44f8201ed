"""Processing steps beyond the handbook, and mAP."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import typer

from ..errors import about
from ..vocabulary import MAP_MODES, NEGCON_QUERY, NONE_WORDS, RANK_INT_TIES, SPHERIZE_METHODS
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
from .generate import StepSpec, io_arguments, step_command

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


#: help of the options several steps share
_SHARED_HELP = {
    "plate_column": "Column naming the plate.",
    "samples": "Reference wells for per-plate statistics: all, or a query.",
    "plates_without_controls": "Plates without reference wells: error or drop (their wells).",
}


def _run(spec: StepSpec, fixed: dict[str, Any], given: dict[str, Any]) -> None:
    _process(spec.step, fixed["profiles"], fixed["output"], fixed["float_format"], fixed["quiet"],
             lambda df: spec.function(df, **given, **feature_args(fixed["features"], fixed["feature_prefixes"])))


def _step(command: str, function: str, step: str, summary: str, help: dict[str, str],
          choices: dict[str, Sequence[str]] | None = None, *, profiles_help: str = "Per-well profiles.",
          output_help: str = "Output table.") -> StepSpec:
    from .. import processing

    return StepSpec(command, getattr(processing, function), step, summary, {**_SHARED_HELP, **help}, _run,
                    choices=choices or {}, arguments=io_arguments(profiles_help, output_help))


_STEPS = {spec.step: spec for spec in (
    _step("select-variant-features", "select_variant_features", "var",
          "Keep features that vary on every plate's negative controls (var).",
          {"threshold": "Smallest |MAD / median| kept (on every plate)."}),
    _step("mad-normalize", "mad_normalize", "mad",
          "(x − plate median) / plate MAD of negative controls, unscaled (mad).", {"epsilon": "Added to the MAD."}),
    _step("rank-int", "rank_int", "int", "Rank-based inverse normal transform per feature (int).",
          {"c": "Blom's constant.", "ties": "random (seeded permutation) or average.",
           "seed": "Seed of the tie-breaking permutation."}, {"ties": RANK_INT_TIES}),
    _step("correct-well-position", "correct_well_position", "wellpos",
          "Subtract each well position's mean across plates (wellpos).",
          {"well_column": "Column naming the well position."}, profiles_help="Per-well profiles of several plates."),
    _step("regress-cell-count", "regress_cell_count", "cc", "Replace features by OLS residuals on the cell count (cc).",
          {"cell_count_column": "Column holding the well's cell count.",
           "min_unique": "Regress only features with more distinct values than this."}),
    _step("remove-outliers", "remove_outliers", "outlier", "Drop features with extreme values, clip the rest (outlier).",
          {"bound": "Largest |value| kept; the rest is clipped.",
           "percentile": "Drop features whose this percentile of |x| exceeds the bound."}),
    _step("pca", "pca", "pca", "Principal components explaining a share of the variance (pca).",
          {"variance_fraction": "Share of the variance the components keep.", "prefix": "Name prefix of the components."},
          profiles_help="Per-well profiles without missing values.", output_help="Output table (features PC1, PC2, ...)."),
    _step("sphere", "sphere", "sphering", "Whitening fitted on negative controls, ε chosen by mAP (sphering).",
          {"method": "PCA, ZCA, PCA-cor or ZCA-cor.", "epsilon": "Regularization; repeat to choose the best by mAP.",
           "pert_column": "Perturbation column for the mAP choice.",
           "neg_sameby": "Negative controls must share these columns."},
          {"method": SPHERIZE_METHODS}, profiles_help="Per-well profiles without missing values."),
    _step("harmony", "harmony", "harmony", "Harmony batch correction (harmony).",
          {"batch_key": "Column naming the batch.", "seed": "Random seed.", "max_iter": "Harmony iterations.",
           "n_clusters": "Clusters (unset: min(rows/30, 100)).", "theta": "Diversity penalty (unset: harmonypy's).",
           "threads": "Threads for harmonypy (0: one per physical core)."},
          profiles_help="Per-well profiles without missing values (usually after pca)."),
)}

select_variant_features_cmd = step_command(_STEPS["var"])
mad_normalize_cmd = step_command(_STEPS["mad"])
rank_int_cmd = step_command(_STEPS["int"])
correct_well_position_cmd = step_command(_STEPS["wellpos"])
regress_cell_count_cmd = step_command(_STEPS["cc"])
remove_outliers_cmd = step_command(_STEPS["outlier"])
pca_cmd = step_command(_STEPS["pca"])
sphere_cmd = step_command(_STEPS["sphering"])
harmony_cmd = step_command(_STEPS["harmony"])


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
            control_query=None if control_query.lower() in (*NONE_WORDS, "") else control_query,
            neg_sameby=none_or_values(neg_sameby), pos_diffby=split_values(pos_diffby) or [],
            multilabel_separator=multilabel_separator, null_size=null_size, threshold=threshold, seed=seed,
            **feature_args(features, feature_prefixes))
    if output:
        io.write_table(table, output)
    retrieved = int(table["below_corrected_p"].sum())
    typer.echo(f"mAP ({mode}): mean {table['mean_average_precision'].mean():.4f}; {retrieved} of {len(table)} "
               f"retrieved at FDR {threshold:g} ({100 * table.attrs['fraction_retrieved']:.1f}%)")
