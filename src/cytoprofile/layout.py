"""Where every file lives: the handbook's workspace and the profiling recipe's outputs, local or URL.

Two objects answer "where is X" so that no other module joins path parts by hand:
:class:`Workspace` for the handbook's folders (``analysis/``, ``backend/``,
``metadata/``, ``load_data_csv/``) and :class:`Layout` for what the recipe reads and
writes (profiles, GCT, processing chain, quality control). Each path also has a
relative form (the ``rel`` methods) used to stage files from object storage into a
scratch copy with the same layout (:func:`cytoprofile.workspace.staged`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from . import io
from .errors import ConfigError, InputError
from .ingest import IMAGE_TABLE, SINGLE_CELL_TABLE
from .vocabulary import BACKEND_KINDS

__all__ = [
    "FORMAT_SUFFIX",
    "QC_SUMMARY_FOLDER",
    "Layout",
    "NEGCON",
    "OUTPUT_SUFFIXES",
    "SIDECAR",
    "PROFILE_SUFFIXES",
    "QualityControlLayout",
    "Workspace",
    "backend_files_in",
    "existing_output",
    "is_parquet_table",
    "parquet_table_path",
    "parquet_tables_label",
    "profiles_name",
    "profiles_names",
    "relative_to",
    "report_name",
    "single_cell_name",
    "single_cell_names",
    "single_cells_paths",
    "sqlite_name",
    "staging_name",
]

PathLike = str | os.PathLike[str]

#: the tag of the negative-control branch's outputs (``_normalized_negcon``)
NEGCON = "negcon"

#: step output endings by ``options.output_format`` (CSV's depends on compression)
FORMAT_SUFFIX = {"parquet": ".parquet", "anndata": ".h5ad"}
#: every ending a step output may have
OUTPUT_SUFFIXES = (".csv.gz", ".csv", ".parquet", ".h5ad")
#: the sidecar beside a text output (``PLATE.csv.generation``) naming the build that wrote it
SIDECAR = ".generation"
#: endings of collate's per-well profiles, in the order a reader looks for them
PROFILE_SUFFIXES = (".csv", ".csv.gz", ".parquet")


#: the quality-control folder holding summary.tsv
QC_SUMMARY_FOLDER = "summary"


def report_name(plate: str) -> str:
    """``PLATE.report.json``: the plate's collate report (its commit record)."""
    return f"{plate}.report.json"


def sqlite_name(plate: str) -> str:
    """``PLATE.sqlite``: the SQLite backend."""
    return f"{plate}.sqlite"


def profiles_name(plate: str, *, profile_format: str = "csv") -> str:
    """``PLATE.{csv,csv.gz,parquet}``: collate's per-well profiles."""
    return f"{plate}.{profile_format}"


def profiles_names(plate: str) -> list[str]:
    """Every name collate's per-well profiles may have (see :data:`PROFILE_SUFFIXES`)."""
    return [f"{plate}{ext}" for ext in PROFILE_SUFFIXES]


def parquet_table_path(prefix: str, table: str) -> str:
    """``PREFIX_TABLE.parquet``: a table of the Parquet backend whose files start with ``prefix``."""
    return f"{prefix}_{table}.parquet"


#: the file-name ending of each form of the joined single-cell table, and of its report
_SINGLE_CELL_ENDINGS = {"parquet": "parquet", "anndata": "h5ad", "report": "report.json"}


def single_cell_name(plate: str, single_cell_format: str) -> str:
    """``PLATE_single_cells.parquet`` (``parquet``) or ``PLATE_single_cells.h5ad`` (``anndata``)."""
    return f"{plate}_{SINGLE_CELL_TABLE}.{_SINGLE_CELL_ENDINGS['parquet' if single_cell_format == 'parquet' else 'anndata']}"


def single_cells_paths(prefix: str | os.PathLike[str]) -> dict[str, str]:
    """The joined table's files beside a backend ``PREFIX`` (a folder and plate, ``.../PLATE``): the Parquet and
    AnnData tables and their report, named as :func:`single_cell_name` names them."""
    return {kind: f"{prefix}_{SINGLE_CELL_TABLE}.{ending}" for kind, ending in _SINGLE_CELL_ENDINGS.items()}


