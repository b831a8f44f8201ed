"""Collating one plate from ExportToDatabase files through a scratch workspace of CSV site folders."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import io, workspace
from ..collate.plan import INPUTS_CHANGED
from ..errors import CytoprofileError, InputError, QuarantineError
from ..layout import Workspace
from .files import (
    discover_export_files,
    entries_not_read,
    export_plates,
    files_read_with,
    find_export_files,
    side_file,
    source_name,
)
from .materialise import Materialised, folder_part, materialise_plate
from .names import ExportNames

log = logging.getLogger("cytoprofile.exportdb")

if TYPE_CHECKING:
    from ..collate import PlateResult

__all__ = ["collate_export"]


def _once(paths: list[str]) -> list[str]:
    """``paths`` with a file given twice (a folder and a file in it, a link to it) read once."""
    seen: dict[str, str] = {}
    for path in paths:
        seen.setdefault(os.path.realpath(path), path)
    if len(seen) < len(paths):
        log.info("ExportToDatabase: %d file(s) given more than once, read once", len(paths) - len(seen))
    return list(seen.values())


def _fingerprint(paths: Sequence[str], root: str, *, staged: bool) -> list[list[Any]]:
    """Size, mtime, ctime and inode of each file read, and of its write-ahead log when it has one (rows
    committed there are read with the file but leave the file itself untouched). ctime and inode catch
    a same-size edit whose mtime was put back (``touch -r``, ``cp -p``, ``rsync -t`` of a re-export);
    ``staged`` copies (fetched from object storage each run, their mtime the object's) have neither."""
    out = []
    for p in sorted(paths):
        st = os.stat(p)
        out.append([source_name(p, root), st.st_size, st.st_mtime_ns, *([] if staged else [st.st_ctime_ns, st.st_ino])])
        log_path = side_file(p, "-wal")
        wal = os.stat(log_path) if os.path.isfile(log_path) else None
        if wal is not None and wal.st_size:  # an empty log holds no rows (SQLite leaves one after a read)
            out.append([source_name(p, root) + "-wal", wal.st_size, wal.st_mtime_ns,
                        *([] if staged else [wal.st_ctime_ns, wal.st_ino])])
    return out


def _previous_run(report_path: str) -> dict[str, Any]:
    """The ``export_database`` record of the plate's last report ({} when there is none)."""
    try:
        return dict(io.read_json(report_path).get("export_database") or {})
    except Exception:  # noqa: BLE001 - an unreadable report means: rebuild
        return {}


def _all_trusted(outputs: dict[str, str], report: dict[str, Any] | None, trusted: dict[str, str], *,
                 staged: bool) -> bool:
    """Every output asked for and every one the report lists is as built (``trusted``: its generation id, size
    and mtime), as collate's skip asks. A staged copy of a workspace on object storage holds stand-ins of only the
    outputs the remote report vouches for (by size): there, being present is being trusted."""
    if staged:
        return all(Path(p).exists() for p in outputs.values())
    listed = set((report or {}).get("outputs") or {})
    asked = {os.path.basename(p) for name, p in outputs.items() if name != "report"}
    return (asked | listed) <= set(trusted)


def _rebuild_reason(previous: dict[str, Any], fingerprint: Any, call: Any) -> str:
    """Why a plate that has a build is built again (said at WARNING in place of "--overwrite")."""
    if not previous:
        return "no trusted build"
    changes = _source_changes(previous.get("sources"), fingerprint)
    if changes:
        return f"{INPUTS_CHANGED}: {changes}"
    before = previous.get("call") or {}
    changed = sorted(k for k in set(before) | set(call) if before.get(k) != call.get(k))
    if changed:
        return f"options changed since the last build ({', '.join(changed)})"
    return "an output does not match the plate's report (damaged, or from another build)"


def _call_record(options: dict[str, Any], table_prefix: str | None) -> Any:
    """The options that shape the outputs, as JSON stores them (compared on re-runs)."""
    shaping = {k: v for k, v in options.items() if k not in ("overwrite", "progress", "threads", "tmp_dir")}
    return json.loads(json.dumps({**shaping, "table_prefix": table_prefix}, sort_keys=True, default=list))


def collate_export(
    ws: str | os.PathLike[str],
    batch: str,
    plate: str,
    *,
    sources: Sequence[str | os.PathLike[str]] | None = None,
    table_prefix: str | None = None,
    tmp_dir: str | None = None,
    staged: bool = False,
    **options: Any,
) -> PlateResult:
    """Collate one plate from ExportToDatabase files into ``backend/BATCH/PLATE`` like the CSV route.

    ``sources`` are files or folders of them (default ``analysis/BATCH/PLATE/*.sqlite``).
    The plate's images are written as CSV site folders in a scratch workspace (under
    ``tmp_dir``), collated there by :func:`cytoprofile.collate.collate_plate` (``options``
    are its options) with the outputs in ``ws``; the report gains an ``export_database``
    section naming every row not in the backend. A re-run with the same files and
    options is skipped; changed files rebuild. ``staged``: the files are this run's copies of
    objects on object storage (compared by size and the objects' modification time).
    """
    from ..collate import PlateResult, collate_plate, plate_outputs, trusted_outputs
    from ..collate.plan import check_strict

    if io.is_remote(ws):
        raise InputError(f"{ws}: ExportToDatabase input is read from a local workspace; copy the files locally first")
    root = str(ws)
    if options.get("aggregate_only"):
        return collate_plate(root, batch, plate, **options)  # the backend exists: nothing to read from the files
    paths = _once([f for s in sources for f in find_export_files(s)] if sources else discover_export_files(root, batch, plate))
    if not paths:
        raise InputError(f"{Workspace(root).analysis_plate(batch, plate)}: no ExportToDatabase files (*.sqlite) found; "
                         "give them with --export-db")
    fingerprint, call = _fingerprint(paths, root, staged=staged), _call_record(options, table_prefix)
    outputs = plate_outputs(root, batch, plate, backend=options.get("backend", ("sqlite",)),
                            profile_format=options.get("profile_format", "csv"))
    previous = _previous_run(outputs["report"]) if Path(outputs["report"]).exists() else {}
    backend_root = Workspace(root).backend_root()
    names = ExportNames()
    # the scratch folder is made first, also for a run that is skipped: making it removes those of killed runs
    with workspace.scratch_dir(tmp_dir, f"export-{folder_part(plate)}") as scratch:
        report, trusted = trusted_outputs(root, batch, plate)
        if previous.get("sources") == fingerprint and previous.get("call") == call and not options.get("overwrite") \
                and _all_trusted(outputs, report, trusted, staged=staged):
            check_strict(plate, report, strict=bool(options.get("strict")))
            return PlateResult(batch, plate, "skipped", "complete outputs exist (use --overwrite to rebuild)", outputs)
        options["rebuild_reason"] = None if options.get("overwrite") else _rebuild_reason(previous, fingerprint, call)
        options["overwrite"] = True  # other files or options, or an output the report does not vouch for: rebuilt
        with _real_places(scratch, root, backend_root, names):
            return _collate_scratch(scratch, root, batch, plate, paths, sources, table_prefix, options,
                                    fingerprint=fingerprint, call=call, names=names, report_path=outputs["report"])


def _collate_scratch(scratch: str, root: str, batch: str, plate: str, paths: Sequence[str],
                     sources: Sequence[str | os.PathLike[str]] | None, table_prefix: str | None,
                     options: dict[str, Any], *, fingerprint: Any, call: Any, names: ExportNames,
                     report_path: str) -> PlateResult:
    """Write the plate's images as CSV site folders in ``scratch`` and collate them into the workspace's backend."""
    from ..collate import collate_plate

    backend_root = Workspace(root).backend_root()
    with io.output_errors(scratch):
        done = materialise_plate(paths, plate=plate, out_dir=Workspace(scratch).analysis(batch, plate),
                                 table_prefix=table_prefix, root=root, strata=options.get("strata") or ())
    if not done.sites:
        raise InputError(_no_sites(done, paths, plate, table_prefix))
    names.learn(done.sites, done.files, done.columns)
    _refuse_dropped_if_strict(done, plate, strict=bool(options.get("strict")))
    _warn_dropped(done, plate)
    _warn_other_plates(done, plate)
    with io.output_errors(backend_root):
        Path(backend_root).mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.realpath(backend_root), Workspace(scratch).backend_root())
    with names.in_logs():
        result = collate_plate(scratch, batch, plate, record_inputs=False, **options)  # the files' own record: sources
    result.outputs = {k: os.path.join(root, os.path.relpath(v, scratch)) for k, v in result.outputs.items()}
    if result.status == "done" and result.report is not None:
        section = {**done.report(), "sources": fingerprint, "call": call}
        beside = _files_not_read(root, batch, plate, paths, sources)
        read_with = {name: why for folder in (sources or [Workspace(root).analysis_plate(batch, plate)])
                     for name, why in files_read_with(folder, read=paths).items()}
        if read_with:  # a -wal file's rows are read: named, but not as a file left out
            section["files_read_with"] = read_with
            log.info("%s: read with their files: %s", plate, "; ".join(f"{n} ({w})" for n, w in read_with.items()))
        if beside:
            section["files_not_read"] = beside
            log.warning("%s: %d file(s) or folder(s) beside the ExportToDatabase files are not read (first: %s: %s); "
                        "see export_database.files_not_read in the report", plate, len(beside), *next(iter(beside.items())))
        result.report = _amend_report(result.report, done, section, report_path, names)
    return result


