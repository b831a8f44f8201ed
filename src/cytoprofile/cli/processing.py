"""Processing steps beyond the handbook, and mAP."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..errors import about
from ..vocabulary import MAP_MODES, NEGCON_QUERY, RANK_INT_TIES, SPHERING_GRID, SPHERIZE_METHODS
from .common import (
    FeaturePrefixOpt,
    FeaturesOpt,
    FloatFormatOpt,
    NoControlsOpt,
    OutputArg,
    PlateColumnOpt,
    ProfilesArg,
    QuietOpt,
    ReferenceOpt,
    SeedOpt,
    app,
    choice_option,
    feature_args,
    log,
    none_or_values,
    one_of,
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


@app.command("select-variant-features")
def select_variant_features_cmd(
    profiles: ProfilesArg,
    output: OutputArg,
    plate_column: PlateColumnOpt = "Metadata_Plate",
    samples: ReferenceOpt = NEGCON_QUERY,
    threshold: Annotated[float, typer.Option(help="Smallest |MAD / median| kept (on every plate).")] = 1e-3,
    plates_without_controls: NoControlsOpt = "error",
    features: FeaturesOpt = None,
    feature_prefixes: FeaturePrefixOpt = None,
    float_format: FloatFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Keep features that vary on every plate's negative controls (var)."""
    from ..processing import select_variant_features

    _process("var", profiles, output, float_format, quiet, lambda df: select_variant_features(
        df, plate_column=plate_column, samples=samples, threshold=threshold,
        plates_without_controls=plates_without_controls, **feature_args(features, feature_prefixes)))  # type: ignore[arg-type]


