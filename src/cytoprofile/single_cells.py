"""One row per cell: every compartment of a backend joined, written as Parquet and AnnData.

Compartments are joined as the old single-cell merge joins them: a hub compartment
(``Cytoplasm``) links to the others through its ``<Hub>_Parent_<Other>`` columns,
inner joins on (TableNumber, ImageNumber, link = ObjectNumber), then the image
metadata on (TableNumber, ImageNumber). The join runs one site (TableNumber) at a
time, so memory holds one site's cells whatever the plate size. Objects the join
cannot link are counted and named in the report, never dropped silently.

Column names follow the old merge: ``Metadata_TableNumber``, ``Metadata_ImageNumber``,
``Metadata_ObjectNumber_<hub>``, ``Metadata_<Hub>_Parent_<Other>``, ... ; metadata
columns come first, then ``Image_*`` features (if asked), then each compartment's
features in the order the compartments are given.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import io
from .errors import InputError
from .ingest import SINGLE_CELL_TABLE
from .vocabulary import (
    DEFAULT_COMPARTMENTS,
    compartment_features,
    metadata_columns,
    with_metadata_prefix,
)

__all__ = [
    "DEFAULT_HUB",
    "DEFAULT_METADATA",
    "SingleCellFormat",
    "SingleCellJoin",
    "SingleCellReport",
    "SingleCellStream",
    "feature_annotation",
    "single_cells",
    "single_cells_paths",
    "write_single_cells",
]

log = logging.getLogger("cytoprofile.single_cells")
SingleCellFormat = Literal["parquet", "anndata"]
DEFAULT_HUB = "Cytoplasm"
DEFAULT_METADATA = ("Metadata_Plate", "Metadata_Well", "Metadata_Site")
#: table name the single-cell output takes beside a Parquet backend; never a backend table
OUTPUT_TABLE = SINGLE_CELL_TABLE
_MAX_NAMED = 100_000
#: values per Parquet row group of the single-cell table (whole sites; ~3 JUMP-width sites)
ROW_GROUP_VALUES = 4_000_000


# ---------------------------------------------------------------- backend access


class _Source:
    """Per-site reads of an SQLite (either old generation) or Parquet backend."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from .backend import open_backend

        self.reader = open_backend(path)
        self.path = str(path)
        self.tables = {t: cols for t, cols in self.reader.tables.items() if t != OUTPUT_TABLE}
        self.image_table = self.reader.image_table
        self._parquet: dict[str, _ParquetTable] = {}

    def table(self, compartment: str) -> str:
        """The backend table of a compartment (case-insensitive), or an error listing the others."""
        return _table_of(self.path, self.tables, self.image_table, compartment)

    def image(self, columns: Sequence[str]) -> pd.DataFrame:
        """Only the asked Image columns (few), with an older backend's ``Image_`` prefix removed."""
        if self.reader.kind == "sqlite":
            cols = ", ".join(_quote(c) for c in columns)
            df = pd.read_sql_query(f"SELECT {cols} FROM {_quote(self.reader.image_table)}", self.reader.conn)
        else:
            from .backend import parquet_table_path

            df = pq.read_table(parquet_table_path(self.reader.prefix, self.reader.image_table), columns=list(columns)).to_pandas()
        return df.rename(columns={c: c[len("Image_"):] for c in df.columns if c.startswith("Image_")})

    def table_numbers(self, table: str) -> list[Any]:
        """TableNumbers present in a table, in storage order."""
        if self.reader.kind == "sqlite":
            if not self._indexed(table):
                log.warning("%s: table %s has no index on TableNumber; each site is a full scan (slow on large backends)",
                            self.path, table)
            rows = self.reader.conn.execute(f"SELECT DISTINCT TableNumber FROM {_quote(table)}").fetchall()
            return [r[0] for r in rows]
        return self._pq(table).table_numbers()

    def read_site(self, table: str, table_number: Any, columns: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ImageNumber, ObjectNumber (int64) and the float64 ``columns`` of one site's rows."""
        if self.reader.kind == "sqlite":
            cols = ", ".join(_quote(c) for c in ("ImageNumber", "ObjectNumber", *columns))
            sql = f"SELECT {cols} FROM {_quote(table)} WHERE TableNumber = ?"
            rows = self.reader.conn.execute(sql, [table_number]).fetchall()
            if not rows:
                return np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, len(columns)))
            values = _float_rows(rows, table, ["ImageNumber", "ObjectNumber", *columns])
            return values[:, 0].astype(np.int64), values[:, 1].astype(np.int64), np.asfortranarray(values[:, 2:])
        return self._pq(table).read_site(table_number, columns)

    def _indexed(self, table: str) -> bool:
        conn = self.reader.conn
        for row in conn.execute(f"PRAGMA index_list({_quote(table)})").fetchall():
            first = conn.execute(f"PRAGMA index_info({_quote(row[1])})").fetchone()
            if first is not None and first[2] == "TableNumber":
                return True
        return False

    def _pq(self, table: str) -> _ParquetTable:
        if table not in self._parquet:
            from .backend import parquet_table_path

            self._parquet[table] = _ParquetTable(parquet_table_path(self.reader.prefix, table))
        return self._parquet[table]

    def close(self) -> None:
        """Release the backend."""
        self.reader.close()


