"""Batch-level QC figures: percent replicating and mAP (overall and by plate).

Each function returns a :class:`matplotlib.figure.Figure`; titles name what the figure
covers (:func:`~cytoprofile.qc.canvas.scope_label`: the batch, or the one plate of a
one-plate report).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .canvas import HIGHLIGHT, features_line, fit_title, new_figure, scope_label
from .formatting import format_number

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "replication_figure",
    "map_figure",
    "map_by_plate_figure",
    "not_scored_reason",
    "MAP_POINTS_BELOW",
    "NULL_POINTS_BELOW",
]


#: A null of fewer well pairs than this is drawn one mark each (a rug), not as a density.
NULL_POINTS_BELOW = 100


def replication_figure(replication: Mapping[str, Any], *, batch: str, source: str | None = None,
                       plates: Sequence[str] = ()) -> Figure:
    """The null's histogram and each treatment's median replicate correlation as a point, with the threshold.

    Treatments are few (often tens), so they are drawn one point each, never as a density.
    """
    fig = new_figure((8.0, 4.5))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1.3])
    null = np.asarray(replication.get("null", []), dtype=float)
    treatments = replication.get("treatments")
    scored = (
        treatments.dropna(subset=["median_correlation"])
        if isinstance(treatments, pd.DataFrame) and len(treatments)
        else pd.DataFrame({"median_correlation": [], "replicating": []})
    )
    if null.size >= NULL_POINTS_BELOW:
        top.hist(null, bins=[float(b) for b in np.linspace(-1, 1, 81)], density=True, color="#9a9a9a",
                 label=f"null: non-replicate well pairs (n={null.size:,})")
    elif null.size:  # a handful of pairs: a density of them would be spikes
        top.plot(null, np.zeros(null.size), "|", color="#6a6a6a", markersize=18,
                 label=f"null: non-replicate well pairs, one mark each (n={null.size:,})")
        top.set_yticks([])
    threshold = float(replication.get("threshold", float("nan")))
    if math.isfinite(threshold):
        label = (f"{float(replication.get('quantile', 0.95)) * 100:g}th percentile of null "
                 f"({format_number(threshold, decimals=0)})")
        for ax in (top, bottom):
            ax.axvline(threshold, color="black", linestyle="--", label=label if ax is top else None)
    _treatment_points(bottom, scored)
    percent = float(replication.get("percent", float("nan")))
    shown = f"{format_number(percent, decimals=0)}%" if math.isfinite(percent) else "not scored"
    top.set_title(
        f"{scope_label(batch, plates=plates)}: percent replicating {shown} ({replication.get('n_replicating', 0)} of "
        f"{replication.get('n_treatments', 0)} treatments)\n"
        f"{features_line(source, int(replication.get('n_features', 0)))}",
        fontsize=9,
    )
    if not math.isfinite(percent):
        _say_not_scored(bottom, replication)
    top.set_ylabel("null density" if null.size >= NULL_POINTS_BELOW else "null pairs")
    top.set_xlim(-1, 1)
    bottom.set_xlabel("Pearson correlation across features")
    handles, labels = top.get_legend_handles_labels()
    more, more_labels = bottom.get_legend_handles_labels()
    if handles or more:
        top.legend([*handles, *more], [*labels, *more_labels], fontsize=7, loc="upper left")
    return fig


def _say_not_scored(ax: Axes, replication: Mapping[str, Any]) -> None:
    """Across the axes, why no treatment has a point: an empty plot must not read as 0%."""
    ax.text(0.5, 0.5, not_scored_reason(replication), transform=ax.transAxes, ha="center", va="center",
            fontsize=9, bbox={"facecolor": "white", "edgecolor": HIGHLIGHT})


def not_scored_reason(replication: Mapping[str, Any]) -> str:
    """Why percent replicating scored no treatment, in one line for a figure or the report."""
    single = int(replication.get("n_single_well") or 0)
    scored = int(replication.get("n_treatments") or 0)
    if scored:  # replicates, but no pair of wells of two treatments: no null, no threshold
        return (f"not scored: {scored} treatment{'' if scored == 1 else 's'} with replicates but no wells of another "
                "treatment, so no null to compare with")
    if single:
        return (f"not scored: no treatment has two wells ({single} treatment{'' if single == 1 else 's'} "
                f"with a single well)")
    return "not scored: no treatment other than negative controls"


def _treatment_points(ax: Axes, scored: pd.DataFrame) -> None:
    """One point per treatment at its median replicate correlation (jittered vertically)."""
    values = scored["median_correlation"].to_numpy(dtype=float)
    good = scored["replicating"].to_numpy(dtype=bool) if len(scored) else np.array([], bool)
    jitter = np.random.default_rng(0).uniform(-0.35, 0.35, size=len(values))
    for mask, colour, name in ((good, "#d62728", "replicating"), (~good, "#1f77b4", "not replicating")):
        if mask.any():
            ax.scatter(values[mask], jitter[mask], s=14, color=colour, alpha=0.8, linewidths=0,
                       label=f"treatment median, {name} (n={int(mask.sum()):,})")
    ax.set_ylim(-0.6, 0.6)
    ax.set_yticks([])
    ax.set_ylabel("treatments", fontsize=8)


def map_figure(table: pd.DataFrame, *, mode: str, batch: str, threshold: float, source: str | None,
               n_features: int, plates: Sequence[str] = ()) -> Figure:
    """mAP against −log10 corrected p-value, one point per group, and the distribution of mAP."""
    fig = new_figure((9.0, 4.2))
    left, right = fig.subplots(1, 2, width_ratios=[3, 2])
    values = table["mean_average_precision"].to_numpy(dtype=float)
    p = np.clip(table["corrected_p_value"].to_numpy(dtype=float), 1e-300, None)
    good = table["below_corrected_p"].to_numpy(dtype=bool)
    for mask, colour, name in ((good, "#d62728", "retrieved"), (~good, "#1f77b4", "not retrieved")):
        if mask.any():
            left.scatter(values[mask], -np.log10(p[mask]), s=14, color=colour, alpha=0.8, linewidths=0,
                         label=f"{name} (n={int(mask.sum()):,})")
    left.axhline(-math.log10(threshold), color="black", linestyle="--",
                 label=f"corrected p = {format_number(threshold, decimals=0)}")
    left.set_xlim(-0.02, 1.02)
    left.set_xlabel("mAP")
    left.set_ylabel("−log10 corrected p-value")
    # Below the axes: inside, the threshold line would cross it wherever it sits.
    left.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.16), ncol=3, frameon=False)
    _map_distribution(right, values, good)
    share = float(good.mean()) if len(good) else 0.0
    left.set_title(fit_title(
        f"{scope_label(batch, plates=plates)}: mAP ({mode}), {format_number(share * 100, decimals=0)}% retrieved "
        f"({int(good.sum())} of {len(good)})\n{features_line(source, n_features)}", fig, fontsize=9, share=0.55,
    ), fontsize=9, loc="left")
    _count_overlaps(fig, left, values, -np.log10(p), size=14)
    return fig


def _count_overlaps(fig: Figure, ax: Axes, x: np.ndarray, y: np.ndarray, *, size: float) -> None:
    """Groups drawn on top of each other say how many they are: ``×4``.

    Points closer than a marker's width (``size`` in points², as ``scatter``'s ``s``)
    once drawn form one dot; each dot is counted around the point with most
    neighbours, so a label never spans more than two markers. The label sits on the
    side of the dot that faces the middle of the axes, so it is never cut at an edge.
    """
    from scipy.spatial import cKDTree

    finite = np.isfinite(x) & np.isfinite(y)
    if finite.sum() < 2:
        return
    fig.draw_without_rendering()  # the layout fixes the axes' size in pixels
    ax.autoscale_view()
    pixels = ax.transData.transform(np.column_stack([x[finite], y[finite]]))
    width = math.sqrt(size) * fig.dpi / 72.0
    near = cKDTree(pixels).query_ball_point(pixels, r=width)
    free = np.ones(len(pixels), dtype=bool)
    for i in sorted(range(len(pixels)), key=lambda k: (-len(near[k]), k)):
        if not free[i]:
            continue
        members = [j for j in near[i] if free[j]]
        free[members] = False
        if len(members) > 1:
            _overlap_label(ax, pixels[i], len(members))


def _overlap_label(ax: Axes, at: np.ndarray, n: int) -> None:
    box = ax.get_window_extent()
    right = at[0] > (box.x0 + box.x1) / 2
    high = at[1] > (box.y0 + box.y1) / 2
    data = ax.transData.inverted().transform(at)
    ax.annotate(f"×{n}", (float(data[0]), float(data[1])), xytext=(-4 if right else 4, -3 if high else 3),
                textcoords="offset points", fontsize=7, ha="right" if right else "left",
                va="top" if high else "bottom")


#: Fewer groups than this are drawn one point each: a histogram of a handful of values misleads.
MAP_POINTS_BELOW = 30


def _map_distribution(ax: Axes, values: np.ndarray, good: np.ndarray) -> None:
    """The groups' mAP: a histogram when many, else one point per group (a strip, jittered)."""
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("mAP")
    if len(values) >= MAP_POINTS_BELOW:
        ax.hist(values, bins=[float(b) for b in np.linspace(0, 1, 21)], color="#9a9a9a")
        ax.set_ylabel("groups")
        ax.set_title(f"distribution over {len(values):,} groups", fontsize=8)
        return
    jitter = np.random.default_rng(0).uniform(-0.25, 0.25, size=len(values))  # a band: height means nothing
    for mask, colour in ((good, "#d62728"), (~good, "#1f77b4")):
        if mask.any():
            ax.scatter(values[mask], jitter[mask], s=22, color=colour, alpha=0.8, linewidths=0)
    ax.set_ylim(-1.5, 1.5)
    ax.set_yticks([])
    ax.set_ylabel("groups (one point each)", fontsize=8)
    ax.set_title(f"{len(values)} group{'' if len(values) == 1 else 's'}, one point each", fontsize=8)


