"""The single-cell join: its plan (tables, columns, output names), one site at a time, and the
report of what went in, what came out and every object left out."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from ..errors import InputError
from ..vocabulary import (
    DEFAULT_COMPARTMENTS,
    compartment_features,
    metadata_columns,
    with_metadata_prefix,
)
from .sources import BackendSource, SiteSource, float_columns

__all__ = ["DEFAULT_HUB", "DEFAULT_METADATA", "READ_THREADS", "SingleCellJoin", "SingleCellReport", "single_cells"]

log = logging.getLogger("cytoprofile.single_cells")
DEFAULT_HUB = "Cytoplasm"
DEFAULT_METADATA = ("Metadata_Plate", "Metadata_Well", "Metadata_Site")
_MAX_NAMED = 100_000
#: threads reading an SQLite backend's sites ahead of the join (SQLite decodes without the GIL)
READ_THREADS = 2


@dataclass
class SingleCellReport:
    """What went in and what came out: rows per compartment, cells, and every object not joined."""

    backend: str
    compartments: dict[str, str] = field(default_factory=dict)
    rows_in: dict[str, int] = field(default_factory=dict)
    cells_out: int = 0
    sites: int = 0
    sites_without_cells: list[str] = field(default_factory=list)
    unlinked: dict[str, int] = field(default_factory=dict)
    unlinked_objects: list[dict[str, Any]] = field(default_factory=list)
    cells_without_image: int = 0
    outputs: dict[str, str] = field(default_factory=dict)
    cell_qc: dict[str, Any] = field(default_factory=dict)

    def name_unlinked(self, compartment: str, table_number: Any, images: np.ndarray, objects: np.ndarray, reason: str) -> None:
        """Count objects left out of the joined table and name them (up to a cap, then only counted)."""
        self.unlinked[compartment] = self.unlinked.get(compartment, 0) + len(objects)
        room = _MAX_NAMED - len(self.unlinked_objects)
        for i, o in list(zip(images.tolist(), objects.tolist()))[: max(room, 0)]:
            self.unlinked_objects.append({"compartment": compartment, "TableNumber": table_number,
                                          "ImageNumber": i, "ObjectNumber": o, "reason": reason})

    @property
    def lost(self) -> int:
        """Objects of any compartment that are not in the output."""
        return sum(self.unlinked.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (the report file)."""
        out = dict(self.__dict__)
        out["unlinked_named"] = len(self.unlinked_objects)
        return out