class _ParquetTable:
    """Row ranges of each site in one Parquet table; a site's row groups are read once."""

    def __init__(self, path: str) -> None:
        self.file = pq.ParquetFile(path)
        tn = self.file.read(columns=["TableNumber"]).column(0).to_numpy(zero_copy_only=False)
        self.ranges: dict[Any, list[tuple[int, int]]] = {}
        if len(tn):
            change = np.flatnonzero(tn[1:] != tn[:-1]) + 1
            starts = np.concatenate([[0], change])
            ends = np.concatenate([change, [len(tn)]])
            for s, e in zip(starts.tolist(), ends.tolist()):
                self.ranges.setdefault(tn[s].item() if hasattr(tn[s], "item") else tn[s], []).append((s, e))
        meta = self.file.metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._cache: dict[tuple[int, tuple[str, ...]], pa.Table] = {}

    def table_numbers(self) -> list[Any]:
        return list(self.ranges)

    def _group(self, index: int, columns: tuple[str, ...]) -> pa.Table:
        key = (index, columns)
        if key not in self._cache:
            if len(self._cache) > 2:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = self.file.read_row_group(index, columns=list(columns))
        return self._cache[key]

    def read_site(self, table_number: Any, columns: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cols = ("ImageNumber", "ObjectNumber", *columns)
        parts: list[pa.Table] = []
        for start, end in self.ranges.get(table_number, []):
            first = int(np.searchsorted(self.offsets, start, side="right") - 1)
            last = int(np.searchsorted(self.offsets, end, side="left") - 1)
            for g in range(first, last + 1):
                lo, hi = max(start, int(self.offsets[g])), min(end, int(self.offsets[g + 1]))
                parts.append(self._group(g, cols).slice(lo - int(self.offsets[g]), hi - lo))
        if not parts:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, len(columns)))
        got = pa.concat_tables(parts)
        return (got.column(0).cast(pa.int64()).to_numpy(zero_copy_only=False),
                got.column(1).cast(pa.int64()).to_numpy(zero_copy_only=False), _matrix(got.select(list(columns))))


def _matrix(table: pa.Table) -> np.ndarray:
    """A table's columns as one column-major float64 array (nulls as NaN), converted in one call, not per column."""
    if table.num_columns == 0 or table.num_rows == 0:
        return np.empty((table.num_rows, table.num_columns), order="F")
    if any(t != pa.float64() for t in table.schema.types):
        table = table.cast(pa.schema([(name, pa.float64()) for name in table.column_names]))
    batch = table.combine_chunks().to_batches()[0]
    return np.asarray(batch.to_tensor(null_to_nan=True, row_major=False))


def _float_columns(values: np.ndarray) -> list[pa.Array]:
    """Arrow arrays over the columns of a float64 matrix: one buffer, no per-column conversion."""
    values = np.asfortranarray(values, dtype=np.float64)
    n = values.shape[0]
    buf = pa.py_buffer(values) if values.size else None
    if buf is None:
        return [pa.array(np.empty(n)) for _ in range(values.shape[1])]
    return [pa.Array.from_buffers(pa.float64(), n, [None, buf], offset=k * n) for k in range(values.shape[1])]


