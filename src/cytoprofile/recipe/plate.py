"""The recipe's per-plate steps: aggregate (or collate's profiles) → annotate → normalize → normalize_negcon."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .. import io
from ..config import Recipe
from ..errors import ConfigError, InputError
from ..layout import Layout, Workspace, existing_output
from ..recipe_options import aggregate_options, annotate_options, normalize_options
from ..step_data import fit_query
from .features import compartment_prefixes, features_for
from .provenance import Made, RunResult, Steps, sidecar_path

__all__ = ["external_metadata_path", "plate_report", "plate_task", "step_outputs"]

log = logging.getLogger("cytoprofile.pipeline")


def step_outputs(layout: Layout, batch: str, plate: str) -> dict[str, str]:
    """The per-plate files of the recipe, by step."""
    return layout.step_outputs(batch, plate)


def plate_report(layout: Layout, batch: str, plate: str) -> dict[str, Any] | None:
    path = layout.handbook.report(batch, plate)
    if not Path(path).exists():
        return None
    report = io.read_json(path)
    return report if isinstance(report, dict) else None


def plate_task(layout: Layout, recipe: Recipe, batch: str, plate: str, force: bool) -> RunResult:
    """aggregate → annotate → normalize → normalize_negcon for one plate."""
    result = RunResult()
    steps = Steps(layout, recipe, force=force, result=result)
    files = step_outputs(layout, batch, plate)
    Path(files["aggregate"]).parent.mkdir(parents=True, exist_ok=True)
    prefixes = compartment_prefixes(recipe, plate_report(layout, batch, plate))
    _aggregate_step(steps, layout, recipe, files, batch, plate)
    if recipe.settings.annotate.perform:
        _annotate_step(steps, layout, recipe, files, batch, plate)
    _normalize_steps(steps, recipe, files, prefixes)
    return result


def _aggregate_step(steps: Steps, layout: Layout, recipe: Recipe, files: dict[str, str], batch: str,
                    plate: str) -> None:
    """``PLATE.csv.gz``: aggregated from the SQLite backend, or collate's per-well profiles."""
    from ..aggregate import aggregate

    s = recipe.settings
    if s.aggregate.perform:
        sqlite = layout.handbook.sqlite(batch, plate)
        options = aggregate_options(s.aggregate, s.compartments)
        settings = s.aggregate.model_dump(mode="json") | {"compartments": s.compartments}

        def _aggregated() -> Made:
            exclude = _outlier_cells(s.aggregate, sqlite, options["compartments"], options["strata"])
            frame = aggregate(sqlite, **options, exclude=exclude)
            return Made(frame, extra={"cell_qc": exclude.summary()} if exclude is not None else {})

        if s.aggregate.exclude_outlier_cells is not False:
            settings["thresholds"] = _thresholds(s.aggregate)  # the sets' contents, not only the file name
        steps.run("aggregate", [sqlite], {files["aggregate"]: _aggregated}, settings)
    elif not Path(files["aggregate"]).exists() or Path(sidecar_path(files["aggregate"])).exists():
        # the handbook's csv2gz + rsync: take the per-well profiles collate wrote (a file
        # put there by hand, without a sidecar, is used as it is)
        from ..collate import plate_profiles

        source = plate_profiles(layout.workspace, batch, plate)  # only what the plate's report vouches for
        if source is None:
            files["aggregate"] = existing_output(files["aggregate"])  # put there by hand, in any format
        if source is None and Path(files["aggregate"]).exists():
            pass
        elif source is None:
            raise InputError(
                f"{files['aggregate']}: per-well profiles not found, nor {layout.handbook.profiles(batch, plate)}; "
                "run `cytoprofile collate` or set aggregate.perform: true"
            )
        else:
            steps.run("profiles", [source], {files["aggregate"]: lambda: io.read_table(source)}, {"from": "backend"})


def _thresholds(block: Any) -> dict[str, dict[str, float]]:
    from ..cell_qc import load_thresholds

    sets = block.exclude_outlier_cells
    return load_thresholds(block.outlier_thresholds, sets=None if sets is True else list(sets))


def _outlier_cells(block: Any, backend: str, compartments: Sequence[str], strata: Sequence[str]) -> Any:
    """Flagged cells to leave out of aggregation (``aggregate.exclude_outlier_cells``), or None."""
    if block.exclude_outlier_cells is False:
        if block.outlier_thresholds is not None:  # refused by the config; checked again for a hand-made block
            raise ConfigError("aggregate.outlier_thresholds has no effect unless exclude_outlier_cells is set")
        return None
    from ..cell_qc import outlier_cells

    flagged = outlier_cells(backend, _thresholds(block), compartments=compartments, strata=strata)
    log.info("%s: %d of %d cells excluded as outliers before aggregation", os.path.basename(backend), flagged.excluded, flagged.cells)
    return flagged


