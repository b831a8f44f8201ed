"""QC figures (matplotlib, no pyplot state): plate maps, the correlation matrix, percent replicating.

Each function returns a :class:`matplotlib.figure.Figure`; :func:`figure_png` turns it into
PNG bytes of exactly ``figsize × dpi`` pixels.
"""

from __future__ import annotations

import io as _io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..vocabulary import normal_well, plate_layout, row_label, well_to_grid
from .formatting import format_number
from .metrics import (
    cells_per_well,
    count_column,
    plate_rows,
    position_effect,
    position_effect_note,
    require_wells,
    treatment_column,
    treatment_order,
    well_correlation,
    well_matrix,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "FIGURE_NAMES",
    "cell_count_figure",
    "outlier_share_figure",
    "correlation_figure",
    "position_effect_figure",
    "replication_figure",
    "map_figure",
    "map_by_plate_figure",
    "figure_png",
    "MAP_POINTS_BELOW",
    "NULL_POINTS_BELOW",
]

#: Heatmaps made per plate, as in ``PLATE_{name}.png``.
FIGURE_NAMES: tuple[str, ...] = ("cell_count", "correlation", "position_effect")

_PLATE_FIGSIZE = (9.0, 6.0)
_SQUARE_FIGSIZE = (8.0, 7.0)
_GREY = "#d0d0d0"
_QUARANTINE = "#e41a1c"
_MAX_GROUP_LABELS = 40


def _new_figure(figsize: tuple[float, float]) -> Figure:
    from matplotlib.figure import Figure
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    return Figure(figsize=figsize, layout=ConstrainedLayoutEngine(h_pad=0.1, w_pad=0.1))


def _features_line(source: str | None, n_features: int) -> str:
    where = f" of {source}" if source else ""
    return f"{n_features} features{where}"


def _fit_title(text: str, fig: Figure, *, fontsize: float, share: float = 1.0) -> str:
    """``text`` wrapped at spaces so each line fits ``share`` of the figure's width
    (a title never runs past the figure's edge); an over-long file name is broken."""
    import textwrap

    width = max(20, int(share * fig.get_figwidth() * 72 / (fontsize * 0.62)) - 2)
    return "\n".join(textwrap.fill(line, width=width) for line in text.splitlines())


def _plate_grid(values: Mapping[Any, Any], shape: tuple[int, int]) -> np.ndarray:
    grid = np.full(shape, np.nan)
    for well, value in values.items():
        row, col = well_to_grid(well)
        if row < shape[0] and col < shape[1] and value is not None and not pd.isna(value):
            grid[row, col] = float(value)
    return grid


