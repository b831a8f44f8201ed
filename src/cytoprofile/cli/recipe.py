"""The recipe and its quality control: run and qc."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from ..vocabulary import FEATURE_SELECT_LEVELS, NEGCON_QUERY
from .common import (
    ConnectTimeoutOpt,
    EndpointOpt,
    NoSignOpt,
    ProfileOpt,
    QuietOpt,
    ReadTimeoutOpt,
    RetriesOpt,
    TmpDirOpt,
    app,
    configure_storage,
    console,
    none_or_values,
    one_of,
    plate_progress,
    setup_logging,
    split_values,
    timed,
)

__all__ = ['qc', 'run']


@app.command()
def run(
    config: Annotated[str, typer.Argument(help="Recipe config (YAML).")],
    workspace: Annotated[str | None, typer.Option(help="Workspace with backend/, metadata/, load_data_csv/.")] = None,
    root: Annotated[str | None, typer.Option(help="Where profiles/, gct/, quality_control/ go.", show_default="the workspace, else here")] = None,
    force: Annotated[bool, typer.Option(help="Redo steps whose outputs are current.")] = False,
    jobs: Annotated[int | None, typer.Option(help="Plates in parallel on this machine.", show_default="the config's executor.jobs")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Dask scheduler address.", show_default="the config's executor.scheduler; unset: this machine")] = None,
    tmp_dir: TmpDirOpt = None,
    profile: ProfileOpt = None,
    endpoint_url: EndpointOpt = None,
    no_sign_request: NoSignOpt = False,
    connect_timeout: Annotated[float | None, typer.Option(help="Seconds to wait for a connection to S3 or the Dask scheduler.", show_default="the config's options.connect_timeout, else 5.0")] = None,
    read_timeout: Annotated[float | None, typer.Option(help="Seconds to wait for an answer from S3 or the Dask scheduler.", show_default="the config's options.read_timeout, else 15.0")] = None,
    retries: Annotated[int | None, typer.Option(help="Retries of a failed S3 request (throttling, server errors, timeouts).", show_default="the config's options.retries, else 2")] = None,
    quiet: QuietOpt = False,
    allow_unknown_keys: Annotated[bool, typer.Option(
        help="Ignore config keys that look like misspellings of known keys (a warning, not an error).")] = False,
) -> None:
    """Run the profiling recipe a config describes.

    aggregate → annotate → normalize → feature select → GCT → QC (the blocks the config has), per plate and per batch.
    """
    from ..pipeline import run as _run

    setup_logging(quiet)
    configure_storage(profile, endpoint_url, no_sign_request, connect_timeout=connect_timeout,
                      read_timeout=read_timeout, retries=retries)
    if tmp_dir:
        from ..io import output_errors

        with output_errors(tmp_dir):
            Path(tmp_dir).mkdir(parents=True, exist_ok=True)
    label = "recipe: plates, then batch steps"
    with plate_progress([label], quiet, unit=None) as update, timed("recipe"):
        result = _run(config, workspace=workspace, root=root, force=force, jobs=jobs, scheduler=scheduler,
                      tmp_dir=tmp_dir, allow_unknown_keys=allow_unknown_keys,
                      progress=(lambda _l, d, t: update(label, d, t)) if update else None)
    if not quiet:
        _print_products(result)


def _print_products(result: Any) -> None:
    """The recipe's closing lines: what ran, one line per product, whether QC ran."""
    from .. import io
    from ..logs import print_message

    print_message(console, f"{len(result.ran)} step(s) run, {len(result.skipped)} already current; "
                  f"{len(result.outputs)} file(s) written in {result.seconds:.1f}s")
    for label, rel in result.products:
        path = io.join(result.root, rel)
        if not io.is_remote(path):
            shown = os.path.relpath(path)
            path = shown if not shown.startswith("..") else os.path.abspath(path)
        print_message(console, f"{label}: {path}")
    print_message(console, result.qc)


@app.command()
def qc(
    workspace: Annotated[str, typer.Argument(help="Folder holding profiles/, load_data_csv/, backend/.")],
    batch: Annotated[str, typer.Argument(help="Batch name.")],
    plates: Annotated[list[str], typer.Argument(help="Plates.")],
    level: Annotated[str | None, typer.Option(metavar=one_of(FEATURE_SELECT_LEVELS), help="Feature-selection level to read: plate, batch or all.", show_default="the first of all, batch, plate found")] = None,
    replicate_column: Annotated[str | None, typer.Option(help="Column naming the treatment.", show_default="the first present of Metadata_broad_sample, Metadata_pert_iname, …")] = None,
    tmp_dir: TmpDirOpt = None,
    profile: ProfileOpt = None,
    endpoint_url: EndpointOpt = None,
    no_sign_request: NoSignOpt = False,
    connect_timeout: ConnectTimeoutOpt = 5.0,
    read_timeout: ReadTimeoutOpt = 15.0,
    retries: RetriesOpt = 2,
    map_: Annotated[bool, typer.Option("--map", help="Also compute mAP (the recipe's quality_control.map); writes quality_control/map/BATCH/ and adds it to the report.")] = False,
    map_modes: Annotated[list[str] | None, typer.Option(help="mAP modes: activity and/or consistency (repeat).  [default: activity]")] = None,
    map_pert_column: Annotated[str | None, typer.Option(help="mAP perturbation column.", show_default="the first of Metadata_broad_sample, Metadata_pert_iname, ...")] = None,
    map_annotation_column: Annotated[str | None, typer.Option(help="mAP consistency: the annotation (e.g. Metadata_moa).")] = None,
    map_multilabel_separator: Annotated[str | None, typer.Option(help="mAP consistency: separator of several labels in one cell, e.g. '|'.")] = None,
    map_control_query: Annotated[str | None, typer.Option(help=f"mAP negative controls (query).  [default: {NEGCON_QUERY}]")] = None,
    map_neg_sameby: Annotated[list[str] | None, typer.Option(help="mAP negatives must share these columns; 'none' for every negative.  [default: Metadata_Plate for activity, none otherwise]")] = None,
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
    from ..qc import quality_control

    given = {"modes": split_values(map_modes), "pert_column": map_pert_column, "annotation_column": map_annotation_column,
             "multilabel_separator": map_multilabel_separator, "control_query": map_control_query,
             "neg_sameby": none_or_values(map_neg_sameby), "pos_diffby": split_values(map_pos_diffby), "null_size": map_null_size,
             "threshold": map_threshold, "seed": map_seed, "profiles": map_profiles}
    settings = _qc_map_settings(map_, {k: v for k, v in given.items() if v is not None})
    setup_logging(quiet)
    configure_storage(profile, endpoint_url, no_sign_request, connect_timeout=connect_timeout,
                      read_timeout=read_timeout, retries=retries)
    with timed("quality control"):
        result = quality_control(workspace, batch, split_values(plates) or [], level=level, replicate_column=replicate_column,
                                 map_settings=settings, map_profiles=map_profiles, tmp_dir=tmp_dir)
    if result.report_path:
        typer.echo(result.report_path)


def _qc_map_settings(perform: bool, given: dict[str, Any]) -> dict[str, Any] | None:
    """The ``--map-*`` options, checked as the recipe's ``quality_control.map`` block is
    (same names and defaults); an option given without ``--map`` is refused."""
    from pydantic import ValidationError

    from ..config import MapConfig
    from ..errors import ConfigError
    from ..recipe_options import map_options

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
    return map_options(block)