def external_metadata_path(meta_root: str, ext: Any) -> str:
    """``metadata/FOLDER/FILE`` (external_metadata/, or moa/ for the 2021 string form)."""
    return Workspace(meta_root).external_metadata(ext.folder, ext.file)


def _annotate_step(steps: Steps, layout: Layout, recipe: Recipe, files: dict[str, str], batch: str,
                   plate: str) -> None:
    """``_augmented``: the plate map (and external metadata) joined; unmatched wells per config."""
    from ..metadata import (
        load_external_metadata,
        platemap_for_plate,
        platemap_name_for_plate,
    )

    s = recipe.settings
    meta_root = layout.meta_root(batch)
    barcode = Workspace(meta_root).barcode_platemap(batch)
    platemap_file = Workspace(meta_root).platemap(batch, platemap_name_for_plate(meta_root, batch, plate))
    inputs = [files["aggregate"], barcode, platemap_file]
    ext = s.annotate.external
    ext_path = external_metadata_path(meta_root, ext) if ext.perform and ext.file else None
    if ext_path is not None:
        inputs.append(ext_path)
    settings = s.annotate.model_dump(mode="json") | {"platemap_well_column": s.platemap_well_column}

    def _annotated() -> Made:
        from ..annotate import annotate, prefixed_platemap

        platemap = prefixed_platemap(platemap_for_plate(meta_root, batch, plate))
        profiles = io.load_profiles(files["aggregate"])
        _check_wells(profiles, recipe, meta_root, batch, plate, platemap, ext_path)
        external = load_external_metadata(ext_path, merge_column=ext.merge_column) if ext_path else None
        frame = annotate(profiles, platemap, external_metadata=external, unmatched_wells=s.annotate.unmatched_wells,
                         platemap_name=os.path.basename(platemap_file),
                         **annotate_options(s.annotate, s.platemap_well_column, external=ext_path is not None))
        wells = frame.attrs["wells"]
        return Made(frame, before=list(profiles.columns),
                     extra={"wells": {**wells, "dropped_unmatched": sorted(wells["dropped_unmatched"])}})

    steps.run("annotate", inputs, {files["annotate"]: _annotated}, settings)


def _config_advice(message: str) -> str:
    """The metadata check's advice, said once, in the config's terms."""
    named = "with annotate.unmatched_wells: drop (as the recipe did)"
    if "with unmatched_wells: drop" in message:
        return message.replace("with unmatched_wells: drop", named)
    return f"{message}; or drop them knowingly {named}"


def _check_wells(profiles: pd.DataFrame, recipe: Recipe, meta_root: str, batch: str, plate: str,
                 platemap: pd.DataFrame, ext_path: str | None) -> None:
    """``annotate.unmatched_wells: error`` (the default): the metadata check names every unmatched well
    (and external metadata's faults) in the config's terms; with ``drop`` annotate drops them and says
    how many, from which plate map."""
    from ..errors import MetadataError
    from ..metadata import validate_metadata

    s = recipe.settings
    well = s.annotate.well_column
    if well not in profiles.columns or s.platemap_well_column not in platemap.columns:
        return  # annotate names the missing column
    if s.annotate.unmatched_wells == "error":
        ext = s.annotate.external
        try:
            validate_metadata(meta_root, batch, plates=[plate], profiles={plate: profiles}, well_column=well,
                              external_metadata=ext_path, merge_column=ext.merge_column if ext_path else None)
        except MetadataError as exc:
            raise MetadataError(_config_advice(str(exc))) from exc


def _normalize_steps(steps: Steps, recipe: Recipe, files: dict[str, str], prefixes: Sequence[str]) -> None:
    """``_normalized`` and ``_normalized_negcon``; ``options.samples`` narrows the first one's fit."""
    from ..normalize import normalize

    s = recipe.settings
    for key, block in (("normalize", s.normalize), ("normalize_negcon", s.normalize_negcon)):
        if not block.perform:
            continue
        # options.samples (which the recipe read and never used) narrows the main fit
        query = fit_query(s.options.samples if key == "normalize" else "all", block.samples,
                          sample_filter=block.sample_filter, min_cells=block.min_cells)
        settings = block.model_dump(mode="json") | {"fit_query": query}

        def _normalized(block: Any = block, query: str = query) -> Made:
            profiles = io.load_profiles(files["annotate"])
            names = features_for(profiles, block, prefixes, files["annotate"])
            frame = normalize(profiles, features=names, samples=query, **normalize_options(block))
            reason = (f"normalize.method: spherize {block.spherize_method} (features become PC1..PC{len(names)})"
                      if block.method == "spherize" and block.spherize_method.startswith("PCA")
                      else "normalize.features: not in the list")
            return Made(frame, before=list(profiles.columns), dropped=dict.fromkeys(profiles.columns, reason))

        steps.run(key, [files["annotate"]], {files[key]: _normalized}, settings)


