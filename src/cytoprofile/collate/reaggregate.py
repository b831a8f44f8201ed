"""Profiles again from an existing backend (``--aggregate-only``), ours or the old tool's."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import io
from ..aggregate import aggregate
from ..errors import InputError
from ..ingest import (
    IMAGE_TABLE,
)
from ..layout import Workspace, parquet_table_path
from ..vocabulary import AggregateOperation as Operation
from .outputs import (
    SIDECAR,
    BackendKind,
    PlateResult,
    Progress,
    check_unblocked,
    generation_of,
    kind_of,
    output_record,
    remove_stale,
    trusted_outputs,
    write_profiles,
)

__all__ = ['aggregate_only', 'aggregation_changes', 'say_reaggregating']

log = logging.getLogger("cytoprofile.collate")


def aggregation_changes(report: dict[str, Any] | None, *, operation: str, strata: Sequence[str],
                        compartments: Sequence[str], image_features: bool,
                        image_feature_categories: Sequence[str]) -> list[str]:
    """The aggregation options the report's profiles were made with that differ from those asked
    (``operation: mean → median``), so ``--aggregate-only`` never keeps profiles of other options."""
    asked = {"operation": operation, "strata": list(strata), "compartments": list(compartments),
             "image_features": image_features, "image_feature_categories": list(image_feature_categories)}
    made = (report or {}).get("aggregate") or {}
    return [f"{k}: {_shown(made.get(k))} → {_shown(v)}" for k, v in asked.items() if _differs(k, made.get(k), v)]


def _differs(key: str, made: Any, asked: Any) -> bool:
    """Compartments are matched to tables regardless of case: ``cells`` asks for the ``Cells`` the report names."""
    if key == "compartments" and isinstance(made, list):
        return [str(c).lower() for c in made] != [c.lower() for c in asked]
    return bool(made != asked)


def say_reaggregating(plate: str, changed: Sequence[str]) -> None:
    """The warning that profiles of other options are made again (``aggregation_changes``)."""
    log.warning("%s: re-aggregating: the profiles were made with other options (%s)", plate, "; ".join(changed))


def _shown(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def aggregate_only(ws: str | os.PathLike[str], batch: str, plate: str, outputs: dict[str, str], *, backend: Sequence[BackendKind],
                    operation: Operation, compartments: Sequence[str], image_features: bool,
                    image_feature_categories: Sequence[str], strata: Sequence[str], overwrite: bool,
                    progress: Progress | None, start: float) -> PlateResult:
    """Re-aggregate an existing backend (ours or the old tool's) into the plate's profiles.

    A backend of ours is used only if its report vouches for it; the new profiles then
    get a new generation id and the report is rewritten (last).
    """
    report, trusted = trusted_outputs(ws, batch, plate)
    ours = report is not None and isinstance(report.get("outputs"), dict)
    name = os.path.basename(outputs["profiles"])
    legacy_profile = not ours and Path(outputs["profiles"]).exists() and generation_of(outputs["profiles"]) is None
    changed = aggregation_changes(report, operation=operation, strata=strata, compartments=compartments,
                                  image_features=image_features,
                                  image_feature_categories=image_feature_categories) if name in trusted else []
    files = Workspace(str(ws)).backend_files(batch, plate)
    source = files["sqlite"] if "sqlite" in backend else parquet_table_path(files["parquet_prefix"], IMAGE_TABLE)
    vouched = not ours or os.path.basename(source) in trusted  # profiles of a backend since replaced are not current
    if not overwrite and vouched and ((name in trusted and not changed) or legacy_profile):
        return PlateResult(batch, plate, "skipped", "profiles exist (use --overwrite to re-aggregate)", outputs,
                           seconds=time.perf_counter() - start)
    if changed and not overwrite:
        say_reaggregating(plate, changed)
    if not Path(source).exists():
        raise InputError(f"{source}: no backend to aggregate; run `cytoprofile collate` without --aggregate-only first")
    if ours and os.path.basename(source) not in trusted:
        raise InputError(f"{source}: does not match {plate}.report.json (an interrupted or concurrent collate); "
                         "re-run `cytoprofile collate` without --aggregate-only")
    if not ours and generation_of(source) is not None:
        raise InputError(f"{source}: has no {plate}.report.json (collate was interrupted); "
                         "re-run `cytoprofile collate` without --aggregate-only")
    keep = {n for n in trusted if kind_of(plate, n) != "profiles"} | {name}
    check_unblocked(os.path.dirname(outputs["profiles"]), plate, [name, name + SIDECAR],  # before the old report goes
                    keep={*keep, *(n + SIDECAR for n in keep)}, before=set(trusted) if ours else ())

    def _progress(done: int, total: int) -> None:
        if progress is not None:
            progress(plate, done, total)

    profiles = aggregate(source, operation=operation, strata=strata, compartments=compartments,
                         image_features=image_features, image_feature_categories=image_feature_categories,
                         progress=_progress)
    message = f"aggregated {len(profiles)} wells from {os.path.basename(source)}"
    if not ours:
        io.write_table(profiles, outputs["profiles"])  # beside the old tool's backend, as it would
        return PlateResult(batch, plate, "done", message, {"profiles": outputs["profiles"]}, seconds=time.perf_counter() - start)
    assert report is not None
    generation = uuid.uuid4().hex
    fmt = io.infer_format(outputs["profiles"])
    report_path = outputs["report"]
    io.remove(report_path)
    write_profiles(profiles, outputs["profiles"], fmt, generation)
    listed = {n: e for n, e in report["outputs"].items() if n in trusted and kind_of(plate, n) != "profiles"}
    listed[name] = output_record(outputs["profiles"], generation)
    report.update(outputs=listed, generation=generation, seconds=round(time.perf_counter() - start, 3))
    report["aggregate"] = {**report.get("aggregate", {}), "operation": operation, "strata": list(strata),
                           "compartments": list(compartments), "image_features": image_features,
                           "image_feature_categories": list(image_feature_categories), "wells": len(profiles),
                           "columns": profiles.shape[1], "from": os.path.basename(source)}
    report["options"] = {**report.get("options", {}), "profile_format": fmt, "operation": operation, "strata": list(strata),
                         "compartments": list(compartments), "image_features": image_features,
                         "image_feature_categories": list(image_feature_categories)}
    remove_stale(os.path.dirname(report_path), plate, keep=set(listed) | {n + SIDECAR for n in listed}, before=set(trusted))
    io.write_json(report, report_path)
    return PlateResult(batch, plate, "done", message, {"profiles": outputs["profiles"], "report": report_path}, report,
                       seconds=time.perf_counter() - start)
