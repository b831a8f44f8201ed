"""The ``cytoprofile`` command: one subcommand per library function, load → call → write.

User errors (``CytoprofileError``) print one line and exit 1; anything else is a
bug: exit 3, with the traceback written to a log file whose path is printed.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import traceback
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from . import __version__
from .errors import CytoprofileError
from .vocabulary import DEFAULT_COMPARTMENTS, DEFAULT_STRATA, NEGCON_QUERY

__all__ = ["app", "main"]

_PLACEHOLDERS = {str: "TEXT", int: "INTEGER", float: "NUMBER", Path: "PATH"}


class _Group(TyperGroup):
    """The command group, with readable help for every command.

    Summaries are the docstring's whole first line (never cut at "..."); options show
    TEXT / NUMBER / INTEGER placeholders (``NAME,...`` when repeatable) instead of
    Python types, arguments their upper-case name.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for command in self.commands.values():
            command.short_help = command.short_help or (command.help or "").strip().split("\n")[0]
            for param in command.params:
                if param.param_type_name == "argument":
                    _plain_argument(param)
                    continue
                if param.metavar is not None or param.name == "help":
                    continue
                annotation = getattr(param, "type_descriptor", None)
                element = typing.get_args(annotation.annotation) if annotation is not None else ()
                if getattr(param, "multiple", False):
                    param.metavar = f"{_PLACEHOLDERS.get(element[0] if element else str, 'TEXT')},..."
                elif annotation is not None and annotation.annotation in _PLACEHOLDERS:
                    param.metavar = _PLACEHOLDERS[annotation.annotation]


def _plain_argument(param: Any) -> None:
    """``PROFILES`` in the usage line and the argument list (Typer would print ``{profiles} <str>``)."""
    name = param.metavar or str(param.name).upper()
    usage = (name if param.required else f"[{name}]") + ("..." if param.nargs != 1 else "")
    param.metavar = name
    shown = {"display_type_rich": lambda ctx: None, "_usage_display_name": lambda: usage,
             "_rich_display_name": lambda: name + ("..." if param.nargs != 1 else "")}
    for attr, method in shown.items():
        setattr(param, attr, method)


app = typer.Typer(
    name="cytoprofile",
    help="CellProfiler output to analysis-ready Cell Painting profiles.",
    cls=_Group,
    context_settings={"show_default": True},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
console = Console(stderr=True)

# defaults of library functions whose modules are slow to import; tests/test_cli_signatures.py
# checks every command default against its function's
DEFAULT_IMAGE_FEATURE_CATEGORIES = ("Granularity", "Texture", "ImageQuality", "Count", "Threshold")
SPHERING_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3)
log = logging.getLogger("cytoprofile")

QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors; no progress bars.")]
ProfileOpt = Annotated[str | None, typer.Option(help="AWS profile for S3 URLs (default: the standard credential chain).")]
EndpointOpt = Annotated[str | None, typer.Option(help="S3-compatible endpoint URL (e.g. a local or non-AWS server).")]
NoSignOpt = Annotated[bool, typer.Option("--no-sign-request", help="Anonymous access to public buckets (e.g. the Cell Painting Gallery).")]
TmpDirOpt = Annotated[str | None, typer.Option(help="Scratch folder for downloads and temporary files (created if missing).")]
ConnectTimeoutOpt = Annotated[float, typer.Option(help="Seconds to wait for a connection to S3 or the Dask scheduler.")]
ReadTimeoutOpt = Annotated[float, typer.Option(help="Seconds to wait for an answer from S3 or the Dask scheduler.")]
RetriesOpt = Annotated[int, typer.Option(help="Retries of a failed S3 request (throttling, server errors, timeouts).")]


def _storage(profile: str | None, endpoint_url: str | None, no_sign_request: bool, *,
             connect_timeout: float | None = None, read_timeout: float | None = None, retries: int | None = None) -> None:
    from . import io

    io.configure_storage(io.storage_options(
        profile=profile, endpoint_url=endpoint_url, no_sign_request=no_sign_request,
        connect_timeout=io.DEFAULT_CONNECT_TIMEOUT if connect_timeout is None else connect_timeout,
        read_timeout=io.DEFAULT_READ_TIMEOUT if read_timeout is None else read_timeout,
        retries=io.DEFAULT_RETRIES if retries is None else retries))


def _split(values: list[str] | None) -> list[str] | None:
    """Accept both repeated options and comma-separated lists."""
    if values is None:
        return None
    out: list[str] = []
    for v in values:
        out.extend(x.strip() for x in v.split(",") if x.strip())
    return out


def _setup_logging(quiet: bool) -> None:
    """One line per record on the console that draws the bars; ``--quiet`` keeps warnings."""
    from .logs import ConsoleHandler, capture_warnings

    level = logging.WARNING if quiet else logging.INFO
    root = logging.getLogger("cytoprofile")
    root.handlers.clear()
    handler = ConsoleHandler(console)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    capture_warnings()


@contextmanager
def _about(path: str) -> Iterator[None]:
    """Name the input file in a user error that does not already."""
    try:
        yield
    except CytoprofileError as exc:
        if os.path.basename(str(path)) in str(exc):
            raise
        raise type(exc)(f"{path}: {exc}") from exc


