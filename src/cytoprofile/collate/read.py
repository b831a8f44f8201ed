"""The one pass over a plate's sites: backend(s), per-well profiles and single cells written together, rows accounted."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..backend import (
    ParquetBackendWriter,
    SQLiteBackendWriter,
)
from ..errors import AccountingError, InputError, QuarantineError
from ..ingest import (
    FOLDER_WARNING,
    IMAGE_TABLE,
    RUN_METADATA_FILES,
    Quarantine,
    SiteTables,
    counted_without_table,
    discover_sites,
    files_beside_sites,
    order_by_key,
    plan_schema,
    read_sites,
    scan_sites,
)
from ..layout import Workspace, backend_files_in, parquet_table_path, staging_name
from ..vocabulary import SITE_NAME
from .cells import aggregate_kept_cells, single_cell_section, single_cell_stream
from .outputs import (
    GENERATION_KEY,
    SIDECAR,
    PlateResult,
    Progress,
    kind_of,
    mark_sqlite,
    output_record,
    plate_outputs,
    write_profiles,
)
from .plan import Plan, build_options
from .wells import WellProfiles

__all__ = ["build_plate", "read_plate", "summary_line"]

log = logging.getLogger("cytoprofile.collate")


def build_plate(ws: str | os.PathLike[str], batch: str, plate: str, *, plan: Plan, progress: Progress | None,
                 start: float, **options: Any) -> tuple[PlateResult, str]:
    """Read the plate once into a staging folder; the caller commits it (swap, report last)."""
    profile_format: str = options["profile_format"]
    generation = uuid.uuid4().hex
    out_dir = Workspace(str(ws)).backend(batch, plate)
    created = [p for p in (Path(out_dir).parent, Path(out_dir)) if not p.exists()]
    staging = os.path.join(out_dir, staging_name(plate, generation))
    files = backend_files_in(staging, plate, profile_format=profile_format)
    del files["report"]  # written by the commit, beside the outputs
    try:
        report = read_plate(ws, batch, plate, files=files, kinds=plan.kinds, generation=generation,
                             progress=progress, start=start, **options)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    report["outputs"] = {**plan.kept, **{n: output_record(os.path.join(staging, n), generation)
                                         for n in sorted(os.listdir(staging)) if not n.endswith(SIDECAR)}}
    report["backend"] = sorted({kind_of(plate, n) for n in report["outputs"]} - {"profiles", "single_cells"})
    report["generation"] = generation
    outputs = plate_outputs(ws, batch, plate, backend=report["backend"], profile_format=profile_format)  # type: ignore[arg-type]
    result = PlateResult(batch, plate, "done", summary_line(report), outputs, report,
                         seconds=time.perf_counter() - start)
    return result, staging


def read_plate(ws: str | os.PathLike[str], batch: str, plate: str, *, files: dict[str, str], kinds: Sequence[str],
               generation: str, progress: Progress | None, start: float, **options: Any) -> dict[str, Any]:
    """The one pass over a plate's sites: backend(s) and profiles into ``files``; returns the report."""
    scans, schema = _scan(ws, batch, plate, options)
    uncounted = _say_counted_without_table(plate, scans, schema)
    wells = WellProfiles.plan(Workspace(str(ws)).analysis(batch, plate), scans, schema, options)
    Path(os.path.dirname(files["profiles"])).mkdir(parents=True, exist_ok=True)
    writers = _Writers()
    try:
        writers.open(files, kinds, schema, list(wells.chosen), options, generation)
        tally = _stream_sites(ws, plate, scans, schema, writers, wells, options, progress)
        _check_sites(plate, tally.quarantined(), len(tally.sites), strict=options["strict"])
        cells = writers.close()
    except BaseException:
        writers.abort()
        raise
    if "sqlite" in kinds:
        mark_sqlite(files["sqlite"], generation)
    profiles = wells.aggregator.result()
    _check_accounting(plate, tally.rows_in, _count_rows(files, kinds, schema), profiles, wells.chosen)
    extra = single_cell_section(cells, files["parquet_prefix"], generation)
    beside = {**files_beside_sites(Workspace(str(ws)).analysis(batch, plate)), **_export_files_beside(ws, batch, plate)}
    if beside:
        extra["files_not_read"] = beside
    shown = [name for name in beside if not os.path.basename(name).startswith(".")]  # .DS_Store and the like: listed only
    if shown:
        log.warning("%s: %d file(s) beside the site folders are not read (first: %s); see files_not_read in the report",
                    plate, len(shown), shown[0])
    if uncounted:
        extra["counted_without_table"] = uncounted
    if "exclude_outlier_cells" in options:
        profiles, extra["cell_qc"] = aggregate_kept_cells(files, kinds, options)
    write_profiles(profiles, files["profiles"], options["profile_format"], generation)
    return _report(batch, plate, kinds, scans, schema, tally, wells.chosen, profiles, extra, start, options)


