"""QC of a workspace: find each plate's files, compute, and write the summary, heatmaps and report.

The only part of :mod:`cytoprofile.qc` that reads or writes files; every write is atomic,
so an interrupted run never leaves a half-written summary, image or report behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .. import io as cpio
from ..errors import InputError
from ..layout import OUTPUT_SUFFIXES, Layout, QualityControlLayout
from ..vocabulary import QC_LEVELS, REPLICATE_CANDIDATES, normal_well
from .canvas import figure_png
from .figures import (
    FIGURE_NAMES,
    cell_count_figure,
    correlation_figure,
    position_effect_figure,
)
from .map_outputs import batch_map, remove_stale_maps
from .metrics import (
    cell_less_wells,
    percent_replicating,
    plate_rows,
    position_effect,
    position_effect_note,
    shared_features,
    well_matrix,
)
from .report import render_report
from .summary import (
    quarantined_wells,
    read_summary,
    summarize_plate,
    summary_for_file,
    update_summary,
)

__all__ = ["QualityControlResult", "quality_control"]


log = logging.getLogger("cytoprofile.qc")
_LEVELS = QC_LEVELS
_KINDS = ((True, "negative-control normalized, feature-selected"), (False, "whole-plate normalized, feature-selected"))


@dataclass
class QualityControlResult:
    """What :func:`quality_control` wrote and computed.

    ``qc_profiles`` maps each plate to the profile file its correlation maps, position
    effect and percent replicating used; ``n_features`` is the size of the one feature
    set they share. ``mean_ap`` (with ``map_settings``): the mAP ``tables`` by mode, each
    plate's own (``by_plate``, see ``metrics.map_by_plate``), their ``source`` file,
    ``n_features``, ``threshold`` and the ``paths`` written.
    """

    summary_path: str | None = None
    summary: pd.DataFrame | None = None
    heatmaps: dict[str, dict[str, str]] = field(default_factory=dict)
    report_path: str | None = None
    replication: dict[str, Any] | None = None
    replication_note: str | None = None
    notes: dict[str, list[str]] = field(default_factory=dict)
    qc_profiles: dict[str, str] = field(default_factory=dict)
    n_features: int | None = None
    quarantine: dict[str, pd.DataFrame | None] = field(default_factory=dict)
    mean_ap: dict[str, Any] | None = None
    #: why mAP was asked for and not computed (the profiles hold no replicate groups or no negative controls)
    mean_ap_note: str | None = None
    figure_notes: dict[str, dict[str, str]] = field(default_factory=dict)

    def files(self) -> list[str]:
        """Every file this run wrote: the summary, each heatmap, the mAP tables, the report."""
        out = [self.summary_path] if self.summary_path else []
        out += [path for figures in self.heatmaps.values() for path in figures.values()]
        out += list((self.mean_ap or {}).get("paths", {}).values())
        return out + ([self.report_path] if self.report_path else [])


@dataclass
class _Plate:
    """One plate's inputs as read from the workspace."""

    name: str
    folder: str
    report: dict[str, Any] | None
    per_well: pd.DataFrame | None
    selected: pd.DataFrame | None
    not_in_platemap: list[str] | None = None  # None: annotate's record of them is absent (unknown)
    imaged: list[str] | None = None
    load_data: pd.DataFrame | None = None  # read once: the summary and the imaged wells both use it
    load_data_path: str | None = None


def _first_table(folder: str, stems: Sequence[str]) -> str | None:
    for stem in stems:
        for ext in OUTPUT_SUFFIXES:
            path = cpio.join(folder, stem + ext)
            if cpio.exists(path):
                return path
    return None


def _selected_stems(plate: str, *, negcon: bool, level: str | None) -> list[str]:
    levels = [level] if level else list(_LEVELS)
    return [plate + Layout.selected_stem(lvl, negcon=negcon) for lvl in levels]