def _files_not_read(root: str, batch: str, plate: str, paths: Sequence[str],
                    sources: Sequence[str | os.PathLike[str]] | None) -> dict[str, str]:
    """Files and folders beside the files read (and the plate's CSV sites when ``--export-db`` names other files)."""
    plate_dir = Workspace(root).analysis_plate(batch, plate)
    folders = sources or [plate_dir]
    beside = {name: why for folder in folders for name, why in _not_read_beside(folder, paths).items()}
    if sources and not any(os.path.realpath(s) == os.path.realpath(plate_dir) for s in sources):
        beside |= _csv_sites_not_read(root, batch, plate)  # the plate folder given: its analysis/ is listed above
    return beside


def _source_changes(before: list[list[Any]] | None, now: list[list[Any]]) -> str | None:
    """Which ExportToDatabase files differ from the last build's (None: the same files, or no last build)."""
    if before is None or before == now:
        return None
    old, new = ({str(f[0]): f[1:] for f in record} for record in (before, now))
    parts = [f"{n} {what}" for what, names in (("added", sorted(new.keys() - old.keys())),
                                                ("removed", sorted(old.keys() - new.keys())),
                                                ("changed", sorted(n for n in new.keys() & old.keys() if new[n] != old[n])))
             for n in names]
    return ", ".join(parts) or None


