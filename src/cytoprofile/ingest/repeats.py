"""Site folders that repeat one another: the same folder through a link, a copy, two versions of one site.

A repeated site would store its rows twice, or store one of two versions without knowing it right: the
later copy, or every version, is quarantined, naming the others.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Sequence

from ..digest import file_digest
from .model import IMAGE_TABLE, SiteScan

__all__ = ["mark_duplicates", "mark_repeated_sites", "mark_shared_files"]

log = logging.getLogger("cytoprofile.ingest")


def mark_duplicates(scans: Sequence[SiteScan]) -> None:
    """The same site reached twice (a link, a copy): the later one is refused. Two different sites sharing a
    TableNumber: the later one is renumbered."""
    by_path: dict[str, str] = {}
    by_digest: dict[str, SiteScan] = {}
    by_number: dict[int, str] = {}
    for scan in sorted(scans, key=lambda s: s.name):
        if scan.real_path is not None and scan.real_path in by_path:
            scan.problem = None
            scan.quarantine(f"the same folder as site {by_path[scan.real_path]} (reached twice through a link)", scan.path)
        elif scan.digest is not None and scan.digest in by_digest and scan.problem is None:
            _mark_copy(scan, by_digest[scan.digest])  # a site quarantined already (Image.csv without rows) keeps its reason
        elif scan.table_number is not None and scan.table_number in by_number:
            _renumber(scan, by_number)
        if scan.real_path is not None:
            by_path.setdefault(scan.real_path, scan.name)
        if scan.digest is not None and scan.problem is None:
            by_digest.setdefault(scan.digest, scan)
        if scan.table_number is not None and scan.problem is None:
            by_number.setdefault(scan.table_number, scan.name)


def _renumber(scan: SiteScan, taken: dict[int, str]) -> None:
    """Two different sites whose Image.csv share a CRC32 (by chance: about n²/2³³ for n sites): the later one
    (by name) gets a deterministic re-hash as its TableNumber, and its report entry says so."""
    assert scan.table_number is not None
    crc, number, salt = scan.table_number, scan.table_number, 0
    while number in taken:
        salt += 1
        number = zlib.crc32(f"{scan.name}#{salt}".encode(), crc) & 0xFFFFFFFF
    scan.notes.append(f"TableNumber {number}: the CRC32 of Image.csv, {crc}, is also site {taken[crc]}'s "
                      "(two different files, a chance collision), so this site's is re-hashed")
    scan.table_number = number


def mark_shared_files(scans: Sequence[SiteScan]) -> None:
    """A site whose table file is another site's (a link to it): its rows would be stored twice, under two sites;
    the later site is quarantined, naming the file and the site that holds it."""
    owner: dict[object, tuple[str, str]] = {}
    for scan in sorted((s for s in scans if s.problem is None), key=lambda s: s.name):
        keys = [_file_identity(path) for _, path, _ in scan.csv_files]
        for (entry, path, _), key in zip(scan.csv_files, keys):
            site, name = owner.get(key, (scan.name, entry))
            if site != scan.name:
                scan.quarantine(f"{entry} is the same file as site {site}'s {name} (a link to it): its rows are that "
                                "site's; give this site its own file", path)
                break
        if scan.problem is None:
            owner.update({key: (scan.name, entry) for (entry, _, _), key in zip(scan.csv_files, keys)})


def _file_identity(path: str) -> object:
    """What makes two paths one file: its device and inode (one ``stat``, which follows symbolic links and
    also catches hard links), or the resolved path where the file cannot be stat'ed or has no inode number."""
    try:
        info = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return (info.st_dev, info.st_ino) if info.st_ino else os.path.realpath(path)  # 0: a file system without inodes


def _mark_copy(scan: SiteScan, first: SiteScan) -> None:
    """A folder whose Image.csv is ``first``'s: a copy (refused, ``first`` kept) when every file is the same,
    else two versions of one site, of which neither is known right (both refused)."""
    image = scan.files.get(IMAGE_TABLE)
    scan.problem = None
    if _same_files(scan, first):
        scan.quarantine(f"a copy of site {first.name} (identical Image.csv and files)", image)
        return
    why = ("Image.csv is identical to site {other}'s but other files differ (a re-run?); which copy is right is "
           "unknown: remove the wrong folder")
    scan.quarantine(why.format(other=first.name), image)
    first.quarantine(why.format(other=scan.name), first.files.get(IMAGE_TABLE))


