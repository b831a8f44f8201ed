"""Recipe config blocks as the keyword arguments of the step functions.

The one place where the recipe's keys (``method``, ``mad_robustize_fudge_factor``,
``plate_column``/``well_column``/``site_column``, ``fields``, ...) become the names the
functions and commands use (``operation``, ``mad_robustize_epsilon``, ``strata``,
``sites``, ...). A config supplies the recipe template's values; the functions keep
pycytominer's defaults.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .step_data import fit_query

__all__ = ["TEMPLATE_DEFAULTS", "aggregate_options", "annotate_options", "feature_select_options", "map_options", "normalize_options",
           "processing_options", "quality_control_options"]


#: (step, keyword) -> the value a default config block passes where the recipe template's default
#: differs from the step function's (which keeps pycytominer's); every other default is the function's.
TEMPLATE_DEFAULTS: dict[tuple[str, str], Any] = {
    ("aggregate", "image_features"): False,
    ("aggregate", "image_feature_categories"): (),
    ("normalize", "method"): "mad_robustize",
    ("feature_select", "operations"): ["variance_threshold", "correlation_threshold", "drop_na_columns", "blocklist"],
}


def aggregate_options(block: Any, compartments: Sequence[str]) -> dict[str, Any]:
    """``aggregate:`` → ``aggregate.aggregate`` keywords (``compartments:`` from the config's top level)."""
    strata = [block.plate_column, block.well_column] + ([block.site_column] if block.site_column else [])
    return {
        "operation": block.method,
        "strata": strata,
        "compartments": [c.capitalize() if c.islower() else c for c in compartments],
        "image_features": bool(block.image_feature_categories),
        "image_feature_categories": block.image_feature_categories or (),
        "sites": None if block.fields == "all" else list(block.fields),
    }


def normalize_options(block: Any) -> dict[str, Any]:
    """``normalize:`` / ``normalize_negcon:`` → ``normalize.normalize`` keywords (fit rows aside)."""
    return {
        "image_features": block.image_features,
        "method": block.method,
        "mad_robustize_epsilon": block.mad_robustize_fudge_factor,
        "spherize_method": block.spherize_method,
        "spherize_epsilon": block.spherize_epsilon,
        "spherize_center": block.spherize_center,
    }


def feature_select_options(block: Any) -> dict[str, Any]:
    """``feature_select.parameters`` → ``feature_select`` keywords; ``min_cells`` → the fit rows."""
    params: dict[str, Any] = {k: getattr(block.parameters, k) for k in type(block.parameters).model_fields}
    groups = params["noise_removal_perturb_groups"]
    if isinstance(groups, list) and len(groups) == 1:
        params["noise_removal_perturb_groups"] = groups[0]  # one name is a column, not one label
    params["samples"] = fit_query(min_cells=block.min_cells)
    params["image_features"] = block.image_features
    return params


def annotate_options(block: Any, platemap_well_column: str, *, external: bool) -> dict[str, Any]:
    """``annotate:`` → ``annotate.annotate`` keywords (the plate map's well column from the
    config's top level; the external join keys when external metadata is read)."""
    join = block.external.join_column if external else None
    return {
        "join_on": [platemap_well_column, block.well_column],
        "external_join_left": [join] if join else None,
        "external_join_right": [join] if join else None,
    }


def processing_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``processing_options:`` → ``processing.run_chain`` keywords (``input`` names the
    chain's starting profiles, not an option of a step)."""
    return {k: v for k, v in options.items() if k != "input"}


def map_options(block: Any) -> dict[str, Any] | None:
    """A ``quality_control.map`` block as the ``map_settings`` of ``qc.quality_control``;
    None when the block is off (``perform: false``)."""
    settings = {"modes": list(block.modes), "pert_column": block.pert_column, "annotation_column": block.annotation_column,
                "multilabel_separator": block.multilabel_separator, "control_query": block.control_query,
                "neg_sameby": None if block.neg_sameby is None else list(block.neg_sameby), "pos_diffby": list(block.pos_diffby), "null_size": block.null_size,
                "threshold": block.threshold, "seed": block.seed}
    return settings if block.perform else None


def quality_control_options(block: Any) -> dict[str, Any]:
    """``quality_control:`` → ``qc.quality_control`` keywords. ``summary.row/column`` are
    passed only when not the defaults (then Metadata_Well, else Metadata_Row + Metadata_Col)."""
    chosen = (block.summary.row, block.summary.column)
    return {
        "summary": block.summary.perform,
        "heatmaps": block.heatmap.perform,
        "summary_well_columns": None if chosen == ("Metadata_Row", "Metadata_Col") else chosen,
        "map_settings": map_options(block.map),
    }
