"""What a run of a plate builds: its options, the input fingerprint, and the comparison with the last build."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..digest import file_digest
from ..errors import QuarantineError
from ..layout import Workspace, profiles_name, report_name, single_cell_name, sqlite_name
from ..remote import list_etags
from .cells import CELL_OPTIONS
from .outputs import kind_label, kind_of

__all__ = ['INPUTS_CHANGED', 'InputState', 'Plan', 'build_options', 'check_strict', 'input_fingerprint', 'input_state', 'listing_digest',
           'plan_build', 'plate_files', 'remote_state']

log = logging.getLogger("cytoprofile.collate")

#: why a re-run rebuilds a plate whose input files differ from the last build's (said at WARNING, with what is replaced)
INPUTS_CHANGED = "the plate's input files changed since the last build (files added, removed or changed)"

@dataclass
class Plan:
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
    if sqlite_name(plate) in trusted:
        present.add("sqlite")
    tables = {n for n in listed if kind_of(plate, n) == "parquet"}
    if tables and tables <= set(trusted):
        present.add("parquet")
    return present


def plan_build(plate: str, report: dict[str, Any] | None, trusted: dict[str, str], build: dict[str, Any],
          *, overwrite: bool, strict: bool = False, rebuild_reason: str | None = None) -> Plan:
    """Compare the asked outputs with the trusted ones of the last build (see the README's "Re-runs"); a skip
    under ``strict`` of a build that quarantined sites is refused (:func:`check_strict`).

    ``rebuild_reason`` is why a caller set ``overwrite`` (the ExportToDatabase route: its files changed): said at
    WARNING in place of "--overwrite"."""
    asked = set(build["backend"])
    previous = dict((report or {}).get("options") or {})
    if "inputs" in build and previous:
        previous["inputs"] = (report or {}).get("inputs")
    present = _kinds_present(plate, report, trusted)
    same = bool(previous) and _data_options(previous) == _data_options(build)
    profile = profiles_name(plate, profile_format=build["profile_format"])
    cells = {single_cell_name(plate, f) for f in build.get("single_cells") or ()}
    untrusted = sorted(set((report or {}).get("outputs") or {}) - set(trusted))  # listed, but not as built
    if not overwrite and same and asked <= present and profile in trusted and cells <= set(trusted) and not untrusted:
        check_strict(plate, report, strict=strict)
        return Plan(skip=True)
    if same and not overwrite and untrusted:
        log.warning("%s: %s of the last build %s not as built (damaged, removed or replaced); building the plate "
                    "again", plate, ", ".join(untrusted), "is" if len(untrusted) == 1 else "are")
    others = present - asked
    stale = others if overwrite or not same else set()
    kinds = tuple(k for k in ("sqlite", "parquet") if k in asked or k in stale)
    kept: dict[str, Any] = {}
    if same and not overwrite:
        kept = {n: e for n, e in (report or {}).get("outputs", {}).items() if n in trusted and kind_of(plate, n) in others}
    if previous and (not same or overwrite):
        changed = sorted(k for k in _data_options(build) if previous.get(k) != build[k])
        why = f"options changed since the last build ({', '.join(changed)})" if changed else rebuild_reason or "--overwrite"
        if changed == ["inputs"]:
            why = INPUTS_CHANGED
        replaced = sorted({kind_label(plate, n) for n in trusted} - {report_name(plate)})
        (log.warning if changed or rebuild_reason else log.info)("%s: %s; replacing %s", plate, why,
                                                                 ", ".join(replaced) or "its outputs")
    elif kept:
        log.info("%s: keeping %s of the last build (still current)", plate,
                 ", ".join(sorted({kind_label(plate, n) for n in kept})))
    return Plan(skip=False, kinds=kinds, kept=kept)


def check_strict(plate: str, report: dict[str, Any] | None, *, strict: bool) -> None:
    """A current build that quarantined sites does not pass ``strict`` by being skipped (exit 1, as its build did)."""
    quarantined = [s for s in (report or {}).get("sites") or () if s.get("status") != "ok"]
    if strict and quarantined:
        raise QuarantineError(
            f"{plate}: the current build has {len(quarantined)} quarantined site(s) (first: {quarantined[0]['site']}: "
            f"{quarantined[0].get('reason')}); fix the files and re-run (it rebuilds the plate), or drop --strict"
        )


#: a file modified this close to the moment its state was recorded may have changed within the filesystem's
#: timestamp resolution (1 s or 2 s on some): its recorded digest is not trusted ("racy", as git calls it)
_RACY_NS = 2_000_000_000


@dataclass
class InputState:
    """The plate's input files as a re-run compares them: one digest, and per file what it was made of."""

    digest: str
    #: relative path -> [size, mtime_ns, content digest] (local) or [size, ETag] (object storage)
    files: dict[str, list[Any]]
    #: when the files were looked at (ns since the epoch; local only)
    recorded_ns: int | None = None
    #: files whose content was read to hash it (the others reused their recorded digest)
    hashed: int = 0
    #: files that appeared while the build ran (not among ``seen``): recorded so the next run rebuilds
    appeared: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """What the plate report keeps of it (``inputs`` is what re-runs compare)."""
        return {"inputs": self.digest, "input_files": {"recorded_ns": self.recorded_ns, "files": self.files}}


def _reusable(entry: Any, st: os.stat_result, recorded_ns: int | None) -> bool:
    """A recorded digest still stands: same size, mtime, ctime and inode (as git's index checks: an edit
    that puts the old mtime back, ``touch -d``, still moves the ctime), and the mtime not too close to the
    recording. Entries of older reports (no ctime) are hashed again once."""
    if not isinstance(entry, list) or len(entry) != 5 or not isinstance(entry[2], str) or recorded_ns is None:
        return False
    return (entry[0], entry[1], entry[3], entry[4]) == _stamp(st) and st.st_mtime_ns < recorded_ns - _RACY_NS


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def _hash_or_none(path: str) -> str | None:
    try:
        return file_digest(path)
    except OSError:
        return None  # unreadable: named by the read pass; never reused


def plate_files(ws: str | os.PathLike[str], batch: str, plate: str) -> set[str]:
    """The paths (relative to the plate's analysis folder) of every entry under it, as :func:`input_state` lists it."""
    return set(_entries(Workspace(str(ws)).analysis(batch, plate)))


def _entries(root: str) -> list[str]:
    """Every entry under the plate's analysis folder, relative to it, in one walk that sees the folder as the scan
    does: a linked site folder is followed; a link to a folder inside a site folder is an entry, never followed
    (the scan reads nothing there, so a link to an image store is never hashed); a folder reached twice (a link
    loop) and an empty folder are entries ``FOLDER/`` (an empty site folder is an input: a build quarantines it)."""
    seen: set[str] = set()
    out: list[str] = []
    for folder, dirs, names in os.walk(root, followlinks=True):
        top = os.path.normpath(folder) == os.path.normpath(root)
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:], names = [], []
        seen.add(real)
        if not top:
            links = [d for d in dirs if os.path.islink(os.path.join(folder, d))]
            dirs[:] = [d for d in dirs if d not in links]
            names = [*names, *links]
            if not dirs and not names:
                out.append(os.path.relpath(folder, root) + "/")
        out.extend(os.path.relpath(os.path.join(folder, name), root) for name in names)
    return out