def single_cell_names(plate: str) -> set[str]:
    """Both names the joined single-cell table of a plate may have."""
    return {single_cell_name(plate, "parquet"), single_cell_name(plate, "anndata")}


def is_parquet_table(plate: str, name: str) -> bool:
    """A file name of the form ``PLATE_*.parquet`` (a Parquet backend table, or the single-cell table)."""
    return name.startswith(f"{plate}_") and name.endswith(".parquet")


def parquet_tables_label(plate: str) -> str:
    """``PLATE_*.parquet``: the Parquet backend's tables, as messages name them."""
    return f"{plate}_*.parquet"


def staging_name(plate: str, generation: str) -> str:
    """``.PLATE.GENERATION8.tmp``: the folder a build is staged in, beside the outputs."""
    return f".{plate}.{generation[:8]}.tmp"


def relative_to(path: str, root: str) -> str:
    """``path`` relative to ``root``, for a URL or a local path alike."""
    return path[len(root):].lstrip("/") if io.is_remote(root) else os.path.relpath(path, root)


def backend_files_in(folder: str, plate: str, *, profile_format: str = "csv") -> dict[str, str]:
    """A plate's backend file names, by role, in ``folder`` (its backend folder or a staging copy)."""
    return {
        "sqlite": io.join(folder, sqlite_name(plate)),
        "parquet_prefix": io.join(folder, f"{plate}"),
        "profiles": io.join(folder, profiles_name(plate, profile_format=profile_format)),
        "report": io.join(folder, report_name(plate)),
    }