def map_by_plate_figure(by_plate: pd.DataFrame, *, mode: str, batch: str, plate_column: str = "Metadata_Plate",
                        source: str | None = None, n_features: int = 0, plates: Sequence[str] = ()) -> Figure:
    """mAP of each plate on its own: one point per group (red when retrieved), the plate's
    mean mAP as a black bar, and the share retrieved above each plate."""
    scope = scope_label(batch, plates=plates)
    plates = sorted(by_plate[plate_column].astype(str).unique()) if len(by_plate) else []
    fig = new_figure((max(4.0, min(16.0, 1.0 + 0.45 * len(plates))), 4.2))
    ax = fig.subplots()
    jitter = np.random.default_rng(0)
    for x, plate in enumerate(plates):
        rows = by_plate[by_plate[plate_column].astype(str) == plate]
        values = rows["mean_average_precision"].to_numpy(dtype=float)
        good = rows["below_corrected_p"].to_numpy(dtype=bool)
        offsets = x + jitter.uniform(-0.25, 0.25, size=len(values))
        for mask, colour, name in ((good, "#d62728", "retrieved"), (~good, "#1f77b4", "not retrieved")):
            ax.scatter(offsets[mask], values[mask], s=10, color=colour, alpha=0.7, linewidths=0, zorder=3,
                       label=name if x == 0 else "_nolegend_")  # above the mean's bar: a lone point stays seen
        ax.hlines(float(np.mean(values)), x - 0.35, x + 0.35, color="black", linewidth=2, zorder=2,
                  label="plate mean mAP" if x == 0 else "_nolegend_")
        ax.text(x, 1.04, f"{format_number(float(good.mean()) * 100, decimals=0)}%", ha="center", fontsize=7)
    ax.set_xticks(range(len(plates)), plates, rotation=90 if len(plates) > 8 else 0, fontsize=7)
    ax.set_xlim(-0.6, max(len(plates) - 0.4, 0.6))
    ax.set_ylim(-0.02, 1.1)
    ax.set_ylabel("mAP (each plate alone)")
    if plates:  # below the axes: inside, it would hide a plate's points
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], marker="o", linestyle="none", markersize=4, color=c, label=n)
                   for c, n in (("#d62728", "retrieved"), ("#1f77b4", "not retrieved"))]
        handles.append(Line2D([], [], color="black", linewidth=2, label="plate mean mAP"))
        fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=7, frameon=False)
    ax.set_title(fit_title(f"{scope}: mAP ({mode}) by plate, % retrieved above each plate\n"
                            f"{features_line(source, n_features)}", fig, fontsize=9, share=0.85),
                 fontsize=9, loc="left")
    return fig
