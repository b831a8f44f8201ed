"""The profiling recipe's order over batches and plates, with resume and provenance.

Per plate: aggregate → annotate → normalize → normalize_negcon; then, over the
selected plates, feature_select and feature_select_negcon at their level (plate,
batch or all) with optional GCT; then quality control. File names are the
recipe's. Each output gets a ``.provenance.json`` sidecar (step settings,
cytoprofile version, input checksums); a step whose output and sidecar match the
current settings and inputs is skipped unless ``force``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import __version__, io
from .config import Recipe, load_config
from .errors import ConfigError, CytoprofileError, InputError

__all__ = ["Layout", "RunResult", "run", "step_outputs"]

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
        """File ending of step outputs: ``.csv.gz`` (gzip) or ``.csv``."""
        return ".csv.gz" if self.compression == "gzip" else ".csv"

    def plate_file(self, batch: str, plate: str, stem: str) -> str:
        """``profiles/BATCH/PLATE/PLATE{stem}{suffix}``."""
        return io.join(self.root, self.output_dir, batch, plate, f"{plate}{stem}{self.suffix}")

    def gct_file(self, batch: str, stem: str, ext: str) -> str:
        """``gct/BATCH/BATCH{stem}{ext}``."""
        return io.join(self.root, "gct", batch, f"{batch}{stem}{ext}")


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
    """Steps run and skipped, and every output written."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    seconds: float = 0.0


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
            root: str) -> None:
    io.write_json(
        {
            "step": step,
            "output": os.path.basename(output),
            "cytoprofile_version": __version__,
            "config": config_path,
            "settings": settings,
            "settings_hash": _settings_hash(settings),
            "inputs": _input_checksums(inputs, root),
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        _sidecar(output),
    )


class _Steps:
    """Runs one step at a time with skip/resume and provenance."""

    def __init__(self, layout: Layout, recipe: Recipe, *, force: bool, result: RunResult) -> None:
        self.layout = layout
        self.recipe = recipe
        self.force = force
        self.result = result
        self.float_format = recipe.settings.options.float_format

    def run(self, name: str, inputs: Sequence[str], outputs: dict[str, Callable[[], pd.DataFrame] | pd.DataFrame],
            settings: Any) -> bool:
        """Write each output (a frame or a thunk making it) unless all are fresh; True if it ran."""
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
                df = make() if callable(make) else make
            except CytoprofileError as exc:
                if any(os.path.basename(p) in str(exc) for p in inputs):
                    raise
                raise type(exc)(f"step {name} on {inputs[0]}: {exc}") from exc
            if path.endswith(".gct"):
                continue
            io.write_table(df, path, float_format=self.float_format)
            _record(path, step=name, inputs=inputs, settings=settings, config_path=self.recipe.path,
                    root=self.layout.root)
            self.result.outputs.append(path)
        self.result.ran.append(f"{name}: {', '.join(os.path.basename(p) for p in paths)}")
        log.info("%s → %s (%.2fs)", name, ", ".join(os.path.basename(p) for p in paths), time.perf_counter() - start)
        return True


def _plate_task(layout: Layout, recipe: Recipe, batch: str, plate: str, force: bool) -> RunResult:
    """aggregate → annotate → normalize → normalize_negcon for one plate."""
    from .aggregate import aggregate
    from .annotate import annotate
    from .metadata import load_external_metadata, platemap_for_plate
    from .normalize import normalize

    result = RunResult()
    steps = _Steps(layout, recipe, force=force, result=result)
    s = recipe.settings
    files = step_outputs(layout, batch, plate)
    Path(files["aggregate"]).parent.mkdir(parents=True, exist_ok=True)
    backend_dir = io.join(layout.workspace, "backend", batch, plate)

    if s.aggregate.perform:
        sqlite = io.join(backend_dir, f"{plate}.sqlite")
        strata = [s.aggregate.plate_column, s.aggregate.well_column] + ([s.aggregate.site_column] if s.aggregate.site_column else [])
        settings = s.aggregate.model_dump(mode="json") | {"compartments": s.compartments}
        steps.run("aggregate", [sqlite], {files["aggregate"]: lambda: aggregate(
            sqlite, operation=s.aggregate.method, strata=strata,
            compartments=[c.capitalize() if c.islower() else c for c in s.compartments],
            image_features=bool(s.aggregate.image_feature_categories),
            image_feature_categories=s.aggregate.image_feature_categories or (),
            sites=None if s.aggregate.fields == "all" else list(s.aggregate.fields))}, settings)
    elif not Path(files["aggregate"]).exists() or Path(_sidecar(files["aggregate"])).exists():
        # the handbook's csv2gz + rsync: take the per-well profiles collate wrote (a file
        # put there by hand, without a sidecar, is used as it is)
        from .collate import plate_profiles

        source = plate_profiles(layout.workspace, batch, plate)  # only what the plate's report vouches for
        if source is None and Path(files["aggregate"]).exists():
            pass
        elif source is None:
            raise InputError(
                f"{files['aggregate']}: per-well profiles not found, nor {backend_dir}/{plate}.csv; "
                "run `cytoprofile collate` or set aggregate.perform: true"
            )
        else:
            steps.run("profiles", [source], {files["aggregate"]: lambda: io.read_table(source)}, {"from": "backend"})

    if s.annotate.perform:
        from .metadata import platemap_name_for_plate, platemap_path

        meta_root = layout.meta_root(batch)
        platemap = platemap_for_plate(meta_root, batch, plate)
        barcode = io.join(meta_root, "metadata", "platemaps", batch, "barcode_platemap.csv")
        platemap_file = platemap_path(meta_root, batch, platemap_name_for_plate(meta_root, batch, plate))
        inputs = [files["aggregate"], barcode, platemap_file]
        external = None
        ext = s.annotate.external
        if ext.perform and ext.file:
            ext_path = io.join(meta_root, "metadata", "external_metadata", ext.file)
            inputs.append(ext_path)
            external = load_external_metadata(ext_path, merge_column=ext.merge_column)
        join = ext.join_column if ext.perform else None
        settings = s.annotate.model_dump(mode="json") | {"platemap_well_column": s.platemap_well_column}
        steps.run("annotate", inputs, {files["annotate"]: lambda: annotate(
            io.read_table(files["aggregate"]), _prefixed(platemap),
            join_on=[s.platemap_well_column, s.annotate.well_column],
            external_metadata=external, external_join_left=[join] if join else None,
            external_join_right=[join] if join else None)}, settings)

    for key, block in (("normalize", s.normalize), ("normalize_negcon", s.normalize_negcon)):
        if not block.perform:
            continue
        query = block.fit_query()
        settings = block.model_dump(mode="json") | {"fit_query": query}
        def _normalized(block: Any = block, query: str = query) -> pd.DataFrame:
            return normalize(
                io.read_table(files["annotate"]), features=block.features, image_features=block.image_features,
                samples=query, method=block.method, mad_robustize_epsilon=block.mad_robustize_fudge_factor,
                spherize_method=block.spherize_method, spherize_epsilon=block.spherize_epsilon,
                spherize_center=block.spherize_center)

        steps.run(key, [files["annotate"]], {files[key]: _normalized}, settings)
    return result


def _prefixed(platemap: pd.DataFrame) -> pd.DataFrame:
    """Plate map columns with the ``Metadata_`` prefix, as the recipe passes them."""
    return platemap.rename(columns={c: c if str(c).startswith("Metadata_") else f"Metadata_{c}" for c in platemap.columns})


def _feature_select_level(layout: Layout, recipe: Recipe, plates: dict[str, list[str]], *, negcon: bool,
                          steps: _Steps) -> None:
    """Feature selection at the block's level; batch and all fit on the plates together, then split."""
    from .feature_select import feature_select, infer_features

    s = recipe.settings
    block = s.feature_select_negcon if negcon else s.feature_select
    tag = f"_{_NEGCON}" if negcon else ""
    level = block.level
    params = block.parameters.model_dump()
    options: dict[str, Any] = dict(features=block.features, image_features=block.image_features,
                                   operations=list(block.operations), **params)
    settings = block.model_dump(mode="json")
    name = "feature_select" + tag

    def source(batch: str, plate: str) -> str:
        return layout.plate_file(batch, plate, f"_normalized{tag}")

    def output(batch: str, plate: str) -> str:
        return layout.plate_file(batch, plate, f"_normalized_feature_select{tag}_{level}")

    def load(batch: str, plate: str, with_batch: bool) -> pd.DataFrame:
        path = source(batch, plate)
        df = io.read_table(path)
        if "Metadata_Plate" not in df.columns:
            raise InputError(f"{path}: no Metadata_Plate column; feature selection over plates needs it")
        extra = {"Metadata_Plate": df["Metadata_Plate"].astype(str)}
        if with_batch:
            extra["Metadata_batch"] = pd.Series(batch, index=df.index)
        return pd.concat([df.drop(columns=["Metadata_Plate"]), pd.DataFrame(extra)], axis=1)[
            [*df.columns, *(["Metadata_batch"] if with_batch else [])]]

    def stack(frames: list[pd.DataFrame]) -> pd.DataFrame:
        df = pd.concat(frames, ignore_index=True)
        meta = [c for c in df.columns if c.startswith("Metadata_")]
        return df[meta + infer_features(df, image_features=block.image_features)]

    def split(selected: pd.DataFrame, plate: str) -> pd.DataFrame:
        part = selected.loc[selected["Metadata_Plate"] == str(plate)].reset_index(drop=True)
        return part.drop(columns=["Metadata_batch"], errors="ignore")

    def gct_outputs(batch: str, frame: pd.DataFrame) -> None:
        if not block.gct:
            return
        stem = f"_normalized_feature_select{tag}_{level}"
        csv_path = layout.gct_file(batch, stem, layout.suffix)
        gct_path = layout.gct_file(batch, stem, ".gct")
        inputs = [source(batch, p) for p in plates[batch]]
        if steps.run(name + "_gct", inputs, {csv_path: frame}, settings) or not Path(gct_path).exists():
            from .feature_select import infer_features as _infer

            meta = [c for c in frame.columns if c.startswith("Metadata_")]
            io.write_gct(frame, gct_path, features=_infer(frame, image_features=False), meta_features=meta)
            steps.result.outputs.append(gct_path)

    if level == "plate":
        for batch, names in plates.items():
            for plate in names:
                def _selected(b: str = batch, p: str = plate) -> pd.DataFrame:
                    return feature_select(load(b, p, False), **options)

                steps.run(name, [source(batch, plate)], {output(batch, plate): _selected}, settings)
        return
    groups: list[tuple[str, list[str]]] = (
        [(b, [b]) for b in plates] if level == "batch" else [("all", list(plates))]
    )
    for _label, batches in groups:
        inputs = [source(b, p) for b in batches for p in plates[b]]
        outs = [output(b, p) for b in batches for p in plates[b]]
        if not steps.force and _fresh(outs, inputs, settings, layout.root):
            steps.result.skipped.append(f"{name}: {len(outs)} plate(s) at level {level}")
            if not block.gct:
                continue
        selected = feature_select(stack([load(b, p, True) for b in batches for p in plates[b]]), **options)
        steps.run(name, inputs, {output(b, p): split(selected, p) for b in batches for p in plates[b]}, settings)
        for b in batches:
            frame = selected if level == "batch" else selected.loc[selected["Metadata_batch"] == b].reset_index(drop=True)
            gct_outputs(b, frame)


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
) -> RunResult:
    """Run the whole recipe a config describes, resuming where outputs are already current.

    A URL workspace (``s3://...``) is read and written in place: each plate's steps
    fetch that plate's inputs to a scratch folder and upload what they write, and
    the batch-level steps gather only the per-well tables they need.
    """
    from .executor import run_plates

    start = time.perf_counter()
    recipe = config if isinstance(config, Recipe) else load_config(config)
    s = recipe.settings
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
    layout = Layout(root=root_path, workspace=ws_path, output_dir=s.output_dir, compression=s.options.compression)
    io.remove_leftovers(io.join(layout.root, layout.output_dir))  # temporary files of a killed run
    plates = {b: p for b, p in recipe.selected_plates().items() if p}
    if not plates:
        raise ConfigError(f"{recipe.path}: no plate to process (every batch or plate has process: false)")
    for key, flag in (("normalize.subgroups", s.normalize.subgroups), ("normalize_negcon.subgroups", s.normalize_negcon.subgroups),
                      ("feature_select.subgroups", s.feature_select.subgroups),
                      ("feature_select_negcon.subgroups", s.feature_select_negcon.subgroups)):
        if flag:
            log.warning("%s: subgroup outputs (PLATE_subgroup_*) are not made by cytoprofile yet; ignored", key)
    for key, block in (("feature_select", s.feature_select), ("feature_select_negcon", s.feature_select_negcon)):
        if block.perform and block.min_cells != 1:
            log.warning("%s.min_cells: not applied to feature selection (normalize.min_cells is); ignored", key)
    if s.annotate.perform and not io.is_remote(layout.root):
        from .metadata import validate_metadata

        ext = s.annotate.external
        for batch, names in plates.items():
            for note in validate_metadata(
                layout.meta_root(batch), batch, plates=names,
                external_metadata=io.join(layout.meta_root(batch), "metadata", "external_metadata", ext.file)
                if ext.perform and ext.file else None,
                merge_column=ext.merge_column if ext.perform else None,
            ):
                log.warning("%s", note)
    result = RunResult()
    tasks = [(layout, recipe, batch, plate, force, tmp_dir) for batch, names in plates.items() for plate in names]
    total = len(tasks) + 1

    per_plate = run_plates(_plate_task_entry, [(t,) for t in tasks], {"storage": io.current_storage()},
                           jobs=jobs or s.executor.jobs, scheduler=scheduler or s.executor.scheduler, progress=None)
    for i, r in enumerate(per_plate, start=1):
        result.ran += r.ran
        result.skipped += r.skipped
        result.outputs += r.outputs
        if progress is not None:
            progress("recipe", i, total)
    if io.is_remote(layout.root):
        _remote_batch_steps(layout, recipe, plates, force=force, tmp_dir=tmp_dir, result=result)
    else:
        _batch_steps(layout, recipe, plates, force=force, result=result)
    if progress is not None:
        progress("recipe", total, total)
    result.seconds = time.perf_counter() - start
    return result