def _draw_plate(
    fig: Figure,
    grid: np.ndarray,
    *,
    title: str,
    colorbar_label: str,
    cmap: str,
    vmin: float | None = None,
    vmax: float | None = None,
) -> tuple[Axes, Any]:
    import matplotlib as mpl

    ax = fig.add_subplot()
    colormap = mpl.colormaps[cmap].with_extremes(bad=_GREY)
    image = ax.imshow(
        np.ma.masked_invalid(grid), cmap=colormap, vmin=vmin, vmax=vmax,
        interpolation="nearest", aspect="equal",
    )
    n_rows, n_cols = grid.shape
    small = 7 if n_cols <= 24 else 5.5
    col_step = 1 if n_cols <= 24 else 2
    ax.set_xticks(range(0, n_cols, col_step), [str(c + 1) for c in range(0, n_cols, col_step)], fontsize=small)
    ax.set_yticks(range(n_rows), [row_label(r) for r in range(n_rows)], fontsize=small)
    ax.xaxis.tick_top()
    ax.set_xticks(np.arange(-0.5, n_cols, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n_rows, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.6 if n_cols <= 24 else 0.3)
    ax.tick_params(which="minor", length=0)
    ax.tick_params(which="major", length=0)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(f"{n_rows * n_cols}-well plate", fontsize=8)
    bar = fig.colorbar(image, ax=ax, shrink=0.8)
    bar.set_label(colorbar_label)
    return ax, bar


def _legend_below(fig: Figure, handles: list[Any]) -> None:
    fig.legend(
        handles=handles, loc="outside lower center", ncol=len(handles),
        fontsize=8, frameon=False, handlelength=1.6, handleheight=1.2,
    )


def cell_count_figure(
    profiles: pd.DataFrame,
    *,
    plate: str,
    shape: tuple[int, int] | None = None,
    quarantined: Mapping[str, int] | None = None,
    imaged: Sequence[str] | None = None,
    not_in_platemap: Sequence[str] = (),
) -> Figure:
    """Cells per well (``Metadata_Object_Count``) on the plate grid; wells without data grey.

    ``quarantined`` maps wells to the number of sites they lost to quarantine; those
    wells are hatched and outlined, since their low count is not the cells' doing.
    ``None`` means there is no ingest report, and the legend says so. Wells
    ``not_in_platemap`` (dropped by annotate) are dotted, not grey. The title's median
    and min are :func:`~cytoprofile.qc.metrics.cells_per_well` (``imaged`` wells without
    a profile count 0), the summary table's numbers.
    """
    from matplotlib.patches import Patch, Rectangle

    rows = plate_rows(profiles, plate)
    require_wells(rows, f"profiles of plate {plate}")
    column = count_column(rows)
    wells = rows["Metadata_Well"].astype(str).map(normal_well)
    counts = pd.to_numeric(rows[column], errors="coerce").groupby(wells.to_numpy()).sum(min_count=1)
    lost = {normal_well(w): int(n) for w, n in (quarantined or {}).items() if n}
    dropped = [normal_well(str(w)) for w in not_in_platemap]
    placed = [w for w in lost if _on_grid(w)]
    shape = shape or plate_layout([*counts.index, *placed, *(w for w in dropped if _on_grid(w))])
    grid = _plate_grid(counts.to_dict(), shape)
    fig = _new_figure(_PLATE_FIGSIZE)
    stats = cells_per_well(rows, imaged=imaged, quarantined=lost, not_in_platemap=dropped)
    only_lost = set(lost) - set(dropped)  # a well both quarantined and dropped is left out once, as dropped
    left_out = ", ".join(f"{n} {what}" for n, what in ((len(only_lost), "with quarantined sites"),
                                                       (len(dropped), "not in plate map")) if n)
    summary = (
        f"wells counted: {stats['wells']}{f' (left out: {left_out})' if left_out else ''}, "
        f"median {format_number(stats['median'])}, min {format_number(stats['min'])}"
        if stats["wells"]
        else "no data"
    )
    ax, bar = _draw_plate(
        fig, grid, cmap="viridis", vmin=0,
        title=f"Plate {plate}: cells per well ({column})\n{summary}",
        colorbar_label="cells per well",
    )
    from matplotlib.ticker import MaxNLocator
    bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # cells are counted: no 2.5 ticks
    for well in (w for w in dropped if _on_grid(w)):
        row, col = well_to_grid(well)
        if row < shape[0] and col < shape[1]:
            ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, facecolor="white", hatch="..", edgecolor="black"))
    for well in placed:  # over the dropped marks: a well both dropped and quarantined shows both
        row, col = well_to_grid(well)
        if row < shape[0] and col < shape[1]:
            ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, hatch="/",
                                   edgecolor=_QUARANTINE, linewidth=1.5))  # sparse: the well's colour shows
    handles = [Patch(facecolor=_GREY, edgecolor="none", label="no profile for the well")]
    if dropped:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="..",
                             label=f"not in the plate map (dropped): {len(dropped)} well{'s' if len(dropped) != 1 else ''}"))
    if quarantined is None:
        handles.append(Patch(facecolor="white", edgecolor="black", label="quarantine unknown (no ingest report)"))
    elif lost:  # none lost: no legend entry for an empty mark
        also = len(set(lost) & set(dropped))  # the title counts such a well once, as not in the plate map
        label = f"lost sites to quarantine: {len(lost)} well{'s' if len(lost) != 1 else ''}" + (
            f" ({also} also not in the plate map)" if also else "")
        handles.append(Patch(facecolor="white", edgecolor=_QUARANTINE, hatch="/", label=label))
    _legend_below(fig, handles)
    return fig