def _scan(ws: str | os.PathLike[str], batch: str, plate: str, options: dict[str, Any]) -> tuple[list[Any], Any]:
    """Every site's files checked and the plate's union schema; no trusted site at all is an error."""
    strata: Sequence[str] = options["strata"]
    site_dirs = discover_sites(Workspace(str(ws)).analysis(batch, plate))
    log.info("%s: scanning %d site folder(s)", plate, len(site_dirs))  # before the bars: the scan has none
    t0 = time.perf_counter()
    scans = scan_sites(site_dirs, plate=plate, strata=strata, threads=options["threads"],
                       file_prefix=options["file_prefix"])
    schema = plan_schema(scans, plate=plate, strata=strata, compartments=options["compartments"])
    if not any(sc.problem is None for sc in scans):
        bad = scans[0]
        raise InputError(f"{Workspace(str(ws)).analysis(batch, plate)}: all {len(scans)} site(s) are untrusted; first: "
                         f"{bad.name}: {bad.problem} ({bad.problem_file})")
    log.info("%s: scanned %d sites in %.2fs", plate, len(scans), time.perf_counter() - t0)
    _say_not_stored(plate, scans)
    return scans, schema


#: reasons a CSV is not stored that hold no measurements: listed in the report, not said on the terminal
_LISTED_ONLY = frozenset({"run metadata", "empty file (0 bytes)"})


def _say_not_stored(plate: str, scans: Sequence[Any]) -> None:
    """CSVs of trusted sites read but not stored (a name the backend reserves, not a CellProfiler table,
    outside the file-name prefix): one warning, as their rows are in no output."""
    found = [(sc.name, entry, why) for sc in scans if sc.problem is None
             for entry, why in sorted(sc.not_stored.items()) if why not in _LISTED_ONLY]
    if found:
        log.warning("%s: %d CSV file(s) of the sites are not stored (first: %s/%s: %s); listed with their sites in "
                    "the report", plate, len(found), *found[0])
    nested = [(sc.name, entry) for sc in scans for entry, why in sorted(sc.not_read.items())
              if why == "in a subfolder" and entry.lower().endswith((".csv", ".csv.gz"))]
    if nested:  # CellProfiler writes no subfolders: most likely a site folder moved into another one
        log.warning("%s: %d CSV file(s) in subfolders of site folders are not read (first: %s/%s); a site folder "
                    "inside another? move it into the analysis folder; listed with their sites in the report",
                    plate, len(nested), *nested[0])


def _say_counted_without_table(plate: str, scans: Sequence[Any], schema: Any) -> dict[str, dict[str, int]]:
    """Objects Image.csv counts that no site has a file for: in no output, so said (INFO: pipelines often count
    objects they do not export) and listed in the report."""
    found = counted_without_table(scans, list(schema.tables))
    if found:
        first, entry = next(iter(found.items()))
        log.info("%s: Image.csv counts objects of %d kind(s) that no site has a file for (first: %s, %d object(s) in "
                 "%d image(s)): not exported, or their files are missing; see counted_without_table in the report",
                 plate, len(found), first, entry["objects"], entry["images"])
    return found


class _Writers:
    """The pass's single-cell sinks: the backend writer(s) and the joined single-cell table, if asked."""

    def __init__(self) -> None:
        self.backends: list[SQLiteBackendWriter | ParquetBackendWriter] = []
        self.stream: Any = None

    def open(self, files: dict[str, str], kinds: Sequence[str], schema: Any, compartments: list[str],
             options: dict[str, Any], generation: str) -> None:
        """Open one writer per asked backend, then the single-cell stream (each aborted if a later one fails)."""
        if "sqlite" in kinds:
            self.backends.append(SQLiteBackendWriter(files["sqlite"], schema))
        if "parquet" in kinds:
            self.backends.append(ParquetBackendWriter(files["parquet_prefix"], schema,
                                                      metadata={GENERATION_KEY: generation}))
        self.stream = single_cell_stream(files["parquet_prefix"], schema, compartments, options, generation)

    def add(self, site: SiteTables) -> None:
        for writer in self.backends:
            writer.add(site)
        if self.stream is not None:
            self.stream.add(site.table_number, site.image.to_pandas(), site.objects)

    def close(self) -> Any:
        """Finish every file; the single-cell account (None without the stream). The last site's single-cell
        write ends first, so its error aborts the plate before any backend is closed."""
        if self.stream is not None:
            self.stream.finish_writes()
        for writer in self.backends:
            writer.close()
        return self.stream.close(write_report=False) if self.stream is not None else None

    def abort(self) -> None:
        for writer in self.backends:
            writer.abort()
        if self.stream is not None:
            self.stream.abort()