@dataclass(frozen=True)
class Workspace:
    """The handbook's workspace at ``root`` (a folder or a URL such as ``s3://bucket/ws``)."""

    root: str

    def path(self, *parts: str) -> str:
        """``root/parts``."""
        return io.join(self.root, *parts)

    # --- relative parts (staging prefixes) ---
    @staticmethod
    def analysis_rel(batch: str, plate: str) -> str:
        """``analysis/BATCH/PLATE/analysis``."""
        return os.path.join("analysis", batch, plate, "analysis")

    @staticmethod
    def backend_rel(batch: str, plate: str) -> str:
        """``backend/BATCH/PLATE``."""
        return os.path.join("backend", batch, plate)

    @staticmethod
    def report_rel(batch: str, plate: str) -> str:
        """``backend/BATCH/PLATE/PLATE.report.json``."""
        return f"backend/{batch}/{plate}/{report_name(plate)}"

    @staticmethod
    def platemap_rel(batch: str) -> str:
        """``metadata/platemaps/BATCH``."""
        return f"metadata/platemaps/{batch}"

    @staticmethod
    def metadata_rel(folder: str) -> str:
        """``metadata/FOLDER`` (external metadata)."""
        return f"metadata/{folder}"

    @staticmethod
    def load_data_rel(batch: str) -> str:
        """``load_data_csv/BATCH``."""
        return f"load_data_csv/{batch}"

    # --- analysis/ (CellProfiler's output) and backend/ (ours): a folder per batch, in it one per plate ---
    def folder(self, tree: Literal["analysis", "backend"], batch: str | None = None, plate: str | None = None) -> str:
        """``TREE``, ``TREE/BATCH`` or ``TREE/BATCH/PLATE`` of the analysis or the backend tree.

        A plate's ExportToDatabase files lie in its analysis folder; the backend's batch
        folder holds the plates' lock files.
        """
        if plate is not None and batch is None:
            raise InputError(f"{tree} folder of plate {plate!r} without its batch")
        return self.path(tree, *(part for part in (batch, plate) if part is not None))

    def analysis_plate(self, batch: str, plate: str) -> str:
        """``analysis/BATCH/PLATE``: the plate's folder (its ExportToDatabase files lie here)."""
        return self.folder("analysis", batch, plate)

    def analysis(self, batch: str, plate: str) -> str:
        """``analysis/BATCH/PLATE/analysis``: one subfolder per site."""
        return self.path("analysis", batch, plate, "analysis")

    def backend_root(self) -> str:
        """``backend``."""
        return self.folder("backend")

    def backend(self, batch: str, plate: str) -> str:
        """``backend/BATCH/PLATE``: single cells and the per-well aggregate."""
        return self.folder("backend", batch, plate)

    def sqlite(self, batch: str, plate: str) -> str:
        """``backend/BATCH/PLATE/PLATE.sqlite``."""
        return io.join(self.backend(batch, plate), sqlite_name(plate))

    def parquet_prefix(self, batch: str, plate: str) -> str:
        """``backend/BATCH/PLATE/PLATE``: the Parquet backend's tables are ``PREFIX_TABLE.parquet``."""
        return io.join(self.backend(batch, plate), f"{plate}")

    def profiles(self, batch: str, plate: str, *, profile_format: str = "csv") -> str:
        """``backend/BATCH/PLATE/PLATE.{csv,csv.gz,parquet}``: collate's per-well profiles."""
        return io.join(self.backend(batch, plate), profiles_name(plate, profile_format=profile_format))

    def report(self, batch: str, plate: str) -> str:
        """``backend/BATCH/PLATE/PLATE.report.json``."""
        return io.join(self.backend(batch, plate), report_name(plate))

    def lock(self, batch: str, plate: str) -> str:
        """``backend/BATCH/.PLATE.lock``: held while the plate is collated (local only)."""
        return str(Path(self.root, "backend", batch, f".{plate}.lock"))

    def backend_files(self, batch: str, plate: str, *, profile_format: str = "csv") -> dict[str, str]:
        """The final file names of a plate's backend outputs, by role."""
        return backend_files_in(self.backend(batch, plate), plate, profile_format=profile_format)

    def find_backend(self, batch: str, plate: str, kind: str | None = None) -> str:
        """The plate's single-cell backend: the asked kind, else Parquet when present (faster to read), else SQLite."""
        paths = {"parquet": parquet_table_path(self.parquet_prefix(batch, plate), IMAGE_TABLE),
                 "sqlite": self.sqlite(batch, plate)}
        found = {k: path if io.exists(path) else None for k, path in paths.items()}
        if kind is not None:
            if kind not in BACKEND_KINDS:
                raise InputError(f"--backend {kind}: choose sqlite or parquet")
            if found[kind] is None:
                raise InputError(f"{plate}: no {kind} backend at {paths[kind]}; run `cytoprofile collate` first")
            return str(found[kind])
        path = found["parquet"] or found["sqlite"]
        if path is None:
            raise InputError(f"{plate}: no backend in {self.backend(batch, plate)}; run `cytoprofile collate` first")
        return path

    # --- metadata/ and load_data_csv/ ---
    def platemaps(self, batch: str) -> str:
        """``metadata/platemaps/BATCH``: barcode_platemap.csv and platemap/*.txt."""
        return self.path("metadata", "platemaps", batch)

    def barcode_platemap(self, batch: str) -> str:
        """``metadata/platemaps/BATCH/barcode_platemap.csv``."""
        return io.join(self.platemaps(batch), "barcode_platemap.csv")

    def platemap(self, batch: str, name: str) -> str:
        """``metadata/platemaps/BATCH/platemap/NAME.txt``."""
        return io.join(self.platemaps(batch), "platemap", f"{name}.txt")

    def external_metadata(self, folder: str, file: str) -> str:
        """``metadata/FOLDER/FILE`` (external_metadata/, or moa/ for the 2021 string form)."""
        return self.path("metadata", folder, file)

    def load_data(self, batch: str) -> str:
        """``load_data_csv/BATCH``: the images' load_data.csv per plate."""
        return self.path("load_data_csv", batch)

    def relative(self, path: str) -> str:
        """``path`` relative to the workspace root."""
        return relative_to(path, self.root)


