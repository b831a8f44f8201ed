"""Collating plates: the router for one plate (local, pushed, on a URL, ExportToDatabase) and the batch driver."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import io, workspace
from ..aggregate import DEFAULT_IMAGE_FEATURE_CATEGORIES
from ..checks import as_names, check_choices
from ..digest import ReadDigests
from ..errors import CytoprofileError, InputError
from ..executor import PlateTask
from ..ingest import (
    CountCheck,
)
from ..layout import Workspace
from ..vocabulary import (
    AGGREGATE_OPERATIONS,
    BACKEND_KINDS,
    COUNT_CHECKS,
    DEFAULT_COMPARTMENTS,
    DEFAULT_STRATA,
    SINGLE_CELL_FORMATS,
    TABLE_FORMATS,
)
from ..vocabulary import AggregateOperation as Operation
from .cells import cell_options
from .outputs import (
    BackendKind,
    PlateResult,
    ProfileFormat,
    Progress,
    commit_local,
    plate_outputs,
    trusted_outputs,
)
from .plan import build_options, check_strict, input_state, plan_build, plate_files
from .read import build_plate
from .reaggregate import aggregate_only
from .staging import collate_export_remote, collate_remote, publish_plate, remote_export_files

__all__ = ['collate', 'collate_plate']

log = logging.getLogger("cytoprofile.collate")


#: the build options ``collate_plate`` shares with :func:`collate`: their names and defaults are collate's
_SHARED_OPTIONS = ("backend", "profile_format", "operation", "compartments", "image_features", "image_feature_categories",
                   "strata", "overwrite", "aggregate_only", "strict", "count_check", "file_prefix", "single_cells",
                   "exclude_outlier_cells", "cell_qc_thresholds", "hub")


def _shared_options(given: dict[str, Any]) -> dict[str, Any]:
    """``given`` completed with :func:`collate`'s defaults; a name collate does not take is a ``TypeError``."""
    unknown = sorted(set(given) - set(_SHARED_OPTIONS))
    if unknown:
        raise TypeError(f"collate_plate() got an unexpected keyword argument {unknown[0]!r}")
    defaults = inspect.signature(collate).parameters
    return {k: given.get(k, defaults[k].default) for k in _SHARED_OPTIONS}


def collate_plate(
    ws: str | os.PathLike[str],
    batch: str,
    plate: str,
    *,
    threads: int = 2,
    remote: str | None = None,
    tmp_dir: str | None = None,
    wait: bool = False,
    progress: Progress | None = None,
    record_inputs: bool = True,
    rebuild_reason: str | None = None,
    **options: Any,
) -> PlateResult:
    """Ingest one plate's sites into the backend(s) and write its per-well profiles and report.

    ``options`` are the build options of :func:`collate` (``backend`` … ``cell_qc_thresholds``),
    with the same names and defaults. ``ws`` may be a URL (``s3://bucket/workspace``): the
    plate's CSVs for the asked compartments are fetched to ``tmp_dir``, collated there, and
    the outputs uploaded (report last); the local copy is removed after the plate. ``remote``
    pushes the outputs of a local workspace to that URL as well. A local plate is locked
    while it is collated: another process collating it fails fast, or waits with ``wait``.
    ``record_inputs=False`` skips the input files' record (size, time, digest) that lets a re-run
    skip an unchanged plate: for a caller that keeps its own (the ExportToDatabase route, whose
    site CSVs are its own scratch copies). ``rebuild_reason`` is why the caller set ``overwrite`` (the
    ExportToDatabase route: its files changed), said at WARNING in place of "--overwrite".
    """
    start = time.perf_counter()
    workspace.check_name(batch, "batch")
    workspace.check_name(plate, "plate")
    o = _shared_options(options)
    options = dict(backend=tuple(o["backend"]), profile_format=o["profile_format"], operation=o["operation"],
                   compartments=tuple(o["compartments"]), image_features=o["image_features"],
                   image_feature_categories=tuple(o["image_feature_categories"]), strata=tuple(o["strata"]),
                   overwrite=o["overwrite"], aggregate_only=o["aggregate_only"], strict=o["strict"], threads=threads,
                   count_check=o["count_check"], file_prefix=o["file_prefix"], record_inputs=record_inputs,
                   rebuild_reason=rebuild_reason,
                   **cell_options(
                       o["single_cells"], o["exclude_outlier_cells"], o["cell_qc_thresholds"],
                       aggregate_only=o["aggregate_only"], hub=o["hub"]))
    if io.is_remote(ws):
        return collate_remote(str(ws), batch, plate, tmp_dir=tmp_dir, progress=progress, start=start, **options)
    if remote is not None:
        return _collate_and_push(str(ws), remote, batch, plate, wait=wait, progress=progress, options=options)
    return _collate_local(str(ws), batch, plate, wait=wait, progress=progress, start=start, options=options)