def _table_of(where: str, tables: Mapping[str, Sequence[str]], image_table: str, compartment: str) -> str:
    """The table of a compartment (case-insensitive), or an error listing the others."""
    names = {t.lower(): t for t in tables if t != image_table}
    if compartment.lower() not in names:
        raise InputError(f"{where}: no {compartment} table; object tables: {', '.join(sorted(names.values())) or 'none'}")
    return names[compartment.lower()]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _float_rows(rows: list[tuple[Any, ...]], table: str, columns: Sequence[str]) -> np.ndarray:
    """Rows as float64; text that is not a number (old backends stored some) becomes NaN, with a warning."""
    try:
        return np.array(rows, dtype=np.float64)
    except (ValueError, TypeError):
        frame = pd.DataFrame(rows, columns=list(columns), dtype=object)
        converted = frame.apply(pd.to_numeric, errors="coerce")
        bad = [c for c in frame.columns if (converted[c].isna() & frame[c].notna()).any()]
        log.warning("%s: non-numeric values in %s read as missing", table, ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""))
        return converted.to_numpy(dtype=np.float64)


class _SiteSource:
    """The same reads as :class:`_Source`, from one site's arrays held in memory (the collate pass)."""

    image_table = "Image"

    def __init__(self, tables: Mapping[str, Sequence[str]], *, where: str) -> None:
        self.tables = {t: list(c) for t, c in tables.items()}
        self.path = where
        self._site: tuple[Any, pd.DataFrame, Mapping[str, np.ndarray]] | None = None

    def set_site(self, table_number: Any, image: pd.DataFrame, objects: Mapping[str, np.ndarray]) -> None:
        """The site to read next: its Image rows and per table an array on the table's columns after TableNumber."""
        self._site = (table_number, image, objects)

    def table(self, compartment: str) -> str:
        return _table_of(self.path, self.tables, self.image_table, compartment)

    def image(self, columns: Sequence[str]) -> pd.DataFrame:
        assert self._site is not None
        frame = self._site[1]
        out = pd.DataFrame({c: frame[c] if c in frame.columns else pd.Series([None] * len(frame), dtype=object) for c in columns})
        if "TableNumber" in columns and "TableNumber" not in frame.columns:
            out["TableNumber"] = self._site[0]
        return out

    def table_numbers(self, table: str) -> list[Any]:
        return [] if self._site is None else [self._site[0]]

    def read_site(self, table: str, table_number: Any, columns: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        assert self._site is not None and table_number == self._site[0]
        array = self._site[2].get(table)
        names = self.tables[table][1:]  # after TableNumber
        if array is None or not len(array):
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, len(columns)))
        at = {c: k for k, c in enumerate(names)}
        picked = np.asfortranarray(array[:, [at[c] for c in columns]]) if columns else np.empty((len(array), 0))
        return array[:, at["ImageNumber"]].astype(np.int64), array[:, at["ObjectNumber"]].astype(np.int64), picked

    def close(self) -> None:
        self._site = None


# ---------------------------------------------------------------- the join


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
        backend: str | os.PathLike[str] | _SiteSource,
        *,
        compartments: Sequence[str] = DEFAULT_COMPARTMENTS,
        hub: str = DEFAULT_HUB,
        links: Mapping[str, str] | None = None,
        image_feature_categories: Sequence[str] = (),
        metadata: Sequence[str] | Literal["all"] | None = None,
    ) -> None:
        self.source: _Source | _SiteSource = backend if isinstance(backend, _SiteSource) else _Source(backend)
        try:
            self._plan(list(compartments), hub, links, image_feature_categories, metadata)
        except BaseException:
            self.source.close()
            raise
        self.report = SingleCellReport(backend=self.source.path, compartments=dict(self.tables))

    def _plan(self, compartments: list[str], hub: str, links: Mapping[str, str] | None,
              categories: Sequence[str], metadata: Sequence[str] | Literal["all"] | None) -> None:
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
        links = dict(links or {})
        self.links = {c: links.get(c, f"{self.hub}_Parent_{c}") for c in others}
        absent = [col for col in self.links.values() if col not in hub_cols]
        if absent:
            raise InputError(f"{self.source.path}: the {self.hub} table has no link column {', '.join(absent)}; "
                             f"give --links COMPARTMENT=COLUMN (columns with Parent: "
                             f"{', '.join(c for c in hub_cols if '_Parent_' in c) or 'none'})")
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
            arrays.extend(_float_columns(vals))
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

    def sites(self, *, progress: Callable[[int, int], None] | None = None) -> Iterator[pa.Table]:
        """Every site's joined table, in Image-table order."""
        order = self.site_order()
        for done, tn in enumerate(order, start=1):
            yield self.join_site(tn)
            if progress is not None:
                progress(done, len(order))

    def close(self) -> None:
        """Release the backend."""
        self.source.close()


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
) -> pa.Table:
    """The joined single-cell table of a backend, in memory (Arrow; ``.to_pandas()`` for pandas).

    For plates that do not fit in memory use :func:`write_single_cells`, which streams.
    """
    join = SingleCellJoin(backend, compartments=compartments, hub=hub, links=links,
                          image_feature_categories=image_feature_categories, metadata=metadata)
    try:
        parts = list(join.sites())
    finally:
        join.close()
    if join.report.lost:
        log.warning("%s: %d object(s) not linked into a cell: %s", backend, join.report.lost, join.report.unlinked)
    return pa.concat_tables(parts, promote_options="permissive") if parts else _empty(join)