@dataclass(frozen=True)
class Layout:
    """Where the recipe reads and writes.

    ``root`` is the profiling repository (outputs: profiles/, gct/,
    quality_control/; metadata/ and load_data_csv/ are looked for here first);
    ``workspace`` holds backend/ (and metadata/, load_data_csv/ when the root lacks
    them). Without a workspace the recipe's ``../../`` convention applies.
    """

    root: str
    workspace: str
    output_dir: str = "profiles"
    compression: str | None = "gzip"
    output_format: str = "csv"

    @property
    def handbook(self) -> Workspace:
        """The workspace holding backend/ (and metadata/ when the root lacks it)."""
        return Workspace(self.workspace)

    def at(self, root: str) -> Layout:
        """The same layout rooted at ``root`` for outputs and workspace alike (a scratch copy)."""
        return Layout(root=root, workspace=root, output_dir=self.output_dir, compression=self.compression,
                      output_format=self.output_format)

    def find(self, *parts: str) -> str:
        """``root/parts`` if it exists, else ``workspace/parts``."""
        here = io.join(self.root, *parts)
        return here if io.exists(here) else io.join(self.workspace, *parts)

    def meta_root(self, batch: str | None = None) -> str:
        """The folder whose ``metadata/platemaps/BATCH`` holds the batch's plate maps.

        The profiling repository's own copy wins; an empty ``metadata/`` made by
        ``init`` does not hide the workspace's.
        """
        parts = ("metadata", "platemaps", batch) if batch else ("metadata",)
        return self.root if io.exists(io.join(self.root, *parts)) else self.workspace

    def load_data(self, batch: str) -> str:
        """The batch's ``load_data_csv/BATCH`` (the root's, else the workspace's)."""
        return self.find("load_data_csv", batch)

    def load_data_root(self, batch: str) -> str:
        """The ``load_data_csv`` folder holding the batch's (see :meth:`load_data`)."""
        return io.join(self.root if io.exists(io.join(self.root, "load_data_csv", batch)) else self.workspace,
                       "load_data_csv")

    @property
    def suffix(self) -> str:
        """File ending of step outputs: ``.csv.gz`` (gzip) or ``.csv``, ``.parquet`` or ``.h5ad``."""
        if self.output_format in FORMAT_SUFFIX:
            return FORMAT_SUFFIX[self.output_format]
        return ".csv.gz" if self.compression == "gzip" else ".csv"

    def profiles_root(self) -> str:
        """``OUTPUT_DIR`` (``profiles`` by default)."""
        return io.join(self.root, self.output_dir)

    def profiles_rel(self, batch: str, plate: str) -> str:
        """``OUTPUT_DIR/BATCH/PLATE`` relative to the root."""
        return f"{self.output_dir}/{batch}/{plate}"

    def plate_file(self, batch: str, plate: str, stem: str) -> str:
        """``OUTPUT_DIR/BATCH/PLATE/PLATE{stem}{suffix}``."""
        return io.join(self.root, self.output_dir, batch, plate, f"{plate}{stem}{self.suffix}")

    # --- stems: what follows PLATE (or BATCH) in a step output's name; only these methods build them ---
    @staticmethod
    def annotated_stem() -> str:
        """``_augmented``: annotate's output."""
        return "_augmented"

    @staticmethod
    def normalized_stem(*, negcon: bool = False) -> str:
        """``_normalized`` (``_normalized_negcon`` for the negative-control fit): normalize's output."""
        return "_normalized" + (f"_{NEGCON}" if negcon else "")

    @staticmethod
    def selected_stem(level: str, *, negcon: bool = False) -> str:
        """``_normalized_feature_select[_negcon]_LEVEL``: feature selection's output at ``level``."""
        return f"_normalized_feature_select{f'_{NEGCON}' if negcon else ''}_{level}"

    @classmethod
    def input_stem(cls, name: str) -> str:
        """The stem of a processing chain input named ``augmented``, ``normalized`` or ``normalized_negcon``."""
        stems = {"augmented": cls.annotated_stem(), "normalized": cls.normalized_stem(),
                 "normalized_negcon": cls.normalized_stem(negcon=True)}
        return stems[name]

    def step_outputs(self, batch: str, plate: str) -> dict[str, str]:
        """The per-plate files of the recipe, by step."""
        return {
            "aggregate": self.plate_file(batch, plate, ""),
            "annotate": self.plate_file(batch, plate, self.annotated_stem()),
            "normalize": self.plate_file(batch, plate, self.normalized_stem()),
            "normalize_negcon": self.plate_file(batch, plate, self.normalized_stem(negcon=True)),
        }

    @staticmethod
    def gct_rel(batch: str) -> str:
        """``gct/BATCH`` relative to the root."""
        return f"gct/{batch}"

    def gct_file(self, batch: str, stem: str, ext: str) -> str:
        """``gct/BATCH/BATCH{stem}{ext}``."""
        return io.join(self.root, "gct", batch, f"{batch}{stem}{ext}")

    def processing_rel(self) -> str:
        """``OUTPUT_DIR/processing`` relative to the root."""
        return f"{self.output_dir}/processing"

    def processing_file(self, steps: Sequence[str]) -> str:
        """``OUTPUT_DIR/processing/profiles_<steps>.parquet``: the chain's output after ``steps``."""
        return io.join(self.root, self.output_dir, "processing", "_".join(["profiles", *steps]) + ".parquet")

    def quality_control(self) -> str:
        """``quality_control``: summary, heatmaps and reports."""
        return io.join(self.root, QualityControlLayout.output_dir)

    @staticmethod
    def qc_summary_rel() -> str:
        """``quality_control/summary`` relative to the root."""
        return f"{QualityControlLayout.output_dir}/{QC_SUMMARY_FOLDER}"

    def relative(self, path: str) -> str:
        """``path`` relative to the outputs' root."""
        return relative_to(path, self.root)


