"""The handbook's workspace layout: where each kind of file lives, local or on a URL."""

from __future__ import annotations

import os
from collections.abc import Callable

from . import io

__all__ = [
    "analysis_dir",
    "backend_dir",
    "backend_files",
    "platemap_dir",
    "publish",
    "stage",
]

PathLike = str | os.PathLike[str]


def analysis_dir(workspace: PathLike, batch: str, plate: str) -> str:
    """``analysis/BATCH/PLATE/analysis``: one subfolder per site."""
    return io.join(workspace, "analysis", batch, plate, "analysis")


def backend_dir(workspace: PathLike, batch: str, plate: str) -> str:
    """``backend/BATCH/PLATE``: single cells and the per-well aggregate."""
    return io.join(workspace, "backend", batch, plate)


def backend_files(workspace: PathLike, batch: str, plate: str, *, profile_format: str = "csv") -> dict[str, str]:
    """The final file names of a plate's backend outputs."""
    base = backend_dir(workspace, batch, plate)
    return {
        "sqlite": io.join(base, f"{plate}.sqlite"),
        "parquet_prefix": io.join(base, f"{plate}"),
        "profiles": io.join(base, f"{plate}.{profile_format}"),
        "report": io.join(base, f"{plate}.report.json"),
    }


def platemap_dir(workspace: PathLike, batch: str) -> str:
    """``metadata/platemaps/BATCH``: barcode_platemap.csv and platemap/*.txt."""
    return io.join(workspace, "metadata", "platemaps", batch)


def stage(
    remote: str,
    local: str,
    prefixes: list[str],
    *,
    accept: Callable[[str], bool] | None = None,
) -> list[str]:
    """Download the files under ``remote/PREFIX`` for each prefix into ``local`` (same relative paths).

    Only files ``accept(relative_path)`` admits are fetched; returns their relative paths.
    """
    base = remote.rstrip("/")
    urls: list[str] = []
    rels: list[str] = []
    for prefix in prefixes:
        for url in io.list_files(io.join(base, prefix)):
            rel = url[len(base) + 1 :]
            if rel.endswith(".tmp") or (accept is not None and not accept(rel)):
                continue
            urls.append(url)
            rels.append(rel)
    io.download(urls, [os.path.join(local, rel) for rel in rels])
    return rels


def publish(local: str, remote: str, rels: list[str]) -> list[str]:
    """Upload ``local/REL`` to ``remote/REL`` for each relative path, each atomically; return the URLs."""
    urls = []
    for rel in rels:
        url = io.join(remote, rel)
        io.upload(os.path.join(local, rel), url)
        urls.append(url)
    return urls