@dataclass
class _Tally:
    """What the pass read: one report entry per site, rows per table, columns some sites lack."""

    rows_in: dict[str, int]
    sites: list[dict[str, Any]] = field(default_factory=list)
    missing_columns: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def quarantined(self) -> list[dict[str, Any]]:
        return [s for s in self.sites if s["status"] != "ok"]

    def add_quarantined(self, site: Quarantine, ws: str | os.PathLike[str], strata: Sequence[str]) -> None:
        self.sites.append({"site": site.name, "well": _well_of(site.keys, strata, site.name), "status": "quarantined",
                           "reason": site.reason, "file": _relative(site.file, ws), "rows": {},
                           "files": site.files})

    def add_read(self, site: SiteTables, strata: Sequence[str]) -> None:
        counts = {IMAGE_TABLE: site.image.num_rows, **{t: len(a) for t, a in site.objects.items()}}
        for t, n in counts.items():
            self.rows_in[t] += n
        for t, cols in site.missing.items():
            for c in cols:
                self.missing_columns.setdefault(t, {}).setdefault(c, []).append(site.name)
        self.sites.append({"site": site.name, "well": _well_of(site.keys, strata, site.name), "status": "ok",
                           "reason": None, "file": None, "rows": counts, "files": site.files,
                           **({"warnings": site.warnings} if site.warnings else {}),
                           **({"notes": site.notes} if site.notes else {})})


#: site warnings said on the terminal per plate (a plate of thousands of sites could say thousands)
_SITE_WARNINGS_SAID = 10


def _stream_sites(ws: str | os.PathLike[str], plate: str, scans: list[Any], schema: Any, writers: _Writers,
                  wells: WellProfiles, options: dict[str, Any], progress: Progress | None) -> _Tally:
    """Read the sites in key order: each into the writers, the well buffer and the tally; full wells aggregated."""
    strata: Sequence[str] = options["strata"]
    tally = _Tally(rows_in={t: 0 for t in schema.tables})
    ordered = order_by_key(scans)
    results = read_sites(ordered, schema, threads=options["threads"], count_check=options["count_check"])
    said = 0
    for done, result in enumerate(results, start=1):
        if isinstance(result, Quarantine):
            tally.add_quarantined(result, ws, strata)
            log.warning("%s: site %s quarantined: %s", plate, result.name, result.reason)
        else:
            for warning in result.warnings:  # all in the report, with the site; the first few said here too
                if warning.startswith(FOLDER_WARNING):
                    continue  # the scan said these once for the plate
                if said < _SITE_WARNINGS_SAID:
                    log.warning("%s: site %s: %s", plate, result.name, warning)
                said += 1
            writers.add(result)
            tally.add_read(result, strata)
            wells.add(result)
        wells.site_done(result.keys)
        if progress is not None:
            progress(plate, done, len(ordered))
    if said > _SITE_WARNINGS_SAID:
        log.warning("%s: %d more site warning(s), listed with their sites in the report", plate, said - _SITE_WARNINGS_SAID)
    return tally


def _export_files_beside(ws: str | os.PathLike[str], batch: str, plate: str) -> dict[str, str]:
    """Files in the plate folder of a plate read from its CSV site folders (beside its ``analysis`` folder): an
    ExportToDatabase file, a stray ``Cells.csv`` or any other file is named, not read (as ``../NAME``), and so is
    a folder other than ``analysis`` (``../NAME/``: a re-run's copy of site folders is never read silently)."""
    from ..exportdb.files import entries_not_read

    return entries_not_read(
        Workspace(str(ws)).analysis_plate(batch, plate), read=[Workspace(str(ws)).analysis(batch, plate)], label="../",
        export_why=("an ExportToDatabase file in the plate folder, not read (the plate is read from its CSV site "
                    "folders); to read it instead, give it with --export-db"),
        file_why=("in the plate folder, beside its analysis folder of site folders: not read (each site is a folder "
                  "analysis/PLATE-WELL-SITE)"),
        folder_why=("a folder in the plate folder, beside its analysis folder: not read (site folders belong in "
                    "analysis/; move them there to read them)"))


def _check_sites(plate: str, quarantined: list[dict[str, Any]], n_sites: int, *, strict: bool) -> None:
    """No site read, or ``strict`` with a quarantined site: the plate fails before anything is committed."""
    if len(quarantined) == n_sites:
        raise InputError(
            f"{plate}: 0 of {n_sites} site(s) could be read (first: {quarantined[0]['site']}: "
            f"{quarantined[0]['reason']}); nothing written; fix the files and re-run"
        )
    if strict and quarantined:
        raise QuarantineError(
            f"{plate}: {len(quarantined)} site(s) quarantined (first: {quarantined[0]['site']}: "
            f"{quarantined[0]['reason']}); nothing written; fix the files or drop --strict"
        )


