"""The recipe against a URL workspace: each task stages its inputs into scratch and publishes what it wrote."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .. import io
from ..config import Recipe
from ..layout import (
    SIDECAR,
    Layout,
    Workspace,
    profiles_name,
    profiles_names,
    report_name,
    sqlite_name,
)
from ..processing import parse_chain
from ..workspace import Staged, files_under, staged
from .batch import batch_steps
from .plate import plate_task
from .provenance import RunResult, sidecar_path

__all__ = ["RecipeTask", "plate_task_entry", "remote_batch_steps", "remote_plate_task"]


def _publish_written(copy: Staged, written: list[str]) -> list[str]:
    """Upload what a step wrote in the scratch copy (with provenance sidecars and folders' files)."""
    rels: list[str] = []
    for path in written:
        if os.path.isdir(path):
            rels += files_under(path, copy.local)
            continue
        rels.append(os.path.relpath(path, copy.local))
        if os.path.exists(sidecar_path(path)):
            rels.append(os.path.relpath(sidecar_path(path), copy.local))
    return copy.publish(rels)


def remote_plate_task(layout: Layout, recipe: Recipe, batch: str, plate: str, force: bool,
                       tmp_dir: str | None) -> RunResult:
    """One plate's steps against a URL workspace, through a scratch folder."""
    s = recipe.settings
    with staged(layout.root, tmp_dir=tmp_dir, prefix=f"run-{plate}") as copy:
        wanted = {*profiles_names(plate), report_name(plate),
                  *(profiles_name(plate, profile_format=f) + SIDECAR for f in ("csv", "csv.gz"))}
        if s.aggregate.perform:
            wanted.add(sqlite_name(plate))
        copy.fetch([Workspace.backend_rel(batch, plate)], accept=lambda rel: os.path.basename(rel) in wanted)
        copy.fetch([Workspace.platemap_rel(batch), Workspace.metadata_rel(s.annotate.external.folder),
                    layout.profiles_rel(batch, plate)])
        with copy.named_at_url():
            local = plate_task(layout.at(copy.local), recipe, batch, plate, force)
        local.outputs = _publish_written(copy, local.outputs)
        return local


def remote_batch_steps(layout: Layout, recipe: Recipe, plates: dict[str, list[str]], *, force: bool,
                        tmp_dir: str | None, result: RunResult) -> None:
    """Batch-level steps against a URL workspace: gather per-well tables, run, upload."""
    with staged(layout.root, tmp_dir=tmp_dir, prefix="run-batch") as copy:
        prefixes = [layout.qc_summary_rel(), layout.processing_rel()]
        for batch, names in plates.items():
            prefixes += [layout.gct_rel(batch), Workspace.load_data_rel(batch)]
            prefixes += [layout.profiles_rel(batch, p) for p in names]
            prefixes += [Workspace.report_rel(batch, p) for p in names]
        # the processing chain's intermediates (with sidecars), so a re-run skips or resumes the chain
        chain = parse_chain(recipe.settings.processing) if recipe.settings.processing is not None else []
        made = {f"{layout.processing_rel()}/" + os.path.basename(layout.processing_file(chain[: i + 1]))
                for i in range(len(chain))}
        copy.fetch(prefixes,
                   accept=lambda rel: Layout.normalized_stem() in rel or rel.endswith((".report.json", ".tsv", ".gct"))
                   or "load_data" in rel or rel.startswith("gct/") or Layout.annotated_stem() in rel
                   or rel.removesuffix(".provenance.json") in made)
        before = len(result.outputs)
        with copy.named_at_url():
            batch_steps(layout.at(copy.local), recipe, plates, force=force, result=result)
        written = sorted(set(result.outputs[before:]))
        result.outputs[before:] = _publish_written(copy, written)


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
