"""Backend creation for whole plates: one pass from site CSVs to backend, profiles and report.

Each plate is read once: every trusted site is written to the single-cell
backend(s) and, as soon as a well's last site is in, the well is aggregated and
its cells dropped. Outputs appear only when complete; the report is written last,
so a plate with a report is a finished plate and a re-run after a crash redoes
exactly the unfinished ones.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import __version__, io, workspace
from .aggregate import (
    DEFAULT_COMPARTMENTS,
    DEFAULT_IMAGE_FEATURE_CATEGORIES,
    DEFAULT_STRATA,
    Operation,
    WellAggregator,
    aggregate,
    compartment_features,
)
from .backend import (
    ParquetBackendWriter,
    SQLiteBackendWriter,
    object_column_name,
    parquet_table_path,
)
from .errors import CytoprofileError, InputError, QuarantineError
from .ingest import (
    IMAGE_TABLE,
    RUN_METADATA_FILES,
    SITE_NAME,
    CountCheck,
    Quarantine,
    SiteTables,
    discover_sites,
    image_numeric,
    order_by_key,
    plan_schema,
    read_sites,
    scan_sites,
)

__all__ = ["BackendKind", "PlateResult", "collate", "collate_plate", "plate_outputs"]

log = logging.getLogger("cytoprofile.collate")

BackendKind = Literal["sqlite", "parquet"]
ProfileFormat = Literal["csv", "csv.gz", "parquet"]
Progress = Callable[[str, int, int], None]


@dataclass
class PlateResult:
    """What happened to one plate."""

    batch: str
    plate: str
    status: Literal["done", "skipped", "failed"]
    message: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    report: dict[str, Any] | None = None
    seconds: float = 0.0


def plate_outputs(
    ws: str | os.PathLike[str],
    batch: str,
    plate: str,
    *,
    backend: Sequence[BackendKind] = ("sqlite",),
    profile_format: ProfileFormat = "csv",
) -> dict[str, str]:
    """Final paths of a plate's outputs, by role."""
    files = workspace.backend_files(ws, batch, plate, profile_format=profile_format)
    out = {"profiles": files["profiles"], "report": files["report"]}
    if "sqlite" in backend:
        out["sqlite"] = files["sqlite"]
    if "parquet" in backend:
        out["parquet"] = parquet_table_path(files["parquet_prefix"], IMAGE_TABLE)
    return out


def _complete(outputs: dict[str, str]) -> bool:
    return all(Path(p).exists() for p in outputs.values())


def _clean_stale(directory: str) -> None:
    """Remove temporary files a killed run left behind."""
    for stale in glob.glob(os.path.join(directory, ".*.tmp")):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale)


class _WellBuffer:
    """Cells of wells not yet complete; a well is released when its last site is read."""

    def __init__(self, remaining: dict[tuple[str, ...], int]) -> None:
        self.remaining = remaining
        self.images: dict[tuple[str, ...], list[Any]] = {}
        self.objects: dict[tuple[str, ...], dict[str, list[np.ndarray]]] = {}
        self.values: dict[tuple[str, ...], tuple[object, ...]] = {}

    def add(self, site: SiteTables, strata: Sequence[str], compartments: dict[str, list[int]]) -> None:
        image_keys = site.keys
        for key in set(image_keys):
            rows = [i for i, k in enumerate(image_keys) if k == key]
            self.images.setdefault(key, []).append(site.image.take(rows))
            if key not in self.values:
                self.values[key] = tuple(site.image.column(s)[rows[0]].as_py() for s in strata)
            per = self.objects.setdefault(key, {c: [] for c in compartments})
            for compartment, columns in compartments.items():
                array = site.objects[compartment]
                row_keys = site.row_keys[compartment]
                # a contiguous run of columns is a view, not a copy
                picked: Any = slice(columns[0], columns[-1] + 1) if columns and columns[-1] - columns[0] + 1 == len(columns) else columns
                if len(set(image_keys)) == 1:
                    selected = array[:, picked]
                else:
                    mask = np.array([k == key for k in row_keys], dtype=bool)
                    selected = array[mask][:, picked]
                per[compartment].append(selected)

    def done(self, keys: Sequence[tuple[str, ...]]) -> list[tuple[str, ...]]:
        finished = []
        for key in set(keys):
            self.remaining[key] -= 1
            if self.remaining[key] == 0:
                finished.append(key)
        return finished

    def pop(self, key: tuple[str, ...]) -> tuple[tuple[object, ...], list[Any], dict[str, list[np.ndarray]]] | None:
        if key not in self.images:
            return None
        return self.values.pop(key), self.images.pop(key), self.objects.pop(key)