def _check_accounting(plate: str, rows_in: dict[str, int], rows_out: dict[str, dict[str, int]], profiles: Any,
                      chosen: dict[str, str]) -> None:
    """Rows in = rows out in every backend, and every object of the first compartment aggregated (else exit 1)."""
    for table, n in rows_in.items():
        for kind, counted in rows_out.items():
            if counted.get(table, n) != n:
                raise AccountingError(f"{plate}: table {table}: {n} rows in, {counted.get(table)} rows out in the {kind} "
                                      "backend; nothing written")
    first_table = next(iter(chosen.values()), None)
    aggregated = int(profiles["Metadata_Object_Count"].sum()) if first_table is not None else 0
    if first_table is not None and aggregated != rows_in.get(first_table, 0):
        raise AccountingError(f"{plate}: table {first_table}: {rows_in.get(first_table, 0)} rows in, {aggregated} "
                              "aggregated into the profiles; nothing written")


def _report(batch: str, plate: str, kinds: Sequence[str], scans: list[Any], schema: Any, tally: _Tally,
            chosen: dict[str, str], profiles: Any, extra: dict[str, Any], start: float,
            options: dict[str, Any]) -> dict[str, Any]:
    """The plate report of a finished pass (its outputs and generation are added by the caller)."""
    rows_in, site_reports = tally.rows_in, tally.sites
    quarantined = tally.quarantined()
    return {
        "batch": batch,
        "plate": plate,
        "cytoprofile_version": __version__,
        "backend": list(kinds),
        "sites": sorted(site_reports, key=lambda s: s["site"]),
        "missing_columns": tally.missing_columns,
        "duplicate_columns": [{"site": s.name, **d} for s in sorted(scans, key=lambda s: s.name) for d in s.duplicates],
        "partial_tables": {t: {"sites_without": names, "aggregated": False} for t, names in schema.partial.items()},
        "count_check": options["count_check"],
        "tables": {t: {"rows_in": rows_in[t], "rows_out": rows_in[t],
                       "columns": len(schema.tables[t]) + len(schema.text_columns.get(t, ())) + (0 if t == IMAGE_TABLE else 1)}
                   for t in schema.tables},
        "object_text_columns": {t: {"columns": cols, "stored_as": "text", "aggregated": False}
                                for t, cols in schema.text_columns.items()},
        "run_metadata": f"{', '.join(RUN_METADATA_FILES)} (CellProfiler run metadata) is not stored",
        "aggregate": {"operation": options["operation"], "strata": list(options["strata"]), "compartments": list(chosen),
                      "image_features": options["image_features"],
                      "image_feature_categories": list(options["image_feature_categories"]),
                      "wells": len(profiles), "columns": profiles.shape[1]},
        "totals": {"sites": len(site_reports), "sites_ok": len(site_reports) - len(quarantined),
                   "sites_quarantined": len(quarantined), "wells": len(profiles),
                   "objects": {t: rows_in[t] for t in schema.object_tables}},
        **extra,
        "seconds": round(time.perf_counter() - start, 3),
        "options": build_options(options),
    }








def _count_rows(files: dict[str, str], backend: Sequence[str], schema: Any) -> dict[str, dict[str, int]]:
    """Rows per table as the written backends hold them."""
    out: dict[str, dict[str, int]] = {}
    if "sqlite" in backend:
        import sqlite3

        from ..backend import quote

        conn = sqlite3.connect(files["sqlite"])
        try:
            out["sqlite"] = {t: conn.execute(f"SELECT COUNT(*) FROM {quote(t)}").fetchone()[0] for t in schema.tables}
        finally:
            conn.close()
    if "parquet" in backend:
        import pyarrow.parquet as pq

        out["parquet"] = {t: pq.ParquetFile(parquet_table_path(files["parquet_prefix"], t)).metadata.num_rows for t in schema.tables}
    return out


def _well_of(keys: Sequence[tuple[str, ...]], strata: Sequence[str], site: str) -> str | None:
    if not keys:
        match = SITE_NAME.match(site)
        return match.group("well") if match else None
    key = keys[0]
    if "Metadata_Well" in strata:
        return key[list(strata).index("Metadata_Well")]
    return "/".join(key)


def _relative(path: str | None, ws: str | os.PathLike[str]) -> str | None:
    if path is None:
        return None
    try:
        return os.path.relpath(path, ws)
    except ValueError:
        return path


def summary_line(report: dict[str, Any]) -> str:
    t = report["totals"]
    return (f"{t['sites_ok']} sites ingested, {t['sites_quarantined']} quarantined; {t['wells']} wells; "
            + ", ".join(f"{k} {v:,} rows" for k, v in t["objects"].items()))
