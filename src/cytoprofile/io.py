"""Every read and write of per-well tables, atomically, local or on any fsspec URL.

Writers never leave a partial file under a final name: they write to a temporary
name beside the target and rename (or, on object storage, copy) when complete.
Object storage itself (options, listing, retries, fetch and publish) is ``remote``;
its names are also reachable here.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import gzip
import io as _io
import json
import os
import re
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from .errors import CytoprofileError, InputError, OutputError
from .remote import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_RETRIES,
    check_reachable,
    configure_storage,
    current_storage,
    download,
    endpoint,
    exists,
    filesystem,
    is_leftover,
    is_remote,
    join,
    list_files,
    list_sizes,
    network_failure,
    remove,
    remove_leftovers,
    storage_options,
    unreachable,
    upload,
)
from .vocabulary import TableFormat, metadata_columns

__all__ = [
    "USABLE_FLOAT_FORMAT",
    "check_usable_float_format",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_RETRIES",
    "TableFormat",
    "configure_storage",
    "current_storage",
    "download",
    "endpoint",
    "is_leftover",
    "list_files",
    "list_sizes",
    "output_errors",
    "remove",
    "remove_leftovers",
    "storage_options",
    "upload",
    "atomic_path",
    "atomic_open",
    "check_reachable",
    "check_output",
    "exists",
    "filesystem",
    "infer_format",
    "is_remote",
    "join",
    "ragged_line",
    "read_table",
    "round_significant",
    "read_json",
    "write_table",
    "write_json",
    "write_gct",
    "csv2gz",
    "load_profiles",
    "network_failure",
    "unreachable",
]


def infer_format(path: str | os.PathLike[str]) -> TableFormat:
    """Table format from a file name: ``.csv``, ``.csv.gz`` or ``.parquet``."""
    name = str(path).lower()
    if name.endswith(".csv.gz"):
        return "csv.gz"
    if name.endswith(".csv") or name.endswith(".tsv") or name.endswith(".txt"):
        return "csv"
    if name.endswith(".parquet"):
        return "parquet"
    raise InputError(f"{path}: unknown table format; use a name ending in .csv, .csv.gz or .parquet")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a temporary local path; on success it becomes ``path``.

    For a URL the temporary file is uploaded to a temporary key and then copied to
    the final key, so readers never see a partial object.
    """
    target = str(path)
    if is_remote(target):
        import tempfile

        fd, local = tempfile.mkstemp(suffix="-" + Path(target).name)
        os.close(fd)
        try:
            yield local
            upload(local, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(local)
        return
    final = Path(target)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield str(tmp)
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open ``path`` for writing under a temporary name; rename when closed cleanly."""
    with atomic_path(path) as tmp, open(tmp, mode, encoding=None if "b" in mode else "utf-8") as fh:
        yield fh


def read_table(path: str | os.PathLike[str], *, sep: str | None = None) -> pd.DataFrame:
    """Read a per-well table (CSV, gzip CSV, TSV, Parquet or AnnData ``.h5ad``) into pandas.

    A damaged file (cut-off gzip, a row with fewer fields than the header, not Parquet)
    is an ``InputError`` naming the file, never a silently shortened table. AnnData
    comes back as :func:`load_profiles` reads it (``obs`` columns, then ``X`` by ``var`` name).
    """
    import zlib

    if str(path).lower().endswith(".h5ad"):
        if not is_remote(str(path)) and not Path(str(path)).is_file():
            raise InputError(f"{path}: file not found")
        return _load_h5ad(str(path))
    fmt = infer_format(path)
    try:
        if fmt == "parquet":
            return pd.read_parquet(str(path))
        if sep is None:
            sep = "\t" if str(path).lower().endswith((".tsv", ".txt")) else ","
        raw = _read_bytes(str(path))
        if fmt == "csv.gz":
            raw = gzip.decompress(raw)
        if not raw.strip():
            raise InputError(f"{path}: empty file; re-create it")
        header = next(iter(raw[: raw.find(b"\n") if b"\n" in raw else len(raw)].decode("utf-8-sig").splitlines()), "")
        n_fields = len(next(iter(csv.reader([header], delimiter=sep))))
        body = raw[raw.find(b"\n") + 1 :] if b"\n" in raw else b""
        rows = body.count(b"\n") + (1 if body and not body.endswith(b"\n") else 0)
        quick_ok = b'"' not in body and body.count(sep.encode()) == rows * (n_fields - 1)
        bad = None if quick_ok else ragged_line(raw, n_fields, sep=sep)
        if bad is not None:
            raise InputError(f"{path}: line {bad} has a different number of fields than the header "
                             "(cut-off or corrupt file); re-create it")
        return pd.read_csv(_io.BytesIO(raw), sep=sep, low_memory=False, encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise InputError(f"{path}: file not found") from exc
    except IsADirectoryError as exc:
        raise InputError(f"{path}: is a folder, not a table file") from exc
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, zlib.error, EOFError,
            gzip.BadGzipFile, OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot be read as a table ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                         "check that the file is complete") from exc


def _read_bytes(path: str) -> bytes:
    if is_remote(path):
        fs, bare = filesystem(path)
        return bytes(fs.cat_file(bare))
    with open(path, "rb") as fh:
        return fh.read()


def ragged_line(raw: bytes, n_fields: int, *, sep: str = ",") -> int | None:
    """1-based number of the first line whose field count is not ``n_fields`` (None if all agree).

    Counts separators per line with NumPy; a file with quotes takes the CSV module's slower,
    exact path. Empty lines are skipped, as the parsers do.
    """
    if b'"' in raw:
        text = _io.StringIO(raw.decode("utf-8", errors="replace"))
        for number, row in enumerate(csv.reader(text, delimiter=sep), start=1):
            if row and len(row) != n_fields:
                return number
        return None
    buf = np.frombuffer(raw, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10)
    if len(buf) and buf[-1] != 10:
        ends = np.append(ends, len(buf))
    if not len(ends):
        return None
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts
    content = (lengths > 1) | ((lengths == 1) & (buf[np.minimum(starts, len(buf) - 1)] != 13))
    line_numbers = np.flatnonzero(content)
    if not len(line_numbers):
        return None
    # each segment runs to the next content line's start: skipped blank lines hold no commas
    commas = np.add.reduceat((buf == ord(sep)).astype(np.int32), starts[content])
    bad = np.flatnonzero(commas != n_fields - 1)
    return int(line_numbers[bad[0]]) + 1 if len(bad) else None





#: Float formats that keep every value a usable float: ``%.Ng`` / ``%.Ne`` with N >= 1.
USABLE_FLOAT_FORMAT = re.compile(r"%\.([1-9][0-9]*)[geGE]")


def check_usable_float_format(value: object) -> str | None:
    """``value`` if it is None or a usable float format; ``%d``, ``%.0f``, ``%.3f`` (which
    truncate small values) and anything else are a ``ConfigError``."""
    if value is None or (isinstance(value, str) and USABLE_FLOAT_FORMAT.fullmatch(value)):
        return value
    from .errors import ConfigError

    raise ConfigError(f"float format {value!r} would truncate or break the numbers; use %.Ng or %.Ne with "
                      "N >= 1 (such as %.5g), or leave it out for full precision")


def check_output(path: str | os.PathLike[str], *, float_format: str | None = None) -> None:
    """Refuse a bad output name or float format before any work is done."""
    infer_format(path)
    if float_format is not None:
        try:
            float_format % 1.5
        except (TypeError, ValueError) as exc:
            from .errors import ConfigError

            raise ConfigError(f"float format {float_format!r} is not a printf-style number format (e.g. %.5g)") from exc


_G_FORMAT = re.compile(r"^%\.(\d+)g$")


def round_significant(values: np.ndarray, digits: int) -> np.ndarray:
    """Round to ``digits`` significant digits, vectorised: the number ``%.{digits}g`` would print.

    Scaling uses exact powers of ten (|exponent| ≤ 22); the rare values outside that
    range are formatted one by one.
    """
    out = np.array(values, dtype=np.float64, copy=True)
    finite = np.isfinite(out) & (out != 0)
    if not finite.any():
        return out
    x = out[finite]
    e = np.floor(np.log10(np.abs(x))).astype(np.int64) - (digits - 1)
    exact = np.abs(e) <= 22
    p = 10.0 ** np.abs(np.where(exact, e, 0))
    r = np.where(e >= 0, np.round(x / p) * p, np.round(x * p) / p)
    if not exact.all():
        r[~exact] = [float(f"{v:.{digits}g}") for v in x[~exact]]
    out[finite] = r
    return out


def _write_csv(df: pd.DataFrame, fh: IO[bytes], float_format: str | None, sep: str = ",") -> None:
    """CSV text of a per-well table; ``%.Ng`` rounding is vectorised and Polars writes the text.

    Numbers read back are the same as with printf formatting; other formats, and tables
    Polars cannot take, go through pandas.
    """
    match = _G_FORMAT.match(float_format) if float_format else None
    if float_format is None or match:
        try:
            import polars as pl

            kinds = df.dtypes
            if any(pd.api.types.is_bool_dtype(k) for k in kinds):
                raise TypeError("booleans")
            is_float = [pd.api.types.is_float_dtype(k) for k in kinds]
            floats = [c for c, f in zip(df.columns, is_float) if f]
            others = [c for c, f in zip(df.columns, is_float) if not f]
            parts = []
            if others:
                parts.append(pl.from_pandas(df[others]))
            if floats:
                block = df[floats].to_numpy(dtype=np.float64)
                if match:
                    block = round_significant(block, int(match.group(1)))
                numbers = pl.from_numpy(block, schema=[f"_{i}" for i in range(len(floats))], orient="row")
                numbers = numbers.fill_nan(None)
                numbers.columns = floats
                parts.append(numbers)
            frame = pl.concat(parts, how="horizontal").select(list(df.columns))
            frame.write_csv(fh, separator=sep, null_value="")
            return
        except Exception:  # noqa: BLE001 - anything Polars refuses is written by pandas instead
            pass
    text = _io.TextIOWrapper(fh, encoding="utf-8", newline="", write_through=True)
    df.to_csv(text, index=False, float_format=float_format, sep=sep)
    text.flush()
    text.detach()


def write_table(
    df: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    float_format: str | None = None,
    fmt: TableFormat | None = None,
    metadata: dict[str, Any] | None = None,
) -> str:
    """Write ``df`` atomically as CSV, deterministic gzip CSV or Parquet; return the path.

    Gzip output carries no timestamp or file name, so the same table gives the same
    bytes on every run. ``metadata`` goes into Parquet's key-value metadata.
    """
    fmt = fmt or infer_format(path)
    check_output(path if fmt is None else f"x.{fmt}", float_format=float_format)
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(df, preserve_index=False)
            if metadata:
                meta = dict(table.schema.metadata or {})
                meta[b"cytoprofile"] = json.dumps(metadata, sort_keys=True).encode()
                table = table.replace_schema_metadata(meta)
            pq.write_table(table, tmp)
        elif fmt == "csv.gz":
            # streamed into the compressor: the whole text is never held in memory
            with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=3) as gz:
                _write_csv(df, gz, float_format)  # type: ignore[arg-type]
        else:
            sep = "\t" if str(path).lower().endswith((".tsv", ".txt")) else ","
            with open(tmp, "wb") as fh:
                _write_csv(df, fh, float_format, sep=sep)
    return str(path)


def write_json(obj: Any, path: str | os.PathLike[str]) -> str:
    """Write JSON atomically (sorted keys, indented, trailing newline)."""
    with atomic_open(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
    return str(path)


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, local or remote."""
    try:
        if is_remote(path):
            fs, bare = filesystem(path)
            with fs.open(bare, "r", encoding="utf-8") as fh:
                return json.load(fh)
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: file not found") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc}); delete it and re-run") from exc


