"""The commands over a handbook workspace's CellProfiler output: synth and collate."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ..checks import check_choices
from ..errors import CytoprofileError, InputError
from ..vocabulary import (
    BACKEND_KINDS,
    COUNT_CHECKS,
    DEFAULT_COMPARTMENTS,
    DEFAULT_IMAGE_FEATURE_CATEGORIES,
    DEFAULT_STRATA,
    SYNTH_EXPORTS,
    TABLE_FORMATS,
)
from .common import (
    AddImageFeaturesOpt,
    AggregateCompartmentsOpt,
    AggregateOperationOpt,
    ConnectTimeoutOpt,
    EndpointOpt,
    HubOpt,
    NoSignOpt,
    ProfileOpt,
    QuietOpt,
    ReadTimeoutOpt,
    RetriesOpt,
    SeedOpt,
    StrataOpt,
    TmpDirOpt,
    app,
    choice_option,
    configure_storage,
    log,
    one_of,
    plate_progress,
    setup_logging,
    split_values,
    timed,
)

__all__ = ['collate', 'synth']


@app.command()
def synth(
    workspace: Annotated[Path, typer.Argument(help="Folder to write the workspace into.")],
    batch: Annotated[str, typer.Option(help="Batch name.")] = "BATCH1",
    plates: Annotated[list[str], typer.Option("--plate", help="Plate barcode (repeat or comma-separate).")] = ["PLATE1"],
    wells: Annotated[int, typer.Option(help="Plate format: 96, 384 or 1536 wells.")] = 96,
    sites: Annotated[int, typer.Option(help="Sites (fields of view) per well.")] = 4,
    cells: Annotated[int, typer.Option(help="Mean cells per site.")] = 40,
    features: Annotated[int, typer.Option(help="Features per compartment.")] = 40,
    treatments: Annotated[int, typer.Option(help="Distinct treatments on the plate map.")] = 8,
    well_subset: Annotated[int | None, typer.Option(help="Only write the first N wells of the plate.", show_default="every well")] = None,
    faults: Annotated[bool, typer.Option(help="Plant an empty file, a cut-off row and a header-only Image.csv.")] = False,
    seed: SeedOpt = 0,
    export: Annotated[str, choice_option(SYNTH_EXPORTS, help="csv (ExportToSpreadsheet site folders) or database (ExportToDatabase SQLite files).")] = "csv",
    export_files: Annotated[int, typer.Option(help="With --export database: SQLite files (CellProfiler runs) per plate.")] = 2,
    export_layout: Annotated[str, typer.Option(help="With --export database: per_object_table or per_object.")] = "per_object_table",
    object_metadata: Annotated[bool, typer.Option(help="Repeat the image's Metadata_, FileName_ and PathName_ columns in every object CSV (ExportToSpreadsheet's add-metadata options).")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a realistic synthetic workspace in the handbook layout."""
    from ..synth import synth as _synth

    setup_logging(quiet)
    with timed("synth"):
        result = _synth(workspace, batch=batch, plates=split_values(plates) or ["PLATE1"], wells=wells, sites=sites,
                        cells=cells, features=features, treatments=treatments, well_subset=well_subset,
                        faults=faults, seed=seed, export=export, export_files=export_files,
                        export_layout=export_layout, object_metadata=object_metadata)
    log.info("wrote %d plates × %d wells × %d sites, %d cells, into %s", len(result.plates), len(result.wells),
             result.sites, result.cells_written, result.workspace)


