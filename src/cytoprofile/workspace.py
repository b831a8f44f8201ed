"""Working on a handbook workspace: staging a URL workspace's files into scratch and publishing outputs
(:func:`staged`), plate locks, name checks. Where each file lives is :mod:`cytoprofile.layout`'s answer alone."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import io
from .errors import CytoprofileError, InputError, OutputError
from .layout import Workspace
from .remote import list_entries
from .vocabulary import spelling_note

__all__ = [
    "Staged",
    "check_name",
    "files_under",
    "find_plate",
    "plate_lock",
    "scratch_dir",
    "staged",
]

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Staged:
    """A local copy of the URL workspace ``remote`` at ``local``: inputs fetched in, outputs published back.

    Paths relative to either root name the same file, so a step run on ``local`` sees the
    workspace as it is at ``remote``.
    """

    remote: str
    local: str

    def fetch(self, prefixes: list[str], *, accept: Callable[[str], bool] | None = None,
              fetch: Callable[[str], bool] | None = None) -> list[str]:
        """Copy the files under ``remote/PREFIX`` into the local copy; see :func:`_stage`."""
        return _stage(self.remote, self.local, prefixes, accept=accept, fetch=fetch)

    def publish(self, rels: list[str]) -> list[str]:
        """Upload ``local/REL`` to ``remote/REL`` for each relative path, each atomically; return the URLs."""
        return _publish(self.local, self.remote, rels)

    def url(self, path: str) -> str:
        """The URL of a file of the local copy."""
        return io.join(self.remote, os.path.relpath(path, self.local))

    def at_url(self, text: str) -> str:
        """``text`` with the local copy's paths named at the workspace URL."""
        for local in {self.local, os.path.realpath(self.local)}:
            text = text.replace(local.rstrip(os.sep) + os.sep, self.remote.rstrip("/") + "/").replace(local, self.remote)
        return text

    @contextlib.contextmanager
    def named_at_url(self, *loggers: logging.Logger) -> Iterator[None]:
        """Errors raised inside, and the records of ``loggers``, name the workspace URL instead
        of the local copy (the user knows the URL; a scratch copy is deleted next)."""
        renamed = _AtUrl(self)
        for logger in loggers:
            logger.addFilter(renamed)
        try:
            yield
        except CytoprofileError as exc:
            raise type(exc)(self.at_url(str(exc))) from exc
        finally:
            for logger in loggers:
                logger.removeFilter(renamed)


class _AtUrl(logging.Filter):
    """Rewrites a record's message with :meth:`Staged.at_url`."""

    def __init__(self, copy: Staged) -> None:
        super().__init__()
        self.copy = copy

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        renamed = self.copy.at_url(message)
        if renamed != message:
            record.msg, record.args = renamed, None
        return True


@contextlib.contextmanager
def staged(remote: str, *, tmp_dir: str | None, prefix: str) -> Iterator[Staged]:
    """A scratch copy of the URL workspace ``remote`` in ``tmp_dir`` (see :func:`scratch_dir`), empty
    until fetched into, removed afterwards: fetch the inputs, run on ``Staged.local``, publish."""
    with scratch_dir(tmp_dir, prefix) as local:
        yield Staged(remote, local)


def _stage(
    remote: str,
    local: str,
    prefixes: list[str],
    *,
    accept: Callable[[str], bool] | None = None,
    fetch: Callable[[str], bool] | None = None,
) -> list[str]:
    """Copy the files under ``remote/PREFIX`` for each prefix into ``local`` (same relative paths).

    Only files ``accept(relative_path)`` admits are staged; returns their relative paths.
    A staged file ``fetch(relative_path)`` declines is not downloaded: an empty (sparse)
    file of the same size stands in for it, so listings, sizes and input fingerprints
    see the remote folder as it is, for files no reader opens (images beside the CSVs).
    """
    base = remote.rstrip("/")
    urls: list[str] = []
    rels: list[str] = []
    for prefix in prefixes:
        for url, size in io.list_sizes(io.join(base, prefix)).items():
            rel = url[len(base) + 1 :]
            if io.is_leftover(rel) or (accept is not None and not accept(rel)):
                continue
            rels.append(rel)
            if fetch is None or fetch(rel):
                urls.append(url)
            else:
                _placeholder(os.path.join(local, rel), size)
    io.download(urls, [os.path.join(local, url[len(base) + 1 :]) for url in urls])
    return rels