def outlier_share_figure(
    shares: pd.DataFrame,
    *,
    plate: str,
    column: str,
    shape: tuple[int, int] | None = None,
) -> Figure:
    """The share of each well's cells that single-cell QC flags (``column`` of
    :func:`~cytoprofile.qc.metrics.outlier_shares`) on the plate grid; wells without cells grey."""
    from matplotlib.patches import Patch

    values = shares.set_index("Metadata_Well")[column] * 100
    wells = [w for w in values.index if _on_grid(str(w))]
    shape = shape or plate_layout(wells)
    grid = _plate_grid(values.loc[wells].to_dict(), shape)
    present = grid[np.isfinite(grid)]
    if present.size:
        worst = str(values.loc[wells].idxmax())
        summary = (f"wells with cells: {present.size}, median {format_number(np.median(present), decimals=1)}%, "
                   f"highest {format_number(present.max(), decimals=1)}% ({worst})")
    else:
        summary = "no cells"
    fig = _new_figure(_PLATE_FIGSIZE)
    _draw_plate(fig, grid, cmap="magma_r", vmin=0, vmax=max(float(present.max()) if present.size else 0.0, 1.0),
                title=f"Plate {plate}: cells flagged by single-cell QC ({column})\n{summary}",
                colorbar_label="% of the well's cells flagged")
    _legend_below(fig, [Patch(facecolor=_GREY, edgecolor="none", label="no cells in the well")])
    return fig


def _on_grid(well: str) -> bool:
    try:
        well_to_grid(well)
    except InputError:
        return False
    return True


def _treatment_blocks(rows: pd.DataFrame, replicate_column: str | None) -> pd.DataFrame | None:
    """Wells ordered by treatment, or ``None`` when the profiles name no treatment."""
    try:
        column = treatment_column(rows, replicate_column=replicate_column)
    except InputError:
        if replicate_column is not None:
            raise
        return None
    return treatment_order(rows, column).assign(column=column)


def correlation_figure(
    profiles: pd.DataFrame,
    *,
    plate: str,
    features: Sequence[str] | None = None,
    replicate_column: str | None = None,
    source: str | None = None,
) -> Figure:
    """Well-by-well Pearson correlation matrix of a plate's profiles.

    Wells are ordered by treatment (``replicate_column``, else the first treatment
    column present), so replicate groups form blocks on the diagonal; without a
    treatment column they come in plate order. ``source`` names the profile file.
    """
    import matplotlib as mpl

    rows = plate_rows(profiles, plate)
    blocks = _treatment_blocks(rows, replicate_column)
    order = list(blocks["Metadata_Well"]) if blocks is not None else None
    corr = well_correlation(rows, features=features, order=order)
    n_features = _n_features(rows, features)
    fig = _new_figure(_SQUARE_FIGSIZE)
    ax = fig.add_subplot()
    colormap = mpl.colormaps["RdBu_r"].with_extremes(bad=_GREY)
    values = corr.to_numpy().copy()
    np.fill_diagonal(values, np.nan)  # a well with itself (1) would make every treatment's block look replicated
    image = ax.imshow(
        np.ma.masked_invalid(values), cmap=colormap, vmin=-1, vmax=1,
        interpolation="nearest", aspect="equal",
    )
    wells = list(corr.index)
    how = "plate order"
    if blocks is not None:
        names = blocks.set_index("Metadata_Well")["treatment"].reindex(wells)
        how = f"ordered by {blocks['column'].iloc[0]}"
        _draw_blocks(ax, [("" if pd.isna(n) else str(n)) for n in names])
    else:
        _well_ticks(ax, wells)
    ax.set_title(
        f"Plate {plate}: well-by-well Pearson correlation\n{len(wells)} wells, {how}\n"
        f"{_features_line(source, n_features)}",
        fontsize=9,
    )
    bar = fig.colorbar(image, ax=ax, shrink=0.8)
    bar.set_label("Pearson correlation between wells")
    from matplotlib.patches import Patch

    _legend_below(fig, [Patch(facecolor=_GREY, edgecolor="none",
                              label="grey: a well with itself (the diagonal), or no correlation (constant profile)")])
    return fig