def _empty(join: SingleCellJoin) -> pa.Table:
    return pa.table({c: pa.array([], type=pa.float64()) for c in [*join.metadata_columns, *join.feature_columns]})


def single_cells_paths(prefix: str | os.PathLike[str]) -> dict[str, str]:
    """Output names beside a backend: ``PLATE_single_cells.parquet``, ``.h5ad`` and the report."""
    base = str(prefix)
    return {"parquet": f"{base}_{OUTPUT_TABLE}.parquet", "anndata": f"{base}_{OUTPUT_TABLE}.h5ad",
            "report": f"{base}_{OUTPUT_TABLE}.report.json"}


def _default_prefix(backend: str | os.PathLike[str]) -> str:
    text = str(backend)
    for suffix in (".sqlite", "_Image.parquet"):
        if text.endswith(suffix):
            return text[: -len(suffix)]
    return text


def write_single_cells(
    backend: str | os.PathLike[str],
    *,
    prefix: str | os.PathLike[str] | None = None,
    formats: Sequence[SingleCellFormat] = ("parquet",),
    compartments: Sequence[str] = DEFAULT_COMPARTMENTS,
    hub: str = DEFAULT_HUB,
    links: Mapping[str, str] | None = None,
    image_feature_categories: Sequence[str] = (),
    metadata: Sequence[str] | Literal["all"] | None = None,
    thresholds: Mapping[str, Mapping[str, float]] | None = None,
    row_group_values: int = ROW_GROUP_VALUES,
    progress: Callable[[int, int], None] | None = None,
) -> SingleCellReport:
    """Stream the joined table of a backend to ``PREFIX_single_cells.parquet`` (and/or ``.h5ad``).

    Row groups hold whole sites (zstd; a new group after ``row_group_values`` values);
    the AnnData ``X`` is float32, written in row blocks (one per site).
    With ``thresholds`` (cell QC sets) a first pass over the threshold features gives
    plate-wide z-scores and the flags become ``Metadata_cqc_<set>_is_outlier`` columns.
    Files appear atomically; the report (JSON, beside them) is written last.
    """
    bad = [f for f in formats if f not in ("parquet", "anndata")]
    if bad or not formats:
        raise InputError(f"single-cell format {bad[0] if bad else 'none'}: choose parquet and/or anndata")
    paths = single_cells_paths(prefix if prefix is not None else _default_prefix(backend))
    join = SingleCellJoin(backend, compartments=compartments, hub=hub, links=links,
                          image_feature_categories=image_feature_categories, metadata=metadata)
    writers: list[_Writer] = []
    try:
        order = join.site_order()
        flags = _qc_flags(join, order, thresholds) if thresholds else None
        writers = [_ParquetSink(paths["parquet"], row_group_values=row_group_values) if f == "parquet" else
                   _AnnDataSink(paths["anndata"], join) for f in dict.fromkeys(formats)]
        offset = 0
        for done, tn in enumerate(order, start=1):
            table = join.join_site(tn)
            if flags is not None:
                table = _with_flags(table, join, flags, offset)
            offset += table.num_rows
            for w in writers:
                w.write(table)
            if progress is not None:
                progress(done, len(order))
        for w in writers:
            w.close()
        join.report.outputs = {f: paths[f] for f in dict.fromkeys(formats)}
    except BaseException:
        for w in writers:
            w.abort()
        raise
    finally:
        join.close()
    io.write_json(join.report.as_dict(), paths["report"])
    if join.report.lost:
        log.warning("%s: %d object(s) not linked into a cell (named in %s)", backend, join.report.lost, paths["report"])
    return join.report