def collate_plate(
    ws: str | os.PathLike[str],
    batch: str,
    plate: str,
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
    threads: int = 2,
    remote: str | None = None,
    tmp_dir: str | None = None,
    progress: Progress | None = None,
) -> PlateResult:
    """Ingest one plate's sites into the backend(s) and write its per-well profiles and report.

    ``ws`` may be a URL (``s3://bucket/workspace``): the plate's CSVs for the asked
    compartments are fetched to ``tmp_dir``, collated there, and the outputs uploaded
    (report last); the local copy is removed after the plate. ``remote`` pushes the
    outputs of a local workspace to that URL as well.
    """
    start = time.perf_counter()
    options = dict(backend=backend, profile_format=profile_format, operation=operation, compartments=compartments,
                   image_features=image_features, image_feature_categories=image_feature_categories, strata=strata,
                   overwrite=overwrite, aggregate_only=aggregate_only, strict=strict, threads=threads,
                   count_check=count_check, file_prefix=file_prefix)
    if io.is_remote(ws):
        return _collate_remote(str(ws), batch, plate, tmp_dir=tmp_dir, progress=progress, start=start, **options)
    if remote is not None:
        pushed = collate_plate(ws, batch, plate, progress=progress, **options)  # type: ignore[arg-type]
        if pushed.status == "done":
            rel = os.path.relpath(workspace.backend_dir(ws, batch, plate), ws)
            _publish_plate(str(ws), remote, rel, plate)
        return pushed
    outputs = plate_outputs(ws, batch, plate, backend=backend, profile_format=profile_format)
    if aggregate_only:
        return _aggregate_only(ws, batch, plate, outputs, backend=backend, operation=operation,
                               compartments=compartments, image_features=image_features,
                               image_feature_categories=image_feature_categories, strata=strata,
                               overwrite=overwrite, progress=progress, start=start)
    build = _build_options(options)
    if not overwrite and _complete(outputs):
        previous = _previous_options(outputs["report"])
        if previous == build:
            return PlateResult(batch, plate, "skipped", "complete outputs exist (use --overwrite to rebuild)", outputs,
                               seconds=time.perf_counter() - start)
        changed = sorted(k for k in build if previous.get(k) != build[k])
        log.info("%s: options changed since the last build (%s); rebuilding", plate, ", ".join(changed))
    out_dir = workspace.backend_dir(ws, batch, plate)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    _clean_stale(out_dir)
    # a half-finished earlier run has no report; its other outputs are rebuilt
    with_report = Path(outputs["report"])
    if with_report.exists():
        with_report.unlink()

    site_dirs = discover_sites(workspace.analysis_dir(ws, batch, plate))
    t0 = time.perf_counter()
    scans = scan_sites(site_dirs, plate=plate, strata=strata, threads=threads, file_prefix=file_prefix)
    schema = plan_schema(scans, plate=plate, strata=strata, compartments=compartments)
    if not any(sc.problem is None for sc in scans):
        bad = scans[0]
        raise InputError(f"{workspace.analysis_dir(ws, batch, plate)}: all {len(scans)} site(s) are untrusted; first: "
                         f"{bad.name}: {bad.problem} ({bad.problem_file})")
    log.info("%s: scanned %d sites in %.2fs", plate, len(scans), time.perf_counter() - t0)
    by_lower = {t.lower(): t for t in schema.object_tables}
    chosen: dict[str, str] = {}
    for compartment in compartments:
        table = by_lower.get(compartment.lower())
        if table is None:
            raise InputError(
                f"{workspace.analysis_dir(ws, batch, plate)}: no site has {compartment}.csv; object tables found: "
                f"{', '.join(schema.object_tables) or 'none'}; pick others with --compartments"
            )
        chosen[compartment] = table
    # column positions (in the site arrays: the union columns) of each compartment's features
    positions: dict[str, list[int]] = {}
    features: dict[str, list[str]] = {}
    for compartment, table in chosen.items():
        names = [object_column_name(table, c) for c in schema.tables[table]]
        names = [f"{compartment}_{n[len(table) + 1:]}" if n.startswith(f"{table}_") else n for n in names]
        feats = compartment_features(compartment, names)
        features[compartment] = feats
        where = {n: i for i, n in enumerate(names)}
        positions[compartment] = [where[f] for f in feats]
    buffer_positions = {chosen[c]: positions[c] for c in chosen}
    agg = WellAggregator(
        strata=list(strata),
        compartments=features,
        image_columns=[c for c in schema.tables[IMAGE_TABLE] if c not in ("TableNumber", "ImageNumber")],
        operation=operation,
        image_features=image_features,
        image_feature_categories=image_feature_categories,
    )
    remaining: dict[tuple[str, ...], int] = {}
    for scan in scans:
        for key in set(scan.keys):
            remaining[key] = remaining.get(key, 0) + 1
    buffer = _WellBuffer(remaining)

    writers: list[SQLiteBackendWriter | ParquetBackendWriter] = []
    files = workspace.backend_files(ws, batch, plate, profile_format=profile_format)
    site_reports: list[dict[str, Any]] = []
    rows_in: dict[str, int] = {t: 0 for t in schema.tables}
    missing_columns: dict[str, dict[str, list[str]]] = {}
    try:
        if "sqlite" in backend:
            writers.append(SQLiteBackendWriter(files["sqlite"], schema))
        if "parquet" in backend:
            writers.append(ParquetBackendWriter(files["parquet_prefix"], schema))
        ordered = order_by_key(scans)
        for done, result in enumerate(read_sites(ordered, schema, threads=threads, count_check=count_check), start=1):
            if isinstance(result, Quarantine):
                site_reports.append({"site": result.name, "well": _well_of(result.keys, strata, result.name), "status": "quarantined",
                                     "reason": result.reason, "file": _relative(result.file, ws), "rows": {},
                                     "files": result.files})
                log.warning("%s: site %s quarantined: %s", plate, result.name, result.reason)
            else:
                for writer in writers:
                    writer.add(result)
                counts = {IMAGE_TABLE: result.image.num_rows, **{t: len(a) for t, a in result.objects.items()}}
                for t, n in counts.items():
                    rows_in[t] += n
                for t, cols in result.missing.items():
                    for c in cols:
                        missing_columns.setdefault(t, {}).setdefault(c, []).append(result.name)
                site_reports.append({"site": result.name, "well": _well_of(result.keys, strata, result.name), "status": "ok",
                                     "reason": None, "file": None, "rows": counts, "files": result.files,
                                     **({"warnings": result.warnings} if result.warnings else {}),
                                     **({"notes": result.notes} if result.notes else {})})
                buffer.add(result, strata, buffer_positions)
            for key in buffer.done(result.keys):
                popped = buffer.pop(key)
                if popped is not None:
                    _flush_well(agg, popped, chosen)
            if progress is not None:
                progress(plate, done, len(ordered))
        quarantined = [s for s in site_reports if s["status"] != "ok"]
        if strict and quarantined:
            raise QuarantineError(
                f"{plate}: {len(quarantined)} site(s) quarantined (first: {quarantined[0]['site']}: "
                f"{quarantined[0]['reason']}); nothing written; fix the files or drop --strict"
            )
        for writer in writers:
            writer.close()
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    profiles = agg.result()
    rows_out = _count_rows(files, backend, schema)
    for table, n in rows_in.items():
        for kind, counted in rows_out.items():
            if counted.get(table, n) != n:  # pragma: no cover - a bug, not bad input
                raise RuntimeError(f"{plate}: {table} rows in ({n}) != rows out ({counted.get(table)}) in {kind}")
    first_table = next(iter(chosen.values()), None)
    if first_table is not None and int(profiles["Metadata_Object_Count"].sum()) != rows_in.get(first_table, 0):  # pragma: no cover
        raise RuntimeError(f"{plate}: aggregated objects != {first_table} rows")
    io.write_table(profiles, outputs["profiles"], fmt=profile_format)
    _remove_stale(out_dir, plate, keep=set(outputs.values()) | set(_parquet_files(files, schema, backend)))
    report = {
        "batch": batch,
        "plate": plate,
        "cytoprofile_version": __version__,
        "backend": list(backend),
        "sites": sorted(site_reports, key=lambda s: s["site"]),
        "missing_columns": missing_columns,
        "duplicate_columns": [{"site": s.name, **d} for s in sorted(scans, key=lambda s: s.name) for d in s.duplicates],
        "partial_tables": {t: {"sites_without": names, "aggregated": False} for t, names in schema.partial.items()},
        "count_check": count_check,
        "tables": {t: {"rows_in": rows_in[t], "rows_out": rows_in[t], "columns": len(schema.tables[t]) + (0 if t == IMAGE_TABLE else 1)}
                   for t in schema.tables},
        "run_metadata": f"{', '.join(RUN_METADATA_FILES)} (CellProfiler run metadata) is not stored",
        "aggregate": {"operation": operation, "strata": list(strata), "compartments": list(chosen),
                      "image_features": image_features, "image_feature_categories": list(image_feature_categories),
                      "wells": len(profiles), "columns": profiles.shape[1]},
        "totals": {"sites": len(site_reports), "sites_ok": len(site_reports) - len(quarantined),
                   "sites_quarantined": len(quarantined), "wells": len(profiles),
                   "objects": {t: rows_in[t] for t in schema.object_tables}},
        "seconds": round(time.perf_counter() - start, 3),
        "options": build,
    }
    io.write_json(report, outputs["report"])
    return PlateResult(batch, plate, "done", _summary_line(report), outputs, report, seconds=time.perf_counter() - start)


