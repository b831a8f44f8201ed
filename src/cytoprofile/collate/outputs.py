"""Trust in a plate's outputs: the report as commit record, generation ids, and the swap that commits a build."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .. import __version__, io
from ..errors import InputError, OutputError
from ..ingest import (
    GENERATION_TABLE,
    IMAGE_TABLE,
)
from ..layout import (
    SIDECAR,
    Workspace,
    is_parquet_table,
    parquet_table_path,
    parquet_tables_label,
    profiles_names,
    report_name,
    single_cell_names,
    sqlite_name,
)
from ..vocabulary import TableFormat

__all__ = ['BackendKind', 'GENERATION_KEY', 'PlateResult', 'ProfileFormat', 'Progress', 'check_unblocked', 'commit_local', 'generation_of', 'is_ours', 'kind_label', 'kind_of', 'mark_sqlite', 'output_record', 'plate_outputs', 'plate_profiles', 'remote_sizes', 'remove_stale', 'trusted_outputs', 'write_profiles']

log = logging.getLogger("cytoprofile.collate")


BackendKind = Literal["sqlite", "parquet"]


ProfileFormat = TableFormat


Progress = Callable[[str, int, int], None]


GENERATION_KEY = GENERATION_TABLE



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


def kind_of(plate: str, name: str) -> str:
    if name in single_cell_names(plate):
        return "single_cells"
    if name == sqlite_name(plate):
        return "sqlite"
    if is_parquet_table(plate, name):
        return "parquet"
    return "profiles"


def kind_label(plate: str, name: str) -> str:
    return parquet_tables_label(plate) if kind_of(plate, name) == "parquet" else name


def is_ours(plate: str, name: str, *, before: Collection[str] = (), directory: str | None = None) -> bool:
    """Whether a file beside the outputs is one of this plate's, to replace or remove: a name collate writes,
    or a ``PLATE_*.parquet`` the earlier report listed or (in a local ``directory``) that carries our generation
    id. A user's own ``PLATE_notes.parquet`` is never taken for a table left by an interrupted build."""
    base = name[: -len(SIDECAR)] if name.endswith(SIDECAR) else name
    if base in {sqlite_name(plate), *profiles_names(plate), *single_cell_names(plate)}:
        return True
    if not is_parquet_table(plate, base) or name != base:
        return False
    return name in before or (directory is not None and generation_of(os.path.join(directory, name)) is not None)


def mark_sqlite(path: str, generation: str) -> None:
    """Record the run's generation id in the database (table ``cytoprofile_run``)."""
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        conn.execute(f"CREATE TABLE {GENERATION_KEY} (generation TEXT, cytoprofile_version TEXT)")
        conn.execute(f"INSERT INTO {GENERATION_KEY} VALUES (?, ?)", (generation, __version__))
        conn.commit()
    finally:
        conn.close()


def write_profiles(profiles: Any, path: str, profile_format: str, generation: str) -> None:
    """Per-well profiles with the generation id: Parquet metadata, or a ``.generation`` sidecar for CSV."""
    if profile_format == "parquet":
        io.write_table(profiles, path, fmt="parquet", metadata={"generation": generation})
    else:
        io.write_table(profiles, path, fmt=profile_format)  # type: ignore[arg-type]
        with io.atomic_open(path + SIDECAR) as fh:
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
        with open(text + SIDECAR, encoding="utf-8") as fh:
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
    if not _usable(report):  # valid JSON of another shape: no record of a build (a rebuild replaces it)
        return None, {}
    listed = report.get("outputs")
    if not isinstance(listed, dict):
        return report, {}
    trusted: dict[str, str] = {}
    if io.is_remote(base):
        sizes = remote_sizes(base)
        for name, entry in listed.items():
            if sizes.get(name) == entry.get("bytes"):
                trusted[name] = io.join(base, name)
        return report, trusted
    for name, entry in listed.items():
        path = os.path.join(base, name)
        if isinstance(entry, dict) and generation_of(path) == entry.get("generation") and _whole(path, entry):
            trusted[name] = path
    return report, trusted


#: the report's fields a re-run reads, and the type each must have
_REPORT_FIELDS: dict[str, type | tuple[type, ...]] = {"outputs": dict, "sites": list, "input_files": dict,
                                                      "options": dict, "tables": dict, "aggregate": dict}