@app.command()
def collate(
    workspace: Annotated[str, typer.Argument(help="Workspace folder (holds analysis/ and backend/).")],
    batch: Annotated[str, typer.Argument(help="Batch name.")],
    plates: Annotated[list[str], typer.Argument(help="One or more plate barcodes.")],
    backend: Annotated[list[str], typer.Option(help="sqlite and/or parquet (repeat for both).")] = ["sqlite"],
    profile_format: Annotated[str, typer.Option("--output-format", metavar=one_of(TABLE_FORMATS), help="Per-well profiles as csv, csv.gz or parquet.")] = "csv",
    operation: AggregateOperationOpt = "median",
    compartments: AggregateCompartmentsOpt = list(DEFAULT_COMPARTMENTS),
    image_feature_categories: Annotated[list[str], typer.Option(help="Image.csv categories to add as features.")] = list(DEFAULT_IMAGE_FEATURE_CATEGORIES),
    image_features: AddImageFeaturesOpt = True,
    strata: StrataOpt = list(DEFAULT_STRATA),
    overwrite: Annotated[bool, typer.Option(help="Rebuild plates whose outputs already exist.")] = False,
    aggregate_only: Annotated[bool, typer.Option(help="Only aggregate an existing backend (ours or the old tool's).")] = False,
    strict: Annotated[bool, typer.Option(help="Fail a plate that has any quarantined site.")] = False,
    count_check: Annotated[str, typer.Option(metavar=one_of(COUNT_CHECKS), help="Object rows vs Image.csv Count_<Object> and Parent_ links: error (quarantine), warn or off.")] = "error",
    file_prefix: Annotated[str | None, typer.Option(help="File-name prefix of every CSV (ExportToSpreadsheet's, e.g. MyExpt_); detected when unset.")] = None,
    single_cells: Annotated[bool, typer.Option("--single-cells", help="Also write the joined single-cell table (PLATE_single_cells.parquet) in the same pass.")] = False,
    single_cell_format: Annotated[list[str] | None, typer.Option(help="parquet and/or anndata for --single-cells (repeat for both).")] = None,
    hub: HubOpt = "Cytoplasm",
    exclude_outlier_cells: Annotated[bool, typer.Option("--exclude-outlier-cells", help="Leave cells that a cell QC set flags out of the profiles.")] = False,
    qc_sets: Annotated[list[str] | None, typer.Option(help="Only these cell QC sets.", show_default="every set of the thresholds file")] = None,
    cell_qc_thresholds: Annotated[str | None, typer.Option("--thresholds", help="Cell QC threshold sets YAML.", show_default="the three shipped nuclei sets")] = None,
    export_db: Annotated[list[str], typer.Option(help="CellProfiler ExportToDatabase .sqlite file or folder of them to read instead of site CSVs (repeatable).", show_default="analysis/BATCH/PLATE/*.sqlite when there are no site folders")] = [],
    table_prefix: Annotated[str | None, typer.Option(help="Table prefix of the ExportToDatabase files (e.g. MyExpt_); detected when unset.")] = None,
    jobs: Annotated[int, typer.Option(help="Plates in parallel on this machine.")] = 1,
    scheduler: Annotated[str | None, typer.Option(help="Dask scheduler address: run plates on that cluster.")] = None,
    tmp_dir: TmpDirOpt = None,
    remote: Annotated[str | None, typer.Option(help="Also upload each finished plate to this URL (e.g. s3://bucket/project/workspace).")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for another process collating the same plate instead of failing.")] = False,
    profile: ProfileOpt = None,
    endpoint_url: EndpointOpt = None,
    no_sign_request: NoSignOpt = False,
    connect_timeout: ConnectTimeoutOpt = 5.0,
    read_timeout: ReadTimeoutOpt = 15.0,
    retries: RetriesOpt = 2,
    quiet: QuietOpt = False,
) -> None:
    """Ingest site CSVs into a backend; write per-well profiles and reports.

    One single-cell backend, per-well profiles and a report per plate.
    WORKSPACE may be a local folder or a URL such as s3://bucket/project/workspace.
    """
    from ..collate import collate as _collate

    setup_logging(quiet)
    configure_storage(profile, endpoint_url, no_sign_request, connect_timeout=connect_timeout,
                      read_timeout=read_timeout, retries=retries)
    kinds = split_values(backend) or ["sqlite"]
    check_choices("--backend", kinds, BACKEND_KINDS)
    check_choices("--output-format", [profile_format], TABLE_FORMATS)
    check_choices("--count-check", [count_check], COUNT_CHECKS)
    if (single_cell_format and not single_cells) or ((qc_sets or cell_qc_thresholds) and not exclude_outlier_cells):
        raise InputError("--single-cell-format needs --single-cells; --qc-sets and --thresholds need --exclude-outlier-cells")
    plate_list = [p for raw in plates for p in (split_values([raw]) or [raw])]  # an empty name is refused, not dropped
    start = time.perf_counter()
    with plate_progress(plate_list, quiet) as update:
        results = _collate(
            workspace, batch, plate_list, backend=kinds, profile_format=profile_format,  # type: ignore[arg-type]
            operation=operation,  # type: ignore[arg-type]
            compartments=split_values(compartments) or list(DEFAULT_COMPARTMENTS),
            image_features=image_features,
            image_feature_categories=split_values(image_feature_categories) or list(DEFAULT_IMAGE_FEATURE_CATEGORIES),
            strata=split_values(strata) or list(DEFAULT_STRATA), overwrite=overwrite, aggregate_only=aggregate_only,
            strict=strict, count_check=count_check, file_prefix=file_prefix,  # type: ignore[arg-type]
            single_cells=(split_values(single_cell_format) or ["parquet"]) if single_cells else (),
            exclude_outlier_cells=(split_values(qc_sets) or []) if exclude_outlier_cells else None, cell_qc_thresholds=cell_qc_thresholds,
            hub=hub,
            export_db=export_db or (), table_prefix=table_prefix,
            jobs=jobs, scheduler=scheduler, remote=remote, tmp_dir=tmp_dir, wait=wait, progress=update,
        )
    _print_results(results, batch, start=start)


def _print_results(results: list[Any], batch: str, *, start: float) -> None:
    """One tally line after the plates' own outcome lines (said as each finished); a failed plate makes it a
    user error (exit 1)."""
    failed = [r for r in results if r.status == "failed"]
    skipped = [r for r in results if r.status == "skipped"]
    done = len(results) - len(failed)
    tally = f"{done} of {len(results)} plate(s) done" + (f" ({len(skipped)} already complete)" if skipped else "")
    if failed:
        first = failed[0]
        said = first.message.removeprefix(f"{first.plate}: ")  # a message that names its plate: named once
        which = f" ({', '.join(r.plate for r in failed)})" if len(failed) > 1 else ""  # --quiet shows this line only
        raise CytoprofileError(f"collate {batch}: {tally}, {len(failed)} failed{which}; first: {first.plate}: {said}")
    log.info("collate %s: %s in %.2fs", batch, tally, time.perf_counter() - start)