def _build_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options that shape a plate's outputs (recorded in the report, compared on re-runs)."""
    keys = ("backend", "profile_format", "operation", "compartments", "image_features", "image_feature_categories", "strata",
            "count_check", "file_prefix")
    return {k: list(options[k]) if isinstance(options[k], (list, tuple)) else options[k] for k in keys}


def _previous_options(report_path: str) -> dict[str, Any]:
    try:
        return dict(io.read_json(report_path).get("options") or {})
    except CytoprofileError:
        return {}


def _parquet_files(files: dict[str, str], schema: Any, backend: Sequence[str]) -> list[str]:
    if "parquet" not in backend:
        return []
    return [parquet_table_path(files["parquet_prefix"], t) for t in schema.tables]


def _remove_stale(directory: str, plate: str, *, keep: set[str]) -> None:
    """Drop outputs of an earlier build with other options (e.g. PLATE.csv after a switch to Parquet)."""
    names = {f"{plate}.sqlite", f"{plate}.csv", f"{plate}.csv.gz", f"{plate}.parquet"}
    keep_names = {os.path.basename(k) for k in keep}
    for entry in os.listdir(directory):
        ours = entry in names or (entry.startswith(f"{plate}_") and entry.endswith(".parquet"))
        if ours and entry not in keep_names:
            os.unlink(os.path.join(directory, entry))
            log.info("%s: removed %s left by an earlier build with other options", plate, entry)


