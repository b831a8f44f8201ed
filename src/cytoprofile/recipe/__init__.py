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

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from .. import io
from ..config import Recipe, load_config
from ..errors import ConfigError
from ..layout import Layout, existing_output
from .batch import batch_steps, processing_file
from .features import compartment_prefixes
from .plate import external_metadata_path, step_outputs
from .provenance import RunResult, write_output
from .remote import RecipeTask, plate_task_entry, remote_batch_steps

__all__ = ["Layout", "RunResult", "compartment_prefixes", "existing_output", "processing_file", "run", "step_outputs", "write_output"]

log = logging.getLogger("cytoprofile.pipeline")


Progress = Callable[[str, int, int], None]


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
    from ..executor import check_jobs, run_plates

    start = time.perf_counter()
    recipe = config if isinstance(config, Recipe) else load_config(config, allow_unknown_keys=allow_unknown_keys)
    s = recipe.settings
    _storage_settings(s.options)
    layout = _layout(recipe, root=root, workspace=workspace)
    io.remove_leftovers(layout.profiles_root())  # temporary files of a killed run
    plates = {b: p for b, p in recipe.selected_plates().items() if p}
    if not plates:
        raise ConfigError(f"{recipe.path}: no plate to process (every batch or plate has process: false)")
    _check_skipped_steps_made(layout, recipe, plates)
    if s.normalize.perform and s.options.samples.strip() != "all":
        log.warning("options.samples: normalize is fitted on %s only; profiles will differ from those the "
                    "recipe made (it ignored this key)", s.options.samples.strip())
    if s.annotate.perform and not io.is_remote(layout.root):
        _warn_metadata(layout, recipe, plates)
    result = RunResult()
    tasks = [RecipeTask(layout, recipe, batch, plate, force=force, tmp_dir=tmp_dir)
             for batch, names in plates.items() for plate in names]
    total = len(tasks) + 1

    jobs = check_jobs(s.executor.jobs if jobs is None else jobs)  # before the bar: a wrong number draws no display
    finished: list[int] = []
    if progress is not None:  # the bar (and its clock) from the start, not from the first plate done
        progress("recipe", 0, total)

    def _plate_done(i: int, r: RunResult) -> None:
        finished.append(i)
        log.info("%s: %d step(s) run, %d already current", tasks[i].plate, len(r.ran), len(r.skipped))
        if progress is not None:
            progress("recipe", len(finished), total)

    per_plate = run_plates(plate_task_entry, tasks, {"storage": io.current_storage()},
                           jobs=jobs, scheduler=scheduler or s.executor.scheduler, progress=None,
                           on_done=_plate_done)
    for r in per_plate:
        result.ran += r.ran
        result.skipped += r.skipped
        result.outputs += r.outputs
    if io.is_remote(layout.root):
        remote_batch_steps(layout, recipe, plates, force=force, tmp_dir=tmp_dir, result=result)
    else:
        batch_steps(layout, recipe, plates, force=force, result=result)
    if progress is not None:
        progress("recipe", total, total)
    result.products = _products(layout, recipe, plates) + result.products
    result.root = layout.root
    result.seconds = time.perf_counter() - start
    return result


def _layout(recipe: Recipe, *, root: str | os.PathLike[str] | None,
            workspace: str | os.PathLike[str] | None) -> Layout:
    """The recipe's layout: ``root`` (default: the workspace, else the current folder) and the
    workspace (the config's is relative to the config file; default: ``root/../..``)."""
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
    return Layout(root=root_path, workspace=ws_path, output_dir=s.output_dir, compression=s.options.compression,
                  output_format=s.options.output_format)


def _warn_metadata(layout: Layout, recipe: Recipe, plates: dict[str, list[str]]) -> None:
    """Check each batch's plate maps (and external metadata) before any work; notes are warnings."""
    from ..metadata import validate_metadata

    ext = recipe.settings.annotate.external
    for batch, names in plates.items():
        for note in validate_metadata(
            layout.meta_root(batch), batch, plates=names,
            external_metadata=external_metadata_path(layout.meta_root(batch), ext) if ext.perform and ext.file else None,
            merge_column=ext.merge_column if ext.perform else None,
        ):
            log.warning("%s", note)


#: step -> (the step whose output it reads, that output's stem)
_READS = {"normalize": ("annotate", Layout.annotated_stem()), "normalize_negcon": ("annotate", Layout.annotated_stem()),
          "feature_select": ("normalize", Layout.normalized_stem()),
          "feature_select_negcon": ("normalize_negcon", Layout.normalized_stem(negcon=True))}


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


def _products(layout: Layout, recipe: Recipe, plates: dict[str, list[str]]) -> list[tuple[str, str]]:
    """Each plate's final profiles (of the main and negcon branches) and the GCT files,
    relative to the outputs' root."""
    s = recipe.settings
    out: list[tuple[str, str]] = []
    branches = [(False, s.normalize, s.feature_select), (True, s.normalize_negcon, s.feature_select_negcon)]
    for batch, names in plates.items():
        for plate in names:
            for negcon, norm, select in branches:
                if negcon and not norm.perform:
                    continue
                stem = (Layout.selected_stem(select.level, negcon=negcon) if norm.perform and select.perform
                        else Layout.normalized_stem(negcon=negcon) if norm.perform
                        else Layout.annotated_stem() if s.annotate.perform else "")
                out.append((f"profiles {plate}" + (" (negcon)" if negcon else ""),
                            layout.relative(layout.plate_file(batch, plate, stem))))
        for negcon, norm, select in branches:
            if select.perform and norm.perform and select.gct:
                gct = layout.gct_file(batch, Layout.selected_stem(select.level, negcon=negcon), ".gct")
                out.append((f"GCT {batch}" + (" (negcon)" if negcon else ""), layout.relative(gct)))
    return out