class SingleCellJoin:
    """The plan of a join (tables, columns, names) and its per-site execution.

    ``links`` maps each non-hub compartment to the hub column holding its ObjectNumber
    (default ``<Hub>_Parent_<Compartment>``). ``metadata`` names the Image columns to
    carry (``"all"`` for every ``Metadata_*`` column).
    """

    def __init__(
        self,
        backend: str | os.PathLike[str] | SiteSource,
        *,
        compartments: Sequence[str] = DEFAULT_COMPARTMENTS,
        hub: str = DEFAULT_HUB,
        links: Mapping[str, str] | None = None,
        image_feature_categories: Sequence[str] = (),
        metadata: Sequence[str] | Literal["all"] | None = None,
    ) -> None:
        self.source: BackendSource | SiteSource = backend if isinstance(backend, SiteSource) else BackendSource(backend)
        try:
            self._plan(list(compartments), hub, links, image_feature_categories, metadata)
        except BaseException:
            self.source.close()
            raise
        self.report = SingleCellReport(backend=self.source.path, compartments=dict(self.tables))

    def _plan(self, compartments: list[str], hub: str, links: Mapping[str, str] | None,
              categories: Sequence[str], metadata: Sequence[str] | Literal["all"] | None) -> None:
        compartments = [self.source.table(c) for c in compartments]  # as the backend spells them
        by_lower = {c.lower(): c for c in compartments}
        if hub.lower() not in by_lower:
            if len(compartments) != 1:
                raise InputError(f"hub compartment {hub} is not among the compartments {', '.join(compartments)}")
            hub = compartments[0]
        self.hub = by_lower.get(hub.lower(), hub)
        self.compartments = compartments
        self.tables = {c: self.source.table(c) for c in compartments}
        hub_cols = self.source.tables[self.tables[self.hub]]
        others = [c for c in compartments if c != self.hub]
        links = {by_lower.get(c.lower(), c): column for c, column in (links or {}).items()}
        self.links = {c: links.get(c, f"{self.hub}_Parent_{c}") for c in others}
        absent = [col for col in self.links.values() if col not in hub_cols]
        if absent:
            raise InputError(f"{self.source.path}: the {self.hub} table has no link column {', '.join(absent)}; "
                             f"give --links COMPARTMENT=COLUMN (columns with Parent: "
                             f"{', '.join(c for c in hub_cols if '_Parent_' in c) or 'none'})")
        shared = [col for col, n in Counter(self.links.values()).items() if n > 1]
        if shared:
            users = [c for c, col in self.links.items() if col == shared[0]]
            raise InputError(f"--links: {' and '.join(users)} are both linked through {shared[0]}; each compartment "
                             f"needs its own link column of the {self.hub} table (e.g. {self.hub}_Parent_{users[0]})")
        link_names = set(self.links.values())
        self.features = {c: [f for f in compartment_features(c, self.source.tables[t]) if f not in link_names]
                         for c, t in self.tables.items()}
        self._plan_image(categories, metadata)
        self._plan_names(others)

    def _plan_image(self, categories: Sequence[str], metadata: Sequence[str] | Literal["all"] | None) -> None:
        raw = self.source.tables[self.source.image_table]
        bare = {(c[len("Image_"):] if c.startswith("Image_") else c): c for c in raw}
        if metadata == "all":
            wanted = metadata_columns(bare)
        elif metadata is None:
            wanted = [c for c in DEFAULT_METADATA if c in bare]
        else:
            wanted = list(metadata)
            missing = [c for c in wanted if c not in bare]
            if missing:
                raise InputError(f"{self.source.path}: the Image table has no {', '.join(missing)}; Metadata columns: "
                                 f"{', '.join(metadata_columns(bare))}")
        self.image_metadata = wanted
        cats = tuple(f"{c}_" for c in categories)
        self.image_features = [c for c in bare if cats and c.startswith(cats)]
        unmatched = [c for c in categories if not any(col.startswith(f"{c}_") for col in bare)]
        if unmatched:
            raise InputError(f"{self.source.path}: no Image column of categor(y/ies) {', '.join(unmatched)}")
        self._image_raw = [bare[c] for c in ("TableNumber", "ImageNumber", *wanted, *self.image_features)]

    def _plan_names(self, others: list[str]) -> None:
        """Key names as the old merge gives them: hub and first linked object suffixed, the next bare."""
        self.object_names = {self.hub: f"Metadata_ObjectNumber_{self.hub.lower()}" if others else "Metadata_ObjectNumber"}
        for k, c in enumerate(others):
            self.object_names[c] = "Metadata_ObjectNumber" if k == 1 else f"Metadata_ObjectNumber_{c.lower()}"
        self.metadata_columns = ["Metadata_TableNumber", "Metadata_ImageNumber", *self.image_metadata,
                                 self.object_names[self.hub], *[with_metadata_prefix(col) for col in self.links.values()],
                                 *[self.object_names[c] for c in others]]
        self.feature_columns = [f"Image_{c}" for c in self.image_features]
        for c in self.compartments:
            self.feature_columns.extend(self.features[c])

    # ---------------------------------------------------------------- per site

    def site_order(self) -> list[Any]:
        """Image-table order of sites, then any site that has objects but no Image row."""
        image = self.source.image(self._image_raw)
        # old backends may store ImageNumber as text; objects are read as numbers
        image["ImageNumber"] = pd.to_numeric(image["ImageNumber"], errors="coerce").astype("Int64")
        self.image = image.set_index(["TableNumber", "ImageNumber"], drop=False)
        order = list(dict.fromkeys(self.image["TableNumber"].tolist()))
        seen = set(order)
        for table in self.tables.values():
            for tn in self.source.table_numbers(table):
                if tn not in seen:
                    order.append(tn)
                    seen.add(tn)
        return order

    def read_ahead(self, order: Sequence[Any], *, threads: int, features: Mapping[str, Sequence[str]] | None = None) -> None:
        """Read the sites of ``order`` a few ahead in ``threads`` threads, for :meth:`join_site` calls in
        that order with the same ``features`` (a backend on disk; sites held in memory need no reading)."""
        if isinstance(self.source, BackendSource):
            features = features or self.features
            reads = [(self.tables[self.hub], [*self.links.values(), *features[self.hub]]),
                     *[(self.tables[c], features[c]) for c in self.links]]
            self.source.read_ahead(order, reads, threads=threads)

    def join_site(self, table_number: Any, *, features: Mapping[str, Sequence[str]] | None = None,
                  count: bool = True) -> pa.Table:
        """The joined rows of one site (``features`` restricts the columns, e.g. for a QC pass)."""
        features = features or self.features
        hub_table = self.tables[self.hub]
        link_cols = list(self.links.values())
        h_img, h_obj, h_vals = self.source.read_site(hub_table, table_number, [*link_cols, *features[self.hub]])
        keep = np.ones(len(h_obj), dtype=bool)
        matched: dict[str, np.ndarray] = {}
        reads: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for k, (c, col) in enumerate(self.links.items()):
            img, obj, vals = self.source.read_site(self.tables[c], table_number, features[c])
            reads[c] = (img, obj, vals)
            index, ok = _match(img, obj, h_img, h_vals[:, k], table=self.tables[c], table_number=table_number)
            matched[c] = index
            if count:
                bad = keep & ~ok
                if bad.any():
                    self.report.name_unlinked(self.hub, table_number, h_img[bad], h_obj[bad], f"{col} links to no {c} object")
            keep &= ok
        for c, col in self.links.items():  # one object joined into two cells: neither is known right
            shared = _shared(matched[c], keep)
            if count and shared.any():
                self.report.name_unlinked(self.hub, table_number, h_img[shared], h_obj[shared],
                                          f"{col} names a {c} object that another {self.hub} object also names")
            keep &= ~shared
        if count:
            self._count(table_number, h_obj, reads, matched, keep)
        return self._assemble(table_number, h_img[keep], h_obj[keep], h_vals[keep], reads, {c: m[keep] for c, m in matched.items()}, features)

    def _count(self, table_number: Any, h_obj: np.ndarray, reads: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
               matched: Mapping[str, np.ndarray], keep: np.ndarray) -> None:
        self.report.rows_in[self.hub] = self.report.rows_in.get(self.hub, 0) + len(h_obj)
        for c, (img, obj, _) in reads.items():
            self.report.rows_in[c] = self.report.rows_in.get(c, 0) + len(obj)
            used = np.zeros(len(obj), dtype=bool)
            used[matched[c][keep]] = True
            if (~used).any():
                self.report.name_unlinked(c, table_number, img[~used], obj[~used], f"no joined {self.hub} object links to it")
        self.report.cells_out += int(keep.sum())
        self.report.sites += 1
        if not keep.any():
            self.report.sites_without_cells.append(str(table_number))

    def _assemble(self, table_number: Any, img: np.ndarray, obj: np.ndarray, h_vals: np.ndarray,
                  reads: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]], matched: Mapping[str, np.ndarray],
                  features: Mapping[str, Sequence[str]]) -> pa.Table:
        n = len(obj)
        names: list[str] = ["Metadata_TableNumber", "Metadata_ImageNumber"]
        tn_type = pa.string() if isinstance(table_number, str) else pa.int64()
        arrays: list[pa.Array] = [pa.array([table_number] * n, type=tn_type), pa.array(img)]
        image_rows = self._image_rows(table_number, img)
        for c in self.image_metadata:
            names.append(c)
            arrays.append(pa.array(image_rows[c], from_pandas=True) if n else pa.nulls(0, self._image_type(c)))
        names.append(self.object_names[self.hub])
        arrays.append(pa.array(obj))
        for k, col in enumerate(self.links.values()):
            names.append(with_metadata_prefix(col))
            arrays.append(pa.array(h_vals[:, k].astype(np.int64)))
        for c in self.links:
            names.append(self.object_names[c])
            arrays.append(pa.array(reads[c][1][matched[c]]))
        for c in self.image_features:
            names.append(f"Image_{c}")
            arrays.append(pa.array(pd.to_numeric(image_rows[c], errors="coerce").to_numpy(np.float64)))
        nlinks = len(self.links)
        for c in self.compartments:
            vals = h_vals[:, nlinks:] if c == self.hub else reads[c][2][matched[c]]
            names.extend(features[c])
            arrays.extend(float_columns(vals))
        return pa.table(arrays, names=names)

    def _image_rows(self, table_number: Any, img: np.ndarray) -> pd.DataFrame:
        """Image metadata for each cell; cells whose image has no Image row get nulls (and are counted)."""
        keys = pd.MultiIndex.from_arrays([[table_number] * len(img), img])
        rows = self.image.reindex(keys)
        missing = int(rows["ImageNumber"].isna().sum())
        if missing:
            self.report.cells_without_image += missing
        return rows.reset_index(drop=True)

    def _image_type(self, column: str) -> pa.DataType:
        dtype = self.image[column].dtype
        if pd.api.types.is_integer_dtype(dtype):
            return pa.int64()
        if pd.api.types.is_float_dtype(dtype):
            return pa.float64()
        return pa.string()

    def sites(self, *, threads: int = READ_THREADS, progress: Callable[[int, int], None] | None = None) -> Iterator[pa.Table]:
        """Every site's joined table, in Image-table order (read ahead in ``threads`` threads; 0: none)."""
        order = self.site_order()
        self.read_ahead(order, threads=threads)
        for done, tn in enumerate(order, start=1):
            yield self.join_site(tn)
            if progress is not None:
                progress(done, len(order))

    def close(self) -> None:
        """Release the backend."""
        self.source.close()


