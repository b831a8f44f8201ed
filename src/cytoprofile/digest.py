"""The one way cytoprofile hashes a file's content: streamed in 1 MiB chunks, never a whole file in memory."""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any

__all__ = ["CHUNK", "ReadDigests", "bytes_digest", "file_digest", "note_read"]

#: bytes read at a time when hashing a file
CHUNK = 1 << 20


def _hasher(algorithm: str) -> Any:
    if algorithm == "xxh3_128":
        import xxhash

        return xxhash.xxh3_128()
    return hashlib.new(algorithm)


def file_digest(path: str, *, algorithm: str = "xxh3_128") -> str:
    """The hex digest of a file's content (128-bit XXH3 by default: made to detect changes, and fast enough to
    hash a plate in a fraction of its ingest time; ``sha256`` where a record keeps SHA-256), read in chunks."""
    digest = _hasher(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return str(digest.hexdigest())


def bytes_digest(raw: bytes) -> str:
    """:func:`file_digest` of a file whose bytes are already in memory."""
    import xxhash

    return str(xxhash.xxh3_128(raw).hexdigest())


class ReadDigests:
    """While active, the digests of files read whole under ``root`` (by :func:`note_read`), so a first build
    records its inputs without reading their bytes a second time: path -> (size, mtime_ns, when read, digest,
    ctime_ns, inode)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root) + os.sep
        self.digests: dict[str, tuple[int, int, int, str, int, int]] = {}

    def __enter__(self) -> ReadDigests:
        with _LOCK:
            _ACTIVE.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        with _LOCK:
            _ACTIVE.remove(self)


_ACTIVE: list[ReadDigests] = []
_LOCK = threading.Lock()


def note_read(path: str, st: os.stat_result, raw: bytes, read_ns: int) -> None:
    """A file was read whole (``st`` taken before reading, at ``read_ns``): keep its digest for an active
    :class:`ReadDigests`."""
    if not _ACTIVE:
        return
    full = os.path.abspath(path)
    with _LOCK:
        wanted = [r for r in _ACTIVE if full.startswith(r.root)]
    if wanted:
        entry = (st.st_size, st.st_mtime_ns, read_ns, bytes_digest(raw), st.st_ctime_ns, st.st_ino)
        with _LOCK:
            for r in wanted:
                r.digests[full] = entry