def _same_files(a: SiteScan, b: SiteScan) -> bool:
    """Whether two site folders hold the same CSV files, by name and content."""
    files = [{name.lower(): path for name, path, _ in s.csv_files} for s in (a, b)]
    if files[0].keys() != files[1].keys():
        return False
    pairs = [(files[0][n], files[1][n]) for n in files[0]]
    return (all(os.path.getsize(x) == os.path.getsize(y) for x, y in pairs)
            and all(file_digest(x) == file_digest(y) for x, y in pairs))


def mark_repeated_sites(scans: Sequence[SiteScan], plate: str) -> None:
    """One (plate, well, site) in two folders whose Image.csv differ (a re-run copied beside the first run): which
    is right is unknown, so every folder holding it is quarantined, naming the others (a warning on the terminal).
    Where Image.csv names no site, the same image files in two folders are one site twice."""
    holders: dict[tuple[str, ...], list[SiteScan]] = {}
    for scan in sorted(scans, key=lambda s: s.name):
        if scan.problem is None:
            for key in dict.fromkeys(scan.site_keys):
                holders.setdefault(key, []).append(scan)
    repeated = {key: found for key, found in holders.items() if len(found) > 1}
    for key, found in sorted(repeated.items()):
        for scan in found:
            others = ", ".join(o.name for o in found if o is not scan)
            scan.quarantine(f"site {plate}/{'/'.join(key)} is also in folder(s) {others} (Image.csv differs: a re-run?); "
                            "which copy is right is unknown: remove the wrong folder", scan.files.get(IMAGE_TABLE))
    images = _repeated_images(scans)
    for scan in scans:
        if scan.name in images:
            scan.quarantine(images[scan.name], scan.files.get(IMAGE_TABLE))
    if repeated:
        key, found = sorted(repeated.items())[0]
        log.warning("%s: %d site(s) appear in more than one folder and are quarantined (listed in the report); first: "
                    "%s in %s", plate, len(repeated), "/".join(key), ", ".join(s.name for s in found))
    if images:
        log.warning("%s: %d folder(s) hold the same image files as another and are quarantined (listed in the "
                    "report); first: %s", plate, len(images), images[min(images)])


def _repeated_images(scans: Sequence[SiteScan]) -> dict[str, str]:
    """Folders whose image rows name the same image files as another folder's, one of them without a site (Image.csv
    and the folder name give none; sites are told apart by their keys otherwise), by the file columns that vary in
    the plate (an illumination function's file is the same everywhere), with the
    reason. A column alike in every row tells nothing, so a plate of one site and its copy is not found here."""
    rows = [(scan, row) for scan in sorted(scans, key=lambda s: s.name) if scan.problem is None
            for row in dict.fromkeys(scan.image_files)]
    seen: dict[str, set[str]] = {}
    for _, row in rows:
        for column, value in row:
            seen.setdefault(column, set()).add(value)
    varying = {column for column, values in seen.items() if len(values) > 1}
    holders: dict[tuple[tuple[str, str], ...], list[str]] = {}
    for scan, row in rows:
        key = tuple(pair for pair in row if pair[0] in varying)
        if key and scan.name not in holders.setdefault(key, []):
            holders[key].append(scan.name)
    out: dict[str, str] = {}
    unsited = {scan.name for scan, _ in rows if not scan.site_keys}
    for key, found in holders.items():
        for name in found if len(found) > 1 and unsited & set(found) else ():
            others = ", ".join(o for o in found if o != name)
            out.setdefault(name, f"{name} names the same image files as folder(s) {others} ({key[0][0]} "
                                 f"{key[0][1]!r}; no Metadata_Site tells them apart): one site twice, and which copy "
                                 "is right is unknown: remove the wrong folder")
    return out
