"""What a run of a plate builds: its options, the input fingerprint, and the comparison with the last build."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from .. import io
from ..layout import Workspace, profiles_name, report_name, single_cell_name, sqlite_name
from .cells import CELL_OPTIONS
from .outputs import kind_label, kind_of

__all__ = ['Plan', 'build_options', 'input_fingerprint', 'listing_digest', 'plan_build', 'remote_fingerprint']

log = logging.getLogger("cytoprofile.collate")




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
          *, overwrite: bool) -> Plan:
    """Compare the asked outputs with the trusted ones of the last build (see the README's "Re-runs")."""
    asked = set(build["backend"])
    previous = dict((report or {}).get("options") or {})
    if "inputs" in build and previous:
        previous["inputs"] = (report or {}).get("inputs")
    present = _kinds_present(plate, report, trusted)
    same = bool(previous) and _data_options(previous) == _data_options(build)
    profile = profiles_name(plate, build["profile_format"])
    cells = {single_cell_name(plate, f) for f in build.get("single_cells") or ()}
    if not overwrite and same and asked <= present and profile in trusted and cells <= set(trusted):
        return Plan(skip=True)
    others = present - asked
    stale = others if overwrite or not same else set()
    kinds = tuple(k for k in ("sqlite", "parquet") if k in asked or k in stale)
    kept: dict[str, Any] = {}
    if same and not overwrite:
        kept = {n: e for n, e in (report or {}).get("outputs", {}).items() if n in trusted and kind_of(plate, n) in others}
    if previous and (not same or overwrite):
        changed = sorted(k for k in _data_options(build) if previous.get(k) != build[k])
        why = f"options changed since the last build ({', '.join(changed)})" if changed else "--overwrite"
        if changed == ["inputs"]:
            why = "the plate's input files changed since the last build (files added, removed or resized)"
        replaced = sorted({kind_label(plate, n) for n in trusted} - {report_name(plate)})
        (log.warning if changed else log.info)("%s: %s; replacing %s", plate, why, ", ".join(replaced) or "its outputs")
    elif kept:
        log.info("%s: keeping %s of the last build (still current)", plate,
                 ", ".join(sorted({kind_label(plate, n) for n in kept})))
    return Plan(skip=False, kinds=kinds, kept=kept)


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
    return listing_digest(sizes)


def listing_digest(sizes: dict[str, int]) -> str:
    """The input fingerprint of relative path → size, local or from an object-storage listing alike."""
    import hashlib

    return hashlib.sha256("\n".join(sorted(f"{rel}\t{size}" for rel, size in sizes.items())).encode()).hexdigest()[:32]


def remote_fingerprint(ws: str, batch: str, plate: str) -> str:
    """:func:`input_fingerprint` of a plate on object storage, from one listing (the same value as for a local copy)."""
    root = Workspace(str(ws)).analysis(batch, plate).rstrip("/")
    return listing_digest({url[len(root) + 1:]: size for url, size in io.list_sizes(root).items()})


def build_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options that shape a plate's outputs (recorded in the report, compared on re-runs)."""
    keys: tuple[str, ...] = ("backend", "profile_format", "operation", "compartments", "image_features", "image_feature_categories", "strata",
            "count_check", "file_prefix")
    keys += tuple(k for k in CELL_OPTIONS if k in options)  # recorded only when asked: older reports stay current
    return {k: list(options[k]) if isinstance(options[k], (list, tuple)) else options[k] for k in keys}