def existing_output(path: str) -> str:
    """``path`` if it exists, else the one file of the same name in another format; two are refused."""
    if io.exists(path):
        return path
    stem = next((path[: -len(s)] for s in OUTPUT_SUFFIXES if path.endswith(s)), path)
    found = [stem + s for s in OUTPUT_SUFFIXES if io.exists(stem + s)]
    if len(found) > 1:
        raise ConfigError(f"{stem}: found {', '.join(os.path.basename(f) for f in found)} and none in the configured "
                          f"format; remove the stale one(s) or set options.output_format")
    return found[0] if found else path


@dataclass(frozen=True)
class QualityControlLayout:
    """Where quality control reads and writes, under ``root``.

    Inputs: ``PROFILES/BATCH/PLATE``, ``BACKEND/BATCH/PLATE/PLATE.report.json`` and
    ``LOAD_DATA/BATCH/PLATE/load_data.csv[.gz]``; outputs under ``OUTPUT_DIR``
    (``quality_control``): summary/, heatmap/, map/ and report/.
    """

    root: str
    output_dir: str = "quality_control"
    profiles_dir: str = "profiles"
    load_data_dir: str = "load_data_csv"
    backend_dir: str = "backend"

    def outputs(self) -> str:
        """``OUTPUT_DIR``."""
        return io.join(self.root, self.output_dir)

    def profiles(self, batch: str, plate: str) -> str:
        """``PROFILES/BATCH/PLATE``: the plate's recipe outputs."""
        return io.join(self.root, self.profiles_dir, batch, plate)

    def report_json(self, batch: str, plate: str) -> str:
        """``BACKEND/BATCH/PLATE/PLATE.report.json``: collate's report."""
        return io.join(self.root, self.backend_dir, batch, plate, report_name(plate))

    def load_data(self, batch: str, plate: str) -> str:
        """``LOAD_DATA/BATCH/PLATE``: holds load_data.csv or load_data.csv.gz."""
        return io.join(self.root, self.load_data_dir, batch, plate)

    def summary(self) -> str:
        """``OUTPUT_DIR/summary/summary.tsv``."""
        return io.join(self.outputs(), QC_SUMMARY_FOLDER, "summary.tsv")

    def map_name(self, batch: str, mode: str) -> str:
        """``map/BATCH/BATCH_map_MODE.csv`` relative to ``OUTPUT_DIR``."""
        return f"map/{batch}/{batch}_map_{mode}.csv"

    def map_file(self, batch: str, mode: str) -> str:
        """``OUTPUT_DIR/map/BATCH/BATCH_map_MODE.csv``."""
        return io.join(self.outputs(), *self.map_name(batch, mode).split("/"))

    def heatmap(self, batch: str, plate: str, name: str) -> str:
        """``OUTPUT_DIR/heatmap/BATCH/PLATE/PLATE_NAME.png``."""
        return io.join(self.outputs(), "heatmap", batch, plate, f"{plate}_{name}.png")

    def html_report(self, batch: str) -> str:
        """``OUTPUT_DIR/report/BATCH.html``."""
        return io.join(self.outputs(), "report", f"{batch}.html")