def _shared(index: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The kept rows whose linked object (``index``) another kept row links to as well."""
    objects, counts = np.unique(index[keep], return_counts=True)
    return keep & np.isin(index, objects[counts > 1])


def _match(img: np.ndarray, obj: np.ndarray, h_img: np.ndarray, link: np.ndarray, *, table: str,
           table_number: Any) -> tuple[np.ndarray, np.ndarray]:
    """For each hub row, the index of the object (same image, ObjectNumber = link) and whether one exists."""
    key = img.astype(np.int64) * (1 << 32) + obj.astype(np.int64)
    order = np.argsort(key, kind="stable")
    skey = key[order]
    if len(skey) > 1 and (skey[1:] == skey[:-1]).any():
        raise InputError(f"{table}: site {table_number} has two rows with the same ImageNumber and ObjectNumber")
    valid = np.isfinite(link) & (link > 0)
    hkey = h_img.astype(np.int64) * (1 << 32) + np.where(valid, link, 0).astype(np.int64)
    pos = np.searchsorted(skey, hkey)
    pos_c = np.minimum(pos, max(len(skey) - 1, 0))
    ok = valid & (len(skey) > 0) & (skey[pos_c] == hkey if len(skey) else np.zeros(len(hkey), dtype=bool))
    index = order[pos_c] if len(skey) else np.zeros(len(hkey), dtype=np.int64)
    return index, ok


# ---------------------------------------------------------------- public entry points


def single_cells(
    backend: str | os.PathLike[str],
    *,
    compartments: Sequence[str] = DEFAULT_COMPARTMENTS,
    hub: str = DEFAULT_HUB,
    links: Mapping[str, str] | None = None,
    image_feature_categories: Sequence[str] = (),
    metadata: Sequence[str] | Literal["all"] | None = None,
    threads: int = READ_THREADS,
) -> pa.Table:
    """The joined single-cell table of a backend, in memory (Arrow; ``.to_pandas()`` for pandas).

    For plates that do not fit in memory use :func:`write_single_cells`, which streams.
    """
    join = SingleCellJoin(backend, compartments=compartments, hub=hub, links=links,
                          image_feature_categories=image_feature_categories, metadata=metadata)
    try:
        parts = list(join.sites(threads=threads))
    finally:
        join.close()
    if join.report.lost:
        log.warning("%s: %d object(s) not linked into a cell: %s", backend, join.report.lost, join.report.unlinked)
    return pa.concat_tables(parts, promote_options="permissive") if parts else _empty(join)


def _empty(join: SingleCellJoin) -> pa.Table:
    return pa.table({c: pa.array([], type=pa.float64()) for c in [*join.metadata_columns, *join.feature_columns]})


