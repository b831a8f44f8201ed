"""Quality control: a per-plate summary table, plate heatmaps and one HTML report per batch.

:mod:`~cytoprofile.qc.metrics` and :mod:`~cytoprofile.qc.summary` hold the maths (pure
functions of DataFrames), :mod:`~cytoprofile.qc.figures` (plates) and :mod:`~cytoprofile.qc.batch_figures` the
matplotlib figures,
:mod:`~cytoprofile.qc.report` the HTML (a Jinja2 template) and
:mod:`~cytoprofile.qc.driver` the only code that reads the workspace and writes files.
"""

from __future__ import annotations

from ..vocabulary import grid_to_well, plate_layout, well_to_grid
from .batch_figures import replication_figure
from .canvas import figure_png
from .driver import QualityControlResult, quality_control
from .figures import (
    FIGURE_NAMES,
    cell_count_figure,
    correlation_figure,
    position_effect_figure,
)
from .formatting import format_number
from .metrics import (
    feature_columns,
    percent_replicating,
    position_effect,
    position_effect_note,
    shared_features,
    treatment_order,
    well_correlation,
)
from .report import render_report
from .summary import (
    RECIPE_SUMMARY_COLUMNS,
    SUMMARY_COLUMNS,
    quarantined_wells,
    read_summary,
    summarize_plate,
    update_summary,
)

__all__ = [
    "RECIPE_SUMMARY_COLUMNS",
    "SUMMARY_COLUMNS",
    "FIGURE_NAMES",
    "QualityControlResult",
    "summarize_plate",
    "quarantined_wells",
    "update_summary",
    "read_summary",
    "plate_layout",
    "well_to_grid",
    "grid_to_well",
    "feature_columns",
    "shared_features",
    "treatment_order",
    "well_correlation",
    "cell_count_figure",
    "correlation_figure",
    "position_effect",
    "position_effect_note",
    "position_effect_figure",
    "percent_replicating",
    "replication_figure",
    "figure_png",
    "format_number",
    "render_report",
    "quality_control",
]