def write_gct(
    df: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    features: str | Sequence[str] = "infer",
    meta_features: str | Sequence[str] = "infer",
    compartments: str | Sequence[str] | None = None,
    image_features: bool = False,
    feature_name: str = "cp_feature_name",
    on_account: Any = None,
) -> str:
    """Write profiles as GCT 1.3 (samples as columns), readable by cmapPy and Morpheus.

    Line 1 ``#1.3``; line 2 the counts; line 3 ``id, cp_feature_name, SAMPLE_0..``;
    then one row per sample metadata column (``Metadata_`` dropped from its label)
    and one per feature, tab-separated. ``features="infer"`` takes the columns of
    ``compartments`` (default Cells, Cytoplasm, Nuclei; numeric ``Image*`` too with
    ``image_features``) and ``meta_features="infer"`` the ``Metadata_`` columns; any
    other column is left out with a warning, and ``on_account`` receives the
    ``FeatureAccount``.
    """
    from .checks import as_names
    from .step_data import FeatureAccount, report_account, unprocessed_columns
    from .vocabulary import resolve_features

    if not isinstance(feature_name, str) or not feature_name:
        from .errors import ConfigError

        raise ConfigError(f"feature_name must be a non-empty string, got {feature_name!r}")
    inferred = isinstance(features, str) or isinstance(meta_features, str)
    features = resolve_features(df, features, image_features=image_features, compartments=compartments)
    if isinstance(meta_features, str) and meta_features == "infer":
        meta_features = metadata_columns(df.columns)
    else:
        meta_features = as_names("meta_features", meta_features)
    absent = [c for c in meta_features if c not in df.columns]
    if absent:
        raise InputError(f"meta_features names column(s) absent from the profiles: {', '.join(absent[:5])}")
    if inferred or on_account is not None:  # columns the caller did not choose are said left out
        report_account(FeatureAccount(
            step="write_gct", features_in=tuple(features), features_out=tuple(features),
            dropped=dict.fromkeys(unprocessed_columns(df, {*features, *meta_features}), "not_a_feature"),
        ), on_account)
    text = [f for f in features if not pd.api.types.is_numeric_dtype(df[f])]
    if text:
        raise InputError(f"feature column(s) {', '.join(text[:3])} are not numeric; a GCT holds numbers only")
    n_samples = len(df)
    sample_ids = [f"SAMPLE_{i}" for i in range(n_samples)]
    with atomic_open(path) as fh:  # line by line: a batch GCT can be hundreds of MB of text
        fh.write("#1.3\n")
        fh.write(f"{len(features)}\t{n_samples}\t1\t{len(meta_features)}\n")
        fh.write("\t".join(["id", feature_name, *sample_ids]) + "\n")
        for meta in meta_features:
            values = ["" if v is None else str(v) for v in df[meta].tolist()]
            fh.write("\t".join([meta.replace("Metadata_", ""), "nan", *values]) + "\n")
        block = df[features].to_numpy(dtype=np.float64)
        for j, feature in enumerate(features):  # repr(float) is what the reference writes
            fh.write("\t".join([feature, feature, *map(repr, block[:, j].tolist())]) + "\n")
    return str(path)