def _placeholder(path: str, size: int) -> None:
    """A file of ``size`` bytes that takes no disk space (a hole), standing in for one not fetched."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.truncate(size)


def _publish(local: str, remote: str, rels: list[str]) -> list[str]:
    """Upload ``local/REL`` to ``remote/REL`` for each relative path, each atomically; return the URLs."""
    urls = []
    for rel in rels:
        url = io.join(remote, rel)
        io.upload(os.path.join(local, rel), url)
        urls.append(url)
    return urls


def files_under(folder: str, root: str) -> list[str]:
    """Paths relative to ``root`` of the files under a local ``folder`` (hidden files left out): what to publish."""
    return [os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(folder) for f in files
            if not f.startswith(".")]


def check_name(name: str, kind: str) -> str:
    """Refuse a batch or plate name that is not a plain folder name (``../x``, ``a/b``, empty, hidden)."""
    text = str(name)
    if (not text.strip() or text in (".", "..") or text.startswith(".") or "/" in text or "\\" in text
            or any(ord(ch) < 32 for ch in text)):
        raise InputError(f"{kind} name {text!r} is not a plain name (no '/', not empty, not starting with '.'); "
                         f"give the {kind} folder's name as it is under analysis/")
    return text


def _listing(folder: str) -> list[str]:
    """Names of the subfolders of a local folder or prefix of a URL."""
    if io.is_remote(folder):
        entries = list_entries(folder.rstrip("/") + "/")
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")
    path = Path(folder)
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")) if path.is_dir() else []


def find_plate(workspace: PathLike, batch: str, plate: str) -> str:
    """``analysis/BATCH/PLATE/analysis``, or an error naming what exists there instead."""
    check_name(batch, "batch")
    check_name(plate, "plate")
    ws = Workspace(str(workspace))
    root = ws.folder("analysis")
    batches = _listing(root)
    if batch not in batches:
        there = f"batches there: {', '.join(batches)}" if batches else "it has no batch folders"
        raise InputError(f"batch '{batch}' not found under {root}; {there}")
    plates = _listing(ws.folder("analysis", batch))
    if plate not in plates:
        there = f"plates there: {', '.join(plates)}" if plates else "it has no plate folders"
        note = next((n for n in (spelling_note(plate, p) for p in plates) if n), "")
        raise InputError(f"plate '{plate}' not found under {ws.folder('analysis', batch)}; {there}{note}")
    return ws.analysis(batch, plate)


def _lock_holder(path: str) -> str:
    with contextlib.suppress(OSError, ValueError):
        return f"process {int(Path(path).read_text().split()[0])}"
    return "another process"


@contextlib.contextmanager
def plate_lock(workspace: PathLike, batch: str, plate: str, *, wait: bool = False) -> Iterator[str]:
    """Hold ``backend/BATCH/.PLATE.lock`` (fcntl) while a plate is collated; local workspaces only.

    Without ``wait`` a plate another process holds is an ``InputError`` naming that process.
    Folders this creates are removed again when they are left empty.
    """
    path = Workspace(str(workspace)).lock(batch, plate)
    batch_dir = Path(path).parent
    made = [p for p in (batch_dir.parent, batch_dir) if not p.exists()]
    for attempt in itertools.count():
        batch_dir.mkdir(parents=True, exist_ok=True)
        try:  # never through a link: a link there would have its target emptied
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except FileNotFoundError:  # the folder was removed by a run finishing just now
            if attempt < 20:
                continue
            raise OutputError(f"cannot make the lock file {path}; check that folder, then re-run") from None
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise OutputError(f"{path} is a link where cytoprofile keeps its lock file; remove the link "
                              "(nothing of the plate is in it), then re-run") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise InputError(f"plate {plate} is being collated by {_lock_holder(path)}; wait for it to finish "
                             "or add --wait") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the lock file as we waited: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()


_SCRATCH_LOCK = ".cytoprofile-scratch.lock"


def _clean_scratch(parent: str) -> None:
    """Remove this user's scratch folders of runs that were killed (their lock is free); another user's
    folders in a shared ``/tmp`` are theirs (and unreadable): left alone."""
    for entry in Path(parent).glob("cytoprofile-*"):
        lock = entry / _SCRATCH_LOCK
        try:
            if entry.is_symlink() or not entry.is_dir() or entry.stat().st_uid != os.getuid() or not lock.is_file():
                continue
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live run
        finally:
            os.close(fd)
        shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def scratch_dir(tmp_dir: str | None, prefix: str) -> Iterator[str]:
    """A private scratch folder in ``tmp_dir`` (created if missing), removed afterwards.

    Scratch folders of killed runs in the same place are removed first; a live run's
    folder is recognised by the lock it holds.
    """
    parent = tmp_dir or tempfile.gettempdir()
    with io.output_errors(parent):
        made = not os.path.lexists(parent)
        try:
            Path(parent).mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise InputError(f"--tmp-dir {parent} is a file, not a folder") from None
        if made and tmp_dir:  # created as the README says, and said (a mistyped path shows here)
            logging.getLogger("cytoprofile").info("--tmp-dir %s did not exist: created it", parent)
        _clean_scratch(parent)
        folder = tempfile.mkdtemp(prefix=f"cytoprofile-{prefix}-", dir=parent)
        # locked under another name, then renamed: a cleaner never sees the lock file unlocked
        pending = os.path.join(folder, _SCRATCH_LOCK + ".new")
        fd = os.open(pending, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.replace(pending, os.path.join(folder, _SCRATCH_LOCK))
    try:
        yield folder
    finally:
        os.close(fd)
        shutil.rmtree(folder, ignore_errors=True)