def _collate_and_push(ws: str, remote: str, batch: str, plate: str, *, wait: bool, progress: Progress | None,
                      options: dict[str, Any]) -> PlateResult:
    """Collate a local plate, then upload its outputs to ``remote`` (report last)."""
    pushed = collate_plate(ws, batch, plate, progress=progress, wait=wait, **options)
    if pushed.status == "done" and pushed.report is not None:
        publish_plate(ws, remote, batch, plate, pushed.report)
    return pushed


def _collate_local(ws: str, batch: str, plate: str, *, wait: bool, progress: Progress | None, start: float,
                   options: dict[str, Any]) -> PlateResult:
    """A local plate under its lock: re-aggregate only, skip when current, or build and commit."""
    outputs = plate_outputs(ws, batch, plate, backend=options["backend"], profile_format=options["profile_format"])
    if not options["aggregate_only"]:
        workspace.find_plate(ws, batch, plate)  # before any folder is made
    out_dir = Workspace(ws).backend(batch, plate)
    with io.output_errors(out_dir), workspace.plate_lock(ws, batch, plate, wait=wait):
        io.remove_leftovers(out_dir)  # a killed run's temporary files (we hold the lock)
        if options["aggregate_only"]:
            check_strict(plate, trusted_outputs(ws, batch, plate)[0], strict=options["strict"])
            return aggregate_only(ws, batch, plate, outputs, backend=options["backend"],
                                   operation=options["operation"], compartments=options["compartments"],
                                   image_features=options["image_features"],
                                   image_feature_categories=options["image_feature_categories"],
                                   strata=options["strata"], overwrite=options["overwrite"], progress=progress,
                                   start=start)
        report, trusted = trusted_outputs(ws, batch, plate)
        later = options["record_inputs"] and report is None  # a first build: nothing to compare, read once
        inputs = input_state(ws, batch, plate, report=report, threads=options["threads"]) \
            if options["record_inputs"] and not later else None
        plan = plan_build(plate, report, trusted, {**build_options(options), **({"inputs": inputs.digest} if inputs else {})},
                          overwrite=options["overwrite"], strict=options["strict"], rebuild_reason=options["rebuild_reason"])
        if plan.skip:
            return PlateResult(batch, plate, "skipped", "complete outputs exist (use --overwrite to rebuild)",
                               outputs, report, seconds=time.perf_counter() - start)
        seen = plate_files(ws, batch, plate) if later else None
        with ReadDigests(Workspace(ws).analysis(batch, plate)) if later else contextlib.nullcontext() as read:
            result, staging = build_plate(ws, batch, plate, plan=plan, progress=progress, start=start, **options)
        if later:  # the digests of the files the build read come from the bytes it read
            assert read is not None
            inputs = input_state(ws, batch, plate, threads=options["threads"], read=read.digests, seen=seen)
            _warn_appeared(plate, inputs.appeared)
        if result.report is not None and inputs is not None:
            result.report.update(inputs.record())
        commit_local(out_dir, plate, result, staging, before=set(trusted))
    return result


def _warn_appeared(plate: str, appeared: list[str]) -> None:
    """Files that came while the plate was read are in no output: say so (the next run rebuilds the plate)."""
    if appeared:
        shown = ", ".join(appeared[:3]) + f" and {len(appeared) - 3} more" if len(appeared) > 4 else ", ".join(appeared)
        log.warning("%s: %d file(s) appeared while the plate was read and are not in this build (%s); "
                    "run collate again when CellProfiler has finished: it rebuilds the plate", plate, len(appeared), shown)