@contextmanager
def _timed(step: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    log.info("%s done in %.2fs", step, time.perf_counter() - start)


class _RateColumn(ProgressColumn):
    """Items per second (sites, for collate)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.1f} {self.unit}/s", style="cyan")


@contextmanager
def _plate_progress(plates: list[str], quiet: bool, unit: str = "sites") -> Iterator[Any]:
    """A Rich display with one bar per plate and one overall, fed by (plate, done, total) events."""
    if quiet:
        yield None
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    tasks: dict[str, Any] = {}
    totals: dict[str, int] = {}
    done: dict[str, int] = {}
    overall = progress.add_task(f"all {len(plates)} plates", total=None) if len(plates) > 1 else None

    def update(plate: str, n: int, total: int) -> None:
        if plate not in tasks:
            tasks[plate] = progress.add_task(plate, total=total)
        totals[plate] = total
        done[plate] = n
        progress.update(tasks[plate], completed=n, total=total)
        if overall is not None:
            progress.update(overall, completed=sum(done.values()),
                            total=sum(totals.values()) if len(totals) == len(plates) else None)

    with progress:
        yield update


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """CellProfiler output to analysis-ready Cell Painting profiles."""


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
    well_subset: Annotated[int | None, typer.Option(help="Only write the first N wells of the plate.")] = None,
    faults: Annotated[bool, typer.Option(help="Plant an empty file, a cut-off row and a header-only Image.csv.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    export: Annotated[str, typer.Option(help="csv (ExportToSpreadsheet site folders) or database (ExportToDatabase SQLite files).")] = "csv",
    export_files: Annotated[int, typer.Option(help="With --export database: SQLite files (CellProfiler runs) per plate.")] = 2,
    export_layout: Annotated[str, typer.Option(help="With --export database: per_object_table or per_object.")] = "per_object_table",
    quiet: QuietOpt = False,
) -> None:
    """Write a realistic synthetic workspace in the handbook layout."""
    from .synth import synth as _synth

    _setup_logging(quiet)
    with _timed("synth"):
        result = _synth(workspace, batch=batch, plates=_split(plates) or ["PLATE1"], wells=wells, sites=sites,
                        cells=cells, features=features, treatments=treatments, well_subset=well_subset,
                        faults=faults, seed=seed, export=export, export_files=export_files,
                        export_layout=export_layout)
    log.info("wrote %d plates × %d wells × %d sites, %d cells, into %s", len(result.plates), len(result.wells),
             result.sites, result.cells_written, result.workspace)


@app.command()
def collate(
    workspace: Annotated[str, typer.Argument(help="Workspace folder (holds analysis/ and backend/).")],
    batch: Annotated[str, typer.Argument(help="Batch name.")],
    plates: Annotated[list[str], typer.Argument(help="One or more plate barcodes.")],
    backend: Annotated[list[str], typer.Option(help="sqlite and/or parquet (repeat for both).")] = ["sqlite"],
    profile_format: Annotated[str, typer.Option("--output-format", help="Per-well profiles as csv, csv.gz or parquet.")] = "csv",
    operation: Annotated[str, typer.Option(help="median or mean.")] = "median",
    compartments: Annotated[list[str], typer.Option(help="Object tables to aggregate.")] = list(DEFAULT_COMPARTMENTS),
    image_feature_categories: Annotated[list[str], typer.Option(help="Image.csv categories to add as features.")] = list(DEFAULT_IMAGE_FEATURE_CATEGORIES),
    image_features: Annotated[bool, typer.Option("--image-features/--no-image-features", help="Add image features.")] = True,
    strata: Annotated[list[str], typer.Option(help="Columns that define a profile.")] = list(DEFAULT_STRATA),
    overwrite: Annotated[bool, typer.Option(help="Rebuild plates whose outputs already exist.")] = False,
    aggregate_only: Annotated[bool, typer.Option(help="Only aggregate an existing backend (ours or the old tool's).")] = False,
    strict: Annotated[bool, typer.Option(help="Fail a plate that has any quarantined site.")] = False,
    count_check: Annotated[str, typer.Option(help="Object rows vs Image.csv Count_<Object> and Parent_ links: error (quarantine), warn or off.")] = "error",
    file_prefix: Annotated[str | None, typer.Option(help="File-name prefix of every CSV (ExportToSpreadsheet's, e.g. MyExpt_); detected when unset.")] = None,
    single_cells: Annotated[bool, typer.Option("--single-cells", help="Also write the joined single-cell table (PLATE_single_cells.parquet) in the same pass.")] = False,
    single_cell_format: Annotated[list[str] | None, typer.Option(help="parquet and/or anndata for --single-cells (repeat for both).")] = None,
    exclude_outlier_cells: Annotated[bool, typer.Option("--exclude-outlier-cells", help="Leave cells that a cell QC set flags out of the profiles.")] = False,
    qc_sets: Annotated[list[str] | None, typer.Option(help="Only these cell QC sets (default: every set of the thresholds file).")] = None,
    cell_qc_thresholds: Annotated[str | None, typer.Option("--thresholds", help="Cell QC threshold sets YAML (default: the three shipped nuclei sets).")] = None,
    export_db: Annotated[list[str], typer.Option(help="CellProfiler ExportToDatabase .sqlite file or folder of them to read instead of site CSVs (repeatable); default: analysis/BATCH/PLATE/*.sqlite when there are no site folders.")] = [],
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
    from .collate import collate as _collate

    _setup_logging(quiet)
    _storage(profile, endpoint_url, no_sign_request, connect_timeout=connect_timeout, read_timeout=read_timeout,
             retries=retries)
    kinds = _split(backend) or ["sqlite"]
    bad = [k for k in kinds if k not in ("sqlite", "parquet")]
    if bad:
        raise CytoprofileError(f"--backend {bad[0]}: choose sqlite or parquet")
    if profile_format not in ("csv", "csv.gz", "parquet"):
        raise CytoprofileError(f"--output-format {profile_format}: choose csv, csv.gz or parquet")
    if count_check not in ("error", "warn", "off"):
        raise CytoprofileError(f"--count-check {count_check}: choose error, warn or off")
    if (single_cell_format and not single_cells) or ((qc_sets or cell_qc_thresholds) and not exclude_outlier_cells):
        raise CytoprofileError("--single-cell-format needs --single-cells; --qc-sets and --thresholds need --exclude-outlier-cells")
    plate_list = [p for raw in plates for p in (_split([raw]) or [raw])]  # an empty name is refused, not dropped
    start = time.perf_counter()
    with _plate_progress(plate_list, quiet) as update:
        results = _collate(
            workspace, batch, plate_list, backend=kinds, profile_format=profile_format,  # type: ignore[arg-type]
            operation=operation,  # type: ignore[arg-type]
            compartments=_split(compartments) or list(DEFAULT_COMPARTMENTS),
            image_features=image_features,
            image_feature_categories=_split(image_feature_categories) or list(DEFAULT_IMAGE_FEATURE_CATEGORIES),
            strata=_split(strata) or list(DEFAULT_STRATA), overwrite=overwrite, aggregate_only=aggregate_only,
            strict=strict, count_check=count_check, file_prefix=file_prefix,  # type: ignore[arg-type]
            single_cells=(_split(single_cell_format) or ["parquet"]) if single_cells else (),
            exclude_outlier_cells=(_split(qc_sets) or []) if exclude_outlier_cells else None, cell_qc_thresholds=cell_qc_thresholds,
            export_db=export_db or (), table_prefix=table_prefix,
            jobs=jobs, scheduler=scheduler, remote=remote, tmp_dir=tmp_dir, wait=wait, progress=update,
        )
    table = Table(title=f"collate {batch}", show_lines=False)
    for col in ("plate", "status", "summary", "seconds"):
        table.add_column(col)
    for r in results:
        style = {"done": "green", "skipped": "yellow", "failed": "red"}[r.status]
        table.add_row(r.plate, Text(r.status, style=style), r.message, f"{r.seconds:.1f}")
    if not quiet:
        console.print(table)
    failed = [r for r in results if r.status == "failed"]
    skipped = [r for r in results if r.status == "skipped"]
    done = len(results) - len(failed)
    tally = f"{done} of {len(results)} plate(s) done" + (f" ({len(skipped)} already complete)" if skipped else "")
    if failed:
        raise CytoprofileError(f"collate {batch}: {tally}, {len(failed)} failed; first: {failed[0].plate}: {failed[0].message}")
    log.info("collate %s: %s in %.2fs", batch, tally, time.perf_counter() - start)


def _float_format(value: str | None) -> str | None:
    """The ``--float-format`` check a config's ``options.float_format`` gets (exit 1, one line)."""
    from .io import check_usable_float_format

    return check_usable_float_format(value)


@app.command()
def aggregate(
    backend_path: Annotated[str, typer.Argument(metavar="BACKEND", help="PLATE.sqlite or PLATE_Image.parquet.")],
    output: Annotated[str, typer.Argument(help="Output table (.csv, .csv.gz or .parquet).")],
    operation: Annotated[str, typer.Option(help="median or mean.")] = "median",
    compartments: Annotated[list[str], typer.Option(help="Object tables to aggregate.")] = list(DEFAULT_COMPARTMENTS),
    image_feature_categories: Annotated[list[str], typer.Option(help="Image categories to add as features.")] = list(DEFAULT_IMAGE_FEATURE_CATEGORIES),
    image_features: Annotated[bool, typer.Option("--image-features/--no-image-features", help="Add image features.")] = True,
    strata: Annotated[list[str], typer.Option(help="Columns that define a profile.")] = list(DEFAULT_STRATA),
    float_format: Annotated[str | None, typer.Option(help="printf-style float format for CSV output, e.g. %.5g.",
                                                     callback=_float_format)] = None,
    quiet: QuietOpt = False,
) -> None:
    """Per-well profiles from an existing single-cell backend."""
    from . import io
    from .aggregate import aggregate as _aggregate

    _setup_logging(quiet)
    io.check_output(output, float_format=float_format)
    with _timed("aggregate"):
        df = _aggregate(backend_path, operation=operation,  # type: ignore[arg-type]
                        strata=_split(strata) or list(DEFAULT_STRATA),
                        compartments=_split(compartments) or list(DEFAULT_COMPARTMENTS),
                        image_features=image_features,
                        image_feature_categories=_split(image_feature_categories) or list(DEFAULT_IMAGE_FEATURE_CATEGORIES))
    io.write_table(df, output, float_format=float_format)
    log.info("wrote %d wells × %d columns to %s", len(df), df.shape[1], output)


@app.command("csv2gz")
def csv2gz_cmd(
    source: Annotated[str, typer.Argument(help="A CSV file.")],
    dest: Annotated[str | None, typer.Argument(help="Output .csv.gz (default: beside the source).")] = None,
    float_format: Annotated[str | None, typer.Option(help="Float format; 'none' keeps full precision.")] = "%.5g",
) -> None:
    """Rewrite a CSV as deterministic gzip CSV (same bytes on every run)."""
    from .io import check_output, csv2gz

    fmt = _float_format(None if float_format in (None, "none", "null") else float_format)
    check_output("x.csv.gz", float_format=fmt)
    typer.echo(csv2gz(source, dest, float_format=fmt))


def _sample_filter(values: list[str] | None) -> dict[str, list[str]] | None:
    """``COLUMN=V1,V2`` options as a structured filter."""
    if not values:
        return None
    out: dict[str, list[str]] = {}
    for item in values:
        if "=" not in item:
            raise CytoprofileError(f"--sample-filter {item!r}: write COLUMN=VALUE[,VALUE...]")
        column, _, rest = item.partition("=")
        out.setdefault(column.strip(), []).extend(v.strip() for v in rest.split(",") if v.strip())
    return out


FloatFormatOpt = Annotated[str | None, typer.Option(help="printf-style float format for CSV output: %.Ng or %.Ne, e.g. %.5g.",
                                                    callback=_float_format)]
CompartmentsOpt = Annotated[list[str] | None, typer.Option(
    help="Object tables whose columns are features (default Cells,Cytoplasm,Nuclei; e.g. Cells,Cytoplasm,Nuclei,Speckles).")]


def _provenance(output: str, step: str, inputs: list[str], account: Any) -> None:
    """``OUTPUT.provenance.json``: the step, its inputs and features in → out, each dropped one with why."""
    from . import io

    record = {"step": step, "output": os.path.basename(output), "cytoprofile_version": __version__,
              "inputs": inputs, "features": {"in": len(account.features_in), "out": len(account.features_out),
                                             "dropped": dict(account.dropped)}}
    io.write_json(record, output + ".provenance.json")


@app.command()
def annotate(
    profiles: Annotated[str, typer.Argument(help="Per-well profiles (.csv, .csv.gz or .parquet).")],
    platemap: Annotated[str, typer.Argument(help="Plate map (tab-separated .txt).")],
    output: Annotated[str, typer.Argument(help="Annotated output table.")],
    join_on: Annotated[list[str], typer.Option(help="Plate map column, profile column.")] = ["Metadata_well_position", "Metadata_Well"],
    external: Annotated[str | None, typer.Option(help="External metadata file (.tsv) to merge.")] = None,
    merge_column: Annotated[str | None, typer.Option(help="Key column shared by the plate map and the external metadata.")] = None,
    unmatched_wells: Annotated[str, typer.Option(help="Profile wells missing from the plate map: error, or drop (and say how many).")] = "error",
    compartments: CompartmentsOpt = None,
    float_format: FloatFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Join plate map (and external metadata) onto per-well profiles."""
    from . import io
    from .annotate import annotate as _annotate
    from .metadata import load_external_metadata, load_platemap, validate_annotation_inputs
    from .recipe.plate import prefixed_platemap
    from .vocabulary import with_metadata_prefix

    _setup_logging(quiet)
    io.check_output(output, float_format=float_format)
    if external and not merge_column:
        raise CytoprofileError("--external needs --merge-column (e.g. broad_sample)")
    with _about(profiles):
        table = io.read_table(profiles)
    # the checks `run` makes before annotating: plate map, external keys, wells
    for note in validate_annotation_inputs(platemap, external_metadata=external, merge_column=merge_column,
                                           unmatched_wells=unmatched_wells):
        log.warning("%s", note)
    ext = load_external_metadata(external, merge_column=merge_column) if external else None
    key = None
    if ext is not None and merge_column:
        key = with_metadata_prefix(merge_column)
    plate_map = prefixed_platemap(load_platemap(platemap))
    with _about(profiles):
        df = _annotate(table, plate_map,
                   join_on=_split(join_on) or ["Metadata_well_position", "Metadata_Well"],
                   external_metadata=ext, external_join_left=[key] if key else None,
                   external_join_right=[key] if key else None, unmatched_wells=unmatched_wells,
                   compartments=_split(compartments))
    io.write_table(df, output, float_format=float_format)
    from .feature_select import FeatureAccount

    def _features(frame: Any) -> tuple[str, ...]:
        return tuple(str(c) for c in frame.columns if not str(c).startswith(("Metadata_", "Image_Metadata_")))

    _provenance(output, "annotate", [profiles, platemap, *([external] if external else [])],
                FeatureAccount(step="annotate", features_in=_features(table), features_out=_features(df)))
    log.info("wrote %d rows × %d columns to %s", len(df), df.shape[1], output)


@app.command()
def normalize(
    profiles: Annotated[str, typer.Argument(help="Annotated profiles.")],
    output: Annotated[str, typer.Argument(help="Normalized output table.")],
    method: Annotated[str, typer.Option(help="standardize (the default, as pycytominer's), robustize, mad_robustize, spherize or inverse_normal.")] = "standardize",
    samples: Annotated[str, typer.Option(help="Wells to fit on: all, or a query such as \"Metadata_control_type == 'negcon'\".")] = "all",
    sample_filter: Annotated[list[str] | None, typer.Option(help="Fit on wells where COLUMN=VALUE[,VALUE] (repeatable).")] = None,
    features: Annotated[list[str] | None, typer.Option(help="Feature columns (default: inferred).")] = None,
    image_features: Annotated[bool, typer.Option(help="Include Image_* features when inferring.")] = False,
    mad_robustize_epsilon: Annotated[float, typer.Option(help="ε added to the scaled MAD.")] = 1e-18,
    spherize_method: Annotated[str, typer.Option(help="PCA, ZCA, PCA-cor or ZCA-cor.")] = "ZCA-cor",
    spherize_epsilon: Annotated[float, typer.Option(help="Spherize regularization.")] = 1e-6,
    min_cells: Annotated[int | None, typer.Option(help="Fit only on wells with at least this many cells.")] = None,
    compartments: CompartmentsOpt = None,
    inverse_normal_n_quantiles: Annotated[int, typer.Option(help="inverse_normal: quantiles of the fitted transform.")] = 1000,
    float_format: FloatFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Normalize profiles against all wells or a subset (e.g. negcon wells)."""
    from . import io
    from .normalize import normalize as _normalize

    _setup_logging(quiet)
    io.check_output(output, float_format=float_format)
    accounts: list[Any] = []
    with _about(profiles):
        df = _normalize(io.read_table(profiles), features=_split(features) or "infer", image_features=image_features,
                    samples=samples, sample_filter=_sample_filter(sample_filter), method=method,
                    mad_robustize_epsilon=mad_robustize_epsilon, spherize_method=spherize_method,
                    spherize_epsilon=spherize_epsilon, min_cells=min_cells, compartments=_split(compartments),
                    inverse_normal_n_quantiles=inverse_normal_n_quantiles, on_account=accounts.append)
    io.write_table(df, output, float_format=float_format)
    _provenance(output, "normalize", [profiles], accounts[0])
    log.info("wrote %d rows × %d columns to %s", len(df), df.shape[1], output)


@app.command("feature-select")
def feature_select(
    profiles: Annotated[str, typer.Argument(help="Normalized profiles.")],
    output: Annotated[str, typer.Argument(help="Output table.")],
    operations: Annotated[list[str], typer.Option(help="Operations in order: variance_threshold, frequency_threshold, correlation_threshold, drop_na_columns, blocklist, drop_outliers, noise_removal.")] = ["variance_threshold"],
    variance_threshold_meaning: Annotated[str, typer.Option(help="What variance_threshold means: frequency (the recipe's) or variance.")] = "frequency",
    features: Annotated[list[str] | None, typer.Option(help="Feature columns (default: inferred).")] = None,
    image_features: Annotated[bool, typer.Option(help="Include Image_* features when inferring.")] = False,
    na_cutoff: Annotated[float, typer.Option(help="drop_na_columns: largest NaN fraction kept.")] = 0.05,
    corr_threshold: Annotated[float, typer.Option(help="correlation_threshold: largest correlation kept.")] = 0.9,
    freq_cut: Annotated[float, typer.Option(help="frequency test: 2nd/1st most common value ratio.")] = 0.05,
    unique_cut: Annotated[float, typer.Option(help="frequency test: distinct values / rows.")] = 0.01,
    outlier_cutoff: Annotated[float, typer.Option(help="drop_outliers: largest |value| kept.")] = 500,
    blocklist_file: Annotated[str | None, typer.Option(help="blocklist: a file of features (default: the standard list).")] = None,
    compartments: CompartmentsOpt = None,
    float_format: FloatFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Drop uninformative features."""
    from . import io
    from .feature_select import feature_select as _feature_select

    _setup_logging(quiet)
    io.check_output(output, float_format=float_format)
    accounts: list[Any] = []
    with _about(profiles):
        df = _feature_select(io.read_table(profiles), features=_split(features) or "infer", image_features=image_features,
                         operations=_split(operations) or ["variance_threshold"],
                         variance_threshold_meaning=variance_threshold_meaning,  # type: ignore[arg-type]
                         na_cutoff=na_cutoff, corr_threshold=corr_threshold, freq_cut=freq_cut, unique_cut=unique_cut,
                         outlier_cutoff=outlier_cutoff, blocklist_file=blocklist_file,
                         compartments=_split(compartments), on_account=accounts.append)
    io.write_table(df, output, float_format=float_format)
    _provenance(output, "feature_select", [profiles], accounts[0])
    log.info("kept %d columns; wrote %s", df.shape[1], output)


@app.command()
def consensus(
    profiles: Annotated[str, typer.Argument(help="Profiles to summarise.")],
    output: Annotated[str, typer.Argument(help="Output table.")],
    replicate_columns: Annotated[list[str], typer.Option(help="Columns that define a replicate group.")] = ["Metadata_Plate", "Metadata_Well"],
    operation: Annotated[str, typer.Option(help="median, mean or modz.")] = "median",
    features: Annotated[list[str] | None, typer.Option(help="Feature columns (default: inferred from the compartments).")] = None,
    compartments: CompartmentsOpt = None,
    float_format: FloatFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """One profile per replicate group (median, mean or MODZ)."""
    from . import io
    from .consensus import consensus as _consensus

    _setup_logging(quiet)
    io.check_output(output, float_format=float_format)
    accounts: list[Any] = []
    with _about(profiles):
        df = _consensus(io.read_table(profiles), replicate_columns=_split(replicate_columns) or ["Metadata_Plate", "Metadata_Well"],
                    operation=operation, features=_split(features) or "infer", compartments=_split(compartments),
                    on_account=accounts.append)
    io.write_table(df, output, float_format=float_format)
    _provenance(output, "consensus", [profiles], accounts[0])
    log.info("wrote %d consensus profiles to %s", len(df), output)


@app.command("write-gct")
def write_gct(
    profiles: Annotated[str, typer.Argument(help="Profiles table.")],
    output: Annotated[str, typer.Argument(help="Output .gct file.")],
    features: Annotated[list[str] | None, typer.Option(help="Feature columns (default: inferred from the compartments).")] = None,
    compartments: CompartmentsOpt = None,
    image_features: Annotated[bool, typer.Option(help="Include Image_* features when inferring.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Write profiles as GCT 1.3, which opens in Morpheus.

    cmapPy 4.0.1 cannot read GCT files under pandas 3.
    """
    from . import io

    _setup_logging(quiet)
    accounts: list[Any] = []
    with _about(profiles):
        df = io.read_table(profiles)
        io.write_gct(df, output, features=_split(features) or "infer", compartments=_split(compartments),
                     image_features=image_features, on_account=accounts.append)
    _provenance(output, "write_gct", [profiles], accounts[0])
    typer.echo(output)


@app.command("validate-metadata")
def validate_metadata(
    workspace: Annotated[str, typer.Argument(help="Folder holding metadata/platemaps/BATCH/.")],
    batch: Annotated[str, typer.Argument(help="Batch name.")],
    plates: Annotated[list[str] | None, typer.Option("--plate", help="Check only these plates.")] = None,
    external_metadata: Annotated[str | None, typer.Option("--external", help="External metadata file to check too.")] = None,
    merge_column: Annotated[str | None, typer.Option(help="Its key column.")] = None,
    profiles: Annotated[list[str] | None, typer.Option("--profiles", help="Per-well profiles whose wells to check against their plate maps (repeatable; plates from Metadata_Plate).")] = None,
    unmatched_wells: Annotated[str, typer.Option(help="Profile wells missing from the plate map: error, or drop (a warning).")] = "error",
) -> None:
    """Check barcode map, plate maps and external metadata, naming each fault."""
    from . import io
    from .metadata import validate_metadata as _validate

    by_plate: dict[str, Any] = {}
    for path in _split(profiles) or []:
        with _about(path):
            table = io.read_table(path)
        if "Metadata_Plate" not in table.columns:
            raise CytoprofileError(f"{path}: no Metadata_Plate column; the profiles' plate names their plate map")
        for plate, part in table.groupby(table["Metadata_Plate"].astype(str), sort=False):
            by_plate[str(plate)] = part
    notes = _validate(workspace, batch, plates=_split(plates), external_metadata=external_metadata, merge_column=merge_column,
                      profiles=by_plate or None, unmatched_wells=unmatched_wells)
    for note in notes:
        console.print(f"warning: {note}", highlight=False)
    typer.echo(f"metadata of {batch}: ok" + (f" ({len(notes)} warning(s))" if notes else ""))


@app.command("config-template")
def config_template(
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")] = None,
    workspace: Annotated[str | None, typer.Option(help="Fill the workspace key.")] = None,
    batch: Annotated[str | None, typer.Option(help="Batch name for the batch document.")] = None,
    plates: Annotated[list[str] | None, typer.Option("--plate", help="Plates of that batch.")] = None,
) -> None:
    """Print a commented recipe config to start from."""
    from . import io
    from .config import config_template as _template

    text = _template(batch=batch, plates=_split(plates), workspace=workspace)
    if output:
        with io.atomic_open(output) as fh:
            fh.write(text)
    else:
        typer.echo(text, nl=False)


@app.command()
def init(directory: Annotated[str, typer.Argument(help="Profiling project folder.")] = ".") -> None:
    """Make the profiling project's folders."""
    from .config import init_project

    made = init_project(directory)
    typer.echo(f"created {len(made)} folder(s) in {directory}" + (f": {', '.join(made)}" if made else ""))


@app.command()
def run(
    config: Annotated[str, typer.Argument(help="Recipe config (YAML).")],
    workspace: Annotated[str | None, typer.Option(help="Workspace with backend/, metadata/, load_data_csv/.")] = None,
    root: Annotated[str | None, typer.Option(help="Where profiles/, gct/, quality_control/ go (default: the workspace, else here).")] = None,
    force: Annotated[bool, typer.Option(help="Redo steps whose outputs are current.")] = False,
    jobs: Annotated[int | None, typer.Option(help="Plates in parallel on this machine.")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Dask scheduler address.")] = None,
    tmp_dir: TmpDirOpt = None,
    profile: ProfileOpt = None,
    endpoint_url: EndpointOpt = None,
    no_sign_request: NoSignOpt = False,
    connect_timeout: Annotated[float | None, typer.Option(help="Seconds to wait for a connection to S3 or the Dask scheduler (default 5).")] = None,
    read_timeout: Annotated[float | None, typer.Option(help="Seconds to wait for an answer from S3 or the Dask scheduler (default 15).")] = None,
    retries: Annotated[int | None, typer.Option(help="Retries of a failed S3 request (default 2).")] = None,
    quiet: QuietOpt = False,
    allow_unknown_keys: Annotated[bool, typer.Option(
        help="Ignore config keys that look like misspellings of known keys (a warning, not an error).")] = False,
) -> None:
    """Run the profiling recipe a config describes.

    annotate → normalize → feature select → GCT → QC, per plate and per batch.
    """
    from .pipeline import run as _run

    _setup_logging(quiet)
    _storage(profile, endpoint_url, no_sign_request, connect_timeout=connect_timeout, read_timeout=read_timeout,
             retries=retries)
    if tmp_dir:
        from .io import output_errors

        with output_errors(tmp_dir):
            Path(tmp_dir).mkdir(parents=True, exist_ok=True)
    label = "recipe: plates, then batch steps"
    with _plate_progress([label], quiet, unit="steps") as update, _timed("recipe"):
        result = _run(config, workspace=workspace, root=root, force=force, jobs=jobs, scheduler=scheduler,
                      tmp_dir=tmp_dir, allow_unknown_keys=allow_unknown_keys,
                      progress=(lambda _l, d, t: update(label, d, t)) if update else None)
    if not quiet:
        _print_products(result)


def _print_products(result: Any) -> None:
    """The recipe's closing lines: what ran, one line per product, whether QC ran."""
    from . import io

    console.print(f"{len(result.ran)} step(s) run, {len(result.skipped)} already current; "
                  f"{len(result.outputs)} file(s) written in {result.seconds:.1f}s", highlight=False, soft_wrap=True)
    for label, rel in result.products:
        path = io.join(result.root, rel)
        if not io.is_remote(path):
            shown = os.path.relpath(path)
            path = shown if not shown.startswith("..") else os.path.abspath(path)
        console.print(f"{label}: {path}", highlight=False, markup=False, soft_wrap=True)
    console.print(result.qc, highlight=False, markup=False, soft_wrap=True)


@app.command()
def qc(
    workspace: Annotated[str, typer.Argument(help="Folder holding profiles/, load_data_csv/, backend/.")],
    batch: Annotated[str, typer.Argument(help="Batch name.")],
    plates: Annotated[list[str], typer.Argument(help="Plates.")],
    level: Annotated[str | None, typer.Option(help="Feature-selection level to read: plate, batch or all.")] = None,
    replicate_column: Annotated[str | None, typer.Option(help="Column naming the treatment.")] = None,
    tmp_dir: TmpDirOpt = None,
    profile: ProfileOpt = None,
    endpoint_url: EndpointOpt = None,
    no_sign_request: NoSignOpt = False,
    connect_timeout: ConnectTimeoutOpt = 5.0,
    read_timeout: ReadTimeoutOpt = 15.0,
    retries: RetriesOpt = 2,
    map_: Annotated[bool, typer.Option("--map", help="Also compute mAP (the recipe's quality_control.map); writes quality_control/map/BATCH/ and adds it to the report.")] = False,
    map_modes: Annotated[list[str] | None, typer.Option(help="mAP modes: activity and/or consistency (repeat).  [default: activity]")] = None,
    map_pert_column: Annotated[str | None, typer.Option(help="mAP perturbation column (default: the first of Metadata_broad_sample, Metadata_pert_iname, ...).")] = None,
    map_annotation_column: Annotated[str | None, typer.Option(help="mAP consistency: the annotation (e.g. Metadata_moa).")] = None,
    map_multilabel_separator: Annotated[str | None, typer.Option(help="mAP consistency: separator of several labels in one cell, e.g. '|'.")] = None,
    map_control_query: Annotated[str | None, typer.Option(help=f"mAP negative controls (query).  [default: {NEGCON_QUERY}]")] = None,
    map_neg_sameby: Annotated[list[str] | None, typer.Option(help="mAP negatives must share these columns.  [default: Metadata_Plate]")] = None,
    map_pos_diffby: Annotated[list[str] | None, typer.Option(help="mAP replicates must differ in these columns.  [default: none]")] = None,
    map_null_size: Annotated[int | None, typer.Option(help="mAP draws in each null distribution.  [default: 10000]")] = None,
    map_threshold: Annotated[float | None, typer.Option(help="mAP FDR level for 'retrieved'.  [default: 0.05]")] = None,
    map_seed: Annotated[int | None, typer.Option(help="mAP seed of the null distributions.  [default: 0]")] = None,
    map_profiles: Annotated[str | None, typer.Option(help="mAP of these profiles (e.g. the processing chain's output) instead of the feature-selected ones.")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Summary table, plate heatmaps and the batch HTML report.

    WORKSPACE may be a URL such as s3://bucket/project/workspace.
    """
    from contextlib import nullcontext

    from . import io
    from .layout import Layout, QualityControlLayout, Workspace
    from .qc import quality_control
    from .workspace import files_under, publish, scratch_dir, stage

    given = {"modes": _split(map_modes), "pert_column": map_pert_column, "annotation_column": map_annotation_column,
             "multilabel_separator": map_multilabel_separator, "control_query": map_control_query,
             "neg_sameby": _split(map_neg_sameby), "pos_diffby": _split(map_pos_diffby), "null_size": map_null_size,
             "threshold": map_threshold, "seed": map_seed, "profiles": map_profiles}
    settings = _qc_map_settings(map_, {k: v for k, v in given.items() if v is not None})
    _setup_logging(quiet)
    _storage(profile, endpoint_url, no_sign_request, connect_timeout=connect_timeout, read_timeout=read_timeout,
             retries=retries)
    names = _split(plates) or []
    remote = io.is_remote(workspace)
    with scratch_dir(tmp_dir, "qc") if remote else nullcontext(None) as scratch:
        where = workspace
        if scratch is not None:
            qc_layout = Layout(root=workspace, workspace=workspace)
            prefixes = [Workspace.load_data_rel(batch), qc_layout.qc_summary_rel()]
            prefixes += [qc_layout.profiles_rel(batch, p) for p in names] + [Workspace.report_rel(batch, p) for p in names]
            stage(workspace, scratch, prefixes, accept=lambda rel: not rel.endswith((".sqlite", ".parquet")))
            where = scratch
        with _timed("quality control"):
            result = quality_control(where, batch, names, level=level, replicate_column=replicate_column,
                                     map_settings=settings, map_profiles=map_profiles)
        if scratch is not None:
            qc_root = qc_layout.at(scratch).quality_control()
            publish(scratch, workspace, files_under(qc_root, scratch))
    if result.report_path:
        typer.echo(QualityControlLayout(workspace).html_report(batch) if remote else result.report_path)


def _qc_map_settings(perform: bool, given: dict[str, Any]) -> dict[str, Any] | None:
    """The ``--map-*`` options, checked as the recipe's ``quality_control.map`` block is
    (same names and defaults); an option given without ``--map`` is refused."""
    from pydantic import ValidationError

    from .config import MapConfig
    from .errors import ConfigError
    from .qc import map_settings

    if not perform:
        if given:
            raise ConfigError(f"--map-{next(iter(given)).replace('_', '-')} has no effect without --map")
        return None
    try:
        block = MapConfig.model_validate({k: v for k, v in given.items() if k != "profiles"} | {"perform": True})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = "".join(f"--map-{str(p).replace('_', '-')}" for p in error["loc"][:1]) or "--map"
        raise ConfigError(f"{where}: {error['msg']}") from exc
    return map_settings(block)


# --- processing and evaluation commands ---

FeaturesOpt = Annotated[list[str] | None, typer.Option(help="Feature columns (default: inferred).")]
FeaturePrefixOpt = Annotated[list[str] | None, typer.Option("--feature-prefix", "--feature-prefixes", help="Infer features by these name prefixes (e.g. PC, or a deep-learning model's); default Cells, Cytoplasm, Nuclei.")]
PlateColumnOpt = Annotated[str, typer.Option(help="Column naming the plate.")]
ReferenceOpt = Annotated[str, typer.Option(help="Reference wells for per-plate statistics: all, or a query.")]
NoControlsOpt = Annotated[str, typer.Option(help="Plates without reference wells: error or drop (their wells).")]


def _process(step: str, profiles: str, output: str, float_format: str | None, quiet: bool, call: Any) -> None:
    """Read PROFILES, apply one processing step, write OUTPUT."""
    from . import io

    _setup_logging(quiet)
    io.check_output(output, float_format=float_format)
    with _about(profiles), _timed(step):
        df = call(io.read_table(profiles))
    io.write_table(df, output, float_format=float_format)
    log.info("wrote %d rows × %d columns to %s", len(df), df.shape[1], output)


def _feature_args(features: list[str] | None, feature_prefixes: list[str] | None) -> dict[str, Any]:
    return {"features": _split(features) or "infer", "feature_prefixes": _split(feature_prefixes)}


@app.command("select-variant-features")
def select_variant_features_cmd(
    profiles: Annotated[str, typer.Argument(help="Per-well profiles.")],
    output: Annotated[str, typer.Argument(help="Output table.")],
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
    from .processing import select_variant_features

    _process("var", profiles, output, float_format, quiet, lambda df: select_variant_features(
        df, plate_column=plate_column, samples=samples, threshold=threshold,
        plates_without_controls=plates_without_controls, **_feature_args(features, feature_prefixes)))  # type: ignore[arg-type]


@app.command("mad-normalize")
def mad_normalize_cmd(
    profiles: Annotated[str, typer.Argument(help="Per-well profiles.")],
    output: Annotated[str, typer.Argument(help="Output table.")],
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
    from .processing import mad_normalize

    _process("mad", profiles, output, float_format, quiet, lambda df: mad_normalize(
        df, plate_column=plate_column, samples=samples, epsilon=epsilon,
        plates_without_controls=plates_without_controls, **_feature_args(features, feature_prefixes)))  # type: ignore[arg-type]


@app.command("rank-int")
def rank_int_cmd(
    profiles: Annotated[str, typer.Argument(help="Per-well profiles.")],
    output: Annotated[str, typer.Argument(help="Output table.")],
    ties: Annotated[str, typer.Option(help="random (seeded permutation) or average.")] = "random",
    seed: Annotated[int, typer.Option(help="Seed of the tie-breaking permutation.")] = 0,
    c: Annotated[float, typer.Option(help="Blom's constant.")] = 0.375,
    features: FeaturesOpt = None,
    feature_prefixes: FeaturePrefixOpt = None,
    float_format: FloatFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Rank-based inverse normal transform per feature (int)."""
    from .processing import rank_int

    _process("int", profiles, output, float_format, quiet, lambda df: rank_int(
        df, ties=ties, seed=seed, c=c, **_feature_args(features, feature_prefixes)))  # type: ignore[arg-type]


@app.command("correct-well-position")
def correct_well_position_cmd(
    profiles: Annotated[str, typer.Argument(help="Per-well profiles of several plates.")],
    output: Annotated[str, typer.Argument(help="Output table.")],
    well_column: Annotated[str, typer.Option(help="Column naming the well position.")] = "Metadata_Well",
    features: FeaturesOpt = None,
    feature_prefixes: FeaturePrefixOpt = None,
    float_format: FloatFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Subtract each well position's mean across plates (wellpos)."""
    from .processing import correct_well_position

    _process("wellpos", profiles, output, float_format, quiet, lambda df: correct_well_position(
        df, well_column=well_column, **_feature_args(features, feature_prefixes)))


@app.command("regress-cell-count")
def regress_cell_count_cmd(
    profiles: Annotated[str, typer.Argument(help="Per-well profiles.")],
    output: Annotated[str, typer.Argument(help="Output table.")],
    cell_count_column: Annotated[str, typer.Option(help="Column holding the well's cell count.")] = "Metadata_Count_Cells",
    min_unique: Annotated[int, typer.Option(help="Regress only features with more distinct values than this.")] = 100,
    features: FeaturesOpt = None,
    feature_prefixes: FeaturePrefixOpt = None,
    float_format: FloatFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Replace features by OLS residuals on the cell count (cc)."""
    from .processing import regress_cell_count

    _process("cc", profiles, output, float_format, quiet, lambda df: regress_cell_count(
        df, cell_count_column=cell_count_column, min_unique=min_unique, **_feature_args(features, feature_prefixes)))


@app.command("remove-outliers")
def remove_outliers_cmd(
    profiles: Annotated[str, typer.Argument(help="Per-well profiles.")],
    output: Annotated[str, typer.Argument(help="Output table.")],
    bound: Annotated[float, typer.Option(help="Largest |value| kept; the rest is clipped.")] = 100.0,
    percentile: Annotated[float, typer.Option(help="Drop features whose this percentile of |x| exceeds the bound.")] = 99.0,
    features: FeaturesOpt = None,
    feature_prefixes: FeaturePrefixOpt = None,
    float_format: FloatFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Drop features with extreme values, clip the rest (outlier)."""
    from .processing import remove_outliers

    _process("outlier", profiles, output, float_format, quiet, lambda df: remove_outliers(
        df, bound=bound, percentile=percentile, **_feature_args(features, feature_prefixes)))


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
    from .processing import pca

    _process("pca", profiles, output, float_format, quiet, lambda df: pca(
        df, variance_fraction=variance_fraction, **_feature_args(features, feature_prefixes)))


@app.command("sphere")
def sphere_cmd(
    profiles: Annotated[str, typer.Argument(help="Per-well profiles without missing values.")],
    output: Annotated[str, typer.Argument(help="Output table.")],
    samples: ReferenceOpt = NEGCON_QUERY,
    method: Annotated[str, typer.Option(help="PCA, ZCA, PCA-cor or ZCA-cor.")] = "ZCA-cor",
    epsilon: Annotated[list[float], typer.Option(help="Regularization; repeat to choose the best by mAP.")] = list(SPHERING_GRID),
    pert_column: Annotated[str, typer.Option(help="Perturbation column for the mAP choice.")] = "Metadata_broad_sample",
    neg_sameby: Annotated[list[str], typer.Option(help="Negative controls must share these columns.")] = ["Metadata_Plate"],
    features: FeaturesOpt = None,
    feature_prefixes: FeaturePrefixOpt = None,
    float_format: FloatFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Whitening fitted on negative controls, ε chosen by mAP (sphering)."""
    from .processing import sphere

    _process("sphering", profiles, output, float_format, quiet, lambda df: sphere(
        df, samples=samples, method=method, epsilon=epsilon or SPHERING_GRID, pert_column=pert_column,
        neg_sameby=_split(neg_sameby) or ["Metadata_Plate"], **_feature_args(features, feature_prefixes)))


@app.command("harmony")
def harmony_cmd(
    profiles: Annotated[str, typer.Argument(help="Per-well profiles without missing values (usually after pca).")],
    output: Annotated[str, typer.Argument(help="Output table.")],
    batch_key: Annotated[str, typer.Option(help="Column naming the batch.")] = "Metadata_Batch",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    max_iter: Annotated[int, typer.Option(help="Harmony iterations.")] = 10,
    n_clusters: Annotated[int | None, typer.Option(help="Clusters (default min(rows/30, 100)).")] = None,
    features: FeaturesOpt = None,
    feature_prefixes: FeaturePrefixOpt = None,
    float_format: FloatFormatOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Harmony batch correction (harmony)."""
    from .processing import harmony

    _process("harmony", profiles, output, float_format, quiet, lambda df: harmony(
        df, batch_key=batch_key, seed=seed, max_iter=max_iter, n_clusters=n_clusters,
        **_feature_args(features, feature_prefixes)))


@app.command("process")
def process_cmd(
    profiles: Annotated[str, typer.Argument(help="Per-well profiles (e.g. every plate of a set of batches).")],
    output: Annotated[str, typer.Argument(help="Output table.")],
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
    from .processing import parse_chain, run_chain

    steps = parse_chain(chain.split(",") if "," in chain else chain)
    report: list[dict[str, Any]] = []
    _process("processing", profiles, output, float_format, quiet, lambda df: run_chain(
        df, steps, plate_column=plate_column, samples=samples,
        plates_without_controls=plates_without_controls,  # type: ignore[arg-type]
        batch_key=batch_key, cell_count_column=cell_count_column, pert_column=pert_column, seed=seed,
        report=report, **_feature_args(features, feature_prefixes)))
    for entry in report:
        typer.echo(f"{entry['step']}: {entry['rows_in']} → {entry['rows_out']} rows, "
                   f"{entry['features_in']} → {entry['features_out']} features ({entry['seconds']:.1f}s)")


@app.command("map")
def map_cmd(
    profiles: Annotated[str, typer.Argument(help="Profiles (per well; consensus profiles for consistency).")],
    output: Annotated[str | None, typer.Argument(help="Write the per-group table here (.csv, .csv.gz or .parquet).")] = None,
    mode: Annotated[str, typer.Option(help="activity (vs negative controls), distinctiveness (vs other perturbations) or consistency (by an annotation).")] = "activity",
    pert_column: Annotated[str | None, typer.Option(help="Perturbation column (default: the first of Metadata_broad_sample, Metadata_pert_iname, ...).")] = None,
    annotation_column: Annotated[str | None, typer.Option(help="consistency: the annotation (e.g. Metadata_target).")] = None,
    multilabel_separator: Annotated[str | None, typer.Option(help="consistency: separator of several labels in one cell, e.g. '|'.")] = None,
    control_query: Annotated[str, typer.Option(help="Negative controls (query); 'none' for no controls.")] = NEGCON_QUERY,
    neg_sameby: Annotated[list[str], typer.Option(help="Negatives must share these columns (e.g. Metadata_Plate).")] = [],
    pos_diffby: Annotated[list[str], typer.Option(help="Replicates must differ in these columns.")] = [],
    null_size: Annotated[int, typer.Option(help="Draws in each null distribution.")] = 10000,
    threshold: Annotated[float, typer.Option(help="FDR level for 'retrieved'.")] = 0.05,
    seed: Annotated[int, typer.Option(help="Seed of the null distributions.")] = 0,
    features: FeaturesOpt = None,
    feature_prefixes: FeaturePrefixOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Mean average precision per perturbation, p-values, fraction retrieved."""
    from . import io
    from .evaluate import mean_average_precision

    _setup_logging(quiet)
    if output:
        io.check_output(output)
    with _about(profiles), _timed("mAP"):
        table = mean_average_precision(
            io.read_table(profiles), mode=mode,  # type: ignore[arg-type]
            pert_column=pert_column, annotation_column=annotation_column,
            control_query=None if control_query.lower() in ("none", "") else control_query,
            neg_sameby=_split(neg_sameby) or [], pos_diffby=_split(pos_diffby) or [],
            multilabel_separator=multilabel_separator, null_size=null_size, threshold=threshold, seed=seed,
            **_feature_args(features, feature_prefixes))
    if output:
        io.write_table(table, output)
    retrieved = int(table["below_corrected_p"].sum())
    typer.echo(f"mAP ({mode}): mean {table['mean_average_precision'].mean():.4f}; {retrieved} of {len(table)} "
               f"retrieved at FDR {threshold:g} ({100 * table.attrs['fraction_retrieved']:.1f}%)")

# --- end of processing and evaluation commands ---


# --- single-cell commands ---


def _find_backend(workspace: str, batch: str, plate: str, kind: str | None) -> str:
    """The plate's backend: the asked kind, else Parquet when present (faster to read), else SQLite."""
    from . import io
    from .workspace import backend_files

    files = backend_files(workspace, batch, plate)
    parquet = f"{files['parquet_prefix']}_Image.parquet"
    found = {"parquet": parquet if io.exists(parquet) else None, "sqlite": files["sqlite"] if io.exists(files["sqlite"]) else None}
    if kind is not None:
        if kind not in found:
            raise CytoprofileError(f"--backend {kind}: choose sqlite or parquet")
        if found[kind] is None:
            raise CytoprofileError(f"{plate}: no {kind} backend at {parquet if kind == 'parquet' else files['sqlite']}; run `cytoprofile collate` first")
        return str(found[kind])
    path = found["parquet"] or found["sqlite"]
    if path is None:
        raise CytoprofileError(f"{plate}: no backend in {io.join(workspace, 'backend', batch, plate)}; run `cytoprofile collate` first")
    return path


def _links(values: list[str] | None) -> dict[str, str] | None:
    out: dict[str, str] = {}
    for item in _split(values) or []:
        compartment, sep, column = item.partition("=")
        if not sep or not compartment or not column:
            raise CytoprofileError(f"--links {item}: write COMPARTMENT=COLUMN, e.g. Nuclei=Cytoplasm_Parent_Nuclei")
        out[compartment] = column
    return out or None


@app.command("single-cells")
def single_cells_cmd(
    workspace: Annotated[str, typer.Argument(help="Workspace folder (holds backend/).")],
    batch: Annotated[str, typer.Argument(help="Batch name.")],
    plates: Annotated[list[str], typer.Argument(help="One or more plate barcodes.")],
    formats: Annotated[list[str], typer.Option("--format", help="parquet and/or anndata (repeat for both).")] = ["parquet"],
    backend: Annotated[str | None, typer.Option(help="Read the sqlite or parquet backend (default: parquet if present).")] = None,
    compartments: Annotated[list[str], typer.Option(help="Object tables to join.")] = list(DEFAULT_COMPARTMENTS),
    hub: Annotated[str, typer.Option(help="Compartment whose Parent_ columns link the others.")] = "Cytoplasm",
    links: Annotated[list[str] | None, typer.Option(help="COMPARTMENT=HUB_COLUMN (default <Hub>_Parent_<Compartment>).")] = None,
    image_feature_categories: Annotated[list[str], typer.Option(help="Image categories to add as Image_* features.")] = [],
    metadata: Annotated[list[str] | None, typer.Option(help="Image metadata columns to carry, or 'all' (default Plate, Well, Site).")] = None,
    cell_qc: Annotated[bool, typer.Option("--cell-qc/--no-cell-qc", help="Add Metadata_cqc_<set>_is_outlier flags.")] = False,
    thresholds: Annotated[str | None, typer.Option(help="Threshold sets YAML (default: the three shipped nuclei sets).")] = None,
    qc_sets: Annotated[list[str] | None, typer.Option(help="Only these threshold sets.")] = None,
    strict: Annotated[bool, typer.Option(help="Exit 1 when any object could not be linked into a cell.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """One row per cell, compartments joined, from a plate's backend.

    Writes PLATE_single_cells.parquet and/or PLATE_single_cells.h5ad.
    """
    from .cell_qc import load_thresholds
    from .single_cells import write_single_cells

    _setup_logging(quiet)
    formats = _split(formats) or ["parquet"]
    meta = _split(metadata)
    sets = load_thresholds(thresholds, sets=_split(qc_sets)) if (cell_qc or thresholds or qc_sets) else None
    linked = _links(links)
    unlinked = []
    for plate in _split(plates) or []:
        path = _find_backend(workspace, batch, plate, backend)
        with _timed(f"single cells of {plate}"):
            report = write_single_cells(
                path, formats=formats,  # type: ignore[arg-type]
                compartments=_split(compartments) or list(DEFAULT_COMPARTMENTS), hub=hub, links=linked,
                image_feature_categories=_split(image_feature_categories) or [],
                metadata="all" if meta == ["all"] else meta, thresholds=sets)
        log.info("%s: %d cells from %d sites; rows in %s; not linked %s", plate, report.cells_out, report.sites,
                 report.rows_in, report.unlinked or "none")
        for out in report.outputs.values():
            typer.echo(out)
        if report.lost:
            unlinked.append(f"{plate} ({report.lost})")
    if unlinked and strict:
        raise CytoprofileError(f"objects not linked into cells (named in the reports): {', '.join(unlinked)}")


@app.command("cell-qc")
def cell_qc_cmd(
    input_path: Annotated[str, typer.Argument(metavar="SINGLE_CELLS", help="A single-cell Parquet file (ours or CytoTable's).")],
    output: Annotated[str | None, typer.Option(help="Write here instead of replacing the input.")] = None,
    thresholds: Annotated[str | None, typer.Option(help="Threshold sets YAML (default: the three shipped nuclei sets).")] = None,
    qc_sets: Annotated[list[str] | None, typer.Option(help="Only these threshold sets.")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Flag outlier cells in a single-cell Parquet file.

    Adds a Metadata_cqc_SET_is_outlier column per threshold set.
    """
    from .cell_qc import flag_single_cells, load_thresholds

    _setup_logging(quiet)
    sets = load_thresholds(thresholds, sets=_split(qc_sets))
    with _timed("cell QC"):
        summary = flag_single_cells(input_path, output, thresholds=sets)
    for name, n in summary["flagged"].items():
        log.info("%s: %d of %d cells flagged", name, n, summary["cells"])
    typer.echo(summary["output"])


# --- end of single-cell commands ---


def _click_exit(exc: BaseException) -> int | None:
    """Exit status for the CLI framework's own exceptions (usage errors, --help, aborts).

    Matched by shape, not class: Typer may carry its own copy of Click.
    """
    name = type(exc).__name__
    if name == "Exit":
        return int(getattr(exc, "exit_code", 0) or 0)
    if name == "Abort" and isinstance(exc.__cause__, EOFError):
        return None  # Click turns an EOFError from our code into Abort: a bug, not an interrupt
    if name == "Abort":
        console.print("interrupted; re-run the same command to finish the job")
        return 130
    if hasattr(exc, "show") and hasattr(exc, "exit_code"):
        exc.show()
        return int(exc.exit_code)
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, map errors to exit codes (1 user error, 2 usage, 3 bug, 130 interrupt)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        status = app(args=args or ["--help"], standalone_mode=False)
    except CytoprofileError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        console.print("interrupted; re-run the same command to finish the job")
        return 130
    except Exception as exc:
        code = _click_exit(exc)
        if code is not None:
            return code
        fd, path = tempfile.mkstemp(prefix="cytoprofile-crash-", suffix=".log")
        with open(fd, "w") as fh:
            fh.write(f"cytoprofile {__version__}\nargv: {sys.argv}\n\n")
            fh.write(traceback.format_exc())
        console.print(f"internal error (a bug in cytoprofile): {exc!r}; traceback written to {path}",
                      markup=False, highlight=False, soft_wrap=True)
        return 3
    if isinstance(status, int) and status != 0:
        if status == 130:
            console.print("interrupted; re-run the same command to finish the job")
        return status
    return 0
