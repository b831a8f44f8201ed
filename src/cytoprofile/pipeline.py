"""The profiling recipe's order over batches and plates, with resume and provenance.

Per plate: aggregate → annotate → normalize → normalize_negcon; then, over the
selected plates, feature_select and feature_select_negcon at their level (plate,
batch or all) with optional GCT; then the processing chain (``processing:``, over
every selected plate together); then quality control. File names are the
recipe's. Each output gets a ``.provenance.json`` sidecar (step settings,
cytoprofile version, input checksums); a step whose output and sidecar match the
current settings and inputs is skipped unless ``force``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import __version__, io
from .config import Recipe, load_config
from .errors import ConfigError, CytoprofileError, InputError
from .vocabulary import (
    IMAGE_METADATA_PREFIX,
    METADATA_PREFIX,
    is_metadata,
    metadata_columns,
    with_metadata_prefix,
)

__all__ = ["Layout", "RunResult", "compartment_prefixes", "processing_file", "run", "step_outputs"]

log = logging.getLogger("cytoprofile.pipeline")
Progress = Callable[[str, int, int], None]
_NEGCON = "negcon"


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

    @property
    def suffix(self) -> str:
        """File ending of step outputs: ``.csv.gz`` (gzip) or ``.csv``, ``.parquet`` or ``.h5ad``."""
        if self.output_format in _FORMAT_SUFFIX:
            return _FORMAT_SUFFIX[self.output_format]
        return ".csv.gz" if self.compression == "gzip" else ".csv"

    def plate_file(self, batch: str, plate: str, stem: str) -> str:
        """``profiles/BATCH/PLATE/PLATE{stem}{suffix}``."""
        return io.join(self.root, self.output_dir, batch, plate, f"{plate}{stem}{self.suffix}")

    def gct_file(self, batch: str, stem: str, ext: str) -> str:
        """``gct/BATCH/BATCH{stem}{ext}``."""
        return io.join(self.root, "gct", batch, f"{batch}{stem}{ext}")


_FORMAT_SUFFIX = {"parquet": ".parquet", "anndata": ".h5ad"}
_SUFFIXES = (".csv.gz", ".csv", ".parquet", ".h5ad")


def existing_output(path: str) -> str:
    """``path`` if it exists, else the one file of the same name in another format; two are refused."""
    if io.exists(path):
        return path
    stem = next((path[: -len(s)] for s in _SUFFIXES if path.endswith(s)), path)
    found = [stem + s for s in _SUFFIXES if io.exists(stem + s)]
    if len(found) > 1:
        raise ConfigError(f"{stem}: found {', '.join(os.path.basename(f) for f in found)} and none in the configured "
                          f"format; remove the stale one(s) or set options.output_format")
    return found[0] if found else path


def write_output(frame: pd.DataFrame, path: str, *, float_format: str | None = None) -> None:
    """A step's table as CSV(.gz) or Parquet (by its name), or AnnData (``.h5ad``: text columns in ``obs``)."""
    if not path.endswith(".h5ad"):
        io.write_table(frame, path, float_format=float_format)
        return
    try:
        import anndata
    except ImportError as exc:
        raise ConfigError("options.output_format: anndata needs the anndata package "
                          "(pip install 'cytoprofile[anndata]')") from exc

    features = [c for c in frame.columns if not str(c).startswith(_METADATA) and pd.api.types.is_numeric_dtype(frame[c])
                and not pd.api.types.is_bool_dtype(frame[c])]
    obs = frame[[c for c in frame.columns if c not in set(features)]].reset_index(drop=True)
    text = [c for c in obs.columns if pd.api.types.is_string_dtype(obs[c]) or obs[c].dtype == object]
    obs = obs.astype({c: object for c in text})  # plain text (not categories): read back as it was written
    obs.index = pd.Index([str(i) for i in range(len(obs))], dtype=object)
    var = pd.DataFrame(index=pd.Index([str(c) for c in features], dtype=object))
    adata = anndata.AnnData(X=frame[features].to_numpy(np.float64), obs=obs, var=var)
    with io.atomic_path(path) as tmp:
        adata.write_h5ad(tmp, convert_strings_to_categoricals=False)


def step_outputs(layout: Layout, batch: str, plate: str) -> dict[str, str]:
    """The per-plate files of the recipe, by step."""
    return {
        "aggregate": layout.plate_file(batch, plate, ""),
        "annotate": layout.plate_file(batch, plate, "_augmented"),
        "normalize": layout.plate_file(batch, plate, "_normalized"),
        "normalize_negcon": layout.plate_file(batch, plate, f"_normalized_{_NEGCON}"),
    }


@dataclass
class RunResult:
    """Steps run and skipped, every output written, and the products to show the user.

    ``products`` are (label, path relative to the outputs' root) pairs: each plate's
    final profiles, the GCT files and each batch's QC report, written now or current;
    ``qc`` says whether quality control ran; ``root`` is where the outputs are.
    """

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    products: list[tuple[str, str]] = field(default_factory=list)
    qc: str = ""
    root: str = ""


_WHOLE_FILE_LIMIT = 64 << 20


def _sha256(path: str) -> str:
    """Checksum of an input: the whole file, or for a large backend its size, time and first/last MiB."""
    digest = hashlib.sha256()
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        if size <= _WHOLE_FILE_LIMIT:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
            return digest.hexdigest()
        digest.update(fh.read(1 << 20))
        fh.seek(size - (1 << 20))
        digest.update(fh.read(1 << 20))
    # a rewritten backend (collate --overwrite) has a new modification time even at the same size
    return f"size={size};mtime_ns={os.stat(path).st_mtime_ns};head-tail-sha256={digest.hexdigest()}"


def _settings_hash(settings: Any) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def _sidecar(output: str) -> str:
    return output + ".provenance.json"


def _input_checksums(inputs: Sequence[str], root: str) -> dict[str, str]:
    """Checksums keyed by path relative to the layout root (stable across scratch copies)."""
    return {os.path.relpath(p, root): _sha256(p) for p in inputs}


def _fresh(outputs: Sequence[str], inputs: Sequence[str], settings: Any, root: str) -> bool:
    """True when every output exists and its sidecar matches these settings and inputs."""
    for out in outputs:
        side = _sidecar(out)
        if not (Path(out).exists() and Path(side).exists()):
            return False
        try:
            record = json.loads(Path(side).read_text())
        except (OSError, json.JSONDecodeError):
            return False
        if record.get("settings_hash") != _settings_hash(settings):
            return False
        if record.get("inputs") != _input_checksums(inputs, root):
            return False
    return True