def _publish_plate(local_ws: str, remote_ws: str, backend_rel: str, plate: str) -> list[str]:
    """Upload a finished plate's backend folder, the report last."""
    folder = os.path.join(local_ws, backend_rel)
    names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    report = f"{plate}.report.json"
    ordered = [n for n in names if n != report] + ([report] if report in names else [])
    return workspace.publish(local_ws, remote_ws, [os.path.join(backend_rel, n) for n in ordered])


def _collate_remote(ws: str, batch: str, plate: str, *, tmp_dir: str | None, progress: Progress | None,
                    start: float, **options: Any) -> PlateResult:
    """Collate a plate of a workspace on object storage through a local scratch copy."""
    import shutil
    import tempfile

    outputs = plate_outputs(ws, batch, plate, backend=options["backend"], profile_format=options["profile_format"])
    if not options["overwrite"] and all(io.exists(p) for p in outputs.values()):
        return PlateResult(batch, plate, "skipped", "complete outputs exist (use --overwrite to rebuild)", outputs,
                           seconds=time.perf_counter() - start)
    scratch = tempfile.mkdtemp(prefix=f"cytoprofile-{plate}-", dir=tmp_dir)
    try:
        backend_rel = os.path.join("backend", batch, plate)
        if options["aggregate_only"]:
            wanted = {f"{plate}.sqlite"} if "sqlite" in options["backend"] else set()
            workspace.stage(ws, scratch, [backend_rel], accept=lambda rel: os.path.basename(rel) in wanted
                            or os.path.basename(rel).startswith(f"{plate}_"))
        else:
            names = {"image.csv"} | {f"{c.lower()}.csv" for c in options["compartments"]}
            analysis_rel = os.path.join("analysis", batch, plate, "analysis")
            fetched = workspace.stage(ws, scratch, [analysis_rel],
                                      accept=lambda rel: os.path.basename(rel).lower() in names
                                      and rel.count("/") == analysis_rel.count("/") + 2)
            if not fetched:
                raise InputError(f"{io.join(ws, analysis_rel)}: no site CSVs found; check the workspace URL, batch and plate")
        local = collate_plate(scratch, batch, plate, progress=progress, **{**options, "overwrite": True})
        if local.status != "done":
            return local
        urls = _publish_plate(scratch, ws, backend_rel, plate)
        remote_outputs = {k: io.join(ws, os.path.relpath(v, scratch)) for k, v in local.outputs.items()}
        log.info("%s: uploaded %d file(s) to %s", plate, len(urls), io.join(ws, backend_rel))
        return PlateResult(batch, plate, "done", local.message, remote_outputs, local.report,
                           seconds=time.perf_counter() - start)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _flush_well(agg: WellAggregator, popped: tuple[tuple[object, ...], list[Any], dict[str, list[np.ndarray]]],
                chosen: dict[str, str]) -> None:
    values, images, objects = popped
    counts = []
    feats = []
    n_images = 0
    for image in images:
        n_images += image.num_rows
        counts.append(image_numeric(image, agg.count_columns))
        feats.append(image_numeric(image, agg.image_feature_columns))
    arrays = {}
    for compartment, table in chosen.items():
        parts = objects[table]
        arrays[compartment] = np.concatenate(parts) if parts else np.empty((0, 0))
    agg.add(values, n_images=n_images, image_counts=np.vstack(counts), image_values=np.vstack(feats), objects=arrays)


