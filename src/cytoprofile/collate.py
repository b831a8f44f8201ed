"""Backend creation for whole plates: one pass from site CSVs to backend, profiles and report.

Each plate is read once: every trusted site is written to the single-cell
backend(s) and, as soon as a well's last site is in, the well is aggregated and
its cells dropped. Outputs appear only when complete; the report is written last,
so a plate with a report is a finished plate and a re-run after a crash redoes
exactly the unfinished ones.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
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
from .errors import AccountingError, CytoprofileError, InputError, QuarantineError
from .ingest import (
    GENERATION_TABLE,
    IMAGE_TABLE,
    RUN_METADATA_FILES,
    SINGLE_CELL_TABLE,
    SITE_NAME,
    CountCheck,
    Quarantine,
    SiteTables,
    discover_sites,
    image_numeric,
    order_by_key,
    plan_schema,
    read_sites,
    reader_opens,
    scan_sites,
)
from .layout import Workspace, backend_files_in, report_name
from .remote import list_entries
from .vocabulary import TableFormat

__all__ = ["BackendKind", "input_fingerprint", "PlateResult", "collate", "collate_plate", "plate_outputs"]

log = logging.getLogger("cytoprofile.collate")

BackendKind = Literal["sqlite", "parquet"]
ProfileFormat = TableFormat
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
    files = Workspace(str(ws)).backend_files(batch, plate, profile_format=profile_format)
    out = {"profiles": files["profiles"], "report": files["report"]}
    if "sqlite" in backend:
        out["sqlite"] = files["sqlite"]
    if "parquet" in backend:
        out["parquet"] = parquet_table_path(files["parquet_prefix"], IMAGE_TABLE)
    return out


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
    single_cells: Sequence[str] = (),
    exclude_outlier_cells: Sequence[str] | None = None,
    cell_qc_thresholds: str | None = None,
    hub: str = "Cytoplasm",
    threads: int = 2,
    remote: str | None = None,
    tmp_dir: str | None = None,
    wait: bool = False,
    progress: Progress | None = None,
) -> PlateResult:
    """Ingest one plate's sites into the backend(s) and write its per-well profiles and report.

    ``ws`` may be a URL (``s3://bucket/workspace``): the plate's CSVs for the asked
    compartments are fetched to ``tmp_dir``, collated there, and the outputs uploaded
    (report last); the local copy is removed after the plate. ``remote`` pushes the
    outputs of a local workspace to that URL as well. A local plate is locked while it
    is collated: another process collating it fails fast, or waits with ``wait``.
    """
    start = time.perf_counter()
    workspace.check_name(batch, "batch")
    workspace.check_name(plate, "plate")
    options = dict(backend=tuple(backend), profile_format=profile_format, operation=operation,
                   compartments=tuple(compartments), image_features=image_features,
                   image_feature_categories=tuple(image_feature_categories), strata=tuple(strata),
                   overwrite=overwrite, aggregate_only=aggregate_only, strict=strict, threads=threads,
                   count_check=count_check, file_prefix=file_prefix, **_cell_options(
                       single_cells, exclude_outlier_cells, cell_qc_thresholds, aggregate_only=aggregate_only, hub=hub))
    if io.is_remote(ws):
        return _collate_remote(str(ws), batch, plate, tmp_dir=tmp_dir, progress=progress, start=start, **options)
    if remote is not None:
        return _collate_and_push(str(ws), remote, batch, plate, wait=wait, progress=progress, options=options)
    return _collate_local(str(ws), batch, plate, wait=wait, progress=progress, start=start, options=options)


def _collate_and_push(ws: str, remote: str, batch: str, plate: str, *, wait: bool, progress: Progress | None,
                      options: dict[str, Any]) -> PlateResult:
    """Collate a local plate, then upload its outputs to ``remote`` (report last)."""
    pushed = collate_plate(ws, batch, plate, progress=progress, wait=wait, **options)
    if pushed.status == "done" and pushed.report is not None:
        _publish_plate(ws, remote, batch, plate, pushed.report)
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
            return _aggregate_only(ws, batch, plate, outputs, backend=options["backend"],
                                   operation=options["operation"], compartments=options["compartments"],
                                   image_features=options["image_features"],
                                   image_feature_categories=options["image_feature_categories"],
                                   strata=options["strata"], overwrite=options["overwrite"], progress=progress,
                                   start=start)
        report, trusted = trusted_outputs(ws, batch, plate)
        inputs = input_fingerprint(ws, batch, plate)
        plan = _plan(plate, report, trusted, {**_build_options(options), "inputs": inputs},
                     overwrite=options["overwrite"])
        if plan.skip:
            return PlateResult(batch, plate, "skipped", "complete outputs exist (use --overwrite to rebuild)",
                               outputs, report, seconds=time.perf_counter() - start)
        result, staging = _build_plate(ws, batch, plate, plan=plan, progress=progress, start=start, **options)
        if result.report is not None:
            result.report["inputs"] = inputs
        _commit_local(out_dir, plate, result, staging, before=set(trusted))
    return result


@dataclass
class _Plan:
    """What a run builds, keeps and says about a plate's earlier outputs."""

    skip: bool
    kinds: tuple[str, ...] = ()
    kept: dict[str, Any] = field(default_factory=dict)


def _data_options(options: dict[str, Any]) -> dict[str, Any]:
    """Options that change the contents of the outputs (not which outputs are made)."""
    return {k: v for k, v in options.items() if k not in ("backend", "profile_format")}


def _kinds_present(plate: str, report: dict[str, Any] | None, trusted: dict[str, str]) -> set[str]:
    listed = set((report or {}).get("outputs") or {})
    present = set()
    if f"{plate}.sqlite" in trusted:
        present.add("sqlite")
    tables = {n for n in listed if _kind_of(plate, n) == "parquet"}
    if tables and tables <= set(trusted):
        present.add("parquet")
    return present


def _plan(plate: str, report: dict[str, Any] | None, trusted: dict[str, str], build: dict[str, Any],
          *, overwrite: bool) -> _Plan:
    """Compare the asked outputs with the trusted ones of the last build (see the README's "Re-runs")."""
    asked = set(build["backend"])
    previous = dict((report or {}).get("options") or {})
    if "inputs" in build and previous:
        previous["inputs"] = (report or {}).get("inputs")
    present = _kinds_present(plate, report, trusted)
    same = bool(previous) and _data_options(previous) == _data_options(build)
    profile = f"{plate}.{build['profile_format']}"
    cells = {f"{plate}_{SINGLE_CELL_TABLE}.{'parquet' if f == 'parquet' else 'h5ad'}" for f in build.get("single_cells") or ()}
    if not overwrite and same and asked <= present and profile in trusted and cells <= set(trusted):
        return _Plan(skip=True)
    others = present - asked
    stale = others if overwrite or not same else set()
    kinds = tuple(k for k in ("sqlite", "parquet") if k in asked or k in stale)
    kept: dict[str, Any] = {}
    if same and not overwrite:
        kept = {n: e for n, e in (report or {}).get("outputs", {}).items() if n in trusted and _kind_of(plate, n) in others}
    if previous and (not same or overwrite):
        changed = sorted(k for k in _data_options(build) if previous.get(k) != build[k])
        why = f"options changed since the last build ({', '.join(changed)})" if changed else "--overwrite"
        if changed == ["inputs"]:
            why = "the plate's input files changed since the last build (files added, removed or resized)"
        replaced = sorted({_kind_label(plate, n) for n in trusted} - {f"{plate}.report.json"})
        (log.warning if changed else log.info)("%s: %s; replacing %s", plate, why, ", ".join(replaced) or "its outputs")
    elif kept:
        log.info("%s: keeping %s of the last build (still current)", plate,
                 ", ".join(sorted({_kind_label(plate, n) for n in kept})))
    return _Plan(skip=False, kinds=kinds, kept=kept)


def input_fingerprint(ws: str | os.PathLike[str], batch: str, plate: str) -> str:
    """Names and sizes of every file under the plate's analysis folder, hashed: a re-run rebuilds
    when a site was added, removed or a file changed size (sizes survive a copy; times do not)."""
    root = Workspace(str(ws)).analysis(batch, plate)
    sizes = {}
    for folder, _dirs, names in os.walk(root, followlinks=True):
        for name in names:
            path = os.path.join(folder, name)
            try:
                size = os.path.getsize(path)
            except OSError:
                size = -1  # a broken link: named in the report, counted here
            sizes[os.path.relpath(path, root)] = size
    return _listing_digest(sizes)


def _listing_digest(sizes: dict[str, int]) -> str:
    """The input fingerprint of relative path → size, local or from an object-storage listing alike."""
    import hashlib

    return hashlib.sha256("\n".join(sorted(f"{rel}\t{size}" for rel, size in sizes.items())).encode()).hexdigest()[:32]


def _kind_of(plate: str, name: str) -> str:
    if name in _single_cell_names(plate):
        return "single_cells"
    if name == f"{plate}.sqlite":
        return "sqlite"
    if name.startswith(f"{plate}_") and name.endswith(".parquet"):
        return "parquet"
    return "profiles"


def _kind_label(plate: str, name: str) -> str:
    return f"{plate}_*.parquet" if _kind_of(plate, name) == "parquet" else name


def _build_plate(ws: str | os.PathLike[str], batch: str, plate: str, *, plan: _Plan, progress: Progress | None,
                 start: float, **options: Any) -> tuple[PlateResult, str]:
    """Read the plate once into a staging folder; the caller commits it (swap, report last)."""
    profile_format: str = options["profile_format"]
    generation = uuid.uuid4().hex
    out_dir = Workspace(str(ws)).backend(batch, plate)
    created = [p for p in (Path(out_dir).parent, Path(out_dir)) if not p.exists()]
    staging = os.path.join(out_dir, f".{plate}.{generation[:8]}.tmp")
    files = backend_files_in(staging, plate, profile_format=profile_format)
    del files["report"]  # written by the commit, beside the outputs
    try:
        report = _read_plate(ws, batch, plate, files=files, kinds=plan.kinds, generation=generation,
                             progress=progress, start=start, **options)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    report["outputs"] = {**plan.kept, **{n: {"generation": generation, "bytes": os.path.getsize(os.path.join(staging, n))}
                                         for n in sorted(os.listdir(staging)) if not n.endswith(_SIDECAR)}}
    report["backend"] = sorted({_kind_of(plate, n) for n in report["outputs"]} - {"profiles", "single_cells"})
    report["generation"] = generation
    outputs = plate_outputs(ws, batch, plate, backend=report["backend"], profile_format=profile_format)  # type: ignore[arg-type]
    result = PlateResult(batch, plate, "done", _summary_line(report), outputs, report,
                         seconds=time.perf_counter() - start)
    return result, staging


def _commit_local(out_dir: str, plate: str, result: PlateResult, staging: str, *, before: set[str]) -> None:
    """Swap a staged build into place: report removed first, outputs renamed, stale ones removed, report last."""
    report = result.report or {}
    report_path = os.path.join(out_dir, report_name(plate))
    try:
        io.remove(report_path)  # from here until the new report, nothing of this plate is trusted
        for name in sorted(os.listdir(staging)):
            os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
        keep = set(report["outputs"]) | {n + _SIDECAR for n in report["outputs"]}
        _remove_stale(out_dir, plate, keep=keep, before=before)
        io.write_json(report, report_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _read_plate(ws: str | os.PathLike[str], batch: str, plate: str, *, files: dict[str, str], kinds: Sequence[str],
                generation: str, progress: Progress | None, start: float, **options: Any) -> dict[str, Any]:
    """The one pass over a plate's sites: backend(s) and profiles into ``files``; returns the report."""
    backend = kinds
    strata: Sequence[str] = options["strata"]
    compartments: Sequence[str] = options["compartments"]
    operation: Operation = options["operation"]
    image_features: bool = options["image_features"]
    image_feature_categories: Sequence[str] = options["image_feature_categories"]
    strict: bool = options["strict"]
    threads: int = options["threads"]
    profile_format: ProfileFormat = options["profile_format"]
    count_check: CountCheck = options["count_check"]
    file_prefix: str | None = options["file_prefix"]
    site_dirs = discover_sites(Workspace(str(ws)).analysis(batch, plate))
    t0 = time.perf_counter()
    scans = scan_sites(site_dirs, plate=plate, strata=strata, threads=threads, file_prefix=file_prefix)
    schema = plan_schema(scans, plate=plate, strata=strata, compartments=compartments)
    if not any(sc.problem is None for sc in scans):
        bad = scans[0]
        raise InputError(f"{Workspace(str(ws)).analysis(batch, plate)}: all {len(scans)} site(s) are untrusted; first: "
                         f"{bad.name}: {bad.problem} ({bad.problem_file})")
    log.info("%s: scanned %d sites in %.2fs", plate, len(scans), time.perf_counter() - t0)
    by_lower = {t.lower(): t for t in schema.object_tables}
    chosen: dict[str, str] = {}
    for compartment in compartments:
        table = by_lower.get(compartment.lower())
        if table is None:
            raise InputError(
                f"{Workspace(str(ws)).analysis(batch, plate)}: no site has {compartment}.csv; object tables found: "
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
    stream: Any = None
    site_reports: list[dict[str, Any]] = []
    rows_in: dict[str, int] = {t: 0 for t in schema.tables}
    missing_columns: dict[str, dict[str, list[str]]] = {}
    Path(os.path.dirname(files["profiles"])).mkdir(parents=True, exist_ok=True)
    try:
        if "sqlite" in backend:
            writers.append(SQLiteBackendWriter(files["sqlite"], schema))
        if "parquet" in backend:
            writers.append(ParquetBackendWriter(files["parquet_prefix"], schema, metadata={GENERATION_KEY: generation}))
        stream = _single_cell_stream(files["parquet_prefix"], schema, list(chosen), options, generation)
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
                if stream is not None:
                    stream.add(result.table_number, result.image.to_pandas(), result.objects)
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
        if len(quarantined) == len(site_reports):
            raise InputError(
                f"{plate}: 0 of {len(site_reports)} site(s) could be read (first: {quarantined[0]['site']}: "
                f"{quarantined[0]['reason']}); nothing written; fix the files and re-run"
            )
        if strict and quarantined:
            raise QuarantineError(
                f"{plate}: {len(quarantined)} site(s) quarantined (first: {quarantined[0]['site']}: "
                f"{quarantined[0]['reason']}); nothing written; fix the files or drop --strict"
            )
        for writer in writers:
            writer.close()
        cells = stream.close(write_report=False) if stream is not None else None
    except BaseException:
        for writer in writers:
            writer.abort()
        if stream is not None:
            stream.abort()
        raise
    if "sqlite" in backend:
        _mark_sqlite(files["sqlite"], generation)
    profiles = agg.result()
    rows_out = _count_rows(files, backend, schema)
    # lost rows fail the plate (exit 1), never exit 0
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
    extra = _single_cell_section(cells, files["parquet_prefix"], generation)
    if "exclude_outlier_cells" in options:
        profiles, extra["cell_qc"] = _aggregate_kept_cells(files, backend, options)
    _write_profiles(profiles, files["profiles"], profile_format, generation)
    return {
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
        **extra,
        "seconds": round(time.perf_counter() - start, 3),
        "options": _build_options(options),
    }


GENERATION_KEY = GENERATION_TABLE
_SIDECAR = ".generation"
_CELL_OPTIONS = ("single_cells", "exclude_outlier_cells", "hub")


def _single_cell_names(plate: str) -> set[str]:
    return {f"{plate}_{SINGLE_CELL_TABLE}.parquet", f"{plate}_{SINGLE_CELL_TABLE}.h5ad"}


def _cell_options(single_cells: Sequence[str], exclude: Sequence[str] | dict[str, Any] | None, thresholds: str | None,
                  *, aggregate_only: bool, hub: str = "Cytoplasm") -> dict[str, Any]:
    """The single-cell outputs asked for, and the resolved outlier sets to exclude (only keys that are set)."""
    from .cell_qc import load_thresholds

    formats = tuple(dict.fromkeys(single_cells))
    bad = [f for f in formats if f not in ("parquet", "anndata")]
    if bad:
        raise InputError(f"--single-cells {bad[0]}: choose parquet and/or anndata")
    out: dict[str, Any] = {"single_cells": formats} if formats else {}
    if isinstance(exclude, dict):  # already resolved (a re-entry)
        out["exclude_outlier_cells"] = exclude
    elif exclude is not None:
        out["exclude_outlier_cells"] = load_thresholds(thresholds, sets=list(exclude) or None)
    elif thresholds is not None:
        raise InputError("--cell-qc-thresholds has no effect without --exclude-outlier-cells")
    if hub != "Cytoplasm":  # recorded only when not the default: older reports stay current
        if not out:
            raise InputError(f"--hub {hub} joins cells: give it with --single-cells or --exclude-outlier-cells")
        out["hub"] = hub
    if aggregate_only and out:
        raise InputError("--aggregate-only reads an existing backend: use `cytoprofile single-cells` for the joined table, "
                         "and a full collate (without --aggregate-only) to exclude outlier cells")
    return out


def _single_cell_stream(prefix: str, schema: Any, compartments: list[str], options: dict[str, Any], generation: str) -> Any:
    """The joined single-cell table written during the pass (None when not asked for)."""
    from .single_cells import SingleCellStream

    formats = options.get("single_cells") or ()
    if not formats:
        return None
    tables = {t: ["TableNumber", *[object_column_name(t, c) for c in cols]] for t, cols in schema.tables.items() if t != IMAGE_TABLE}
    tables[IMAGE_TABLE] = list(schema.tables[IMAGE_TABLE])
    return SingleCellStream(prefix, tables, formats=formats, compartments=compartments,
                            hub=options.get("hub", "Cytoplasm"), file_metadata={GENERATION_KEY: generation})


def _single_cell_section(cells: Any, prefix: str, generation: str) -> dict[str, Any]:
    """The plate report's account of the joined table: rows per compartment in, cells out, unlinked objects named."""
    if cells is None:
        return {}
    if "anndata" in cells.outputs:
        with io.atomic_open(cells.outputs["anndata"] + _SIDECAR) as fh:
            fh.write(generation + "\n")
    section = {k: v for k, v in cells.as_dict().items() if k not in ("backend", "outputs", "cell_qc")}
    section["outputs"] = {f: os.path.basename(p) for f, p in cells.outputs.items()}
    if cells.lost:
        log.warning("%s: %d object(s) not linked into a cell (named in the report)", os.path.basename(prefix), cells.lost)
    return {"single_cells": section}


def _aggregate_kept_cells(files: dict[str, str], kinds: Sequence[str], options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Profiles of the cells no outlier set flags, from the staged backend (flags need plate-wide z-scores)."""
    from .cell_qc import outlier_cells

    source = parquet_table_path(files["parquet_prefix"], IMAGE_TABLE) if "parquet" in kinds else files["sqlite"]
    thresholds = options["exclude_outlier_cells"]
    flagged = outlier_cells(source, thresholds, compartments=options["compartments"], strata=options["strata"],
                            hub=options.get("hub", "Cytoplasm"))
    profiles = aggregate(source, operation=options["operation"], strata=options["strata"],
                         compartments=options["compartments"], image_features=options["image_features"],
                         image_feature_categories=options["image_feature_categories"], exclude=flagged)
    log.info("%s: %d of %d cells excluded as outliers before aggregation", os.path.basename(files["parquet_prefix"]),
             flagged.excluded, flagged.cells)
    return profiles, flagged.summary()


def _mark_sqlite(path: str, generation: str) -> None:
    """Record the run's generation id in the database (table ``cytoprofile_run``)."""
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        conn.execute(f"CREATE TABLE {GENERATION_KEY} (generation TEXT, cytoprofile_version TEXT)")
        conn.execute(f"INSERT INTO {GENERATION_KEY} VALUES (?, ?)", (generation, __version__))
        conn.commit()
    finally:
        conn.close()


def _write_profiles(profiles: Any, path: str, profile_format: str, generation: str) -> None:
    """Per-well profiles with the generation id: Parquet metadata, or a ``.generation`` sidecar for CSV."""
    if profile_format == "parquet":
        io.write_table(profiles, path, fmt="parquet", metadata={"generation": generation})
    else:
        io.write_table(profiles, path, fmt=profile_format)  # type: ignore[arg-type]
        with io.atomic_open(path + _SIDECAR) as fh:
            fh.write(generation + "\n")


def generation_of(path: str | os.PathLike[str]) -> str | None:
    """The generation id an output of ours carries, or None (missing, unmarked or unreadable)."""
    text = str(path)
    try:
        if text.endswith(".sqlite"):
            import sqlite3

            if not os.path.isfile(text):
                return None
            conn = sqlite3.connect(f"file:{text}?mode=ro", uri=True)
            try:
                row = conn.execute(f"SELECT generation FROM {GENERATION_KEY} LIMIT 1").fetchone()
            finally:
                conn.close()
            return str(row[0]) if row else None
        if text.endswith(".parquet"):
            import json

            import pyarrow.parquet as pq

            meta = pq.read_schema(text).metadata or {}
            if GENERATION_KEY.encode() in meta:
                return meta[GENERATION_KEY.encode()].decode()
            return json.loads(meta.get(b"cytoprofile", b"{}")).get("generation")  # type: ignore[no-any-return]
        with open(text + _SIDECAR, encoding="utf-8") as fh:
            return fh.read().strip() or None
    except (OSError, ValueError) as exc:
        log.debug("%s: no generation id (%s)", text, exc)
        return None
    except Exception as exc:  # noqa: BLE001 - a damaged file is simply not trusted
        log.debug("%s: no generation id (%s)", text, exc)
        return None


def trusted_outputs(ws: str | os.PathLike[str], batch: str, plate: str) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """A plate's report and the outputs it vouches for (name → path).

    The report is the commit record: an output is trusted only if the generation id it
    carries is the one the report lists for it (on object storage: its size).
    """
    base = Workspace(str(ws)).backend(batch, plate)
    report_path = Workspace(str(ws)).report(batch, plate)
    if not io.exists(report_path):
        return None, {}
    try:
        report = io.read_json(report_path)
    except InputError:
        return None, {}
    listed = report.get("outputs") if isinstance(report, dict) else None
    if not isinstance(listed, dict):
        return report if isinstance(report, dict) else None, {}
    trusted: dict[str, str] = {}
    if io.is_remote(base):
        sizes = _remote_sizes(base)
        for name, entry in listed.items():
            if sizes.get(name) == entry.get("bytes"):
                trusted[name] = io.join(base, name)
        return report, trusted
    for name, entry in listed.items():
        path = os.path.join(base, name)
        if generation_of(path) == entry.get("generation"):
            trusted[name] = path
    return report, trusted


def _remote_sizes(prefix: str) -> dict[str, int]:
    fs, bare = io.filesystem(prefix)
    try:
        entries = fs.ls(bare, detail=True)
    except FileNotFoundError:
        return {}
    return {e["name"].rsplit("/", 1)[-1]: int(e.get("size") or 0) for e in entries if e.get("type") == "file"}


def plate_profiles(ws: str | os.PathLike[str], batch: str, plate: str) -> str | None:
    """The per-well profiles ``collate`` wrote for a plate, if its report vouches for them.

    A backend folder without a report but with a file of the old tools (no generation
    id) gives that file; ours without a report (an interrupted run) is an error.
    """
    base = Workspace(str(ws)).backend(batch, plate)
    names = [f"{plate}{ext}" for ext in (".csv", ".csv.gz", ".parquet")]
    report, trusted = trusted_outputs(ws, batch, plate)
    found = next((trusted[n] for n in names if n in trusted), None)
    if found is not None:
        return found
    existing = [io.join(base, n) for n in names if io.exists(io.join(base, n))]
    if report is not None and report.get("outputs") is not None:
        if existing:
            raise InputError(f"{existing[0]}: does not match {plate}.report.json (an interrupted or concurrent collate); "
                             f"re-run `cytoprofile collate` for {plate}")
        return None
    for path in existing:
        if io.is_remote(path) or generation_of(path) is None:
            return path
    if existing:
        raise InputError(f"{existing[0]}: has no {plate}.report.json (collate was interrupted); "
                         f"re-run `cytoprofile collate` for {plate}")
    return None


def _build_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options that shape a plate's outputs (recorded in the report, compared on re-runs)."""
    keys: tuple[str, ...] = ("backend", "profile_format", "operation", "compartments", "image_features", "image_feature_categories", "strata",
            "count_check", "file_prefix")
    keys += tuple(k for k in _CELL_OPTIONS if k in options)  # recorded only when asked: older reports stay current
    return {k: list(options[k]) if isinstance(options[k], (list, tuple)) else options[k] for k in keys}


def _remove_stale(directory: str, plate: str, *, keep: set[str], before: set[str]) -> None:
    """Drop this plate's outputs the new report does not list (e.g. PLATE.csv after a switch to Parquet)."""
    for entry in sorted(os.listdir(directory)):
        if _is_ours(plate, entry) and entry not in keep:
            os.unlink(os.path.join(directory, entry))
            if entry in before:
                log.warning("%s: removed %s of the earlier build (not asked for now)", plate, entry)
            else:
                log.info("%s: removed %s left by an interrupted build", plate, entry)


def _is_ours(plate: str, name: str) -> bool:
    base = name[: -len(_SIDECAR)] if name.endswith(_SIDECAR) else name
    return base in {f"{plate}.sqlite", f"{plate}.csv", f"{plate}.csv.gz", f"{plate}.parquet", *_single_cell_names(plate)} or (
        base.startswith(f"{plate}_") and base.endswith(".parquet"))


def _publish_plate(local_ws: str, remote_ws: str, batch: str, plate: str, report: dict[str, Any],
                   *, before: set[str] | None = None) -> list[str]:
    """Upload a finished plate: remote report deleted first, outputs, stale keys removed, report last."""
    folder = Workspace(str(local_ws)).backend(batch, plate)
    target = Workspace(str(remote_ws)).backend(batch, plate)
    report_file = report_name(plate)
    io.remove(io.join(target, report_file))  # nothing of this plate is trusted until the new report is up
    names = sorted(n for n in os.listdir(folder) if not n.startswith(".") and n != report_file)
    urls = [io.join(target, n) for n in names]
    for name, url in zip(names, urls):
        io.upload(os.path.join(folder, name), url)
    keep = set(report["outputs"]) | {n + _SIDECAR for n in report["outputs"]}
    for name in sorted(_remote_sizes(target)):
        if _is_ours(plate, name) and name not in keep:
            io.remove(io.join(target, name))
            if before and name in before:
                log.warning("%s: removed %s of the earlier build (not asked for now)", plate, io.join(target, name))
    io.upload(os.path.join(folder, report_file), io.join(target, report_file))
    return [*urls, io.join(target, report_file)]


def _remote_fingerprint(ws: str, batch: str, plate: str) -> str:
    """:func:`input_fingerprint` of a plate on object storage, from one listing (the same value as for a local copy)."""
    root = Workspace(str(ws)).analysis(batch, plate).rstrip("/")
    return _listing_digest({url[len(root) + 1:]: size for url, size in io.list_sizes(root).items()})


def _stage_plate(ws: str, scratch: str, batch: str, plate: str) -> None:
    """Copy a plate's analysis folder from object storage as the local reader sees it.

    Every file is staged under its own name and size; the files reading a site opens
    (:func:`cytoprofile.ingest.reader_opens`: the CSVs, plain or gzip, any case, in a site
    folder or below it) are downloaded, the rest (images, logs) stand in as empty files.
    """
    analysis_rel = Workspace.analysis_rel(batch, plate)
    depth = analysis_rel.count("/") + 2  # analysis/.../analysis/SITE/FILE
    staged = workspace.stage(ws, scratch, [analysis_rel],
                             fetch=lambda rel: rel.count("/") >= depth and reader_opens(os.path.basename(rel)))
    if not any(rel.count("/") >= depth for rel in staged):
        raise InputError(f"{io.join(ws, analysis_rel)}: no site folders with files found; "
                         "check the workspace URL, batch and plate")


def _collate_remote(ws: str, batch: str, plate: str, *, tmp_dir: str | None, progress: Progress | None,
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
        return _aggregate_only_remote(ws, batch, plate, tmp_dir=tmp_dir, progress=progress, start=start, **options)
    workspace.find_plate(ws, batch, plate)
    io.remove_leftovers(target)
    report, trusted = trusted_outputs(ws, batch, plate)
    inputs = _remote_fingerprint(ws, batch, plate)
    plan = _plan(plate, report, trusted, {**_build_options(options), "inputs": inputs}, overwrite=options["overwrite"])
    if plan.skip:
        return PlateResult(batch, plate, "skipped", "complete outputs exist (use --overwrite to rebuild)", outputs, report,
                           seconds=time.perf_counter() - start)
    with workspace.scratch_dir(tmp_dir, plate) as scratch:
        _stage_plate(ws, scratch, batch, plate)
        local_dir = Workspace(str(scratch)).backend(batch, plate)
        with io.output_errors(scratch):
            local, staging = _build_plate(scratch, batch, plate, plan=plan, progress=progress, start=start, **options)
            if local.report is not None:
                local.report["inputs"] = inputs
            _commit_local(local_dir, plate, local, staging, before=set())
        assert local.report is not None
        urls = _publish_plate(scratch, ws, batch, plate, local.report, before=set(trusted))
    log.info("%s: uploaded %d file(s) to %s", plate, len(urls), target)
    remote_outputs = plate_outputs(ws, batch, plate, backend=local.report["backend"], profile_format=options["profile_format"])
    return PlateResult(batch, plate, "done", local.message, remote_outputs, local.report,
                       seconds=time.perf_counter() - start)


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
    name = f"{plate}.{options['profile_format']}"
    if not options["overwrite"] and (name in trusted or (report is None and io.exists(io.join(target, name)))):
        return PlateResult(batch, plate, "skipped", "profiles exist (use --overwrite to re-aggregate)",
                           {"profiles": io.join(target, name)}, seconds=time.perf_counter() - start)
    wanted = {report_name(plate)} | ({f"{plate}.sqlite"} if "sqlite" in options["backend"] else set())
    with workspace.scratch_dir(tmp_dir, plate) as scratch:
        workspace.stage(ws, scratch, [rel], accept=lambda r: os.path.basename(r) in wanted
                        or (os.path.basename(r).startswith(f"{plate}_") and r.endswith(".parquet")))
        outputs = plate_outputs(scratch, batch, plate, backend=options["backend"], profile_format=options["profile_format"])
        with io.output_errors(scratch):
            local = _aggregate_only(scratch, batch, plate, outputs, backend=options["backend"],
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
    remote_outputs = {k: io.join(ws, os.path.relpath(v, scratch)) for k, v in local.outputs.items()}
    return PlateResult(batch, plate, local.status, local.message, remote_outputs, local.report,
                       seconds=time.perf_counter() - start)


def _publish_profiles(scratch: str, ws: str, batch: str, plate: str, report: dict[str, Any], *,
                      previous: dict[str, Any], trusted: dict[str, str]) -> None:
    """Upload re-aggregated profiles: the report (still listing the backend outputs that stay) last."""
    folder = Workspace(str(scratch)).backend(batch, plate)
    target = Workspace(str(ws)).backend(batch, plate)
    profiles = {n: e for n, e in report["outputs"].items() if _kind_of(plate, n) == "profiles"}
    kept = {n: e for n, e in previous.get("outputs", {}).items() if n in trusted and _kind_of(plate, n) != "profiles"}
    report["outputs"] = {**kept, **profiles}
    report_file = report_name(plate)
    io.write_json(report, os.path.join(folder, report_file))
    io.remove(io.join(target, report_file))
    for entry in sorted(profiles):
        for file in (entry, entry + _SIDECAR):
            if os.path.exists(os.path.join(folder, file)):
                io.upload(os.path.join(folder, file), io.join(target, file))
    keep = set(report["outputs"]) | {n + _SIDECAR for n in report["outputs"]}
    for stale in sorted(_remote_sizes(target)):
        if _is_ours(plate, stale) and stale not in keep:
            io.remove(io.join(target, stale))
            log.warning("%s: removed %s of the earlier build (not asked for now)", plate, io.join(target, stale))
    io.upload(os.path.join(folder, report_file), io.join(target, report_file))


def _aggregate_only(ws: str | os.PathLike[str], batch: str, plate: str, outputs: dict[str, str], *, backend: Sequence[BackendKind],
                    operation: Operation, compartments: Sequence[str], image_features: bool,
                    image_feature_categories: Sequence[str], strata: Sequence[str], overwrite: bool,
                    progress: Progress | None, start: float) -> PlateResult:
    """Re-aggregate an existing backend (ours or the old tool's) into the plate's profiles.

    A backend of ours is used only if its report vouches for it; the new profiles then
    get a new generation id and the report is rewritten (last).
    """
    report, trusted = trusted_outputs(ws, batch, plate)
    ours = report is not None and isinstance(report.get("outputs"), dict)
    name = os.path.basename(outputs["profiles"])
    legacy_profile = not ours and Path(outputs["profiles"]).exists() and generation_of(outputs["profiles"]) is None
    if not overwrite and (name in trusted or legacy_profile):
        return PlateResult(batch, plate, "skipped", "profiles exist (use --overwrite to re-aggregate)", outputs,
                           seconds=time.perf_counter() - start)
    files = Workspace(str(ws)).backend_files(batch, plate)
    source = files["sqlite"] if "sqlite" in backend else parquet_table_path(files["parquet_prefix"], IMAGE_TABLE)
    if not Path(source).exists():
        raise InputError(f"{source}: no backend to aggregate; run `cytoprofile collate` without --aggregate-only first")
    if ours and os.path.basename(source) not in trusted:
        raise InputError(f"{source}: does not match {plate}.report.json (an interrupted or concurrent collate); "
                         "re-run `cytoprofile collate` without --aggregate-only")
    if not ours and generation_of(source) is not None:
        raise InputError(f"{source}: has no {plate}.report.json (collate was interrupted); "
                         "re-run `cytoprofile collate` without --aggregate-only")

    def _progress(done: int, total: int) -> None:
        if progress is not None:
            progress(plate, done, total)

    profiles = aggregate(source, operation=operation, strata=strata, compartments=compartments,
                         image_features=image_features, image_feature_categories=image_feature_categories,
                         progress=_progress)
    message = f"aggregated {len(profiles)} wells from {os.path.basename(source)}"
    if not ours:
        io.write_table(profiles, outputs["profiles"])  # beside the old tool's backend, as it would
        return PlateResult(batch, plate, "done", message, {"profiles": outputs["profiles"]}, seconds=time.perf_counter() - start)
    assert report is not None
    generation = uuid.uuid4().hex
    fmt = io.infer_format(outputs["profiles"])
    report_path = outputs["report"]
    io.remove(report_path)
    _write_profiles(profiles, outputs["profiles"], fmt, generation)
    listed = {n: e for n, e in report["outputs"].items() if n in trusted and _kind_of(plate, n) != "profiles"}
    listed[name] = {"generation": generation, "bytes": os.path.getsize(outputs["profiles"])}
    report.update(outputs=listed, generation=generation, seconds=round(time.perf_counter() - start, 3))
    report["aggregate"] = {**report.get("aggregate", {}), "operation": operation, "strata": list(strata),
                           "compartments": list(compartments), "image_features": image_features,
                           "image_feature_categories": list(image_feature_categories), "wells": len(profiles),
                           "columns": profiles.shape[1], "from": os.path.basename(source)}
    report["options"] = {**report.get("options", {}), "profile_format": fmt, "operation": operation, "strata": list(strata),
                         "compartments": list(compartments), "image_features": image_features,
                         "image_feature_categories": list(image_feature_categories)}
    _remove_stale(os.path.dirname(report_path), plate, keep=set(listed) | {n + _SIDECAR for n in listed}, before=set(trusted))
    io.write_json(report, report_path)
    return PlateResult(batch, plate, "done", message, {"profiles": outputs["profiles"], "report": report_path}, report,
                       seconds=time.perf_counter() - start)


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
    from .executor import run_plates

    if not plates:
        raise InputError("no plates given; name at least one PLATE")
    workspace.check_name(batch, "batch")
    for plate in plates:
        workspace.check_name(plate, "plate")
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
    return run_plates(_collate_task, [(str(ws), batch, p) for p in plates], options, jobs=jobs,
                      scheduler=scheduler, progress=progress)


def _reads_export_files(ws: str, batch: str, plate: str) -> bool:
    """A plate whose analysis folder holds ExportToDatabase files and no site folders (local or on a URL)."""
    from .exportdb import discover_export_files

    if io.is_remote(ws):
        return bool(_remote_export_files(ws, batch, plate))
    if Path(Workspace(str(ws)).analysis(batch, plate)).is_dir():
        return False
    return bool(discover_export_files(ws, batch, plate))


def _remote_export_files(ws: str, batch: str, plate: str) -> list[str]:
    """``analysis/BATCH/PLATE/*.sqlite`` on object storage, when that folder has no ``analysis/`` of site folders."""
    from .exportdb import EXPORT_SUFFIXES

    folder = io.join(ws, "analysis", batch, plate)
    io.check_reachable(ws)  # a dead endpoint: one line naming it, before any listing waits on retries
    entries = list_entries(folder, refresh=True)
    if any(e.get("type") == "directory" and e["name"].rstrip("/").rsplit("/", 1)[-1] == "analysis" for e in entries):
        return []
    names = sorted(e["name"].rsplit("/", 1)[-1] for e in entries if e.get("type") == "file")
    return [io.join(folder, n) for n in names if n.lower().endswith(EXPORT_SUFFIXES)]


def _stage_export_sources(ws: str, scratch: str, batch: str, plate: str, sources: Sequence[str]) -> list[str]:
    """Download a plate's ExportToDatabase files (found, or named by URL) into the scratch workspace.

    A file under the workspace keeps its path relative to it (so the report names it as a
    local run would); its modification time is the object's, so re-runs compare alike.
    Local paths among ``sources`` are read in place.
    """
    from .exportdb import EXPORT_SUFFIXES

    urls = [s for s in sources if io.is_remote(s)] if sources else _remote_export_files(ws, batch, plate)
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


def _collate_export_remote(ws: str, batch: str, plate: str, *, sources: Sequence[str], table_prefix: str | None,
                           progress: Progress | None, options: dict[str, Any]) -> PlateResult:
    """ExportToDatabase input of a workspace on object storage, through a scratch copy (as :func:`_collate_remote`).

    The earlier build's report is fetched and its outputs stand in by name and size, so a
    re-run with the same files and options is skipped as locally; the outputs are uploaded
    report last.
    """
    from .exportdb import collate_export

    io.check_reachable(ws)
    target = Workspace(str(ws)).backend(batch, plate)
    io.remove_leftovers(target)
    report, trusted = trusted_outputs(ws, batch, plate)
    report_file = report_name(plate)
    with workspace.scratch_dir(options.get("tmp_dir"), plate) as scratch:
        if report is not None:
            workspace.stage(ws, scratch, [Workspace.backend_rel(batch, plate)],
                            accept=lambda rel: os.path.basename(rel) in trusted or os.path.basename(rel) == report_file,
                            fetch=lambda rel: os.path.basename(rel) == report_file)
        local_sources = _stage_export_sources(ws, scratch, batch, plate, sources)
        if not local_sources:
            raise InputError(f"{io.join(ws, 'analysis', batch, plate)}: no ExportToDatabase files (*.sqlite) found; "
                             "give them with --export-db")
        with io.output_errors(scratch):
            result = collate_export(scratch, batch, plate, sources=local_sources, table_prefix=table_prefix,
                                    progress=progress, **{**options, "tmp_dir": scratch})
        if result.status == "done" and result.report is not None:
            urls = _publish_plate(scratch, ws, batch, plate, result.report, before=set(trusted))
            log.info("%s: uploaded %d file(s) to %s", plate, len(urls), target)
    result.outputs = {k: io.join(ws, os.path.relpath(v, scratch)) for k, v in result.outputs.items()}
    return result


def _collate_task(ws: str, batch: str, plate: str, options: dict[str, Any], progress: Progress | None) -> PlateResult:
    """One plate, with user errors turned into a failed result rather than an exception."""
    options = dict(options)
    io.configure_storage(options.pop("storage", None))
    export_db, table_prefix = options.pop("export_db", ()), options.pop("table_prefix", None)
    try:
        if io.is_remote(ws) and not options.get("aggregate_only") and (export_db or _reads_export_files(ws, batch, plate)):
            return _collate_export_remote(ws, batch, plate, sources=list(export_db), table_prefix=table_prefix,
                                          progress=progress, options=options)
        if not io.is_remote(ws) and (export_db or _reads_export_files(ws, batch, plate)):
            from .exportdb import collate_export

            return collate_export(ws, batch, plate, sources=list(export_db) or None, table_prefix=table_prefix,
                                  progress=progress, **options)
        return collate_plate(ws, batch, plate, progress=progress, **options)
    except CytoprofileError as exc:
        return PlateResult(batch, plate, "failed", str(exc))