def _batch_steps(layout: Layout, recipe: Recipe, plates: dict[str, list[str]], *, force: bool, result: RunResult) -> None:
    """feature_select, feature_select_negcon (with GCT), then quality control, on a local layout."""
    s = recipe.settings
    steps = _Steps(layout, recipe, force=force, result=result)
    if s.feature_select.perform:
        _feature_select_level(layout, recipe, plates, negcon=False, steps=steps)
    if s.feature_select_negcon.perform:
        _feature_select_level(layout, recipe, plates, negcon=True, steps=steps)
    if s.quality_control.perform:
        from .qc import quality_control

        level = s.feature_select.level if s.feature_select.perform else (
            s.feature_select_negcon.level if s.feature_select_negcon.perform else None)
        for batch, names in plates.items():
            quality_control(
                layout.root, batch, names, level=level,
                profiles_dir=os.path.abspath(io.join(layout.root, s.output_dir)),
                load_data_dir=os.path.abspath(layout.find("load_data_csv", batch)).rsplit(os.sep, 1)[0],
                backend_dir=os.path.abspath(io.join(layout.workspace, "backend")),
                summary=s.quality_control.summary.perform, heatmaps=s.quality_control.heatmap.perform,
            )
            result.ran.append(f"quality_control: {batch}")
            result.outputs.append(io.join(layout.root, "quality_control"))