def _n_features(rows: pd.DataFrame, features: Sequence[str] | None) -> int:
    return len(well_matrix(rows, features)[2])


def _well_ticks(ax: Axes, wells: list[str]) -> None:
    step = max(1, math.ceil(len(wells) / 32))
    ticks = list(range(0, len(wells), step))
    fontsize = 7 if len(ticks) <= 24 else 5.5
    ax.set_xticks(ticks, [wells[i] for i in ticks], rotation=90, fontsize=fontsize)
    ax.set_yticks(ticks, [wells[i] for i in ticks], fontsize=fontsize)
    ax.set_xlabel("well")
    ax.set_ylabel("well")


def _draw_blocks(ax: Axes, names: list[str]) -> None:
    """Lines between treatment groups (when few), and group names as ticks (as many as fit)."""
    starts = [i for i in range(len(names)) if i == 0 or names[i] != names[i - 1]]
    ends = [*starts[1:], len(names)]
    if len(starts) <= _MAX_GROUP_LABELS * 1.25:  # more lines would hide the correlations
        for edge in starts[1:]:
            ax.axhline(edge - 0.5, color="#444444", linewidth=0.4)
            ax.axvline(edge - 0.5, color="#444444", linewidth=0.4)
    gap = len(names) / _MAX_GROUP_LABELS
    centres: list[float] = []
    labels: list[str] = []
    for start, end in zip(starts, ends, strict=True):
        centre = (start + end - 1) / 2
        if not centres or centre - centres[-1] >= gap:
            centres.append(centre)
            labels.append((names[start] or "(none)")[:20])
    fontsize = 7 if len(centres) <= 24 else 5.5
    ax.set_xticks(centres, labels, rotation=90, fontsize=fontsize)
    ax.set_yticks(centres, labels, fontsize=fontsize)
    shown = "" if len(centres) == len(starts) else f"; {len(centres)} of them named"
    ax.set_xlabel(f"treatment ({len(starts)} groups, each a block of its replicate wells{shown})", fontsize=8)
    ax.set_ylabel("treatment")


def position_effect_figure(
    profiles: pd.DataFrame,
    *,
    plate: str,
    features: Sequence[str] | None = None,
    quantile: float = 0.95,
    shape: tuple[int, int] | None = None,
    source: str | None = None,
    effect: pd.DataFrame | None = None,
) -> Figure:
    """:func:`~cytoprofile.qc.metrics.position_effect` on the plate grid, with its chance level marked.

    ``effect``: that table when already computed for ``profiles`` (it is not computed again)."""
    rows = plate_rows(profiles, plate)
    if effect is None:
        effect = position_effect(rows, features=features, quantile=quantile)
    shape = shape or plate_layout(effect["Metadata_Well"])
    grid = _plate_grid(dict(zip(effect["Metadata_Well"], effect["Position_Effect"], strict=True)), shape)
    chance = float(effect.attrs["chance"])
    values = effect["Position_Effect"].dropna()
    median = format_number(values.median(), decimals=0) if len(values) else "n/a"
    fig = _new_figure(_PLATE_FIGSIZE)
    ax, bar = _draw_plate(
        fig, grid, cmap="viridis", vmin=0, vmax=1,
        title=(
            f"Plate {plate}: position effect (plate median {median}; chance level "
            f"{format_number(chance, decimals=0)})\nper well: share of its same-row/column correlations above the "
            f"{quantile * 100:g}th percentile\nof its correlations with wells sharing neither its row nor its column\n"
            f"{_features_line(source, _n_features(rows, features))}"
        ),
        colorbar_label="share above the well's threshold",
    )
    bar.ax.axhline(chance, color=_QUARANTINE, linewidth=2)
    ticks = sorted({0.0, chance, 0.25, 0.5, 0.75, 1.0})
    bar.set_ticks(ticks, labels=[
        f"{format_number(t, decimals=0)} chance" if t == chance else format_number(t, decimals=0) for t in ticks
    ])
    _explain_missing(fig, ax, effect, shape, empty=not len(values))
    return fig