class SingleCellStream:
    """The joined table written while sites arrive, without reading a backend back (the collate pass).

    ``tables`` are the backend's column names per table (``TableNumber`` first, object
    columns prefixed; ``Image`` bare); :meth:`add` takes one site: its TableNumber, its
    Image rows, and per object table an array on that table's columns after
    ``TableNumber``. Cell QC needs plate-wide z-scores: run :func:`cytoprofile.cell_qc.flag_single_cells`
    on the finished file.
    """

    def __init__(
        self,
        prefix: str | os.PathLike[str],
        tables: Mapping[str, Sequence[str]],
        *,
        formats: Sequence[SingleCellFormat] = ("parquet",),
        compartments: Sequence[str] = DEFAULT_COMPARTMENTS,
        hub: str = DEFAULT_HUB,
        links: Mapping[str, str] | None = None,
        image_feature_categories: Sequence[str] = (),
        metadata: Sequence[str] | Literal["all"] | None = None,
        file_metadata: Mapping[str, str] | None = None,
    ) -> None:
        bad = [f for f in formats if f not in ("parquet", "anndata")]
        if bad or not formats:
            raise InputError(f"single-cell format {bad[0] if bad else 'none'}: choose parquet and/or anndata")
        self.paths = single_cells_paths(prefix)
        image = list(tables.get("Image", []))
        columns = {**tables, "Image": [*[k for k in ("TableNumber", "ImageNumber") if k not in image], *image]}
        self.source = _SiteSource(columns, where=str(prefix))
        self.join = SingleCellJoin(self.source, compartments=compartments, hub=hub, links=links,
                                   image_feature_categories=image_feature_categories, metadata=metadata)
        self.formats = list(dict.fromkeys(formats))
        self.writers: list[_Writer] = [_ParquetSink(self.paths["parquet"], metadata=file_metadata) if f == "parquet" else
                                       _AnnDataSink(self.paths["anndata"], self.join) for f in self.formats]

    def add(self, table_number: Any, image: pd.DataFrame, objects: Mapping[str, np.ndarray]) -> None:
        """Join one site and append it (one row group) to every output."""
        self.source.set_site(table_number, image, objects)
        self.join.site_order()
        table = self.join.join_site(table_number)
        for w in self.writers:
            w.write(table)

    def close(self, *, write_report: bool = True) -> SingleCellReport:
        """Move the outputs into place and write the report (last; ``write_report=False``
        when the caller carries it in its own report, as collate does)."""
        for w in self.writers:
            w.close()
        self.join.report.outputs = {f: self.paths[f] for f in self.formats}
        if write_report:
            io.write_json(self.join.report.as_dict(), self.paths["report"])
        return self.join.report

    def abort(self) -> None:
        """Drop the temporary files."""
        for w in self.writers:
            w.abort()


def _qc_flags(join: SingleCellJoin, order: Sequence[Any], thresholds: Mapping[str, Mapping[str, float]]) -> dict[str, np.ndarray]:
    """First pass: only the threshold features of every joined cell, then the plate-wide flags."""
    from .cell_qc import flag_summary, outlier_flags

    needed = sorted({f for conditions in thresholds.values() for f in conditions})
    missing = [f for f in needed if f not in join.feature_columns]
    if missing:
        raise InputError(f"cell QC threshold feature(s) {', '.join(missing)} are not in the single-cell table")
    features = {c: [f for f in join.features[c] if f in needed] for c in join.compartments}
    parts = [join.join_site(tn, features=features, count=False) for tn in order]
    table = pa.concat_tables(parts) if parts else pa.table({f: pa.array([], pa.float64()) for f in needed})
    values = {f: table.column(f).to_numpy(zero_copy_only=False).astype(np.float64) for f in needed}
    flags = outlier_flags(values, thresholds)
    keys = [c for c in ("Metadata_Plate", "Metadata_Well") if c in table.column_names]
    join.report.cell_qc = {"thresholds": {k: dict(v) for k, v in thresholds.items()}, **flag_summary(table, keys, flags)}
    return flags


