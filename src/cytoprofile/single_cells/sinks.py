"""Where joined sites go: Parquet row groups of whole sites, or an ``.h5ad`` grown block by
block; both under a temporary name until closed."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError
from ..vocabulary import metadata_columns
from .sources import float_matrix

if TYPE_CHECKING:
    from .join import SingleCellJoin

__all__ = ["ROW_GROUP_ROWS", "ROW_GROUP_VALUES", "SiteSink", "ParquetSink", "AnnDataSink", "feature_annotation"]

log = logging.getLogger("cytoprofile.single_cells")
#: values per Parquet row group of the single-cell table (whole sites; about a JUMP well, 9 sites at
#: JUMP width): writing a row group costs a fixed time per column, thousands of columns at JUMP width
ROW_GROUP_VALUES = 12_000_000
#: rows per row group (whole sites; a group ends at the first site that reaches it): a row group's fixed cost
#: is per column, so rows amortise it at any width; it also bounds the rows held, whatever the plate size
ROW_GROUP_ROWS = 2048
#: zstd's first fast level: float features barely compress at any level, and level 1 costs half as much
#: again to write; their bytes are split into streams (BYTE_STREAM_SPLIT), which zstd then compresses better
_ZSTD_LEVEL = -1
#: sites waiting for their row group are fused into one table every this many sites
_FUSE_SITES = 16




class SiteSink:
    def write(self, table: pa.Table) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


class ParquetSink(SiteSink):
    """Row groups of whole sites, zstd (float features byte-stream split), written under a temporary name.

    A row group costs a fixed overhead per column (thousands at JUMP width), so sites are
    gathered until ``row_group_rows`` rows or ``row_group_values`` values, whichever comes
    first: the rows held at once (:attr:`peak_rows`) are bounded, whatever the plate size.
    """

    def __init__(self, path: str, *, row_group_values: int = ROW_GROUP_VALUES, row_group_rows: int = ROW_GROUP_ROWS,
                 metadata: Mapping[str, str] | None = None) -> None:
        self.final = Path(path)
        self.metadata = dict(metadata or {})
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.final.with_name(f".{self.final.name}.{os.getpid()}.tmp")
        self.writer: pq.ParquetWriter | None = None
        self.schema: pa.Schema | None = None
        self.row_group_values = row_group_values
        self.row_group_rows = row_group_rows
        self.pending: list[pa.Table] = []
        self._rows = 0  # rows in ``pending``
        self.peak_rows = 0  #: most rows held waiting for their row group
        self._loose = 0  # sites at the end of ``pending`` not yet fused into one table

    def write(self, table: pa.Table) -> None:
        if self.writer is None:
            self.schema = table.schema.with_metadata(self.metadata) if self.metadata else table.schema
            meta = metadata_columns(table.schema.names)
            floats = [f.name for f in table.schema if pa.types.is_floating(f.type) and f.name not in set(meta)]
            self.writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd", compression_level=_ZSTD_LEVEL,
                                           use_dictionary=meta, write_statistics=meta, use_byte_stream_split=floats or False)
        assert self.schema is not None
        if table.schema != self.schema:
            table = table.cast(self.schema)  # a site whose metadata was all null
        self.pending.append(table)
        self._loose += 1
        self._rows += table.num_rows
        self.peak_rows = max(self.peak_rows, self._rows)
        if self._rows >= self.row_group_rows or self._rows * table.num_columns >= self.row_group_values:
            self._flush()
        elif self._loose >= _FUSE_SITES:  # an Arrow array per column and site weighs more than small sites' values
            self.pending[-self._loose:] = [pa.concat_tables(self.pending[-self._loose:]).combine_chunks()]
            self._loose = 0

    def _flush(self) -> None:
        if self.pending and self.writer is not None:
            group = pa.concat_tables(self.pending)
            self.writer.write_table(group, row_group_size=max(group.num_rows, 1))
        self.pending = []
        self._loose = 0
        self._rows = 0

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


class AnnDataSink(SiteSink):
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
        block = np.ascontiguousarray(float_matrix(table.select(self.features)), dtype=np.float32)
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