def _usable(report: object) -> bool:
    """A report a re-run can read: a JSON object whose fields have their types (an edited or foreign file may not)."""
    return isinstance(report, dict) and all(isinstance(report[k], t) for k, t in _REPORT_FIELDS.items()
                                             if report.get(k) is not None)


def output_record(path: str, generation: str) -> dict[str, Any]:
    """What the report keeps of an output it vouches for: the build's id, the size and the modification time the
    build left it with (an edit in place keeps the id inside a SQLite or Parquet file, not its mtime)."""
    st = os.stat(path)
    return {"generation": generation, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _whole(path: str, entry: dict[str, Any]) -> bool:
    """A file still as the build left it: its size (a cut or emptied CSV beside its intact sidecar, a Parquet file
    cut keeping its metadata) and, where recorded, its mtime (rows deleted from a SQLite file keep its size)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    size, mtime = entry.get("bytes"), entry.get("mtime_ns")
    return (not isinstance(size, int) or st.st_size == size) and (not isinstance(mtime, int) or st.st_mtime_ns == mtime)


def remote_sizes(prefix: str) -> dict[str, int]:
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
    names = profiles_names(plate)
    report, trusted = trusted_outputs(ws, batch, plate)
    found = next((trusted[n] for n in names if n in trusted), None)
    if found is not None:
        return found
    existing = [io.join(base, n) for n in names if io.exists(io.join(base, n))]
    if report is not None and report.get("outputs") is not None:
        if existing:
            raise InputError(f"{existing[0]}: does not match {plate}.report.json (changed since collate wrote it, or "
                             f"an interrupted or concurrent collate); re-run `cytoprofile collate` for {plate}")
        return None
    for path in existing:
        if io.is_remote(path) or generation_of(path) is None:
            return path
    if existing:
        raise InputError(f"{existing[0]}: has no {plate}.report.json (collate was interrupted); "
                         f"re-run `cytoprofile collate` for {plate}")
    return None


def remove_stale(directory: str, plate: str, *, keep: set[str], before: set[str]) -> None:
    """Drop this plate's outputs the new report does not list (e.g. PLATE.csv after a switch to Parquet)."""
    for entry in sorted(os.listdir(directory)):
        if entry not in keep and is_ours(plate, entry, before=before, directory=directory):
            os.unlink(os.path.join(directory, entry))
            if entry in before:
                log.warning("%s: removed %s of the earlier build (not asked for now)", plate, entry)
            elif not (entry.endswith(SIDECAR) and entry[: -len(SIDECAR)] in before):  # its file's line says it
                log.info("%s: removed %s left by an interrupted build", plate, entry)


def check_unblocked(out_dir: str, plate: str, written: Collection[str], *, keep: Collection[str],
                    before: Collection[str]) -> None:
    """Refuse, before anything moves, a folder at the name of an output to write or of a stale one to remove:
    the last build stays whole (its report too)."""
    stale = [n for n in os.listdir(out_dir) if n not in keep and is_ours(plate, n, before=before, directory=out_dir)]
    blocked = sorted(n for n in {*written, *stale} if os.path.isdir(os.path.join(out_dir, n)))
    if blocked:
        raise OutputError(f"cannot write {os.path.join(out_dir, blocked[0])}: a folder has the name of one of "
                          f"{plate}'s output files; move it away, then re-run (the last build is left as it was)")


def commit_local(out_dir: str, plate: str, result: PlateResult, staging: str, *, before: set[str]) -> None:
    """Swap a staged build into place: report removed first, outputs renamed, stale ones removed, report last."""
    report = result.report or {}
    report_path = os.path.join(out_dir, report_name(plate))
    keep = set(report.get("outputs") or ()) | {n + SIDECAR for n in report.get("outputs") or ()}
    staged = sorted(os.listdir(staging))
    written = [n for n in staged if not os.path.isdir(os.path.join(staging, n))]
    try:
        check_unblocked(out_dir, plate, written, keep=keep, before=before)
    except OutputError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        io.remove(report_path)  # from here until the new report, nothing of this plate is trusted
        for name in staged:
            os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
        remove_stale(out_dir, plate, keep=keep, before=before)
        io.write_json(report, report_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