def _record(output: str, *, step: str, inputs: Sequence[str], settings: Any, config_path: str | None,
            root: str, pipeline: str | None = None, account: Mapping[str, Any] | None = None) -> None:
    record: dict[str, Any] = {
        "step": step,
        "output": os.path.basename(output),
        "cytoprofile_version": __version__,
        "pipeline": pipeline,
        "config": config_path,
        "settings": settings,
        "settings_hash": _settings_hash(settings),
        "inputs": _input_checksums(inputs, root),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if account is not None:
        record |= dict(account)
    io.write_json(record, _sidecar(output))


_METADATA = (METADATA_PREFIX, IMAGE_METADATA_PREFIX)  # annotate renames the second to the first


@dataclass
class _Made:
    """A step's output table and its account: features in -> out, each dropped feature's
    operation, and anything else the sidecar should say (e.g. wells dropped)."""

    frame: pd.DataFrame
    before: Sequence[str] | None = None
    dropped: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def account(self) -> dict[str, Any]:
        """``features: {in, out, dropped: {feature: operation}}`` plus ``extra``."""
        after = [c for c in self.frame.columns if not str(c).startswith(_METADATA)]
        out: dict[str, Any] = {"features": {"in": None, "out": len(after), "dropped": {}}}
        if self.before is not None:
            before = [c for c in self.before if not str(c).startswith(_METADATA)]
            kept = set(after)
            out["features"] = {
                "in": len(before),
                "out": len(after),
                "dropped": {c: self.dropped.get(c, "unexplained") for c in before if c not in kept},
            }
        return out | dict(self.extra)


def _summary(account: Mapping[str, Any]) -> str:
    """``features 120 -> 87 (correlation_threshold: 30, blocklist: 3)`` for the log."""
    feats = account["features"]
    if feats["in"] is None:
        return f"{feats['out']} features"
    ops: dict[str, int] = {}
    for op in feats["dropped"].values():
        ops[op] = ops.get(op, 0) + 1
    detail = ", ".join(f"{op}: {n}" for op, n in ops.items())
    return f"features {feats['in']} → {feats['out']}" + (f" ({detail})" if detail else "")


class _Steps:
    """Runs one step at a time with skip/resume and provenance."""

    def __init__(self, layout: Layout, recipe: Recipe, *, force: bool, result: RunResult) -> None:
        self.layout = layout
        self.recipe = recipe
        self.force = force
        self.result = result
        self.float_format = recipe.settings.options.float_format

    def run(self, name: str, inputs: Sequence[str], outputs: Mapping[str, Callable[[], pd.DataFrame | _Made] | pd.DataFrame | _Made],
            settings: Any) -> bool:
        """Write each output (a frame, or a thunk making it, with its account) unless all are
        fresh; True if it ran."""
        paths = list(outputs)
        for p in inputs:
            if not Path(p).exists():
                raise InputError(f"{p}: input of step {name} not found; run the earlier steps (or collate) first")
        if not self.force and _fresh(paths, inputs, settings, self.layout.root):
            self.result.skipped.append(f"{name}: {', '.join(os.path.basename(p) for p in paths)}")
            return False
        start = time.perf_counter()
        for path, make in outputs.items():
            try:
                made = make() if callable(make) else make
            except CytoprofileError as exc:
                if any(os.path.basename(p) in str(exc) for p in inputs):
                    raise
                raise type(exc)(f"step {name} on {inputs[0]}: {exc}") from exc
            made = made if isinstance(made, _Made) else _Made(made)
            account = made.account()
            write_output(made.frame, path, float_format=self.float_format)
            _record(path, step=name, inputs=inputs, settings=settings, config_path=self.recipe.path,
                    root=self.layout.root, pipeline=self.recipe.settings.pipeline, account=account)
            log.info("%s %s: %s", name, os.path.basename(path), _summary(account))
            self.result.outputs.append(path)
        self.result.ran.append(f"{name}: {', '.join(os.path.basename(p) for p in paths)}")
        log.info("%s → %s (%.2fs)", name, ", ".join(os.path.basename(p) for p in paths), time.perf_counter() - start)
        return True


_PASSTHROUGH = ("Image", "ome_arrow_")


def compartment_prefixes(recipe: Recipe, report: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """Column prefixes of the features: the canonical compartments, those the config names
    and those collate aggregated (its report), as aggregation names them."""
    from .vocabulary import CANONICAL_COMPARTMENTS

    names = list(recipe.settings.compartments)
    if report is not None:
        names += [str(c) for c in (report.get("aggregate") or {}).get("compartments") or ()]
    found = list(CANONICAL_COMPARTMENTS)
    for name in names:
        prefix = name.capitalize() if name.islower() else name
        if prefix not in found:
            found.append(prefix)
    return tuple(found)


def _feature_columns(df: pd.DataFrame, prefixes: Sequence[str], *, image_features: bool, where: str) -> list[str]:
    """Feature columns by prefix (numeric ``Image*`` too with ``image_features``), in column order.

    A column that is neither metadata, an image column nor a compartment's feature would
    be lost by the steps: that is an error naming it.
    """
    out: list[str] = []
    stray: list[str] = []
    for col in map(str, df.columns):
        if is_metadata(col):
            continue
        if col.startswith(tuple(prefixes)):
            out.append(col)
        elif col.startswith(_PASSTHROUGH):
            if image_features and col.startswith("Image") and pd.api.types.is_numeric_dtype(df[col]):
                out.append(col)
        else:
            stray.append(col)
    if stray:
        shown = ", ".join(stray[:5]) + (f" ... ({len(stray)} in all)" if len(stray) > 5 else "")
        raise InputError(
            f"{where}: column(s) {shown} are neither Metadata_ columns nor features of the compartments "
            f"({', '.join(prefixes)}); add their object table to compartments: in the config"
        )
    if not out:
        raise InputError(f"{where}: no feature columns (names starting with {', '.join(prefixes)})")
    return out


def _features_for(df: pd.DataFrame, block: Any, prefixes: Sequence[str], where: str) -> list[str]:
    """The block's ``features``: its explicit list, or every feature of the compartments."""
    if isinstance(block.features, list):
        return list(block.features)
    return _feature_columns(df, prefixes, image_features=block.image_features, where=where)


def _plate_report(backend_dir: str, plate: str) -> dict[str, Any] | None:
    path = io.join(backend_dir, f"{plate}.report.json")
    if not Path(path).exists():
        return None
    report = io.read_json(path)
    return report if isinstance(report, dict) else None


def _plate_task(layout: Layout, recipe: Recipe, batch: str, plate: str, force: bool) -> RunResult:
    """aggregate → annotate → normalize → normalize_negcon for one plate."""
    result = RunResult()
    steps = _Steps(layout, recipe, force=force, result=result)
    files = step_outputs(layout, batch, plate)
    Path(files["aggregate"]).parent.mkdir(parents=True, exist_ok=True)
    backend_dir = io.join(layout.workspace, "backend", batch, plate)
    prefixes = compartment_prefixes(recipe, _plate_report(backend_dir, plate))
    _aggregate_step(steps, layout, recipe, files, batch, plate)
    if recipe.settings.annotate.perform:
        _annotate_step(steps, layout, recipe, files, batch, plate)
    _normalize_steps(steps, recipe, files, prefixes)
    return result


def _aggregate_step(steps: _Steps, layout: Layout, recipe: Recipe, files: dict[str, str], batch: str,
                    plate: str) -> None:
    """``PLATE.csv.gz``: aggregated from the SQLite backend, or collate's per-well profiles."""
    from .aggregate import aggregate

    backend_dir = io.join(layout.workspace, "backend", batch, plate)
    s = recipe.settings
    if s.aggregate.perform:
        sqlite = io.join(backend_dir, f"{plate}.sqlite")
        strata = [s.aggregate.plate_column, s.aggregate.well_column] + ([s.aggregate.site_column] if s.aggregate.site_column else [])
        settings = s.aggregate.model_dump(mode="json") | {"compartments": s.compartments}
        compartments = [c.capitalize() if c.islower() else c for c in s.compartments]

        def _aggregated() -> _Made:
            exclude = _outlier_cells(s.aggregate, sqlite, compartments, strata)
            frame = aggregate(
                sqlite, operation=s.aggregate.method, strata=strata, compartments=compartments,
                image_features=bool(s.aggregate.image_feature_categories),
                image_feature_categories=s.aggregate.image_feature_categories or (),
                sites=None if s.aggregate.fields == "all" else list(s.aggregate.fields), exclude=exclude)
            return _Made(frame, extra={"cell_qc": exclude.summary()} if exclude is not None else {})

        if s.aggregate.exclude_outlier_cells is not False:
            settings["thresholds"] = _thresholds(s.aggregate)  # the sets' contents, not only the file name
        steps.run("aggregate", [sqlite], {files["aggregate"]: _aggregated}, settings)
    elif not Path(files["aggregate"]).exists() or Path(_sidecar(files["aggregate"])).exists():
        # the handbook's csv2gz + rsync: take the per-well profiles collate wrote (a file
        # put there by hand, without a sidecar, is used as it is)
        from .collate import plate_profiles

        source = plate_profiles(layout.workspace, batch, plate)  # only what the plate's report vouches for
        if source is None:
            files["aggregate"] = existing_output(files["aggregate"])  # put there by hand, in any format
        if source is None and Path(files["aggregate"]).exists():
            pass
        elif source is None:
            raise InputError(
                f"{files['aggregate']}: per-well profiles not found, nor {backend_dir}/{plate}.csv; "
                "run `cytoprofile collate` or set aggregate.perform: true"
            )
        else:
            steps.run("profiles", [source], {files["aggregate"]: lambda: io.read_table(source)}, {"from": "backend"})


def _thresholds(block: Any) -> dict[str, dict[str, float]]:
    from .cell_qc import load_thresholds

    sets = block.exclude_outlier_cells
    return load_thresholds(block.outlier_thresholds, sets=None if sets is True else list(sets))


def _outlier_cells(block: Any, backend: str, compartments: Sequence[str], strata: Sequence[str]) -> Any:
    """Flagged cells to leave out of aggregation (``aggregate.exclude_outlier_cells``), or None."""
    if block.exclude_outlier_cells is False:
        if block.outlier_thresholds is not None:  # refused by the config; checked again for a hand-made block
            raise ConfigError("aggregate.outlier_thresholds has no effect unless exclude_outlier_cells is set")
        return None
    from .cell_qc import outlier_cells

    flagged = outlier_cells(backend, _thresholds(block), compartments=compartments, strata=strata)
    log.info("%s: %d of %d cells excluded as outliers before aggregation", os.path.basename(backend), flagged.excluded, flagged.cells)
    return flagged


def _external_path(meta_root: str, ext: Any) -> str:
    """``metadata/FOLDER/FILE`` (external_metadata/, or moa/ for the 2021 string form)."""
    return io.join(meta_root, "metadata", ext.folder, ext.file)


def _annotate_step(steps: _Steps, layout: Layout, recipe: Recipe, files: dict[str, str], batch: str,
                   plate: str) -> None:
    """``_augmented``: the plate map (and external metadata) joined; unmatched wells per config."""
    from .metadata import (
        load_external_metadata,
        platemap_for_plate,
        platemap_name_for_plate,
        platemap_path,
    )

    s = recipe.settings
    meta_root = layout.meta_root(batch)
    barcode = io.join(meta_root, "metadata", "platemaps", batch, "barcode_platemap.csv")
    platemap_file = platemap_path(meta_root, batch, platemap_name_for_plate(meta_root, batch, plate))
    inputs = [files["aggregate"], barcode, platemap_file]
    ext = s.annotate.external
    ext_path = _external_path(meta_root, ext) if ext.perform and ext.file else None
    if ext_path is not None:
        inputs.append(ext_path)
    settings = s.annotate.model_dump(mode="json") | {"platemap_well_column": s.platemap_well_column}

    def _annotated() -> _Made:
        from .annotate import annotate

        platemap = _prefixed(platemap_for_plate(meta_root, batch, plate))
        profiles = io.load_profiles(files["aggregate"])
        kept, dropped = _matched_wells(profiles, recipe, meta_root, batch, plate, platemap, platemap_file, ext_path)
        external = load_external_metadata(ext_path, merge_column=ext.merge_column) if ext_path else None
        join = ext.join_column if ext_path else None
        frame = annotate(
            kept, platemap, join_on=[s.platemap_well_column, s.annotate.well_column],
            external_metadata=external, external_join_left=[join] if join else None,
            external_join_right=[join] if join else None)
        return _Made(frame, before=list(profiles.columns),
                     extra={"wells": {"in": len(profiles), "out": len(frame), "dropped_unmatched": dropped}})

    steps.run("annotate", inputs, {files["annotate"]: _annotated}, settings)


def _matched_wells(profiles: pd.DataFrame, recipe: Recipe, meta_root: str, batch: str, plate: str,
                   platemap: pd.DataFrame, platemap_file: str, ext_path: str | None) -> tuple[pd.DataFrame, list[str]]:
    """The profiles whose wells the plate map has, and the wells dropped.

    ``annotate.unmatched_wells: error`` (the default) hands the profiles to the metadata
    check, which names every unmatched well; ``drop`` drops them, as the recipe did, and
    says how many went.
    """
    from .errors import MetadataError
    from .metadata import validate_metadata

    s = recipe.settings
    well = s.annotate.well_column
    if well not in profiles.columns or s.platemap_well_column not in platemap.columns:
        return profiles, []  # annotate names the missing column
    if s.annotate.unmatched_wells == "error":
        ext = s.annotate.external
        try:
            validate_metadata(meta_root, batch, plates=[plate], profiles={plate: profiles}, well_column=well,
                              external_metadata=ext_path, merge_column=ext.merge_column if ext_path else None)
        except MetadataError as exc:
            raise MetadataError(
                f"{exc}; or set annotate.unmatched_wells: drop to drop them as the recipe did"
            ) from exc
        return profiles, []
    known = set(platemap[s.platemap_well_column].astype(str))
    wells = profiles[well].astype(str)
    dropped = sorted(set(wells) - known)
    if dropped:
        log.warning("%s: %d of %d well(s) dropped, not in the plate map %s (annotate.unmatched_wells: drop): %s",
                    plate, len(dropped), wells.nunique(), os.path.basename(platemap_file), ", ".join(dropped[:10])
                    + (" ..." if len(dropped) > 10 else ""))
    return profiles.loc[wells.isin(known)].reset_index(drop=True), dropped


def _normalize_steps(steps: _Steps, recipe: Recipe, files: dict[str, str], prefixes: Sequence[str]) -> None:
    """``_normalized`` and ``_normalized_negcon``; ``options.samples`` narrows the first one's fit."""
    from .normalize import normalize

    s = recipe.settings
    for key, block in (("normalize", s.normalize), ("normalize_negcon", s.normalize_negcon)):
        if not block.perform:
            continue
        query = _fit_query(block.fit_query(), s.options.samples if key == "normalize" else "all")
        settings = block.model_dump(mode="json") | {"fit_query": query}

        def _normalized(block: Any = block, query: str = query) -> _Made:
            profiles = io.load_profiles(files["annotate"])
            names = _features_for(profiles, block, prefixes, files["annotate"])
            frame = normalize(
                profiles, features=names, image_features=block.image_features,
                samples=query, method=block.method, mad_robustize_epsilon=block.mad_robustize_fudge_factor,
                spherize_method=block.spherize_method, spherize_epsilon=block.spherize_epsilon,
                spherize_center=block.spherize_center)
            reason = (f"normalize.method: spherize {block.spherize_method} (features become PC1..PC{len(names)})"
                      if block.method == "spherize" and block.spherize_method.startswith("PCA")
                      else "normalize.features: not in the list")
            return _Made(frame, before=list(profiles.columns), dropped=dict.fromkeys(profiles.columns, reason))

        steps.run(key, [files["annotate"]], {files[key]: _normalized}, settings)


def _fit_query(query: str, samples: str) -> str:
    """``query`` ANDed with ``options.samples`` (which the recipe read and never used)."""
    text = samples.strip()
    if text == "all":
        return query
    part = f"({text})" if re.search(r"\||\bor\b", text) else text
    return part if query == "all" else f"{part} & {query}"


def _prefixed(platemap: pd.DataFrame) -> pd.DataFrame:
    """Plate map columns with the ``Metadata_`` prefix, as the recipe passes them."""
    return platemap.rename(columns={c: with_metadata_prefix(str(c)) for c in platemap.columns})


def _selection(df: pd.DataFrame, block: Any, prefixes: Sequence[str], where: str) -> dict[str, str]:
    """Features the block's operations drop, each with the operation that dropped it.

    The operations run one after the other on the features the previous ones left,
    exactly as one ``feature_select`` call does. ``min_cells`` other than 1 computes
    the statistics on wells with at least that many objects (all wells are kept).
    """
    from .feature_select import excluded_features

    params: dict[str, Any] = {k: getattr(block.parameters, k) for k in type(block.parameters).model_fields}
    groups = params["noise_removal_perturb_groups"]
    if isinstance(groups, list) and len(groups) == 1:
        params["noise_removal_perturb_groups"] = groups[0]  # one name is a column, not one label
    samples = "all" if block.min_cells == 1 else f"Metadata_Object_Count >= {block.min_cells}"
    remaining = _features_for(df, block, prefixes, where)
    dropped: dict[str, str] = {}
    for op in block.operations:
        if not remaining:
            break
        gone = set(excluded_features(df, features=remaining, image_features=block.image_features,
                                     operations=[op], samples=samples, **params))
        dropped |= dict.fromkeys((c for c in remaining if c in gone), f"feature_select: {op}")
        remaining = [c for c in remaining if c not in gone]
    return dropped


class _Level:
    """Feature selection of one block (main or negcon) at its level, with GCT."""

    def __init__(self, layout: Layout, recipe: Recipe, plates: dict[str, list[str]], *, negcon: bool,
                 steps: _Steps, prefixes: Sequence[str]) -> None:
        s = recipe.settings
        self.layout, self.recipe, self.plates, self.steps, self.prefixes = layout, recipe, plates, steps, prefixes
        self.block = s.feature_select_negcon if negcon else s.feature_select
        self.tag = f"_{_NEGCON}" if negcon else ""
        self.level = self.block.level
        self.settings = self.block.model_dump(mode="json")
        self.name = "feature_select" + self.tag

    def source(self, batch: str, plate: str) -> str:
        return self.layout.plate_file(batch, plate, f"_normalized{self.tag}")

    def output(self, batch: str, plate: str) -> str:
        return self.layout.plate_file(batch, plate, f"_normalized_feature_select{self.tag}_{self.level}")

    def load(self, batch: str, plate: str, with_batch: bool) -> pd.DataFrame:
        path = self.source(batch, plate)
        df = io.load_profiles(path)
        if "Metadata_Plate" not in df.columns:
            raise InputError(f"{path}: no Metadata_Plate column; feature selection over plates needs it")
        extra = {"Metadata_Plate": df["Metadata_Plate"].astype(str)}
        if with_batch:
            extra["Metadata_batch"] = pd.Series(batch, index=df.index)
        return pd.concat([df.drop(columns=["Metadata_Plate"]), pd.DataFrame(extra)], axis=1)[
            [*df.columns, *(["Metadata_batch"] if with_batch else [])]]

    def stack(self, frames: list[pd.DataFrame], where: str) -> tuple[pd.DataFrame, dict[str, str]]:
        """The plates together (metadata and features); the columns left out, with why."""
        df = pd.concat(frames, ignore_index=True)
        meta = metadata_columns(df.columns)
        features = _feature_columns(df, self.prefixes, image_features=self.block.image_features, where=where)
        keep = set(meta) | set(features)
        why = f"feature_select level {self.level}: plates stacked with metadata and features only"
        return df[meta + features], {
            c: why + (" (image_features: false)" if c.startswith("Image") else "") for c in df.columns if c not in keep}

    def _all(self) -> Iterator[tuple[str, str]]:
        return ((b, p) for b, names in self.plates.items() for p in names)

    def plate_level(self) -> None:
        for batch, plate in list(self._all()):
            def _selected(b: str = batch, p: str = plate) -> _Made:
                df = self.load(b, p, False)
                dropped = _selection(df, self.block, self.prefixes, self.source(b, p))
                return _Made(df.drop(columns=list(dropped)), before=list(df.columns), dropped=dropped)

            self.steps.run(self.name, [self.source(batch, plate)], {self.output(batch, plate): _selected}, self.settings)

    def grouped(self) -> None:
        """Levels batch and all: select on the plates together, then split back per plate."""
        groups = [(b, [b]) for b in self.plates] if self.level == "batch" else [("all", list(self.plates))]
        for _label, batches in groups:
            pairs = [(b, p) for b in batches for p in self.plates[b]]
            inputs = [self.source(b, p) for b, p in pairs]
            outs = [self.output(b, p) for b, p in pairs]
            if not self.steps.force and _fresh(outs, inputs, self.settings, self.layout.root):
                self.steps.result.skipped.append(f"{self.name}: {len(outs)} plate(s) at level {self.level}")
                if not self.block.gct:
                    continue
            loaded = {pair: self.load(*pair, True) for pair in pairs}
            stacked, left_out = self.stack(list(loaded.values()), inputs[0])
            dropped = _selection(stacked, self.block, self.prefixes, inputs[0])
            selected = stacked.drop(columns=list(dropped))
            self.steps.run(self.name, inputs, {
                self.output(b, p): _Made(self._split(selected, p), before=list(loaded[(b, p)].columns),
                                         dropped=left_out | dropped) for b, p in pairs}, self.settings)
            for b in batches:
                frame = selected if self.level == "batch" else selected.loc[selected["Metadata_batch"] == b].reset_index(drop=True)
                self.gct(b, frame)

    @staticmethod
    def _split(selected: pd.DataFrame, plate: str) -> pd.DataFrame:
        part = selected.loc[selected["Metadata_Plate"] == str(plate)].reset_index(drop=True)
        return part.drop(columns=["Metadata_batch"], errors="ignore")

    def gct(self, batch: str, frame: pd.DataFrame) -> None:
        """``gct/BATCH/BATCH{stem}.{csv.gz,gct}``, each with its provenance sidecar."""
        if not self.block.gct:
            return
        stem = f"_normalized_feature_select{self.tag}_{self.level}"
        csv_path = self.layout.gct_file(batch, stem, self.layout.suffix)
        gct_path = self.layout.gct_file(batch, stem, ".gct")
        inputs = [self.source(batch, p) for p in self.plates[batch]]
        ran = self.steps.run(self.name + "_gct", inputs, {csv_path: frame}, self.settings)
        if not ran and not self.steps.force and _fresh([gct_path], inputs, self.settings, self.layout.root):
            return
        meta = metadata_columns(frame.columns)
        features = _feature_columns(frame, self.prefixes, image_features=False, where=csv_path)
        io.write_gct(frame, gct_path, features=features, meta_features=meta)
        why = f"write_gct: Image_ columns are not written to GCT (they are in {os.path.basename(csv_path)})"
        made = _Made(frame[meta + features], before=list(frame.columns), dropped=dict.fromkeys(frame.columns, why))
        _record(gct_path, step=self.name + "_gct", inputs=inputs, settings=self.settings, config_path=self.recipe.path,
                root=self.layout.root, pipeline=self.recipe.settings.pipeline, account=made.account())
        self.steps.result.outputs.append(gct_path)


def _feature_select_level(layout: Layout, recipe: Recipe, plates: dict[str, list[str]], *, negcon: bool,
                          steps: _Steps, prefixes: Sequence[str]) -> None:
    """Feature selection at the block's level; batch and all fit on the plates together, then split."""
    level = _Level(layout, recipe, plates, negcon=negcon, steps=steps, prefixes=prefixes)
    if level.level == "plate":
        level.plate_level()
    else:
        level.grouped()


def run(
    config: str | os.PathLike[str] | Recipe,
    *,
    root: str | os.PathLike[str] | None = None,
    workspace: str | os.PathLike[str] | None = None,
    force: bool = False,
    jobs: int | None = None,
    scheduler: str | None = None,
    tmp_dir: str | None = None,
    progress: Progress | None = None,
    allow_unknown_keys: bool = False,
) -> RunResult:
    """Run the whole recipe a config describes, resuming where outputs are already current.

    A URL workspace (``s3://...``) is read and written in place: each plate's steps
    fetch that plate's inputs to a scratch folder and upload what they write, and
    the batch-level steps gather only the per-well tables they need. A misspelled
    config key stops the run unless ``allow_unknown_keys`` (then it is a warning).
    """
    from .executor import run_plates

    start = time.perf_counter()
    recipe = config if isinstance(config, Recipe) else load_config(config, allow_unknown_keys=allow_unknown_keys)
    s = recipe.settings
    _storage_settings(s.options)
    ws_setting = str(workspace) if workspace is not None else s.workspace
    if ws_setting is not None and workspace is None and recipe.path and not io.is_remote(ws_setting) \
            and not os.path.isabs(ws_setting) and not io.is_remote(recipe.path):
        ws_setting = os.path.join(os.path.dirname(recipe.path), ws_setting)
    root_path = str(root) if root is not None else (ws_setting if ws_setting is not None else os.getcwd())
    ws_path = ws_setting if ws_setting is not None else os.path.normpath(os.path.join(root_path, "..", ".."))
    if s.options.compression not in ("gzip", None):
        raise ConfigError(f"options.compression: {s.options.compression!r} is not supported; use gzip or null")
    if io.is_remote(root_path) != io.is_remote(ws_path) or (io.is_remote(root_path) and root_path != ws_path):
        raise ConfigError("a URL workspace holds the outputs too: give --workspace URL without a different --root")
    layout = Layout(root=root_path, workspace=ws_path, output_dir=s.output_dir, compression=s.options.compression,
                    output_format=s.options.output_format)
    io.remove_leftovers(io.join(layout.root, layout.output_dir))  # temporary files of a killed run
    plates = {b: p for b, p in recipe.selected_plates().items() if p}
    if not plates:
        raise ConfigError(f"{recipe.path}: no plate to process (every batch or plate has process: false)")
    _check_skipped_steps_made(layout, recipe, plates)
    if s.normalize.perform and s.options.samples.strip() != "all":
        log.warning("options.samples: normalize is fitted on %s only; profiles will differ from those the "
                    "recipe made (it ignored this key)", s.options.samples.strip())
    if s.annotate.perform and not io.is_remote(layout.root):
        from .metadata import validate_metadata

        ext = s.annotate.external
        for batch, names in plates.items():
            for note in validate_metadata(
                layout.meta_root(batch), batch, plates=names,
                external_metadata=_external_path(layout.meta_root(batch), ext) if ext.perform and ext.file else None,
                merge_column=ext.merge_column if ext.perform else None,
            ):
                log.warning("%s", note)
    result = RunResult()
    tasks = [(layout, recipe, batch, plate, force, tmp_dir) for batch, names in plates.items() for plate in names]
    total = len(tasks) + 1

    finished: list[int] = []

    def _plate_done(i: int, r: RunResult) -> None:
        finished.append(i)
        log.info("%s: %d step(s) run, %d already current", tasks[i][3], len(r.ran), len(r.skipped))
        if progress is not None:
            progress("recipe", len(finished), total)

    per_plate = run_plates(_plate_task_entry, [(t,) for t in tasks], {"storage": io.current_storage()},
                           jobs=jobs or s.executor.jobs, scheduler=scheduler or s.executor.scheduler, progress=None,
                           on_done=_plate_done)
    for r in per_plate:
        result.ran += r.ran
        result.skipped += r.skipped
        result.outputs += r.outputs
    if io.is_remote(layout.root):
        _remote_batch_steps(layout, recipe, plates, force=force, tmp_dir=tmp_dir, result=result)
    else:
        _batch_steps(layout, recipe, plates, force=force, result=result)
    if progress is not None:
        progress("recipe", total, total)
    result.products = _products(layout, recipe, plates) + result.products
    result.root = layout.root
    result.seconds = time.perf_counter() - start
    return result


#: step -> (the step whose output it reads, that output's stem)
_READS = {"normalize": ("annotate", "_augmented"), "normalize_negcon": ("annotate", "_augmented"),
          "feature_select": ("normalize", "_normalized"),
          "feature_select_negcon": ("normalize_negcon", f"_normalized_{_NEGCON}")}


def _check_skipped_steps_made(layout: Layout, recipe: Recipe, plates: dict[str, list[str]]) -> None:
    """A step reads the output of the step before it; when that one is off (``perform: false``,
    or its block left out) the output must exist from an earlier run, else stop before any work."""
    s = recipe.settings
    for step, (before, stem) in _READS.items():
        if not getattr(s, step).perform or getattr(s, before).perform:
            continue
        missing = [layout.plate_file(b, p, stem) for b, names in plates.items() for p in names
                   if not io.exists(layout.plate_file(b, p, stem))]
        if missing:
            raise ConfigError(
                f"{recipe.path}: {step}.perform is true but {before}.perform is false, and {before}'s output "
                f"{missing[0]} does not exist" + (f" ({len(missing)} plates)" if len(missing) > 1 else "")
                + f": set {before}.perform: true, or {step}.perform: false")


def _storage_settings(options: Any) -> None:
    """``options.connect_timeout/read_timeout/retries``, when set, over the storage settings
    in effect (the command line's); the plate tasks inherit them."""
    overrides = options.storage_overrides()
    if overrides:
        storage = io.current_storage()
        storage["config_kwargs"] = dict(storage.get("config_kwargs") or {}) | overrides
        io.configure_storage(storage)


def _batch_steps(layout: Layout, recipe: Recipe, plates: dict[str, list[str]], *, force: bool, result: RunResult) -> None:
    """feature_select, feature_select_negcon (with GCT), then quality control, on a local layout."""
    s = recipe.settings
    steps = _Steps(layout, recipe, force=force, result=result)
    prefixes = compartment_prefixes(recipe)
    for batch, names in plates.items():
        for plate in names:
            report = _plate_report(io.join(layout.workspace, "backend", batch, plate), plate)
            prefixes += tuple(p for p in compartment_prefixes(recipe, report) if p not in prefixes)
    if s.feature_select.perform:
        _feature_select_level(layout, recipe, plates, negcon=False, steps=steps, prefixes=prefixes)
    if s.feature_select_negcon.perform:
        _feature_select_level(layout, recipe, plates, negcon=True, steps=steps, prefixes=prefixes)
    chain, chain_options = s.processing, s.processing_options
    if chain is not None:
        _Chain(layout, plates, chain, chain_options or {}, steps=steps, prefixes=prefixes).run()
    result.qc = "QC: not run (quality_control.perform: false)"
    if s.quality_control.perform:
        from .processing import parse_chain
        from .qc import quality_control

        map_settings = _map_settings(s.quality_control.map)

        level = s.feature_select.level if s.feature_select.perform else (
            s.feature_select_negcon.level if s.feature_select_negcon.perform else None)
        for batch, names in plates.items():
            done = quality_control(
                layout.root, batch, names, level=level,
                profiles_dir=os.path.abspath(io.join(layout.root, s.output_dir)),
                load_data_dir=os.path.abspath(layout.find("load_data_csv", batch)).rsplit(os.sep, 1)[0],
                backend_dir=os.path.abspath(io.join(layout.workspace, "backend")),
                summary=s.quality_control.summary.perform, heatmaps=s.quality_control.heatmap.perform,
                summary_well_columns=_summary_well_columns(s.quality_control.summary),
                map_settings=map_settings,
                map_profiles=processing_file(layout, parse_chain(chain)) if chain is not None else None,
            )
            result.ran.append(f"quality_control: {batch}")
            result.outputs.append(io.join(layout.root, "quality_control"))
            if done.report_path:
                result.products.append((f"QC report {batch}", os.path.relpath(done.report_path, layout.root)))
        result.qc = f"QC: ran for {', '.join(plates)}"


def _products(layout: Layout, recipe: Recipe, plates: dict[str, list[str]]) -> list[tuple[str, str]]:
    """Each plate's final profiles (of the main and negcon branches) and the GCT files,
    relative to the outputs' root."""
    s = recipe.settings
    out: list[tuple[str, str]] = []
    branches = [("", s.normalize, s.feature_select), (f"_{_NEGCON}", s.normalize_negcon, s.feature_select_negcon)]
    for batch, names in plates.items():
        for plate in names:
            for tag, norm, select in branches:
                if tag and not norm.perform:
                    continue
                stem = (f"_normalized_feature_select{tag}_{select.level}" if norm.perform and select.perform
                        else f"_normalized{tag}" if norm.perform else "_augmented" if s.annotate.perform else "")
                out.append((f"profiles {plate}" + (" (negcon)" if tag else ""),
                            _relative(layout.plate_file(batch, plate, stem), layout.root)))
        for tag, norm, select in branches:
            if select.perform and norm.perform and select.gct:
                gct = layout.gct_file(batch, f"_normalized_feature_select{tag}_{select.level}", ".gct")
                out.append((f"GCT {batch}" + (" (negcon)" if tag else ""), _relative(gct, layout.root)))
    return out


def _relative(path: str, root: str) -> str:
    return path[len(root):].lstrip("/") if io.is_remote(root) else os.path.relpath(path, root)


def _map_settings(block: Any) -> dict[str, Any] | None:
    """``quality_control.map`` as ``evaluate.mean_average_precision`` options (None: not asked for)."""
    settings = {
        "modes": list(block.modes), "pert_column": block.pert_column, "annotation_column": block.annotation_column,
        "multilabel_separator": block.multilabel_separator, "control_query": block.control_query,
        "neg_sameby": list(block.neg_sameby), "pos_diffby": list(block.pos_diffby), "null_size": block.null_size,
        "threshold": block.threshold, "seed": block.seed,
    }
    return settings if block.perform else None


def _summary_well_columns(summary: Any) -> tuple[str, str] | None:
    """``quality_control.summary.row/column`` when set; None (Metadata_Well, else the
    defaults Metadata_Row + Metadata_Col) when they are the defaults."""
    chosen = (summary.row, summary.column)
    return None if chosen == ("Metadata_Row", "Metadata_Col") else chosen


def _scratch_layout(layout: Layout, scratch: str) -> Layout:
    return Layout(root=scratch, workspace=scratch, output_dir=layout.output_dir, compression=layout.compression,
                  output_format=layout.output_format)


def _publish_written(scratch: str, remote: str, written: list[str]) -> list[str]:
    """Upload what a step wrote in the scratch copy (with provenance sidecars and folders' files)."""
    rels: list[str] = []
    for path in written:
        if os.path.isdir(path):
            rels += [os.path.relpath(os.path.join(d, f), scratch) for d, _, files in os.walk(path) for f in files
                     if not f.startswith(".")]
            continue
        rels.append(os.path.relpath(path, scratch))
        if os.path.exists(_sidecar(path)):
            rels.append(os.path.relpath(_sidecar(path), scratch))
    from .workspace import publish

    return publish(scratch, remote, rels)


def _at_url(exc: CytoprofileError, scratch: str, url: str) -> CytoprofileError:
    """The same error, naming the workspace URL instead of the scratch copy (deleted next)."""
    text = str(exc)
    for local in {scratch, os.path.realpath(scratch)}:
        text = text.replace(local.rstrip(os.sep) + os.sep, url.rstrip("/") + "/").replace(local, url)
    return type(exc)(text)


def _remote_plate_task(layout: Layout, recipe: Recipe, batch: str, plate: str, force: bool,
                       tmp_dir: str | None) -> RunResult:
    """One plate's steps against a URL workspace, through a scratch folder."""
    from .workspace import scratch_dir, stage

    s = recipe.settings
    with scratch_dir(tmp_dir, f"run-{plate}") as scratch:
        wanted = {f"{plate}.csv", f"{plate}.csv.gz", f"{plate}.parquet", f"{plate}.report.json",
                  f"{plate}.csv.generation", f"{plate}.csv.gz.generation"}
        if s.aggregate.perform:
            wanted.add(f"{plate}.sqlite")
        stage(layout.root, scratch, [f"backend/{batch}/{plate}"], accept=lambda rel: os.path.basename(rel) in wanted)
        stage(layout.root, scratch, [f"metadata/platemaps/{batch}", f"metadata/{s.annotate.external.folder}",
                                     f"{layout.output_dir}/{batch}/{plate}"])
        try:
            local = _plate_task(_scratch_layout(layout, scratch), recipe, batch, plate, force)
        except CytoprofileError as exc:
            raise _at_url(exc, scratch, layout.root) from exc
        local.outputs = _publish_written(scratch, layout.root, local.outputs)
        return local


def _remote_batch_steps(layout: Layout, recipe: Recipe, plates: dict[str, list[str]], *, force: bool,
                        tmp_dir: str | None, result: RunResult) -> None:
    """Batch-level steps against a URL workspace: gather per-well tables, run, upload."""
    from .processing import parse_chain
    from .workspace import scratch_dir, stage

    with scratch_dir(tmp_dir, "run-batch") as scratch:
        prefixes = ["quality_control/summary", f"{layout.output_dir}/processing"]
        for batch, names in plates.items():
            prefixes += [f"gct/{batch}", f"load_data_csv/{batch}"]
            prefixes += [f"{layout.output_dir}/{batch}/{p}" for p in names]
            prefixes += [f"backend/{batch}/{p}/{p}.report.json" for p in names]
        # the processing chain's intermediates (with sidecars), so a re-run skips or resumes the chain
        chain = parse_chain(recipe.settings.processing) if recipe.settings.processing is not None else []
        made = {f"{layout.output_dir}/processing/" + os.path.basename(processing_file(layout, chain[: i + 1]))
                for i in range(len(chain))}
        stage(layout.root, scratch, prefixes,
              accept=lambda rel: "_normalized" in rel or rel.endswith((".report.json", ".tsv", ".gct")) or "load_data" in rel
              or rel.startswith("gct/") or "_augmented" in rel or rel.removesuffix(".provenance.json") in made)
        before = len(result.outputs)
        try:
            _batch_steps(_scratch_layout(layout, scratch), recipe, plates, force=force, result=result)
        except CytoprofileError as exc:
            raise _at_url(exc, scratch, layout.root) from exc
        written = sorted(set(result.outputs[before:]))
        result.outputs[before:] = _publish_written(scratch, layout.root, written)


def _plate_task_entry(task: tuple[Layout, Recipe, str, str, bool, str | None], options: dict[str, Any],
                      progress: Any) -> RunResult:
    """Executor entry point for one plate's steps (local or on a Dask worker)."""
    io.configure_storage(options.get("storage"))
    layout, recipe, batch, plate, force, tmp_dir = task
    if io.is_remote(layout.root):
        return _remote_plate_task(layout, recipe, batch, plate, force, tmp_dir)
    return _plate_task(layout, recipe, batch, plate, force)


# --- the processing chain (recipe key ``processing:``) ---

_CHAIN_INPUTS = {"augmented": "_augmented", "normalized": "_normalized", "normalized_negcon": "_normalized_negcon"}


def processing_file(layout: Layout, steps: Sequence[str]) -> str:
    """``OUTPUT_DIR/processing/profiles_<steps>.parquet``: the chain's output after ``steps``."""
    return io.join(layout.root, layout.output_dir, "processing", "_".join(["profiles", *steps]) + ".parquet")


class _Chain:
    """The processing chain over every selected plate together, one intermediate per step.

    Starts from each plate's annotated profiles (or the ``input`` option's), metadata
    and features only, with ``Metadata_Batch`` (the batch's name) added when absent.
    Each step's output is a Parquet table with a sidecar; a step whose output is current
    for its input and its options is skipped, so a run killed mid-chain resumes there.
    """

    def __init__(self, layout: Layout, plates: dict[str, list[str]], chain: str | list[str],
                 options: Mapping[str, Any], *, steps: _Steps, prefixes: Sequence[str]) -> None:
        from .processing import parse_chain

        self.layout, self.plates, self.steps, self.prefixes = layout, plates, steps, prefixes
        self.chain = parse_chain(chain)
        self.options = {k: v for k, v in options.items() if k != "input"}
        self.stem = _CHAIN_INPUTS[str(options.get("input", "augmented"))]
        self.frame: pd.DataFrame | None = None

    def _stacked(self, inputs: Sequence[str]) -> _Made:
        frames: list[pd.DataFrame] = []
        left_out: dict[str, str] = {}
        before: list[str] = []
        for path in inputs:
            batch = os.path.basename(os.path.dirname(os.path.dirname(path)))
            df = io.read_table(path)
            features = _feature_columns(df, self.prefixes, image_features=False, where=path)
            meta = metadata_columns(df.columns)
            if "Metadata_Batch" not in df.columns:
                df["Metadata_Batch"] = batch
                meta.append("Metadata_Batch")
            before += [c for c in df.columns if c not in before]
            left_out |= {c: "processing: only Metadata_ columns and features are processed"
                         for c in df.columns if c not in set(meta) | set(features)}
            frames.append(df[meta + features])
        return _Made(pd.concat(frames, ignore_index=True), before=before, dropped=left_out)

    def _input(self, inputs: Sequence[str], first: bool) -> _Made:
        if self.frame is not None:
            return _Made(self.frame)
        return self._stacked(inputs) if first else _Made(io.read_table(inputs[0]))

    def _settings(self, step: str, done: Sequence[str]) -> dict[str, Any]:
        from .processing import CHAIN_OPTIONS

        used = {k: v for k, v in self.options.items() if step in CHAIN_OPTIONS[k]}
        return {"step": step, "after": list(done), "input": self.stem.lstrip("_"), "options": used}

    def _step(self, step: str, inputs: Sequence[str], first: bool) -> _Made:
        from .processing import run_chain

        start = self._input(inputs, first)
        frame = start.frame
        features = [c for c in frame.columns if not str(c).startswith(_METADATA)]
        report: list[dict[str, Any]] = []
        out = run_chain(frame, [step], features=features, report=report, **self.options)
        self.frame = out
        entry = report[0]
        why = f"processing: {step}" + (" (replaced by principal components)" if step == "pca" else "")
        before = list(start.before) if start.before is not None else list(frame.columns)
        dropped = dict(start.dropped) | {c: why for c in frame.columns if c not in set(out.columns)}
        extra = {"processing": {k: entry[k] for k in ("step", "rows_in", "rows_out", "features_in", "features_out",
                                                        "dropped_plates", "seconds")}}
        if "sphering" in out.attrs:
            extra["processing"]["sphering"] = out.attrs["sphering"]
        return _Made(out, before=before, dropped=dropped, extra=extra)

    def run(self) -> None:
        inputs = [self.layout.plate_file(b, p, self.stem) for b, names in self.plates.items() for p in names]
        for i, step in enumerate(self.chain):
            output = processing_file(self.layout, self.chain[: i + 1])
            first = i == 0

            def make(step: str = step, inputs: Sequence[str] = inputs, first: bool = first) -> _Made:
                return self._step(step, inputs, first)

            if not self.steps.run(f"processing {step}", inputs, {output: make}, self._settings(step, self.chain[:i])):
                self.frame = None  # current on disk: the next step that runs reads it
            inputs = [output]
