"""The recipe against a URL workspace: each task stages its inputs into scratch and publishes what it wrote."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .. import io
from ..config import Recipe
from ..errors import CytoprofileError
from ..layout import Layout, Workspace, report_name
from ..processing import parse_chain
from ..workspace import files_under, publish, scratch_dir, stage
from .batch import batch_steps
from .plate import plate_task
from .provenance import RunResult, sidecar_path

__all__ = ["RecipeTask", "plate_task_entry", "remote_batch_steps", "remote_plate_task"]


def _publish_written(scratch: str, remote: str, written: list[str]) -> list[str]:
    """Upload what a step wrote in the scratch copy (with provenance sidecars and folders' files)."""
    rels: list[str] = []
    for path in written:
        if os.path.isdir(path):
            rels += files_under(path, scratch)
            continue
        rels.append(os.path.relpath(path, scratch))
        if os.path.exists(sidecar_path(path)):
            rels.append(os.path.relpath(sidecar_path(path), scratch))
    return publish(scratch, remote, rels)


def _at_url(exc: CytoprofileError, scratch: str, url: str) -> CytoprofileError:
    """The same error, naming the workspace URL instead of the scratch copy (deleted next)."""
    text = str(exc)
    for local in {scratch, os.path.realpath(scratch)}:
        text = text.replace(local.rstrip(os.sep) + os.sep, url.rstrip("/") + "/").replace(local, url)
    return type(exc)(text)


def remote_plate_task(layout: Layout, recipe: Recipe, batch: str, plate: str, force: bool,
                       tmp_dir: str | None) -> RunResult:
    """One plate's steps against a URL workspace, through a scratch folder."""
    s = recipe.settings
    with scratch_dir(tmp_dir, f"run-{plate}") as scratch:
        wanted = {f"{plate}.csv", f"{plate}.csv.gz", f"{plate}.parquet", report_name(plate),
                  f"{plate}.csv.generation", f"{plate}.csv.gz.generation"}
        if s.aggregate.perform:
            wanted.add(f"{plate}.sqlite")
        stage(layout.root, scratch, [Workspace.backend_rel(batch, plate)], accept=lambda rel: os.path.basename(rel) in wanted)
        stage(layout.root, scratch, [Workspace.platemap_rel(batch), Workspace.metadata_rel(s.annotate.external.folder),
                                     layout.profiles_rel(batch, plate)])
        try:
            local = plate_task(layout.at(scratch), recipe, batch, plate, force)
        except CytoprofileError as exc:
            raise _at_url(exc, scratch, layout.root) from exc
        local.outputs = _publish_written(scratch, layout.root, local.outputs)
        return local


def remote_batch_steps(layout: Layout, recipe: Recipe, plates: dict[str, list[str]], *, force: bool,
                        tmp_dir: str | None, result: RunResult) -> None:
    """Batch-level steps against a URL workspace: gather per-well tables, run, upload."""
    with scratch_dir(tmp_dir, "run-batch") as scratch:
        prefixes = [layout.qc_summary_rel(), layout.processing_rel()]
        for batch, names in plates.items():
            prefixes += [layout.gct_rel(batch), Workspace.load_data_rel(batch)]
            prefixes += [layout.profiles_rel(batch, p) for p in names]
            prefixes += [Workspace.report_rel(batch, p) for p in names]
        # the processing chain's intermediates (with sidecars), so a re-run skips or resumes the chain
        chain = parse_chain(recipe.settings.processing) if recipe.settings.processing is not None else []
        made = {f"{layout.processing_rel()}/" + os.path.basename(layout.processing_file(chain[: i + 1]))
                for i in range(len(chain))}
        stage(layout.root, scratch, prefixes,
              accept=lambda rel: Layout.normalized_stem() in rel or rel.endswith((".report.json", ".tsv", ".gct")) or "load_data" in rel
              or rel.startswith("gct/") or Layout.annotated_stem() in rel or rel.removesuffix(".provenance.json") in made)
        before = len(result.outputs)
        try:
            batch_steps(layout.at(scratch), recipe, plates, force=force, result=result)
        except CytoprofileError as exc:
            raise _at_url(exc, scratch, layout.root) from exc
        written = sorted(set(result.outputs[before:]))
        result.outputs[before:] = _publish_written(scratch, layout.root, written)


@dataclass(frozen=True)
class RecipeTask:
    """One plate's recipe steps, as the executor hands them to a process or a Dask worker."""

    layout: Layout
    recipe: Recipe
    batch: str
    plate: str
    force: bool = False
    tmp_dir: str | None = None


def plate_task_entry(task: RecipeTask, options: dict[str, Any], progress: Any) -> RunResult:
    """Executor entry point for one plate's steps (local or on a Dask worker)."""
    io.configure_storage(options.get("storage"))
    if io.is_remote(task.layout.root):
        return remote_plate_task(task.layout, task.recipe, task.batch, task.plate, task.force, task.tmp_dir)
    return plate_task(task.layout, task.recipe, task.batch, task.plate, task.force)
