"""Per-plate QC figures (matplotlib, no pyplot state): plate maps and the correlation matrix.

Each function returns a :class:`matplotlib.figure.Figure`;
:func:`~cytoprofile.qc.canvas.figure_png` turns it into PNG bytes of exactly
``figsize × dpi`` pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..vocabulary import normal_well, plate_layout, row_label, well_to_grid
from .canvas import GREY, HIGHLIGHT, features_line, fit_title, legend_below, new_figure
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
]

#: Heatmaps made per plate, as in ``PLATE_{name}.png``.
FIGURE_NAMES: tuple[str, ...] = ("cell_count", "correlation", "position_effect")

_PLATE_FIGSIZE = (9.0, 6.0)
_SQUARE_FIGSIZE = (8.0, 7.0)
_MAX_GROUP_LABELS = 40


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
    colormap = mpl.colormaps[cmap].with_extremes(bad=GREY)
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
    unprofiled = _unprofiled(imaged, counts.index, {*lost, *dropped}, shape)
    grid = _plate_grid({**counts.to_dict(), **dict.fromkeys(unprofiled, 0)}, shape)  # counted 0, as in the title
    fig = new_figure(_PLATE_FIGSIZE)
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
                                   edgecolor=HIGHLIGHT, linewidth=1.5))  # sparse: the well's colour shows
    handles = [Patch(facecolor=GREY, edgecolor="none", label="no profile for the well"),
               *_mark_unprofiled(ax, unprofiled)]
    if dropped:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="..",
                             label=f"not in the plate map (dropped): {len(dropped)} well{'s' if len(dropped) != 1 else ''}"))
    if quarantined is None:
        handles.append(Patch(facecolor="white", edgecolor="black", label="quarantine unknown (no ingest report)"))
    elif lost:  # none lost: no legend entry for an empty mark
        also = len(set(lost) & set(dropped))  # the title counts such a well once, as not in the plate map
        label = f"lost sites to quarantine: {len(lost)} well{'s' if len(lost) != 1 else ''}" + (
            f" ({also} also not in the plate map)" if also else "")
        handles.append(Patch(facecolor="white", edgecolor=HIGHLIGHT, hatch="/", label=label))
    legend_below(fig, handles)
    return fig


def _unprofiled(imaged: Sequence[str] | None, profiled: Any, left_out: set[str], shape: tuple[int, int]) -> list[str]:
    """Imaged wells with no profile row (no CellProfiler output for them), other than wells left out."""
    have = {normal_well(str(w)) for w in profiled}
    wells = dict.fromkeys(normal_well(str(w)) for w in imaged or ())
    return [w for w in wells if w not in have and w not in left_out and _on_grid(w)
            and well_to_grid(w)[0] < shape[0] and well_to_grid(w)[1] < shape[1]]


def _mark_unprofiled(ax: Axes, wells: Sequence[str]) -> list[Any]:
    """A cross on each imaged well without a profile (drawn at 0 cells, the title's count), and its legend entry."""
    from matplotlib.lines import Line2D

    if not wells:
        return []
    cells = [well_to_grid(w) for w in wells]
    ax.scatter([c for _, c in cells], [r for r, _ in cells], marker="x", s=30, color="white", linewidths=1.5)
    return [Line2D([], [], marker="x", linestyle="none", color="black",
                   label=f"imaged, no profile (counted as 0 cells): {len(wells)} well{'s' if len(wells) != 1 else ''}")]


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
    fig = new_figure(_PLATE_FIGSIZE)
    _draw_plate(fig, grid, cmap="magma_r", vmin=0, vmax=max(float(present.max()) if present.size else 0.0, 1.0),
                title=f"Plate {plate}: cells flagged by single-cell QC ({column})\n{summary}",
                colorbar_label="% of the well's cells flagged")
    legend_below(fig, [Patch(facecolor=GREY, edgecolor="none", label="no cells in the well")])
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
    fig = new_figure(_SQUARE_FIGSIZE)
    ax = fig.add_subplot()
    colormap = mpl.colormaps["RdBu_r"].with_extremes(bad=GREY)
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
        f"{features_line(source, n_features, shared=features is not None)}",
        fontsize=9,
    )
    bar = fig.colorbar(image, ax=ax, shrink=0.8)
    bar.set_label("Pearson correlation between wells")
    from matplotlib.patches import Patch

    legend_below(fig, [Patch(facecolor=GREY, edgecolor="none",
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
    # the scale ends just above the highest share (at least twice chance): on 0-1, shares of 0.05-0.2 were all one colour
    top = min(1.0, max(2 * chance, float(np.ceil(values.max() * 10) / 10) if len(values) else 1.0))
    fig = new_figure(_PLATE_FIGSIZE)
    ax, bar = _draw_plate(
        fig, grid, cmap="viridis", vmin=0, vmax=top,
        title=(
            f"Plate {plate}: position effect (plate median {median}; chance level "
            f"{format_number(chance, decimals=0)})\nper well: share of its same-row/column correlations above the "
            f"{quantile * 100:g}th percentile\nof its correlations with wells sharing neither its row nor its column\n"
            f"{features_line(source, _n_features(rows, features), shared=features is not None)}"
        ),
        colorbar_label="share above the well's threshold",
    )
    bar.ax.axhline(chance, color=HIGHLIGHT, linewidth=2)
    steps = [round(float(t), 6) for t in np.linspace(0, top, 5)]
    ticks = sorted({chance, *(t for t in steps if abs(t - chance) > top / 10)})
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
    handles: list[Any] = [Patch(facecolor=GREY, edgecolor="none", label="no profile for the well")]
    if note:
        cells = [well_to_grid(w) for w in effect.attrs.get("why_missing") or {}]
        cells = [(r, c) for r, c in cells if r < shape[0] and c < shape[1]]
        ax.scatter([c for _, c in cells], [r for r, _ in cells], marker="x", s=18, color="#555555", linewidths=1)
        handles.append(Line2D([], [], marker="x", linestyle="none", color="#555555",
                              label=fit_title(f"profile, but position effect {note}", fig, fontsize=8, share=0.6)))
    if note and empty:
        ax.text(0.5, 0.5, fit_title(f"Position effect {note}.", fig, fontsize=9, share=0.55), transform=ax.transAxes,
                ha="center", va="center", fontsize=9, bbox={"facecolor": "white", "edgecolor": HIGHLIGHT})
    legend_below(fig, handles)
