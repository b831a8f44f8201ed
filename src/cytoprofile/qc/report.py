"""The batch QC report: one self-contained HTML file rendered from ``templates/report.html.j2``.

Images are inlined as PNG data URIs, styles and the image check script come from the
template folder, so the report opens offline and from any place it is copied to.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .batch_figures import (
    MAP_POINTS_BELOW,
    map_by_plate_figure,
    map_figure,
    not_scored_reason,
    replication_figure,
)
from .canvas import figure_png
from .figures import outlier_share_figure
from .formatting import format_number
from .metrics import ANY_OUTLIER_SET, outlier_set_summary, outlier_shares, plate_map_summary
from .summary import quarantined_wells

if TYPE_CHECKING:
    import jinja2

__all__ = ["CAPTIONS", "QUARANTINE_HEADERS", "render_report"]

#: Caption under each figure of the report.
CAPTIONS: dict[str, str] = {
    "cell_count": "Cells per well on the plate grid; grey wells have no profile. Hatched wells lost "
    "sites to quarantine at ingest, so their counts are low for a technical reason.",
    "correlation": "Pearson correlation between every pair of wells, wells ordered by treatment so that "
    "replicate wells form blocks on the diagonal (plate order when there is no treatment column). "
    "The diagonal itself (a well with itself, always 1) is grey, so only replicate pairs can colour a block.",
    "position_effect": "Per well, the share of its correlations with wells in the same row or column "
    "that exceed the 95th percentile of its correlations with wells sharing neither (its own null). "
    "Without row or column artefacts the share is about 0.05, the chance level marked on the colour bar; "
    "high values hint at row or column artefacts.",
    "replication": "Grey: correlations of random pairs of wells of different treatments (the null). "
    "Points: one per treatment, its median replicate correlation; red points exceed the dashed threshold.",
    "map": "Left: one point per group, its mAP against its Benjamini–Hochberg corrected p-value (copairs' "
    "null of random rankings); red points are retrieved (below the dashed line). Right: the groups' mAP, "
    f"one point each (red: retrieved) when there are fewer than {MAP_POINTS_BELOW} groups, else their histogram.",
    "outlier_share": "Per well, the share of its cells that single-cell QC flags (outlier sets of z-score "
    "thresholds over the plate's cells); the first map counts cells flagged by any set, which collate left out "
    "of the well profiles. Grey wells have no cells.",
    "map_by_plate": "Each plate's profiles scored on their own (same options, the plate's own null and "
    "Benjamini–Hochberg correction): one point per group, red when retrieved; the black bar is the plate's "
    "mean mAP and the number above it the share of the plate's groups retrieved.",
}

#: The cell-count caption of a plate where no well lost a site (nothing is hatched).
CELL_COUNT_CLEAN = ("Cells per well on the plate grid; grey wells have no profile. No well of this plate lost "
                    "sites to quarantine at ingest, so none is hatched.")

#: Headers of a plate's table of wells that lost sites: each says what it counts.
QUARANTINE_HEADERS: dict[str, str] = {
    "Metadata_Well": "Well",
    "Sites_quarantined": "Sites quarantined (left out)",
    "Sites_in_well": "Sites of the well (all, incl. quarantined)",
    "Reasons": "Why the sites were quarantined",
}

_MAP_MODES = {"activity": "phenotypic activity: replicates against negative controls",
              "consistency": "consistency: profiles sharing an annotation against profiles sharing none"}


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    import jinja2
    from markupsafe import Markup, escape

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("cytoprofile.qc", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["wbr"] = lambda text: Markup(str(escape(text)).replace("_", "_<wbr>"))
    return env


def _text(value: Any) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    return str(value)


def _table(frame: pd.DataFrame, *, max_rows: int | None = None, missing: str = "") -> dict[str, Any]:
    """A table for the template: column names, rows of {text, numeric} cells (``missing``
    for an empty cell), rows left out."""
    shown = frame if max_rows is None else frame.head(max_rows)
    rows = []
    for record in shown.itertuples(index=False, name=None):
        cells = []
        for value in record:
            numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            text = format_number(value) if numeric else _text(value)
            cells.append({"text": text if text not in ("", "nan") else missing, "numeric": numeric})
        rows.append(cells)
    more = len(frame) - max_rows if max_rows is not None and len(frame) > max_rows else 0
    return {"columns": [str(c) for c in shown.columns], "rows": rows, "more": more}


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def _anchor(plate: str) -> str:
    return "plate-" + re.sub(r"[^A-Za-z0-9_-]", "_", plate)


def _ingest(report: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if report is None:
        return None
    totals = report.get("totals") or {}
    bad = [s for s in report.get("sites") or [] if s.get("status") == "quarantined"]
    quarantined = _table(pd.DataFrame(
        [{"site": s.get("site"), "well": s.get("well"), "reason": s.get("reason"), "file": s.get("file")}
         for s in bad]
    )) if bad else None
    missing = report.get("missing_columns") or {}
    records = [
        {"table": table, "column": column, "sites without the column": len(sites),
         "example sites": ", ".join(map(str, list(sites)[:5]))}
        for table, columns in missing.items()
        for column, sites in (columns or {}).items()
    ]
    return {
        "totals": {"sites": _text(totals.get("sites")), "ok": _text(totals.get("sites_ok")),
                   "bad": _text(totals.get("sites_quarantined")), "wells": _text(totals.get("wells"))}
        if totals else None,
        "quarantined": quarantined,
        "missing": _table(pd.DataFrame(records), max_rows=200) if records else None,
        "missing_count": len(records),
    }


def _replication(batch: str, replication: Mapping[str, Any] | None, source: str | None,
                 plates: Sequence[str]) -> dict[str, Any] | None:
    if replication is None:
        return None
    percent = float(replication.get("percent", float("nan")))
    treatments = replication.get("treatments")
    if not isinstance(treatments, pd.DataFrame):
        treatments = pd.DataFrame()
    has_table = len(treatments) > 0
    png = figure_png(replication_figure(replication, batch=batch, source=source, plates=plates))
    return {
        "not_scored": None if np.isfinite(percent) else not_scored_reason(replication),
        "percent": f"{format_number(percent, decimals=0)}%" if np.isfinite(percent) else "n/a",
        "n_replicating": _text(replication.get("n_replicating")),
        "n_treatments": _text(replication.get("n_treatments")),
        "n_single_well": int(replication.get("n_single_well") or 0),
        "column": _text(replication.get("replicate_column")),
        "n_features": _text(replication.get("n_features")),
        "percentile": f"{float(replication.get('quantile', 0.95)) * 100:g}th",
        "chance": f"{(1 - float(replication.get('quantile', 0.95))) * 100:g}%",
        "threshold": format_number(float(replication.get("threshold", float("nan"))), decimals=0),
        "png": _b64(png),
        "treatments": _table(treatments, max_rows=2000) if has_table else None,
        "treatments_count": f"{len(treatments):,}" if has_table else "0",
    }


def _mean_ap(batch: str, mean_ap: Mapping[str, Any] | None, batch_source: str | None,
             plates: Sequence[str]) -> list[dict[str, Any]]:
    """One panel per mode: share retrieved, the figure, the table and where it was written."""
    if not mean_ap:
        return []
    panels = []
    for mode, table in mean_ap["tables"].items():
        share = float(table.attrs.get("fraction_retrieved", table["below_corrected_p"].mean()))
        png = figure_png(map_figure(table, mode=mode, batch=batch, threshold=float(mean_ap["threshold"]),
                                    source=mean_ap.get("source") or batch_source,
                                    n_features=int(mean_ap["n_features"]), plates=plates))
        panels.append({
            "mode": mode,
            "what": _MAP_MODES.get(mode, mode),
            "retrieved": f"{format_number(share * 100, decimals=1)}%",
            "n_retrieved": f"{int(table['below_corrected_p'].sum()):,}",
            "n_groups": f"{len(table):,}",
            "mean_map": format_number(float(table["mean_average_precision"].mean())),
            "column": _text(table.columns[0]),
            "threshold": format_number(float(mean_ap["threshold"]), decimals=0),
            "table_path": _text((mean_ap.get("shown") or mean_ap["paths"]).get(mode)),
            "png": _b64(png),
            "table": _table(table, max_rows=2000),
            "by_plate": _map_by_plate(batch, mode, mean_ap, batch_source, plates),
        })
    return panels


def _map_by_plate(batch: str, mode: str, mean_ap: Mapping[str, Any], batch_source: str | None,
                  plates: Sequence[str]) -> dict[str, Any]:
    """The mAP-by-plate part of a mode's panel: figure, per-plate summary, plates left out."""
    table = (mean_ap.get("by_plate") or {}).get(mode)
    if table is None:
        return {"note": _text(mean_ap.get("by_plate_note") or "not computed")}
    png = figure_png(map_by_plate_figure(table, mode=mode, batch=batch, source=mean_ap.get("source") or batch_source,
                                         n_features=int(mean_ap["n_features"]), plates=plates))
    not_scored = table.attrs.get("not_scored") or {}
    return {"note": None, "png": _b64(png) if len(table) else None, "summary": _table(plate_map_summary(table)),
            "not_scored": [{"plate": _text(p), "reason": _text(r)} for p, r in not_scored.items()],
            "table_path": _text((mean_ap.get("shown") or mean_ap["paths"]).get(f"{mode}_by_plate"))}