def _not_read_beside(folder: str | os.PathLike[str], read: Sequence[str]) -> dict[str, str]:
    """Files of a folder of ExportToDatabase files that were not read: another program's ``.db`` file, a stray CSV."""
    return entries_not_read(folder, read=read, file_why="beside the ExportToDatabase files, not one of them: not read",
                            folder_why=("a folder beside the ExportToDatabase files: not read (files are read from the "
                                        "folder itself; give the folder's files with --export-db to read them)"))


def _csv_sites_not_read(root: str, batch: str, plate: str) -> dict[str, str]:
    """The plate's CSV site folders when ``--export-db`` names other files: they are not read, and said so."""
    sites = Workspace(root).analysis(batch, plate)
    n = sum(os.path.isdir(os.path.join(sites, e)) for e in os.listdir(sites)) if os.path.isdir(sites) else 0
    if not n:
        return {}
    return {os.path.relpath(sites, root) + "/": (f"the plate's {n} CSV site folder(s), not read: --export-db reads the "
                                                 "files it names instead (collate without --export-db reads the sites)")}


@contextlib.contextmanager
def _real_places(scratch: str, root: str, backend_root: str, names: ExportNames) -> Iterator[None]:
    """Errors name the workspace's folders, not the scratch copy (removed when the run ends): its ``backend`` is
    ``WS/backend``, any other path in it is the scratch folder under ``--tmp-dir``. A ``WS/backend`` this run made
    and left empty is removed; messages about scratch CSVs name the files' tables (``names``)."""
    made = not os.path.lexists(backend_root)
    try:
        yield
    except CytoprofileError as exc:
        if made and os.path.isdir(backend_root) and not os.listdir(backend_root):
            os.rmdir(backend_root)
        text = names.anywhere(str(exc).replace(Workspace(scratch).backend_root(), Workspace(root).backend_root()))
        # a scratch site's path beside the file's terms ("(SCRATCH/... of run1.sqlite (ImageNumber 1))") says it again
        text = re.sub(r"\s*\(" + re.escape(scratch) + r"[^\s()]* of [^()]*\([^()]*\)\)", "", text)
        files = ", ".join(sorted(names.files)) or "the ExportToDatabase files"
        text = re.sub(re.escape(Workspace(scratch).folder("analysis")) + r"[^\s:;]*(?=: all \d+ site)",
                      lambda _: f"the images of {files}", text)  # the sites made of them are all refused
        text = re.sub(re.escape(scratch) + r"[^\s:;]*", lambda _: f"{os.path.dirname(scratch)} (the scratch copy of "
                      "the plate; --tmp-dir puts it elsewhere)", text)
        if text == str(exc):
            raise
        raise type(exc)(text) from exc
    except BaseException:
        if made and os.path.isdir(backend_root) and not os.listdir(backend_root):
            os.rmdir(backend_root)
        raise