def _load_data_path(where: QualityControlLayout, batch: str, plate: str) -> str:
    folder = where.load_data(batch, plate)
    for name in ("load_data.csv.gz", "load_data.csv"):
        path = cpio.join(folder, name)
        if cpio.exists(path):
            return path
    raise InputError(
        f"{folder}: no load_data.csv or load_data.csv.gz; the QC summary needs the per-site "
        "load_data file of each plate there"
    )


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """Serialise read-modify-write of a local file across processes (no-op elsewhere).

    The lock file is removed on release; a waiter that then wins the lock on the removed
    file notices (its inode is gone) and locks afresh, so no lock file is left behind.
    """
    if cpio.is_remote(path):
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    lock = Path(path).with_name(f".{Path(path).name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(lock, "a")  # noqa: SIM115 - held open until the lock is released
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            mine = os.fstat(handle.fileno()).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            mine = False
        if mine:
            break
        handle.close()
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        handle.close()


def _write_bytes(data: bytes, path: str) -> str:
    with cpio.atomic_open(path, "wb") as handle:
        handle.write(data)
    return path


def _read_plate(where: QualityControlLayout, batch: str, plate: str, level: str | None) -> _Plate:
    folder = where.profiles(batch, plate)
    report_path = where.report_json(batch, plate)
    per_well_path = _first_table(folder, [plate + Layout.annotated_stem(), plate])
    selected_path = _first_table(folder, _selected_stems(plate, negcon=False, level=level))
    try:
        load_path: str | None = _load_data_path(where, batch, plate)
    except InputError:
        load_path = None  # the summary refuses it (if asked for); the figures go without
    load_data = cpio.read_table(load_path) if load_path else None
    return _Plate(
        name=plate,
        folder=folder,
        report=_ingest_report(report_path) if cpio.exists(report_path) else None,
        per_well=cpio.read_table(per_well_path) if per_well_path else None,
        selected=cpio.read_table(selected_path) if selected_path else None,
        not_in_platemap=_dropped_wells(per_well_path),
        imaged=_imaged_wells(load_data),
        load_data=load_data,
        load_data_path=load_path,
    )


def _ingest_report(path: str) -> dict[str, Any]:
    """A plate's collate report, refused naming the file when it is not one (the figures read its sites)."""
    report = cpio.read_json(path)
    sites = report.get("sites", []) if isinstance(report, dict) else None
    if not isinstance(sites, list) or not all(isinstance(s, dict) for s in sites):
        raise InputError(f"{path}: not a collate report (an object whose 'sites' is a list of sites); the file is "
                         "damaged: run cytoprofile collate again with --overwrite")
    return report


def _dropped_wells(per_well_path: str | None) -> list[str] | None:
    """Wells annotate dropped as not in the plate map (``unmatched_wells: drop``), from the annotated
    profile's provenance sidecar (they had cells: they are not empty wells); None when no record says."""
    from ..recipe.provenance import sidecar_path

    sidecar = sidecar_path(per_well_path) if per_well_path else None
    if sidecar is None or not cpio.exists(sidecar):
        return None
    record = cpio.read_json(sidecar)
    wells = record.get("wells") if isinstance(record, dict) else []
    if wells is None:
        return None
    dropped = wells.get("dropped_unmatched") if isinstance(wells, dict) else None
    if not isinstance(dropped, list) or not all(isinstance(w, str) for w in dropped):
        raise InputError(f"{sidecar}: not a step record with 'wells.dropped_unmatched' as a list of well names; "
                         "the file is damaged: delete it and run annotate again")
    return [normal_well(w) for w in dropped]


def _imaged_wells(frame: pd.DataFrame | None) -> list[str] | None:
    """The wells load_data imaged (``Metadata_Well``), or ``None`` without such a file or column."""
    if frame is None or "Metadata_Well" not in frame.columns:
        return None
    return sorted({normal_well(w) for w in frame["Metadata_Well"].dropna().astype(str)})


def _qc_profiles(plates: Sequence[_Plate], level: str | None) -> tuple[str, dict[str, str]]:
    """The one kind of profile used for every correlation panel, and each plate's file of it.

    Negative-control normalized profiles are preferred (the recipe's heatmap input),
    then whole-plate ones; levels in the order all, batch, plate (or ``level``). The
    first kind and level that the most plates have wins, so all plates share one kind.
    """
    best: tuple[str, dict[str, str]] = (_KINDS[0][1], {})
    preferred: tuple[str, dict[str, str]] | None = None
    for negcon, description in _KINDS:
        for lvl in [level] if level else list(_LEVELS):
            found = {}
            for plate in plates:
                path = _first_table(plate.folder, _selected_stems(plate.name, negcon=negcon, level=lvl))
                if path:
                    found[plate.name] = path
            if found and preferred is None:
                preferred = (f"{description} ({lvl})", found)
            if len(found) > len(best[1]):
                best = (description, found)
    if preferred is not None and preferred[1] is not best[1]:
        lacking = [p.name for p in plates if p.name not in preferred[1]]
        log.warning("quality control uses %s profiles for every plate: %s lack(s) the %s profiles the other "
                    "plate(s) have; run the recipe for them to compare like with like", best[0], ", ".join(lacking),
                    preferred[0])
    _say_profiles_used(best[0], best[1])
    return best


def quality_control(
    workspace: str | os.PathLike[str],
    batch: str,
    plates: Sequence[str],
    *,
    profiles_dir: str = "profiles",
    load_data_dir: str = "load_data_csv",
    backend_dir: str = "backend",
    output_dir: str = "quality_control",
    level: str | None = None,
    replicate_column: str | None = None,
    negcon_column: str = "Metadata_control_type",
    negcon_value: str = "negcon",
    n_null: int = 10_000,
    seed: int = 0,
    dpi: int = 100,
    summary: bool = True,
    heatmaps: bool = True,
    report: bool = True,
    summary_well_columns: Sequence[str] | None = None,
    map_settings: dict[str, Any] | None = None,
    map_profiles: str | None = None,
    tmp_dir: str | None = None,
) -> QualityControlResult:
    """Run QC for ``plates`` of ``batch`` in a workspace and write its outputs.

    Reads ``load_data_csv/BATCH/PLATE/load_data.csv[.gz]``, the optional ingest report
    ``backend/BATCH/PLATE/PLATE.report.json`` (quarantined sites) and from
    ``profiles/BATCH/PLATE/``: ``PLATE_augmented`` (else ``PLATE``) for cell counts,
    ``PLATE_normalized_feature_select_{...}`` for the kept feature count, and one kind of
    feature-selected profile for the correlation and position-effect heatmaps and
    percent replicating: ``PLATE_normalized_feature_select_negcon_{all,batch,plate}``,
    else the whole-plate ``PLATE_normalized_feature_select_{...}`` (``level`` picks one
    level), over the features every plate's file has. Writes
    ``quality_control/summary/summary.tsv``,
    ``quality_control/heatmap/BATCH/PLATE/PLATE_{cell_count,correlation,position_effect}.png``
    and ``quality_control/report/BATCH.html``. ``summary_well_columns`` are the
    load_data columns sites are grouped into wells by (default: see ``summarize_plate``).
    ``map_settings`` (``modes``, ``threshold`` and the other options of
    ``evaluate.mean_average_precision``) adds mAP of the batch's plates, from
    ``map_profiles`` (every non-``Metadata_`` column a feature) or else the correlation
    panels' profiles and features, written to ``quality_control/map/BATCH/BATCH_map_MODE.csv``,
    with each plate's mAP on its own in ``BATCH_map_MODE_by_plate.csv``. A URL workspace
    (``s3://...``) is staged into a scratch folder in ``tmp_dir`` (its profiles in whichever
    format, load_data, collate reports and summary) and the outputs are uploaded back; the
    result's paths name the URLs.
    """
    options = {k: v for k, v in locals().items() if k not in ("workspace", "batch", "plates", "tmp_dir")}
    if level is not None and level not in _LEVELS:
        raise InputError(f"level {level!r}: use one of {', '.join(_LEVELS)}")
    where = QualityControlLayout(str(workspace), output_dir=output_dir, profiles_dir=profiles_dir,
                                 load_data_dir=load_data_dir, backend_dir=backend_dir)
    if cpio.is_remote(where.root):
        return _at_url(where, batch, [str(p) for p in plates], tmp_dir=tmp_dir, options=options)
    result = QualityControlResult()
    inputs = [_read_plate(where, batch, p, level) for p in map(str, plates)]
    rows = [_summary_row(where, batch, p, summary_well_columns) for p in inputs] if summary else []
    description, result.qc_profiles = _qc_profiles(inputs, level)
    if heatmaps or report:
        _warn_missing_qc_profiles(inputs, result.qc_profiles, level)
    frames = _without_cell_less_wells({name: plate_rows(cpio.read_table(path), name)
                                       for name, path in result.qc_profiles.items()}, result)
    features = shared_features(frames.values())
    result.n_features = len(features) if frames else None
    figures = {plate.name: _plate_outputs(plate, frames.get(plate.name), result, where, batch, features=features,
                                          description=description, replicate_column=replicate_column, dpi=dpi,
                                          heatmaps=heatmaps, figures=heatmaps or report)
               for plate in inputs}
    if summary:
        _write_summary(result, where, rows)
    _replication(result, frames, features, replicate_column=replicate_column, negcon_column=negcon_column,
                 negcon_value=negcon_value, n_null=n_null, seed=seed)
    if map_settings is not None:
        result.mean_ap, result.mean_ap_note = batch_map(frames, features, where, batch, [p.name for p in inputs],
                                                        map_settings, map_profiles)
    remove_stale_maps(result.mean_ap, where, batch)
    if report:
        _write_report(result, where, batch, rows, figures, inputs, description)
    return result


def _write_summary(result: QualityControlResult, where: QualityControlLayout, rows: list[dict[str, Any]]) -> None:
    """This run's rows into the workspace's summary table, under its lock (other plates' rows kept)."""
    result.summary_path = where.summary()
    with _locked(result.summary_path):
        result.summary = update_summary(read_summary(result.summary_path), rows)
        cpio.write_table(summary_for_file(result.summary), result.summary_path)


def _without_cell_less_wells(frames: dict[str, pd.DataFrame], result: QualityControlResult) -> dict[str, pd.DataFrame]:
    """Each plate's profiles without the wells that have no cells, named under the plate (and logged)."""
    out = {}
    for name, frame in frames.items():
        empty = cell_less_wells(frame)
        if empty:
            shown = ", ".join(empty[:10]) + (f" … ({len(empty)} in all)" if len(empty) > 10 else "")
            line = (f"{len(empty)} well(s) without cells (every compartment feature missing) left out of the "
                    f"correlation, position-effect and replicate panels: {shown}")
            result.notes.setdefault(name, []).append(line)
            log.warning("%s: %s", name, line)
            frame = frame.loc[~frame["Metadata_Well"].astype(str).map(normal_well).isin(empty)]
        out[name] = frame
    return out


def _plate_outputs(plate: _Plate, frame: pd.DataFrame | None, result: QualityControlResult,
                   where: QualityControlLayout, batch: str, *, features: list[str], description: str,
                   replicate_column: str | None, dpi: int, heatmaps: bool, figures: bool) -> dict[str, bytes]:
    """One plate's quarantine table and figures (for the report), its heatmaps written when asked."""
    result.notes.setdefault(plate.name, [])
    result.quarantine[plate.name] = None if plate.report is None else quarantined_wells(plate.report)
    made: dict[str, bytes] = {}
    if figures:
        made = _plate_figures(plate, frame, result, features=features, description=description,
                              replicate_column=replicate_column, dpi=dpi)
    if heatmaps:
        result.heatmaps[plate.name] = _write_heatmaps(made, where, batch, plate.name)
    return made


def _at_url(where: QualityControlLayout, batch: str, plates: list[str], *, tmp_dir: str | None,
            options: dict[str, Any]) -> QualityControlResult:
    """QC of a URL workspace through a scratch copy: stage the inputs QC reads, run, publish its outputs."""
    from dataclasses import replace

    from ..layout import relative_to
    from ..workspace import files_under, staged

    folders = [where.summary().rsplit("/", 1)[0]] + [
        path for p in plates for path in (where.load_data(batch, p), where.profiles(batch, p), where.report_json(batch, p))]
    with staged(where.root, tmp_dir=tmp_dir, prefix="qc") as copy:
        copy.fetch([relative_to(path, where.root) for path in folders])
        with copy.named_at_url(log):
            result = quality_control(copy.local, batch, plates, **options)
        copy.publish(files_under(replace(where, root=copy.local).outputs(), copy.local))
        for plate, made in result.heatmaps.items():  # the scratch copy held no earlier figures
            _remove_stale_heatmaps(set(made), where, batch, plate)
        remove_stale_maps(result.mean_ap, where, batch)  # nor earlier mAP tables
    url = copy.url
    result.report_path = url(result.report_path) if result.report_path else None
    result.summary_path = url(result.summary_path) if result.summary_path else None
    result.heatmaps = {plate: {k: url(v) for k, v in made.items()} for plate, made in result.heatmaps.items()}
    result.qc_profiles = {plate: url(path) for plate, path in result.qc_profiles.items()}
    if result.mean_ap is not None:
        result.mean_ap["paths"] = {k: url(v) for k, v in result.mean_ap["paths"].items()}
    return result


def _write_heatmaps(figures: dict[str, bytes], where: QualityControlLayout, batch: str, plate: str) -> dict[str, str]:
    _remove_stale_heatmaps(set(figures), where, batch, plate)
    return {name: _write_bytes(png, where.heatmap(batch, plate, name)) for name, png in figures.items()}


def _remove_stale_heatmaps(made: set[str], where: QualityControlLayout, batch: str, plate: str) -> None:
    """Delete an earlier run's figures of ``plate`` that this run does not make (in a
    folder or on object storage), so the heatmap folder never mixes old figures with fresh ones."""
    for name in FIGURE_NAMES:
        path = where.heatmap(batch, plate, name)
        if name not in made and cpio.exists(path):
            cpio.remove(path)
            log.warning("%s: removed %s of an earlier run (this run cannot make it)", plate, os.path.basename(path))


def _say_profiles_used(description: str, found: dict[str, str]) -> None:
    """Which profiles (kind and level, by file name) the correlation panels read: a plain ``qc`` picks them."""
    if found:
        names = [os.path.basename(path) for path in found.values()]
        log.info("quality control reads %s profiles of %d plate(s): %s%s", description, len(names),
                 ", ".join(names[:3] if len(names) > 4 else names), f" and {len(names) - 3} more" if len(names) > 4 else "")


def _warn_missing_qc_profiles(inputs: Sequence[_Plate], found: dict[str, str], level: str | None) -> None:
    """Name the feature-selected files looked for and not found; refuse when no plate
    has anything to draw."""
    for plate in inputs:
        if plate.name not in found:
            stems = [s for negcon in (True, False) for s in _selected_stems(plate.name, negcon=negcon, level=level)]
            log.warning("%s: no %s in %s; no correlation, position-effect or percent-replicating panels",
                        plate.name, " nor ".join(f"{s}.csv[.gz]" for s in stems), plate.folder)
    if not found and all(p.per_well is None for p in inputs):
        raise InputError(f"no profiles to check: none of {', '.join(p.folder for p in inputs)} holds a per-well "
                         "or feature-selected profile of its plate")


def _summary_row(where: QualityControlLayout, batch: str, plate: _Plate,
                 well_columns: Sequence[str] | None) -> dict[str, Any]:
    load_path = plate.load_data_path or _load_data_path(where, batch, plate.name)  # refused, naming what it lacks
    load_data = plate.load_data if plate.load_data is not None else cpio.read_table(load_path)
    return summarize_plate(
        batch=batch, plate=plate.name, load_data=load_data, profiles=plate.per_well,
        report=plate.report, selected_profiles=plate.selected, well_columns=well_columns, source=load_path,
        not_in_platemap=plate.not_in_platemap,
    )


def _plate_figures(
    plate: _Plate,
    qc_frame: pd.DataFrame | None,
    result: QualityControlResult,
    *,
    features: list[str],
    description: str,
    replicate_column: str | None,
    dpi: int,
) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    notes = result.notes.setdefault(plate.name, [])
    if plate.per_well is None:
        notes.append(f"No per-well profile ({plate.name}{Layout.annotated_stem()} or {plate.name}) in {plate.folder}.")
    else:
        lost = result.quarantine.get(plate.name)
        quarantined = None if lost is None else dict(zip(lost["Metadata_Well"], lost["Sites_quarantined"], strict=True))
        out["cell_count"] = figure_png(cell_count_figure(
            plate.per_well, plate=plate.name, quarantined=quarantined, imaged=plate.imaged,
            not_in_platemap=plate.not_in_platemap or ()), dpi=dpi)
        if plate.not_in_platemap:
            notes.append(f"{len(plate.not_in_platemap)} well(s) not in the plate map, dropped by annotate "
                         f"(unmatched_wells: drop), left out of the cell counts: {', '.join(plate.not_in_platemap)}.")
    path = result.qc_profiles.get(plate.name)
    if qc_frame is None or path is None:
        notes.append(f"No {description} profile; no correlation or position-effect heatmap.")
        return out
    if len(qc_frame) < 2 or len(features) < 2 or len(well_matrix(qc_frame, features)[2]) < 2:
        notes.append(f"{path}: fewer than two wells or shared features; no correlation heatmaps.")
        return out
    source = os.path.basename(path)
    out["correlation"] = figure_png(correlation_figure(
        qc_frame, plate=plate.name, features=features, replicate_column=replicate_column, source=source,
    ), dpi=dpi)
    effect = position_effect(plate_rows(qc_frame, plate.name), features=features)  # once: the figure and the note
    out["position_effect"] = figure_png(
        position_effect_figure(qc_frame, plate=plate.name, features=features, source=source, effect=effect), dpi=dpi
    )
    note = position_effect_note(effect)
    if note:
        result.figure_notes.setdefault(plate.name, {})["position_effect"] = f"Position effect {note}."
    return out


def _replication(
    result: QualityControlResult, frames: dict[str, pd.DataFrame], features: list[str], *,
    replicate_column: str | None, negcon_column: str, negcon_value: str, n_null: int, seed: int,
) -> None:
    if not frames:
        result.replication_note = "no feature-selected profiles (PLATE_normalized_feature_select_LEVEL) found"
        return
    batch_profiles = pd.concat(list(frames.values()), ignore_index=True)
    if replicate_column is None and not any(c in batch_profiles.columns for c in REPLICATE_CANDIDATES):
        result.replication_note = (
            "the feature-selected profiles have no treatment column ("
            + ", ".join(REPLICATE_CANDIDATES) + "); annotate them or name the column"
        )
        return
    result.replication = percent_replicating(
        batch_profiles, replicate_column=replicate_column, negcon_column=negcon_column,
        negcon_value=negcon_value, features=features, n_null=n_null, seed=seed,
    )


def _write_report(
    result: QualityControlResult, where: QualityControlLayout, batch: str, rows: list[dict[str, Any]],
    figures: dict[str, dict[str, bytes]], inputs: Sequence[_Plate], description: str,
) -> None:
    table = result.summary if result.summary is not None else update_summary(None, rows)
    html_text = render_report(
        batch=batch, summary=table, figures=figures, ingest_reports={p.name: p.report for p in inputs},
        replication=result.replication, notes=result.notes, replication_note=result.replication_note,
        quarantine=result.quarantine, sources={p: os.path.basename(s) for p, s in result.qc_profiles.items()},
        n_features=result.n_features, profiles_description=description, mean_ap=result.mean_ap,
        mean_ap_note=result.mean_ap_note, figure_notes=result.figure_notes,
    )
    result.report_path = where.html_report(batch)
    with cpio.atomic_open(result.report_path) as handle:
        handle.write(html_text)