def _plate(
    plate: str,
    figures: Mapping[str, bytes],
    report: Mapping[str, Any] | None,
    notes: Sequence[str],
    quarantine: pd.DataFrame | None,
    source: str | None,
    figure_notes: Mapping[str, str],
) -> dict[str, Any]:
    captions = dict(CAPTIONS)
    if quarantine is None:  # the caption speaks of hatching; say why there is none
        figure_notes = {"cell_count": "This plate has no ingest report: which wells lost sites is unknown, "
                        "so none is hatched.", **figure_notes}
    elif quarantine.empty:
        captions["cell_count"] = CELL_COUNT_CLEAN
    return {
        "name": plate,
        "anchor": _anchor(plate),
        "notes": list(notes),
        "source": source,
        "figures": [
            {"name": name, "png": _b64(png), "caption": captions.get(name, name), "note": figure_notes.get(name)}
            for name, png in figures.items()
        ],
        "quarantine": None if quarantine is None else _table(quarantine.rename(columns=QUARANTINE_HEADERS)),
        "ingest": _ingest(report),
        "cell_qc": _cell_qc(plate, report),
    }


def _cell_qc(plate: str, report: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The single-cell QC part of a plate: flagged shares per well on the grid, one map per set
    (``any set`` first), and counts per set; ``None`` when collate flagged no cells for this plate."""
    section = (report or {}).get("cell_qc")
    if not section:
        return None
    shares = outlier_shares(section)
    cells, excluded = int(section.get("cells") or 0), int(section.get("excluded") or 0)
    table = outlier_set_summary(section, shares if shares is not None else pd.DataFrame(columns=["Metadata_Well"]))
    for column in ("share_of_cells", "highest_well_share"):
        table[column] = [f"{format_number(v * 100, decimals=1)}%" if pd.notna(v) else "" for v in table[column]]
    maps = [] if shares is None else [ANY_OUTLIER_SET, *[c for c in shares.columns if c not in ("Metadata_Well", "cells", ANY_OUTLIER_SET)]]
    return {
        "cells": f"{cells:,}",
        "excluded": f"{excluded:,}",
        "share": f"{format_number(excluded / cells * 100, decimals=1)}%" if cells else "",
        "figures": [{"name": name, "png": _b64(figure_png(outlier_share_figure(shares, plate=plate, column=name)))}
                    for name in maps if shares is not None and name in shares.columns],
        "note": None if shares is not None else "the plate report has no per-well counts of the flagged cells",
        "table": _table(table),
    }


def _earlier_plates(table: pd.DataFrame, plates: Sequence[str]) -> list[str]:
    """Plates of the summary that this run did not check: rows kept from earlier QC runs."""
    if "Plate_Name" not in table.columns:
        return []
    shown = set(map(str, plates))
    return [p for p in dict.fromkeys(table["Plate_Name"].astype(str)) if p not in shown]


def render_report(
    *,
    batch: str,
    summary: pd.DataFrame,
    figures: Mapping[str, Mapping[str, bytes]],
    ingest_reports: Mapping[str, Mapping[str, Any] | None],
    replication: Mapping[str, Any] | None,
    notes: Mapping[str, Sequence[str]] | None = None,
    replication_note: str | None = None,
    quarantine: Mapping[str, pd.DataFrame | None] | None = None,
    sources: Mapping[str, str] | None = None,
    n_features: int | None = None,
    profiles_description: str = "",
    mean_ap: Mapping[str, Any] | None = None,
    mean_ap_note: str | None = None,
    figure_notes: Mapping[str, Mapping[str, str]] | None = None,
) -> str:
    """A self-contained HTML report for a batch: images inline, no network needed to view it.

    ``figures`` maps plate → figure name (``cell_count``, ``correlation``,
    ``position_effect``) → PNG bytes; ``notes`` maps plate → lines shown under it
    (for example why a heatmap is missing); ``replication_note`` says why
    ``replication`` is ``None``. ``quarantine`` maps plate → its wells that lost sites
    (:func:`~cytoprofile.qc.summary.quarantined_wells`; ``None``: no ingest report);
    ``sources`` maps plate → the profile file its correlations used, and ``n_features``
    is the size of the one feature set every correlation panel used. ``mean_ap`` holds
    the mAP tables by mode (``tables``), their ``source`` file, ``n_features``,
    ``threshold`` and written ``paths``; ``mean_ap_note`` says why it was not computed.
    ``figure_notes`` maps plate → figure name → a warning shown under that figure
    (for example why the position effect has no value for some wells).
    """
    from .. import __version__

    notes = notes or {}
    quarantine = quarantine or {}
    sources = sources or {}
    plates = list(dict.fromkeys([*figures, *ingest_reports, *notes]))
    table = summary
    if "Batch_Name" in summary.columns:
        table = summary.loc[summary["Batch_Name"].astype(str) == str(batch)]
    earlier = _earlier_plates(table, plates)
    source = _batch_source(sources)
    return _environment().get_template("report.html.j2").render(
        batch=batch,
        scope=_scope(batch, plates),
        version=__version__,
        summary=_table(table, missing="n/a"),
        summary_earlier=earlier,
        profiles={"n_features": n_features, "description": profiles_description},
        replication=_replication(batch, replication, source, plates),
        replication_note=replication_note or "no annotated, feature-selected profiles for this batch",
        captions=CAPTIONS,
        mean_ap=_mean_ap(batch, mean_ap, source, plates),
        mean_ap_source={"file": mean_ap.get("source") or source, "n_features": mean_ap["n_features"]}
        if mean_ap else None,
        mean_ap_note=mean_ap_note,
        plates=[
            _plate(p, figures.get(p) or {}, ingest_reports.get(p), notes.get(p, ()),
                   quarantine.get(p) if p in quarantine else _quarantine_from(ingest_reports.get(p)),
                   sources.get(p), (figure_notes or {}).get(p) or {})
            for p in plates
        ],
    )


def _scope(batch: str, plates: Sequence[str]) -> str:
    """What the report covers, for its heading: ``plate P1 (batch B1)`` or ``batch B1``."""
    return f"plate {plates[0]} (batch {batch})" if len(plates) == 1 else f"batch {batch}"


def _batch_source(sources: Mapping[str, str]) -> str | None:
    """The profile files of a batch in one phrase: ``PLATE_x.csv.gz of 3 plates``."""
    if len(sources) == 1:
        return next(iter(sources.values()))
    patterns = {s.replace(p, "PLATE", 1) if s.startswith(p) else s for p, s in sources.items()}
    if not patterns:
        return None
    shown = next(iter(patterns)) if len(patterns) == 1 else ", ".join(sorted(patterns))
    return f"{shown} of {len(sources)} plates"


def _quarantine_from(report: Mapping[str, Any] | None) -> pd.DataFrame | None:
    return None if report is None else quarantined_wells(report)