def _explain_missing(fig: Figure, ax: Axes, effect: pd.DataFrame, shape: tuple[int, int], *, empty: bool) -> None:
    """Say on the map why wells have no value: each such well crossed, the reason in the
    legend, and across the map when no well has a value."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    note = position_effect_note(effect)
    handles: list[Any] = [Patch(facecolor=_GREY, edgecolor="none", label="no profile for the well")]
    if note:
        cells = [well_to_grid(w) for w in effect.attrs.get("why_missing") or {}]
        cells = [(r, c) for r, c in cells if r < shape[0] and c < shape[1]]
        ax.scatter([c for _, c in cells], [r for r, _ in cells], marker="x", s=18, color="#555555", linewidths=1)
        handles.append(Line2D([], [], marker="x", linestyle="none", color="#555555",
                              label=_fit_title(f"profile, but position effect {note}", fig, fontsize=8, share=0.6)))
    if note and empty:
        ax.text(0.5, 0.5, _fit_title(f"Position effect {note}.", fig, fontsize=9, share=0.55), transform=ax.transAxes,
                ha="center", va="center", fontsize=9, bbox={"facecolor": "white", "edgecolor": _QUARANTINE})
    _legend_below(fig, handles)


def figure_png(fig: Figure, *, dpi: int = 100) -> bytes:
    """The figure as PNG bytes, exactly ``figsize × dpi`` pixels."""
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()


#: A null of fewer well pairs than this is drawn one mark each (a rug), not as a density.
NULL_POINTS_BELOW = 100


def replication_figure(replication: Mapping[str, Any], *, batch: str, source: str | None = None) -> Figure:
    """The null's histogram and each treatment's median replicate correlation as a point, with the threshold.

    Treatments are few (often tens), so they are drawn one point each, never as a density.
    """
    fig = _new_figure((8.0, 4.5))
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
    shown = f"{format_number(percent, decimals=0)}%" if math.isfinite(percent) else "n/a"
    top.set_title(
        f"Batch {batch}: percent replicating {shown} ({replication.get('n_replicating', 0)} of "
        f"{replication.get('n_treatments', 0)} treatments)\n"
        f"{_features_line(source, int(replication.get('n_features', 0)))}",
        fontsize=9,
    )
    top.set_ylabel("null density" if null.size >= NULL_POINTS_BELOW else "null pairs")
    top.set_xlim(-1, 1)
    bottom.set_xlabel("Pearson correlation across features")
    handles, labels = top.get_legend_handles_labels()
    more, more_labels = bottom.get_legend_handles_labels()
    if handles or more:
        top.legend([*handles, *more], [*labels, *more_labels], fontsize=7, loc="upper left")
    return fig


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
               n_features: int) -> Figure:
    """mAP against −log10 corrected p-value, one point per group, and the distribution of mAP."""
    fig = _new_figure((9.0, 4.2))
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
    left.set_title(_fit_title(
        f"Batch {batch}: mAP ({mode}), {format_number(share * 100, decimals=0)}% retrieved "
        f"({int(good.sum())} of {len(good)})\n{_features_line(source, n_features)}", fig, fontsize=9, share=0.55,
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
                        source: str | None = None, n_features: int = 0) -> Figure:
    """mAP of each plate on its own: one point per group (red when retrieved), the plate's
    mean mAP as a black bar, and the share retrieved above each plate."""
    plates = sorted(by_plate[plate_column].astype(str).unique()) if len(by_plate) else []
    fig = _new_figure((max(4.0, min(16.0, 1.0 + 0.45 * len(plates))), 4.2))
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
    ax.set_title(_fit_title(f"Batch {batch}: mAP ({mode}) by plate, % retrieved above each plate\n"
                            f"{_features_line(source, n_features)}", fig, fontsize=9, share=0.85),
                 fontsize=9, loc="left")
    return fig
