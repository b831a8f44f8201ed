"""Which columns of a recipe table are features: by compartment prefix, with stray columns refused."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from ..config import Recipe
from ..errors import InputError
from ..vocabulary import is_metadata, matching_features

__all__ = ["compartment_prefixes", "feature_columns", "features_for"]


_PASSTHROUGH = ("Image", "ome_arrow_")


def compartment_prefixes(recipe: Recipe, report: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """Column prefixes of the features: the canonical compartments, those the config names
    and those collate aggregated (its report), as aggregation names them."""
    from ..vocabulary import CANONICAL_COMPARTMENTS

    names = list(recipe.settings.compartments)
    if report is not None:
        names += [str(c) for c in (report.get("aggregate") or {}).get("compartments") or ()]
    found = list(CANONICAL_COMPARTMENTS)
    for name in names:
        prefix = name.capitalize() if name.islower() else name
        if prefix not in found:
            found.append(prefix)
    return tuple(found)


def feature_columns(df: pd.DataFrame, prefixes: Sequence[str], *, image_features: bool, where: str) -> list[str]:
    """Feature columns by prefix (numeric ``Image*`` too with ``image_features``), in column order.

    A column that is neither metadata, an image column nor a compartment's feature would
    be lost by the steps: that is an error naming it.
    """
    out = [c for c in matching_features(df, prefixes, image_features=image_features) if not is_metadata(c)]
    taken = set(out)
    stray = [c for c in map(str, df.columns) if not (is_metadata(c) or c in taken or c.startswith(_PASSTHROUGH)
                                                      or c.startswith(tuple(prefixes)))]
    if stray:
        shown = ", ".join(stray[:5]) + (f" ... ({len(stray)} in all)" if len(stray) > 5 else "")
        raise InputError(
            f"{where}: column(s) {shown} are neither Metadata_ columns nor features of the compartments "
            f"({', '.join(prefixes)}); add their object table to compartments: in the config"
        )
    if not out:
        raise InputError(f"{where}: no feature columns (names starting with {', '.join(prefixes)})")
    return out


def features_for(df: pd.DataFrame, block: Any, prefixes: Sequence[str], where: str) -> list[str]:
    """The block's ``features``: its explicit list, or every feature of the compartments."""
    if isinstance(block.features, list):
        return list(block.features)
    return feature_columns(df, prefixes, image_features=block.image_features, where=where)