def input_state(ws: str | os.PathLike[str], batch: str, plate: str, *, report: dict[str, Any] | None = None,
                threads: int = 2, read: dict[str, tuple[int, int, int, str, int, int]] | None = None,
                seen: set[str] | None = None) -> InputState:
    """Every file under the plate's analysis folder by size, mtime and content digest, as git's index does:
    a file whose size, mtime, ctime and inode equal the last build's record reuses its digest, every other one is hashed
    (streamed). So a re-run rebuilds when a file was added, removed or changed, even keeping its size.
    ``read`` (absolute path -> size, mtime_ns, when read, digest, ctime_ns, inode:
    :class:`~cytoprofile.digest.ReadDigests`) gives
    the digests of files the build just read, taken from the bytes it read (trusted as a recorded one is).
    ``seen`` (:func:`plate_files` before the build): a file not among them appeared while the build ran, so
    the build never considered it; it is recorded as such (never as read), and the next run rebuilds."""
    root = Workspace(str(ws)).analysis(batch, plate)
    previous = (report or {}).get("input_files") or {}
    known, recorded_ns = previous.get("files") or {}, previous.get("recorded_ns")
    now = time.time_ns()
    fresh = {os.path.relpath(p, root): e for p, e in (read or {}).items()}
    stats: dict[str, os.stat_result | None] = {}
    for rel in _entries(root):
        try:  # a folder entry (FOLDER/) is listed, never opened (sized -4 below)
            stats[rel] = None if rel.endswith("/") else os.stat(os.path.join(root, rel))
        except OSError:
            stats[rel] = None  # a broken link: named in the report, counted here
    # only regular files are hashed: opening a named pipe or a device would block or never end
    appeared = sorted(rel for rel in stats if seen is not None and rel not in seen and rel not in fresh)
    for rel in appeared:
        stats.pop(rel)
    todo = [rel for rel, st in stats.items() if st is not None and stat.S_ISREG(st.st_mode) and rel not in fresh
            and not _reusable(known.get(rel), st, recorded_ns)]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        digests = dict(zip(todo, pool.map(lambda rel: _hash_or_none(os.path.join(root, rel)), todo)))
    files: dict[str, list[Any]] = {}
    for rel, st in sorted(stats.items()):
        if st is None:
            files[rel] = [-4, None, None] if rel.endswith("/") else [-1, None, None]
        elif not stat.S_ISREG(st.st_mode):
            files[rel] = [-2, None, None]  # not a regular file: named by the read pass, never opened here
        elif rel in fresh:  # what the build read, as it was then: changed since, it differs from its record
            size, mtime, _, digest, ctime, inode = fresh[rel]
            files[rel] = [size, mtime, digest, ctime, inode]
        else:
            files[rel] = [st.st_size, st.st_mtime_ns, digests[rel] if rel in digests else known[rel][2],
                          st.st_ctime_ns, st.st_ino]
    for rel in appeared:
        files[rel] = [-3, None, None]  # appeared during the build: never read, so never taken as read
    # a record is trusted only for files last modified well before it was made: before the first read, here
    since = min([now, *(fresh[rel][2] for rel in fresh if rel in files)])
    return InputState(listing_digest({rel: (e[0], e[2]) for rel, e in files.items()}), files, since, len(todo),
                      appeared)


