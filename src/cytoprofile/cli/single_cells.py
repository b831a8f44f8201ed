"""Single-cell commands: the joined one-row-per-cell table and cell QC."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..errors import InputError
from ..vocabulary import DEFAULT_COMPARTMENTS
from .common import HubOpt, QuietOpt, app, log, setup_logging, split_values, timed

__all__ = ['cell_qc_cmd', 'single_cells_cmd']


def _links(values: list[str] | None) -> dict[str, str] | None:
    out: dict[str, str] = {}
    for item in split_values(values) or []:
        compartment, sep, column = item.partition("=")
        if not sep or not compartment or not column:
            raise InputError(f"--links {item}: write COMPARTMENT=COLUMN, e.g. Nuclei=Cytoplasm_Parent_Nuclei")
        out[compartment] = column
    return out or None


def _print_outputs(_plate: str, report: Any) -> None:
    """A finished plate's single-cell files, one path a line."""
    for out in report.outputs.values():
        typer.echo(out)


@app.command("single-cells")
def single_cells_cmd(
    workspace: Annotated[str, typer.Argument(help="Workspace folder (holds backend/).")],
    batch: Annotated[str, typer.Argument(help="Batch name.")],
    plates: Annotated[list[str], typer.Argument(help="One or more plate barcodes.")],
    formats: Annotated[list[str], typer.Option("--format", help="parquet and/or anndata (repeat for both).")] = ["parquet"],
    backend: Annotated[str | None, typer.Option(help="Read the sqlite or parquet backend.", show_default="parquet if present")] = None,
    compartments: Annotated[list[str], typer.Option(help="Object tables to join.")] = list(DEFAULT_COMPARTMENTS),
    hub: HubOpt = "Cytoplasm",
    links: Annotated[list[str] | None, typer.Option(help="COMPARTMENT=HUB_COLUMN.", show_default="<Hub>_Parent_<Compartment>")] = None,
    image_feature_categories: Annotated[list[str], typer.Option(help="Image categories to add as Image_* features.")] = [],
    metadata: Annotated[list[str] | None, typer.Option(help="Image metadata columns to carry, or 'all'.", show_default="Plate, Well, Site")] = None,
    cell_qc: Annotated[bool, typer.Option("--cell-qc/--no-cell-qc", help="Add Metadata_cqc_<set>_is_outlier flags.")] = False,
    thresholds: Annotated[str | None, typer.Option(help="Threshold sets YAML.", show_default="the three shipped nuclei sets")] = None,
    qc_sets: Annotated[list[str] | None, typer.Option(help="Only these threshold sets.")] = None,
    strict: Annotated[bool, typer.Option(help="Exit 1 when any object could not be linked into a cell.")] = False,
    threads: Annotated[int, typer.Option(help="Threads reading an SQLite backend's sites ahead and writing "
                                                     "each site while the next is joined (0: all in one thread).")] = 2,
    quiet: QuietOpt = False,
) -> None:
    """One row per cell, compartments joined, from a plate's backend.

    Writes PLATE_single_cells.parquet and/or PLATE_single_cells.h5ad.
    """
    from ..single_cells import write_plates_single_cells

    setup_logging(quiet)
    formats = split_values(formats) or ["parquet"]
    meta = split_values(metadata)
    sets = None
    if cell_qc or thresholds or qc_sets:
        from ..cell_qc import load_thresholds  # pandas: only when flags are asked for

        sets = load_thresholds(thresholds, sets=split_values(qc_sets))
    write_plates_single_cells(
        workspace, batch, split_values(plates) or [], backend=backend, formats=formats,
        compartments=split_values(compartments) or list(DEFAULT_COMPARTMENTS), hub=hub, links=_links(links),
        image_feature_categories=split_values(image_feature_categories) or [],
        metadata="all" if meta == ["all"] else meta, thresholds=sets, threads=threads, strict=strict,
        done=_print_outputs)


@app.command("cell-qc")
def cell_qc_cmd(
    input_path: Annotated[str, typer.Argument(metavar="SINGLE_CELLS", help="A single-cell Parquet file (ours or CytoTable's).")],
    output: Annotated[str | None, typer.Option(help="Write here instead of replacing the input.")] = None,
    thresholds: Annotated[str | None, typer.Option(help="Threshold sets YAML.", show_default="the three shipped nuclei sets")] = None,
    qc_sets: Annotated[list[str] | None, typer.Option(help="Only these threshold sets.")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Flag outlier cells in a single-cell Parquet file.

    Adds a Metadata_cqc_SET_is_outlier column per threshold set.
    """
    from ..cell_qc import flag_single_cells, load_thresholds

    setup_logging(quiet)
    sets = load_thresholds(thresholds, sets=split_values(qc_sets))
    with timed("cell QC"):
        summary = flag_single_cells(input_path, output, thresholds=sets)
    for name, n in summary["flagged"].items():
        log.info("%s: %d of %d cells flagged", name, n, summary["cells"])
    typer.echo(summary["output"])