def _refuse_dropped_if_strict(done: Materialised, plate: str, *, strict: bool) -> None:
    """``--strict``: rows of the files left out of the backend fail the plate before anything is written,
    as a quarantined site does on the CSV route."""
    if strict and done.dropped:
        images = sum(d.rows for d in done.dropped if d.table == "Image")
        first = done.dropped[0]
        raise QuarantineError(
            f"{plate}: {images} image(s) and {sum(d.rows for d in done.dropped) - images} other row(s) of the "
            f"ExportToDatabase files would be left out (first: {first.file}: {first.reason}); nothing written; "
            "fix the files or drop --strict"
        )


def _warn_dropped(done: Materialised, plate: str) -> None:
    """Rows of the files left out of the backend (named in the report's export_database section) said on the terminal."""
    images = sum(d.rows for d in done.dropped if d.table == "Image")
    if done.dropped:
        first = done.dropped[0]
        log.warning("%s: %d image(s) and %d other row(s) of the ExportToDatabase files are not in the backend "
                    "(first: %s: %s); see export_database.dropped in the report", plate, images,
                    sum(d.rows for d in done.dropped) - images, first.file, first.reason)


def _warn_other_plates(done: Materialised, plate: str) -> None:
    """Images of the files naming another plate (left for that plate, counted in export_database.other_plates)."""
    if done.other_plates:
        images = sum(per.get("Image", 0) for per in done.other_plates.values())
        names = ", ".join(repr(p) for p in sorted(done.other_plates))
        log.warning("%s: %d image(s) of the ExportToDatabase files name another plate (%s) and are not in this plate; "
                    "collate that plate to store them (see export_database.other_plates)", plate, images, names[:300])


def _no_sites(done: Materialised, paths: Sequence[str], plate: str, table_prefix: str | None) -> str:
    files = ", ".join(os.path.basename(p) for p in paths)
    images = [d for d in done.dropped if d.table == "Image"]
    if images:
        return (f"{plate}: every image of this plate in {files} was left out ({sum(d.rows for d in images)}); "
                f"first: {images[0].file}: {images[0].reason}")
    found = export_plates(paths, table_prefix=table_prefix)
    return f"{plate}: no image of this plate in {files}; plates there: {', '.join(sorted(p or '(none)' for p in found))}"


def _amend_report(report: dict[str, Any], done: Materialised, section: dict[str, Any], path: str,
                  names: ExportNames) -> dict[str, Any]:
    """Name each site's source image and table (not the scratch CSVs) and add where every row of the files went;
    rewritten atomically."""
    for site in report.get("sites", []):
        source = done.sites.get(site["site"])
        if source is None:
            continue
        if site.get("file"):
            stem = os.path.basename(site["file"]).rsplit(".csv", 1)[0]
            table = names.table(site["site"], stem) or f"no {stem} table"
            site["file"] = f"{source['file']} (image {source['image_number']}; {table})"
        if site.get("reason"):
            site["reason"] = names.for_site(site["site"], site["reason"])
        for kind in ("warnings", "notes"):
            if site.get(kind):
                site[kind] = [names.for_site(site["site"], text) for text in site[kind]]
    for entry in report.get("duplicate_columns", []):
        source = done.sites.get(entry.get("site", ""))
        stem = str(entry.get("file", "")).rsplit(".csv", 1)[0]
        column = names.column(entry["site"], stem, int(entry.get("field", 0))) if source else None
        if source is not None and column is not None:  # the scratch CSV's field number means nothing to users
            entry["file"] = f"{source['file']} ({names.table(entry['site'], stem)})"
            entry.pop("field")
            entry["database_column"] = column
    report["export_database"] = section
    totals = report.setdefault("totals", {})  # what the sites' counts cannot show: images no site holds
    totals["export_images_dropped"] = sum(d.rows for d in done.dropped if d.table == "Image")
    totals["export_rows_dropped"] = sum(d.rows for d in done.dropped)
    io.write_json(report, path)
    return report