def input_fingerprint(ws: str | os.PathLike[str], batch: str, plate: str) -> str:
    """The digest of :func:`input_state` (every file hashed)."""
    return input_state(ws, batch, plate).digest


def listing_digest(entries: dict[str, Any]) -> str:
    """The input fingerprint of relative path -> what stands for its content (size and digest, or size and ETag)."""
    def text(value: Any) -> str:
        return "\t".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)

    return hashlib.sha256("\n".join(sorted(f"{rel}\t{text(v)}" for rel, v in entries.items())).encode()).hexdigest()[:32]


def remote_state(ws: str, batch: str, plate: str) -> InputState:
    """:func:`input_state` of a plate on object storage, from one listing: size and ETag stand for the content
    (a plate moved between local disk and object storage is rebuilt once)."""
    root = Workspace(str(ws)).analysis(batch, plate).rstrip("/")
    files = {url[len(root) + 1:]: [size, etag] for url, (size, etag) in list_etags(root).items()}
    blind = sorted(rel for rel, (_, etag) in files.items() if not etag)
    if blind:
        log.warning("%s: %d input file(s) on object storage have no ETag (first: %s); a re-run compares them by size "
                    "only, so a change keeping the size is not seen: use --overwrite after changing them", plate,
                    len(blind), blind[0])
    return InputState(listing_digest({rel: ("etag", *e) for rel, e in files.items()}), files)


def build_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options that shape a plate's outputs (recorded in the report, compared on re-runs)."""
    keys: tuple[str, ...] = ("backend", "profile_format", "operation", "compartments", "image_features", "image_feature_categories", "strata",
            "count_check", "file_prefix")
    keys += tuple(k for k in CELL_OPTIONS if k in options)  # recorded only when asked: older reports stay current
    return {k: list(options[k]) if isinstance(options[k], (list, tuple)) else options[k] for k in keys}