def _with_flags(table: pa.Table, join: SingleCellJoin, flags: Mapping[str, np.ndarray], offset: int) -> pa.Table:
    """Flag columns after the other metadata columns."""
    from .cell_qc import flag_column

    at = len(join.metadata_columns)
    for k, (name, values) in enumerate(flags.items()):
        table = table.add_column(at + k, flag_column(name), pa.array(values[offset: offset + table.num_rows]))
    return table


# ---------------------------------------------------------------- writers


class _Writer:
    def write(self, table: pa.Table) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


class _ParquetSink(_Writer):
    """Row groups of whole sites, zstd, written under a temporary name.

    A row group costs a fixed overhead per column (thousands at JUMP width), so sites are
    gathered until ``row_group_values`` values (bounded memory, whatever the plate size).
    """

    def __init__(self, path: str, *, row_group_values: int = ROW_GROUP_VALUES,
                 metadata: Mapping[str, str] | None = None) -> None:
        self.final = Path(path)
        self.metadata = dict(metadata or {})
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.final.with_name(f".{self.final.name}.{os.getpid()}.tmp")
        self.writer: pq.ParquetWriter | None = None
        self.schema: pa.Schema | None = None
        self.row_group_values = row_group_values
        self.pending: list[pa.Table] = []

    def write(self, table: pa.Table) -> None:
        if self.writer is None:
            self.schema = table.schema.with_metadata(self.metadata) if self.metadata else table.schema
            meta = metadata_columns(table.schema.names)
            self.writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd", use_dictionary=meta,
                                           write_statistics=meta)
        assert self.schema is not None
        if table.schema != self.schema:
            table = table.cast(self.schema)  # a site whose metadata was all null
        self.pending.append(table)
        if sum(t.num_rows for t in self.pending) * table.num_columns >= self.row_group_values:
            self._flush()

    def _flush(self) -> None:
        if self.pending and self.writer is not None:
            group = pa.concat_tables(self.pending)
            self.writer.write_table(group, row_group_size=max(group.num_rows, 1))
        self.pending = []

    def close(self) -> None:
        if self.writer is None:
            raise InputError(f"{self.final}: the backend has no sites; nothing to write")
        self._flush()
        self.writer.close()
        os.replace(self.tmp, self.final)

    def abort(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:  # noqa: BLE001 - cleaning up after the real error
                log.debug("closing %s after an error failed", self.tmp)
        if self.tmp.exists():
            self.tmp.unlink()


_CHANNEL_AT = {"Intensity": 1, "Granularity": 1, "Texture": 1, "RadialDistribution": 1, "Location": -1}


def feature_annotation(name: str, compartments: Sequence[str]) -> dict[str, str]:
    """Compartment, measurement, the rest of the name, and the channel of a CellProfiler feature name.

    ``Cells_Intensity_MeanIntensity_DNA`` → Cells, Intensity, MeanIntensity_DNA, DNA;
    correlations name both channels (``DNA_ER``); shape and count features have none.
    """
    compartment = next((c for c in sorted(compartments, key=len, reverse=True) if name.startswith(f"{c}_")), name.split("_")[0])
    rest = name[len(compartment) + 1:].split("_")
    measurement = rest[0] if rest else ""
    parts = rest[1:]
    channel = ""
    if measurement == "Correlation" and len(parts) >= 3:
        channel = f"{parts[1]}_{parts[2]}"
    elif measurement in _CHANNEL_AT and len(parts) >= 2:
        channel = parts[_CHANNEL_AT[measurement]]
        if measurement == "Location" and (len(parts) < 3 or re.fullmatch(r"[XYZ]", channel)):
            channel = ""
    return {"compartment": compartment, "measurement": measurement, "feature": "_".join(parts), "channel": channel}


class _AnnDataSink(_Writer):
    """``.h5ad`` in AnnData's on-disk layout: float32 ``X`` and ``obs`` columns grown site by site."""

    def __init__(self, path: str, join: SingleCellJoin) -> None:
        import h5py

        self.final = Path(path)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.final.with_name(f".{self.final.name}.{os.getpid()}.tmp")
        self.file = h5py.File(self.tmp, "w")
        self.features = join.feature_columns
        self.compartments = [*join.compartments, "Image"]
        self.n = 0
        self.obs_columns: list[str] = []
        _attrs(self.file, "anndata", "0.1.0")
        p = len(self.features)
        self.x = self.file.create_dataset("X", shape=(0, p), maxshape=(None, p), dtype="float32",
                                          chunks=(256, min(max(p, 1), 512)) if p else None, compression="gzip", compression_opts=1)
        _attrs(self.x, "array", "0.2.0")
        self.obs = self.file.create_group("obs")
        for name in ("obsm", "obsp", "varm", "varp", "layers", "uns"):
            _attrs(self.file.create_group(name), "dict", "0.1.0")
        self._write_var()

    def _write_var(self) -> None:
        import h5py

        var = self.file.create_group("var")
        rows = [feature_annotation(f, self.compartments) for f in self.features]
        columns = ["compartment", "measurement", "feature", "channel"]
        _attrs(var, "dataframe", "0.2.0")
        var.attrs["_index"] = "_index"
        var.attrs["column-order"] = columns
        text = h5py.string_dtype("utf-8")
        _attrs(var.create_dataset("_index", data=np.array(self.features, dtype=object), dtype=text), "string-array", "0.2.0")
        for c in columns:
            _attrs(var.create_dataset(c, data=np.array([r[c] for r in rows], dtype=object), dtype=text), "string-array", "0.2.0")

    def write(self, table: pa.Table) -> None:
        import h5py

        n = table.num_rows
        if not self.obs_columns:
            self.obs_columns = [c for c in table.column_names if c not in set(self.features)]
            text = h5py.string_dtype("utf-8")
            for c in ["_index", *self.obs_columns]:
                kind = text if c == "_index" else _h5_type(table.schema.field(c).type)
                ds = self.obs.create_dataset(c, shape=(0,), maxshape=(None,), dtype=kind, chunks=(4096,))
                is_text = not isinstance(kind, type)  # a string dtype (the others are NumPy scalar types)
                _attrs(ds, "string-array" if is_text else "array", "0.2.0")
            _attrs(self.obs, "dataframe", "0.2.0")
            self.obs.attrs["_index"] = "_index"
            self.obs.attrs["column-order"] = self.obs_columns
        if n == 0:
            return
        block = np.ascontiguousarray(_matrix(table.select(self.features)), dtype=np.float32)
        self.x.resize(self.n + n, axis=0)
        self.x[self.n:] = block
        ids = np.array([str(i) for i in range(self.n, self.n + n)], dtype=object)  # row numbers, as other writers use
        self._append("_index", ids)
        for c in self.obs_columns:
            self._append(c, _h5_values(table.column(c)))
        self.n += n

    def _append(self, name: str, values: np.ndarray) -> None:
        ds = self.obs[name]
        ds.resize(self.n + len(values), axis=0)
        ds[self.n:] = values

    def close(self) -> None:
        self.file.close()
        os.replace(self.tmp, self.final)

    def abort(self) -> None:
        try:
            self.file.close()
        except Exception:  # noqa: BLE001 - cleaning up after the real error
            log.debug("closing %s after an error failed", self.tmp)
        if self.tmp.exists():
            self.tmp.unlink()


def _attrs(node: Any, kind: str, version: str) -> None:
    node.attrs["encoding-type"] = kind
    node.attrs["encoding-version"] = version


def _h5_type(typ: pa.DataType) -> Any:
    import h5py

    if pa.types.is_boolean(typ):
        return np.bool_
    if pa.types.is_integer(typ):
        return np.int64
    if pa.types.is_floating(typ) or pa.types.is_null(typ):
        return np.float64
    return h5py.string_dtype("utf-8")


def _h5_values(column: pa.ChunkedArray) -> np.ndarray:
    """Values for an obs dataset: text with nulls as empty strings, integers with nulls as -1."""
    typ = column.type
    if pa.types.is_boolean(typ):
        return column.fill_null(False).to_numpy(zero_copy_only=False)
    if pa.types.is_integer(typ):
        return column.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    if pa.types.is_floating(typ) or pa.types.is_null(typ):
        return column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    return np.array(["" if v is None else str(v) for v in column.to_pylist()], dtype=object)
