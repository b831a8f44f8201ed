"""Recipe config blocks as the keyword arguments of the step functions.

The one place where the recipe's keys (``method``, ``mad_robustize_fudge_factor``,
``plate_column``/``well_column``/``site_column``, ``fields``, ...) become the names the
functions and commands use (``operation``, ``mad_robustize_epsilon``, ``strata``,
``sites``, ...). A config supplies the recipe template's values; the functions keep
pycytominer's defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["aggregate_options", "feature_select_options", "normalize_options"]


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
    params["samples"] = "all" if block.min_cells == 1 else f"Metadata_Object_Count >= {block.min_cells}"
    params["image_features"] = block.image_features
    return params