def csv2gz(src: str | os.PathLike[str], dest: str | os.PathLike[str] | None = None, *, float_format: str | None = "%.5g") -> str:
    """Rewrite a CSV as deterministic ``.csv.gz`` with ``float_format`` (the recipe's csv2gz)."""
    src_text = str(src)
    if dest is None:
        dest = src_text[:-4] + ".csv.gz" if src_text.endswith(".csv") else src_text + ".gz"
    df = read_table(src)
    return write_table(df, dest, float_format=float_format, fmt="csv.gz")


_OUTPUT_ERRNOS = {
    errno.ENOSPC: ("no space left on the device", "free space there or write the outputs elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", "free space within the quota or write the outputs elsewhere"),
    errno.EROFS: ("read-only file system", "write the outputs to a writable folder (or remount it read-write)"),
    errno.EACCES: ("permission denied", "make the folder writable for this user or write the outputs elsewhere"),
    errno.EPERM: ("operation not permitted", "make the folder writable for this user or write the outputs elsewhere"),
}
_SQLITE_MESSAGES = {"database or disk is full": errno.ENOSPC, "attempt to write a readonly database": errno.EROFS,
                    "disk i/o error": errno.EIO}


def _output_errno(exc: BaseException) -> int | None:
    if isinstance(exc, OSError) and exc.errno in _OUTPUT_ERRNOS:
        return exc.errno
    text = str(exc).lower()
    if type(exc).__name__ == "OperationalError":
        return next((code for message, code in _SQLITE_MESSAGES.items() if message in text), None)
    if isinstance(exc, OSError) and exc.errno is None:  # Arrow reports the C library's message only
        for code in _OUTPUT_ERRNOS:
            if os.strerror(code).lower() in text:
                return code
    return None