@app.command("mad-normalize")
def mad_normalize_cmd(
    profiles: ProfilesArg,
    output: OutputArg,
    plate_column: PlateColumnOpt = "Metadata_Plate",
    samples: ReferenceOpt = NEGCON_QUERY,
    epsilon: Annotated[float, typer.Option(help="Added to the MAD.")] = 0.0,
    plates_without_controls: NoControlsOpt = "error",
    features: FeaturesOpt = None,
    feature_prefixes: FeaturePrefixOpt = None,
    float_format: FloatFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """(x − plate median) / plate MAD of negative controls, unscaled (mad)."""
    from ..processing import mad_normalize

    _process("mad", profiles, output, float_format, quiet, lambda df: mad_normalize(
        df, plate_column=plate_column, samples=samples, epsilon=epsilon,
        plates_without_controls=plates_without_controls, **feature_args(features, feature_prefixes)))  # type: ignore[arg-type]


@app.command("rank-int")
def rank_int_cmd(
    profiles: ProfilesArg,
    output: OutputArg,
    ties: Annotated[str, choice_option(RANK_INT_TIES, help="random (seeded permutation) or average.")] = "random",
    seed: Annotated[int, typer.Option(help="Seed of the tie-breaking permutation.")] = 0,
    c: Annotated[float, typer.Option(help="Blom's constant.")] = 0.375,
    features: FeaturesOpt = None,
    feature_prefixes: FeaturePrefixOpt = None,
    float_format: FloatFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Rank-based inverse normal transform per feature (int)."""
    from ..processing import rank_int

    _process("int", profiles, output, float_format, quiet, lambda df: rank_int(
        df, ties=ties, seed=seed, c=c, **feature_args(features, feature_prefixes)))  # type: ignore[arg-type]


@app.command("correct-well-position")
def correct_well_position_cmd(
    profiles: Annotated[str, typer.Argument(help="Per-well profiles of several plates.")],
    output: OutputArg,
    well_column: Annotated[str, typer.Option(help="Column naming the well position.")] = "Metadata_Well",
    features: FeaturesOpt = None,
    feature_prefixes: FeaturePrefixOpt = None,
    float_format: FloatFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Subtract each well position's mean across plates (wellpos)."""
    from ..processing import correct_well_position

    _process("wellpos", profiles, output, float_format, quiet, lambda df: correct_well_position(
        df, well_column=well_column, **feature_args(features, feature_prefixes)))


@app.command("regress-cell-count")
def regress_cell_count_cmd(
    profiles: ProfilesArg,
    output: OutputArg,
    cell_count_column: Annotated[str, typer.Option(help="Column holding the well's cell count.")] = "Metadata_Count_Cells",
    min_unique: Annotated[int, typer.Option(help="Regress only features with more distinct values than this.")] = 100,
    features: FeaturesOpt = None,
    feature_prefixes: FeaturePrefixOpt = None,
    float_format: FloatFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Replace features by OLS residuals on the cell count (cc)."""
    from ..processing import regress_cell_count

    _process("cc", profiles, output, float_format, quiet, lambda df: regress_cell_count(
        df, cell_count_column=cell_count_column, min_unique=min_unique, **feature_args(features, feature_prefixes)))


@app.command("remove-outliers")
def remove_outliers_cmd(
    profiles: ProfilesArg,
    output: OutputArg,
    bound: Annotated[float, typer.Option(help="Largest |value| kept; the rest is clipped.")] = 100.0,
    percentile: Annotated[float, typer.Option(help="Drop features whose this percentile of |x| exceeds the bound.")] = 99.0,
    features: FeaturesOpt = None,
    feature_prefixes: FeaturePrefixOpt = None,
    float_format: FloatFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Drop features with extreme values, clip the rest (outlier)."""
    from ..processing import remove_outliers

    _process("outlier", profiles, output, float_format, quiet, lambda df: remove_outliers(
        df, bound=bound, percentile=percentile, **feature_args(features, feature_prefixes)))


@app.command("pca")
def pca_cmd(
    profiles: Annotated[str, typer.Argument(help="Per-well profiles without missing values.")],
    output: Annotated[str, typer.Argument(help="Output table (features PC1, PC2, ...).")],
    variance_fraction: Annotated[float, typer.Option(help="Share of the variance the components keep.")] = 0.98,
    features: FeaturesOpt = None,
    feature_prefixes: FeaturePrefixOpt = None,
    float_format: FloatFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Principal components explaining a share of the variance (pca)."""
    from ..processing import pca

    _process("pca", profiles, output, float_format, quiet, lambda df: pca(
        df, variance_fraction=variance_fraction, **feature_args(features, feature_prefixes)))


@app.command("sphere")
def sphere_cmd(
    profiles: Annotated[str, typer.Argument(help="Per-well profiles without missing values.")],
    output: OutputArg,
    samples: ReferenceOpt = NEGCON_QUERY,
    method: Annotated[str, typer.Option(metavar=one_of(SPHERIZE_METHODS), help="PCA, ZCA, PCA-cor or ZCA-cor.")] = "ZCA-cor",
    epsilon: Annotated[list[float], typer.Option(help="Regularization; repeat to choose the best by mAP.")] = list(SPHERING_GRID),
    pert_column: Annotated[str, typer.Option(help="Perturbation column for the mAP choice.")] = "Metadata_broad_sample",
    neg_sameby: Annotated[list[str], typer.Option(help="Negative controls must share these columns.")] = ["Metadata_Plate"],
    features: FeaturesOpt = None,
    feature_prefixes: FeaturePrefixOpt = None,
    float_format: FloatFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Whitening fitted on negative controls, ε chosen by mAP (sphering)."""
    from ..processing import sphere

    _process("sphering", profiles, output, float_format, quiet, lambda df: sphere(
        df, samples=samples, method=method, epsilon=epsilon or SPHERING_GRID, pert_column=pert_column,
        neg_sameby=split_values(neg_sameby) or ["Metadata_Plate"], **feature_args(features, feature_prefixes)))


@app.command("harmony")
def harmony_cmd(
    profiles: Annotated[str, typer.Argument(help="Per-well profiles without missing values (usually after pca).")],
    output: OutputArg,
    batch_key: Annotated[str, typer.Option(help="Column naming the batch.")] = "Metadata_Batch",
    seed: SeedOpt = 0,
    max_iter: Annotated[int, typer.Option(help="Harmony iterations.")] = 10,
    n_clusters: Annotated[int | None, typer.Option(help="Clusters (default min(rows/30, 100)).")] = None,
    features: FeaturesOpt = None,
    feature_prefixes: FeaturePrefixOpt = None,
    float_format: FloatFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Harmony batch correction (harmony)."""
    from ..processing import harmony

    _process("harmony", profiles, output, float_format, quiet, lambda df: harmony(
        df, batch_key=batch_key, seed=seed, max_iter=max_iter, n_clusters=n_clusters,
        **feature_args(features, feature_prefixes)))


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
    pert_column: Annotated[str | None, typer.Option(help="Perturbation column (default: the first of Metadata_broad_sample, Metadata_pert_iname, ...).")] = None,
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