def collate(
    ws: str | os.PathLike[str],
    batch: str,
    plates: Sequence[str],
    *,
    backend: Sequence[BackendKind] = ("sqlite",),
    profile_format: ProfileFormat = "csv",
    operation: Operation = "median",
    compartments: Sequence[str] = DEFAULT_COMPARTMENTS,
    image_features: bool = True,
    image_feature_categories: Sequence[str] = DEFAULT_IMAGE_FEATURE_CATEGORIES,
    strata: Sequence[str] = DEFAULT_STRATA,
    overwrite: bool = False,
    aggregate_only: bool = False,
    strict: bool = False,
    count_check: CountCheck = "error",
    file_prefix: str | None = None,
    single_cells: Sequence[str] = (),
    exclude_outlier_cells: Sequence[str] | None = None,
    cell_qc_thresholds: str | None = None,
    hub: str = "Cytoplasm",
    export_db: Sequence[str] = (),
    table_prefix: str | None = None,
    jobs: int = 1,
    scheduler: str | None = None,
    remote: str | None = None,
    tmp_dir: str | None = None,
    wait: bool = False,
    progress: Progress | None = None,
) -> list[PlateResult]:
    """Backend creation for several plates of a batch, ``jobs`` plates at a time.

    A plate that fails (bad input, 0 readable sites, a full or read-only disk, or
    ``strict`` with quarantined sites) is reported as failed; the other plates go on.
    A plate is read from CellProfiler ExportToDatabase SQLite files instead of site CSVs
    when ``export_db`` names files or folders of them, or when its analysis folder holds
    ``*.sqlite`` files and no site folders (``table_prefix``: the files' table prefix).
    """
    from ..executor import run_plates

    if not plates:
        raise InputError("no plates given; name at least one PLATE")
    _check_choices(backend=backend, profile_format=profile_format, operation=operation, count_check=count_check,
                   single_cells=single_cells)
    as_names("strata", strata)  # refused before any plate is read: a stratum named twice is two profile columns
    workspace.check_name(batch, "batch")
    for plate in plates:
        workspace.check_name(plate, "plate")
    twice = sorted(p for p, n in Counter(map(str, plates)).items() if n > 1)
    if twice:  # two tasks of one plate would meet at its lock and one would fail
        raise InputError(f"plate {', '.join(twice)} given more than once; name each plate once")
    options: dict[str, Any] = dict(backend=tuple(backend), profile_format=profile_format, operation=operation,
                                   compartments=tuple(compartments), image_features=image_features,
                                   image_feature_categories=tuple(image_feature_categories), strata=tuple(strata),
                                   overwrite=overwrite, aggregate_only=aggregate_only, strict=strict,
                                   count_check=count_check, file_prefix=file_prefix,
                                   single_cells=tuple(single_cells), cell_qc_thresholds=cell_qc_thresholds,
                                   exclude_outlier_cells=None if exclude_outlier_cells is None else tuple(exclude_outlier_cells),
                                   **({"hub": hub} if hub != "Cytoplasm" else {}),  # default: records stay as before
                                   export_db=tuple(str(p) for p in export_db), table_prefix=table_prefix,
                                   remote=remote, tmp_dir=tmp_dir, wait=wait, storage=dict(io.current_storage()))
    return run_plates(_collate_task, [PlateTask(str(ws), batch, p) for p in plates], options, jobs=jobs,
                      scheduler=scheduler, progress=progress, on_done=_say_outcome)


def _say_outcome(_: int, result: PlateResult) -> None:
    """A plate's outcome as it finishes (INFO: ``--quiet`` keeps only the failures' final line)."""
    log.info("%s %s (%.1f s): %s", result.plate, result.status, result.seconds, result.message)


def _check_choices(*, backend: Sequence[str], profile_format: str, operation: str, count_check: str,
                   single_cells: Sequence[str]) -> None:
    """Refuse an unknown choice before any plate is read (a misspelled backend would write none)."""
    if not backend:
        raise InputError("backend: name at least one of " + ", ".join(BACKEND_KINDS))
    for name, values, choices in (("backend", backend, BACKEND_KINDS),
                                  ("profile_format (--output-format)", [profile_format], TABLE_FORMATS),
                                  ("operation", [operation], AGGREGATE_OPERATIONS),
                                  ("count_check", [count_check], COUNT_CHECKS),
                                  ("single_cells (--single-cell-format)", single_cells, SINGLE_CELL_FORMATS)):
        check_choices(name, values, choices)


def _reads_export_files(ws: str, batch: str, plate: str) -> bool:
    """A plate whose analysis folder holds ExportToDatabase files and no site folders (local or on a URL)."""
    from ..exportdb import discover_export_files

    if io.is_remote(ws):
        return bool(remote_export_files(ws, batch, plate))
    sites = Path(Workspace(str(ws)).analysis(batch, plate))
    if sites.is_dir() and any(p.is_dir() or p.is_symlink() for p in sites.iterdir()):
        return False  # an empty analysis folder holds no site: the plate's database files are read
    return bool(discover_export_files(ws, batch, plate))


def _collate_task(task: PlateTask, options: dict[str, Any], progress: Progress | None) -> PlateResult:
    """One plate, with user errors turned into a failed result rather than an exception."""
    ws, batch, plate = task.workspace, task.batch, task.plate
    options = dict(options)
    io.configure_storage(options.pop("storage", None))
    export_db, table_prefix = options.pop("export_db", ()), options.pop("table_prefix", None)
    try:
        if io.is_remote(ws) and not options.get("aggregate_only") and (export_db or _reads_export_files(ws, batch, plate)):
            return collate_export_remote(ws, batch, plate, sources=list(export_db), table_prefix=table_prefix,
                                          progress=progress, options=options)
        if not io.is_remote(ws) and (export_db or _reads_export_files(ws, batch, plate)):
            from ..exportdb import collate_export

            return collate_export(ws, batch, plate, sources=list(export_db) or None, table_prefix=table_prefix,
                                  progress=progress, **options)
        return collate_plate(ws, batch, plate, progress=progress, **options)
    except CytoprofileError as exc:
        return PlateResult(batch, plate, "failed", str(exc))
