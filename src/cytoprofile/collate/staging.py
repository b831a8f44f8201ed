"""Plates of a workspace on object storage: staged into scratch, collated there, published report last."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

from .. import io, workspace
from ..errors import InputError
from ..ingest import (
    reader_opens,
)
from ..layout import (
    SIDECAR,
    Workspace,
    is_parquet_table,
    profiles_name,
    report_name,
    sqlite_name,
)
from ..remote import list_entries
from .outputs import (
    PlateResult,
    Progress,
    commit_local,
    is_ours,
    kind_of,
    plate_outputs,
    remote_sizes,
    trusted_outputs,
)
from .plan import build_options, check_strict, plan_build, remote_state
from .read import build_plate
from .reaggregate import aggregate_only, aggregation_changes, say_reaggregating

__all__ = ['collate_export_remote', 'collate_remote', 'publish_plate', 'remote_export_files']

log = logging.getLogger("cytoprofile.collate")
_AGGREGATION = ("operation", "strata", "compartments", "image_features", "image_feature_categories")


def publish_plate(local_ws: str, remote_ws: str, batch: str, plate: str, report: dict[str, Any],
                   *, before: set[str] | None = None) -> list[str]:
    """Upload a finished plate: remote report deleted first, outputs, stale keys removed, report last."""
    folder = Workspace(str(local_ws)).backend(batch, plate)
    names = sorted(n for n in os.listdir(folder) if not n.startswith(".") and n != report_name(plate))
    earlier = before or set()
    return _publish(folder, Workspace(str(remote_ws)).backend(batch, plate), plate, names, report,
                    warn=lambda name: name in earlier, earlier=earlier)


def _publish(folder: str, target: str, plate: str, names: Sequence[str], report: dict[str, Any], *,
             warn: Callable[[str], bool], earlier: Collection[str] = ()) -> list[str]:
    """The one publishing order: the remote report deleted (nothing of the plate is trusted
    until the new one is up), ``names`` uploaded, the plate's keys the report does not list
    removed (a warning for those ``warn`` picks), the report uploaded last."""
    report_file = report_name(plate)
    io.remove(io.join(target, report_file))
    urls = [io.join(target, n) for n in names]
    for name, url in zip(names, urls):
        io.upload(os.path.join(folder, name), url)
    keep = set(report["outputs"]) | {n + SIDECAR for n in report["outputs"]}
    for name in sorted(remote_sizes(target)):
        if name not in keep and is_ours(plate, name, before=earlier):
            io.remove(io.join(target, name))
            if warn(name):
                log.warning("%s: removed %s of the earlier build (not asked for now)", plate, io.join(target, name))
    io.upload(os.path.join(folder, report_file), io.join(target, report_file))
    return [*urls, io.join(target, report_file)]


def _stage_plate(copy: workspace.Staged, batch: str, plate: str) -> None:
    """Copy a plate's analysis folder from object storage as the local reader sees it.

    Every file is staged under its own name and size; the files reading a site opens
    (:func:`cytoprofile.ingest.reader_opens`: the CSVs, plain or gzip, any case, in a site
    folder or below it) are downloaded, the rest (images, logs) stand in as empty files.
    """
    analysis_rel = Workspace.analysis_rel(batch, plate)
    depth = analysis_rel.count("/") + 2  # analysis/.../analysis/SITE/FILE
    staged = copy.fetch([analysis_rel], fetch=lambda rel: rel.count("/") >= depth and reader_opens(os.path.basename(rel)))
    if not any(rel.count("/") >= depth for rel in staged):
        raise InputError(f"{io.join(copy.remote, analysis_rel)}: no site folders with files found; "
                         "check the workspace URL, batch and plate")


def collate_remote(ws: str, batch: str, plate: str, *, tmp_dir: str | None, progress: Progress | None,
                    start: float, **options: Any) -> PlateResult:
    """Collate a plate of a workspace on object storage through a local scratch copy.

    The same rules as for a local plate: options compared with the report's, the report
    deleted before new outputs are uploaded and written last, stale keys removed, and the
    temporary keys of a killed run removed first. No lock: one run per plate at a time.
    """
    outputs = plate_outputs(ws, batch, plate, backend=options["backend"], profile_format=options["profile_format"])
    target = Workspace(str(ws)).backend(batch, plate)
    io.check_reachable(ws)
    if options["aggregate_only"]:
        check_strict(plate, trusted_outputs(ws, batch, plate)[0], strict=options["strict"])
        return _aggregate_only_remote(ws, batch, plate, tmp_dir=tmp_dir, progress=progress, start=start, **options)
    workspace.find_plate(ws, batch, plate)
    io.remove_leftovers(target)
    report, trusted = trusted_outputs(ws, batch, plate)
    inputs = remote_state(ws, batch, plate)
    plan = plan_build(plate, report, trusted, {**build_options(options), "inputs": inputs.digest}, overwrite=options["overwrite"],
                      strict=options["strict"])
    if plan.skip:
        return PlateResult(batch, plate, "skipped", "complete outputs exist (use --overwrite to rebuild)", outputs, report,
                           seconds=time.perf_counter() - start)
    with workspace.staged(ws, tmp_dir=tmp_dir, prefix=plate) as copy:
        scratch = copy.local
        _stage_plate(copy, batch, plate)
        local_dir = Workspace(str(scratch)).backend(batch, plate)
        with io.output_errors(scratch):
            local, staging = build_plate(scratch, batch, plate, plan=plan, progress=progress, start=start, **options)
            if local.report is not None:
                local.report.update(inputs.record())
            commit_local(local_dir, plate, local, staging, before=set())
        assert local.report is not None
        urls = publish_plate(scratch, ws, batch, plate, local.report, before=set(trusted))
    log.info("%s: uploaded %d file(s) to %s", plate, len(urls), target)
    remote_outputs = plate_outputs(ws, batch, plate, backend=local.report["backend"], profile_format=options["profile_format"])
    return PlateResult(batch, plate, "done", local.message, remote_outputs, local.report,
                       seconds=time.perf_counter() - start)


def _as_recorded(folder: str, report: dict[str, Any] | None, trusted: dict[str, str]) -> None:
    """Downloaded copies of outputs the remote report vouches for (by size) get the modification time the report
    records: the scratch copy then passes the local check as the stored file passed the remote one."""
    for name, entry in ((report or {}).get("outputs") or {}).items():
        path = os.path.join(folder, name)
        if name in trusted and isinstance(entry, dict) and isinstance(entry.get("mtime_ns"), int) and os.path.exists(path):
            os.utime(path, ns=(entry["mtime_ns"], entry["mtime_ns"]))


def _aggregate_only_remote(ws: str, batch: str, plate: str, *, tmp_dir: str | None, progress: Progress | None,
                           start: float, **options: Any) -> PlateResult:
    """Re-aggregate a backend on object storage through a scratch copy, with the local rules.

    Only the backend the aggregation reads is downloaded; the report keeps listing the
    other trusted outputs (they stay), the new profiles are uploaded, stale profiles of
    another format are removed, and the report goes up last.
    """
    rel = Workspace.backend_rel(batch, plate)
    target = Workspace(str(ws)).backend(batch, plate)
    io.remove_leftovers(target)
    report, trusted = trusted_outputs(ws, batch, plate)
    name = profiles_name(plate, profile_format=options["profile_format"])
    changed = aggregation_changes(report, **{k: options[k] for k in _AGGREGATION}) if name in trusted else []
    if changed and not options["overwrite"]:
        say_reaggregating(plate, changed)
    elif not options["overwrite"] and (name in trusted or (report is None and io.exists(io.join(target, name)))):
        return PlateResult(batch, plate, "skipped", "profiles exist (use --overwrite to re-aggregate)",
                           {"profiles": io.join(target, name)}, seconds=time.perf_counter() - start)
    wanted = {report_name(plate)} | ({sqlite_name(plate)} if "sqlite" in options["backend"] else set())
    with workspace.staged(ws, tmp_dir=tmp_dir, prefix=plate) as copy:
        scratch = copy.local
        copy.fetch([rel], accept=lambda r: os.path.basename(r) in wanted or is_parquet_table(plate, os.path.basename(r)))
        _as_recorded(Workspace(str(scratch)).backend(batch, plate), report, trusted)
        outputs = plate_outputs(scratch, batch, plate, backend=options["backend"], profile_format=options["profile_format"])
        with io.output_errors(scratch):
            local = aggregate_only(scratch, batch, plate, outputs, backend=options["backend"],
                                    operation=options["operation"], compartments=options["compartments"],
                                    image_features=options["image_features"],
                                    image_feature_categories=options["image_feature_categories"],
                                    strata=options["strata"], overwrite=True, progress=progress, start=start)
        profile = local.outputs["profiles"]
        if local.report is None:
            io.upload(profile, io.join(target, os.path.basename(profile)))
        else:
            assert report is not None
            _publish_profiles(scratch, ws, batch, plate, local.report, previous=report, trusted=trusted)
    remote_outputs = {k: copy.url(v) for k, v in local.outputs.items()}
    return PlateResult(batch, plate, local.status, local.message, remote_outputs, local.report,
                       seconds=time.perf_counter() - start)


def _publish_profiles(scratch: str, ws: str, batch: str, plate: str, report: dict[str, Any], *,
                      previous: dict[str, Any], trusted: dict[str, str]) -> None:
    """Upload re-aggregated profiles: the report (still listing the backend outputs that stay) last."""
    folder = Workspace(str(scratch)).backend(batch, plate)
    target = Workspace(str(ws)).backend(batch, plate)
    profiles = {n: e for n, e in report["outputs"].items() if kind_of(plate, n) == "profiles"}
    kept = {n: e for n, e in previous.get("outputs", {}).items() if n in trusted and kind_of(plate, n) != "profiles"}
    report["outputs"] = {**kept, **profiles}
    io.write_json(report, os.path.join(folder, report_name(plate)))
    names = [f for entry in sorted(profiles) for f in (entry, entry + SIDECAR) if os.path.exists(os.path.join(folder, f))]
    _publish(folder, target, plate, names, report, warn=lambda name: True)


def remote_export_files(ws: str, batch: str, plate: str) -> list[str]:
    """``analysis/BATCH/PLATE/*.sqlite`` on object storage, when that folder has no ``analysis/`` of site folders."""
    from ..exportdb import EXPORT_SUFFIXES

    folder = Workspace(ws).analysis_plate(batch, plate)
    io.check_reachable(ws)  # a dead endpoint: one line naming it, before any listing waits on retries
    entries = list_entries(folder, refresh=True)
    if any(e.get("type") == "directory" and e["name"].rstrip("/").rsplit("/", 1)[-1] == "analysis" for e in entries):
        return []
    names = sorted(e["name"].rsplit("/", 1)[-1] for e in entries if e.get("type") == "file")
    return [io.join(folder, n) for n in names if n.lower().endswith(EXPORT_SUFFIXES)]


def _stage_export_sources(copy: workspace.Staged, batch: str, plate: str, sources: Sequence[str]) -> list[str]:
    """Download a plate's ExportToDatabase files (found, or named by URL) into the scratch workspace.

    A file under the workspace keeps its path relative to it (so the report names it as a
    local run would); its modification time is the object's, so re-runs compare alike.
    Local paths among ``sources`` are read in place.
    """
    from ..exportdb import EXPORT_SUFFIXES

    ws, scratch = copy.remote, copy.local
    urls = [s for s in sources if io.is_remote(s)] if sources else remote_export_files(ws, batch, plate)
    found: list[str] = []
    for url in urls:
        found += [url] if url.lower().endswith(EXPORT_SUFFIXES) else [
            u for u in io.list_sizes(url) if u.lower().endswith(EXPORT_SUFFIXES) and "/" not in u[len(url.rstrip("/")) + 1:]]
    base = ws.rstrip("/") + "/"
    paths = [os.path.join(scratch, u[len(base):] if u.startswith(base) else os.path.join("export-db", u.split("://", 1)[1]))
             for u in found]
    io.download(found, paths)
    for url, path in zip(found, paths):
        fs, bare = io.filesystem(url)
        modified = fs.info(bare).get("LastModified")
        if modified is not None:
            os.utime(path, (modified.timestamp(), modified.timestamp()))
    return [*paths, *(s for s in sources if not io.is_remote(s))]


def collate_export_remote(ws: str, batch: str, plate: str, *, sources: Sequence[str], table_prefix: str | None,
                           progress: Progress | None, options: dict[str, Any]) -> PlateResult:
    """ExportToDatabase input of a workspace on object storage, through a scratch copy (as :func:`collate_remote`).

    The earlier build's report is fetched and its outputs stand in by name and size, so a
    re-run with the same files and options is skipped as locally; the outputs are uploaded
    report last.
    """
    from ..exportdb import collate_export

    io.check_reachable(ws)
    target = Workspace(str(ws)).backend(batch, plate)
    io.remove_leftovers(target)
    report, trusted = trusted_outputs(ws, batch, plate)
    report_file = report_name(plate)
    with workspace.staged(ws, tmp_dir=options.get("tmp_dir"), prefix=plate) as copy:
        scratch = copy.local
        if report is not None:
            copy.fetch([Workspace.backend_rel(batch, plate)],
                       accept=lambda rel: os.path.basename(rel) in trusted or os.path.basename(rel) == report_file,
                       fetch=lambda rel: os.path.basename(rel) == report_file)
        local_sources = _stage_export_sources(copy, batch, plate, sources)
        if not local_sources:
            raise InputError(f"{Workspace(ws).analysis_plate(batch, plate)}: no ExportToDatabase files (*.sqlite) found; "
                             "give them with --export-db")
        with io.output_errors(scratch):
            result = collate_export(scratch, batch, plate, sources=local_sources, table_prefix=table_prefix,
                                    progress=progress, staged=True, **{**options, "tmp_dir": scratch})
        if result.status == "done" and result.report is not None:
            urls = publish_plate(scratch, ws, batch, plate, result.report, before=set(trusted))
            log.info("%s: uploaded %d file(s) to %s", plate, len(urls), target)
    result.outputs = {k: copy.url(v) for k, v in result.outputs.items()}
    return result
