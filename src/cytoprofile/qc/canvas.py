"""What every QC figure shares: a fresh figure, its colours, titles that fit, legends, PNG bytes.

No pyplot state: each figure is a :class:`matplotlib.figure.Figure` of its own.
"""

from __future__ import annotations

import io as _io
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "GREY",
    "HIGHLIGHT",
    "new_figure",
    "features_line",
    "fit_title",
    "legend_below",
    "scope_label",
    "figure_png",
]

#: Wells with no value.
GREY = "#d0d0d0"
#: Marks that warn: quarantined wells, the chance level.
HIGHLIGHT = "#e41a1c"


def new_figure(figsize: tuple[float, float]) -> Figure:
    """An empty figure with constrained layout (titles and legends never overlap the axes)."""
    from matplotlib.figure import Figure
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    return Figure(figsize=figsize, layout=ConstrainedLayoutEngine(h_pad=0.1, w_pad=0.1))


def features_line(source: str | None, n_features: int, *, shared: bool = False) -> str:
    """``"104 features of PLATE_normalized.csv.gz"``: the feature set a panel used. ``shared``: the batch's
    shared set (features every plate's file has, finite in every well), fewer than a file may hold."""
    where = f" of {source}" if source else ""
    return f"{n_features} features{' (the batch’s shared set)' if shared else ''}{where}"


def scope_label(batch: str, *, plates: Sequence[str] = ()) -> str:
    """What a batch-level figure covers: ``"Plate P1"`` when it is one plate, else ``"Batch B1"``.

    A report of one plate titled "Batch" would read as if the whole batch was scored."""
    return f"Plate {plates[0]}" if len(plates) == 1 else f"Batch {batch}"


def fit_title(text: str, fig: Figure, *, fontsize: float, share: float = 1.0) -> str:
    """``text`` wrapped at spaces so each line fits ``share`` of the figure's width
    (a title never runs past the figure's edge); an over-long file name is broken."""
    width = max(20, int(share * fig.get_figwidth() * 72 / (fontsize * 0.62)) - 2)
    return "\n".join(textwrap.fill(line, width=width) for line in text.splitlines())


def legend_below(fig: Figure, handles: list[Any]) -> None:
    """The legend under the axes, one row: inside, it would hide wells."""
    fig.legend(
        handles=handles, loc="outside lower center", ncol=len(handles),
        fontsize=8, frameon=False, handlelength=1.6, handleheight=1.2,
    )


def figure_png(fig: Figure, *, dpi: int = 100) -> bytes:
    """The figure as PNG bytes, exactly ``figsize × dpi`` pixels."""
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()