def _in_the_way(exc: BaseException) -> str | None:
    """A file where a folder of the outputs goes, or a folder where an output file goes (None: neither)."""
    named = [str(w) for w in (getattr(exc, "filename2", None), getattr(exc, "filename", None)) if w]
    if not isinstance(exc, (NotADirectoryError, FileExistsError, IsADirectoryError)) or not named or is_remote(named[-1]):
        return None
    if isinstance(exc, IsADirectoryError):  # a rename's target (filename2), not the temporary file, is the folder
        return f"{next((w for w in named if os.path.isdir(w)), named[0])} is a folder where an output file goes"
    where = named[-1]
    parts = Path(os.path.abspath(str(where))).parts
    for i in range(1, len(parts) + 1):
        place = os.path.join(*parts[:i])
        if os.path.lexists(place) and not os.path.isdir(place):
            return f"{place} is a file where a folder of the outputs goes"
    return None


@contextlib.contextmanager
def output_errors(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Turn "disk full", "read-only" and "permission denied" while writing under ``folder`` into an
    ``OutputError`` naming the folder and the fix (the user can act on these; they are no bugs)."""
    try:
        yield
    except CytoprofileError:
        raise
    except Exception as exc:
        in_the_way = _in_the_way(exc)
        if in_the_way is not None:
            raise OutputError(f"cannot write to {folder}: {in_the_way}; move it away, then re-run") from exc
        code = _output_errno(exc)
        if code is None:
            raise
        what, fix = _OUTPUT_ERRNOS.get(code, ("input/output error", "check the disk and write the outputs elsewhere"))
        where = getattr(exc, "filename", None)
        if where and code in (errno.EACCES, errno.EPERM) and not str(where).startswith(str(folder)):
            raise OutputError(f"cannot access {where}: {what}; fix its permissions, then re-run") from exc
        place = os.path.dirname(str(where).rstrip(os.sep)) if where and not is_remote(str(where)) else str(folder)
        raise OutputError(f"cannot write to {place}: {what}; {fix}, then re-run (nothing partial was kept)") from exc


def load_profiles(profiles: str | os.PathLike[str] | pd.DataFrame) -> pd.DataFrame:
    """A profile or single-cell table from CSV(.gz)/TSV, Parquet (file or folder) or AnnData ``.h5ad``.

    AnnData comes back as pycytominer reads it: the ``obs`` columns, then one column per
    ``var`` name from ``X``, with a 0..n-1 index. A DataFrame is returned unchanged.
    """
    if isinstance(profiles, pd.DataFrame):
        return profiles
    text = str(profiles)
    if not is_remote(text) and not Path(text).exists():
        raise InputError(f"{text}: no such file")
    if text.lower().endswith(".h5ad"):
        return _load_h5ad(text)
    if not is_remote(text) and Path(text).is_dir():
        import pyarrow.parquet as pq

        return pq.read_table(text).to_pandas()
    return read_table(text)


def _load_h5ad(path: str) -> pd.DataFrame:
    try:
        import h5py
        from anndata.io import read_elem
    except ImportError as exc:
        raise InputError(f"{path}: reading AnnData needs the anndata package (pip install anndata)") from exc
    try:
        with h5py.File(_io.BytesIO(_read_bytes(path)) if is_remote(path) else path, "r") as f:
            obs, var, x = read_elem(f["obs"]), read_elem(f["var"]), read_elem(f["X"])
    except (OSError, KeyError) as exc:
        raise InputError(f"{path}: not an AnnData file ({exc})") from exc
    if hasattr(x, "toarray"):
        x = x.toarray()
    features = pd.DataFrame(np.asarray(x), columns=list(var.index))
    return pd.concat([obs.reset_index(drop=True), features], axis=1)