def _scratch_layout(layout: Layout, scratch: str) -> Layout:
    return Layout(root=scratch, workspace=scratch, output_dir=layout.output_dir, compression=layout.compression)


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


def _remote_plate_task(layout: Layout, recipe: Recipe, batch: str, plate: str, force: bool,
                       tmp_dir: str | None) -> RunResult:
    """One plate's steps against a URL workspace, through a scratch folder."""
    import shutil
    import tempfile

    from .workspace import stage

    s = recipe.settings
    scratch = tempfile.mkdtemp(prefix=f"cytoprofile-run-{plate}-", dir=tmp_dir)
    try:
        wanted = {f"{plate}.csv", f"{plate}.csv.gz", f"{plate}.parquet", f"{plate}.report.json",
                  f"{plate}.csv.generation", f"{plate}.csv.gz.generation"}
        if s.aggregate.perform:
            wanted.add(f"{plate}.sqlite")
        stage(layout.root, scratch, [f"backend/{batch}/{plate}"], accept=lambda rel: os.path.basename(rel) in wanted)
        stage(layout.root, scratch, [f"metadata/platemaps/{batch}", "metadata/external_metadata",
                                     f"{layout.output_dir}/{batch}/{plate}"])
        local = _plate_task(_scratch_layout(layout, scratch), recipe, batch, plate, force)
        local.outputs = _publish_written(scratch, layout.root, local.outputs)
        return local
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _remote_batch_steps(layout: Layout, recipe: Recipe, plates: dict[str, list[str]], *, force: bool,
                        tmp_dir: str | None, result: RunResult) -> None:
    """Batch-level steps against a URL workspace: gather per-well tables, run, upload."""
    import shutil
    import tempfile

    from .workspace import stage

    scratch = tempfile.mkdtemp(prefix="cytoprofile-run-batch-", dir=tmp_dir)
    try:
        prefixes = ["quality_control/summary"]
        for batch, names in plates.items():
            prefixes += [f"gct/{batch}", f"load_data_csv/{batch}"]
            prefixes += [f"{layout.output_dir}/{batch}/{p}" for p in names]
            prefixes += [f"backend/{batch}/{p}/{p}.report.json" for p in names]
        stage(layout.root, scratch, prefixes,
              accept=lambda rel: "_normalized" in rel or rel.endswith((".report.json", ".tsv", ".gct")) or "load_data" in rel
              or rel.startswith("gct/") or "_augmented" in rel)
        before = len(result.outputs)
        _batch_steps(_scratch_layout(layout, scratch), recipe, plates, force=force, result=result)
        written = sorted(set(result.outputs[before:]))
        result.outputs[before:] = _publish_written(scratch, layout.root, written)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _plate_task_entry(task: tuple[Layout, Recipe, str, str, bool, str | None], options: dict[str, Any],
                      progress: Any) -> RunResult:
    """Executor entry point for one plate's steps (local or on a Dask worker)."""
    io.configure_storage(options.get("storage"))
    layout, recipe, batch, plate, force, tmp_dir = task
    if io.is_remote(layout.root):
        return _remote_plate_task(layout, recipe, batch, plate, force, tmp_dir)
    return _plate_task(layout, recipe, batch, plate, force)