def _count_rows(files: dict[str, str], backend: Sequence[str], schema: Any) -> dict[str, dict[str, int]]:
    """Rows per table as the written backends hold them."""
    out: dict[str, dict[str, int]] = {}
    if "sqlite" in backend:
        import sqlite3

        from .backend import quote

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


def _summary_line(report: dict[str, Any]) -> str:
    t = report["totals"]
    return (f"{t['sites_ok']} sites ingested, {t['sites_quarantined']} quarantined; {t['wells']} wells; "
            + ", ".join(f"{k} {v:,} rows" for k, v in t["objects"].items()))


def _aggregate_only(ws: str | os.PathLike[str], batch: str, plate: str, outputs: dict[str, str], *, backend: Sequence[BackendKind],
                    operation: Operation, compartments: Sequence[str], image_features: bool,
                    image_feature_categories: Sequence[str], strata: Sequence[str], overwrite: bool,
                    progress: Progress | None, start: float) -> PlateResult:
    """Re-aggregate an existing backend (ours or the old tool's) into the plate's profiles."""
    if not overwrite and Path(outputs["profiles"]).exists():
        return PlateResult(batch, plate, "skipped", "profiles exist (use --overwrite to re-aggregate)", outputs,
                           seconds=time.perf_counter() - start)
    files = workspace.backend_files(ws, batch, plate)
    source = files["sqlite"] if "sqlite" in backend else parquet_table_path(files["parquet_prefix"], IMAGE_TABLE)
    if not Path(source).exists():
        raise InputError(f"{source}: no backend to aggregate; run `cytoprofile collate` without --aggregate-only first")

    def _progress(done: int, total: int) -> None:
        if progress is not None:
            progress(plate, done, total)

    profiles = aggregate(source, operation=operation, strata=strata, compartments=compartments,
                         image_features=image_features, image_feature_categories=image_feature_categories,
                         progress=_progress)
    io.write_table(profiles, outputs["profiles"])
    message = f"aggregated {len(profiles)} wells from {os.path.basename(source)}"
    return PlateResult(batch, plate, "done", message, {"profiles": outputs["profiles"]}, seconds=time.perf_counter() - start)


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
    jobs: int = 1,
    scheduler: str | None = None,
    remote: str | None = None,
    tmp_dir: str | None = None,
    progress: Progress | None = None,
) -> list[PlateResult]:
    """Backend creation for several plates of a batch, ``jobs`` plates at a time.

    A plate that fails (bad input, or ``strict`` with quarantined sites) is reported
    as failed; the other plates go on.
    """
    from .executor import run_plates

    if not plates:
        raise InputError("no plates given; name at least one PLATE")
    options: dict[str, Any] = dict(backend=tuple(backend), profile_format=profile_format, operation=operation,
                                   compartments=tuple(compartments), image_features=image_features,
                                   image_feature_categories=tuple(image_feature_categories), strata=tuple(strata),
                                   overwrite=overwrite, aggregate_only=aggregate_only, strict=strict,
                                   count_check=count_check, file_prefix=file_prefix, remote=remote, tmp_dir=tmp_dir, storage=dict(io.current_storage()))
    return run_plates(_collate_task, [(str(ws), batch, p) for p in plates], options, jobs=jobs,
                      scheduler=scheduler, progress=progress)


def _collate_task(ws: str, batch: str, plate: str, options: dict[str, Any], progress: Progress | None) -> PlateResult:
    """One plate, with user errors turned into a failed result rather than an exception."""
    options = dict(options)
    io.configure_storage(options.pop("storage", None))
    try:
        return collate_plate(ws, batch, plate, progress=progress, **options)
    except CytoprofileError as exc:
        return PlateResult(batch, plate, "failed", str(exc))
