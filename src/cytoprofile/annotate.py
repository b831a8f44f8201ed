"""Annotate per-well profiles with their plate map and, optionally, external metadata.

The output keeps the reference tool's layout so that downstream steps and existing
``_augmented`` files line up: plate map columns are prefixed ``Metadata_``, rows follow
the plate map, and every ``Metadata_*`` column comes before the features.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from .errors import ConfigError, InputError

__all__ = ["annotate", "prefix_metadata"]

# CellProfiler image-table metadata that older backends kept under an ``Image_`` prefix.
_CELLPROFILER_RENAMES = {
    "Image_Metadata_Plate": "Metadata_Plate",
    "Image_Metadata_Well": "Metadata_Well",
    "Image_Metadata_Site": "Metadata_Site",
}
_FEATURE_PREFIXES = ("Cells", "Cytoplasm", "Nuclei")


def prefix_metadata(columns: Sequence[object]) -> list[object]:
    """Prefix every string column name that lacks ``Metadata_`` with it."""
    return [
        f"Metadata_{c}" if isinstance(c, str) and not c.startswith("Metadata_") else c
        for c in columns
    ]


def _as_list(keys: str | Sequence[str]) -> list[str]:
    return [keys] if isinstance(keys, str) else list(keys)


def _require(df: pd.DataFrame, columns: Sequence[str], what: str, fix: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{what} has no column {', '.join(map(repr, missing))}; {fix}")


def _prefix_external(external: pd.DataFrame) -> pd.DataFrame:
    """Prefix external metadata columns, leaving feature-like and metadata names alone."""
    def protected(col: object) -> bool:
        if not isinstance(col, str):
            return True
        if col.startswith(("Metadata_", "Image_Metadata_", *_FEATURE_PREFIXES)):
            return True
        return col.startswith("Image") and pd.api.types.is_numeric_dtype(external[col])

    kept = {c for c in external.columns if protected(c)}
    out = external.copy()
    out.columns = pd.Index(
        [c if c in kept else f"Metadata_{c}" for c in external.columns]
    )
    return out


def _broad_cmap(annotated: pd.DataFrame, well_column: str) -> pd.DataFrame:
    """Add the Connectivity Map columns (perturbation mode "none")."""
    if "Metadata_broad_sample" not in annotated.columns:
        raise InputError(
            "format_broad_cmap needs a broad_sample column in the plate map; "
            "add it or turn format_broad_cmap off"
        )
    sample = annotated["Metadata_broad_sample"]
    out = annotated.assign(
        Metadata_pert_id=sample.str.extract(r"(BRD[-N][A-Z0-9]+)", expand=False),
        Metadata_pert_mfc_id=sample,
        Metadata_pert_well=annotated[well_column],
        Metadata_pert_id_vendor="",
    )
    if "Metadata_pert_iname" in out.columns:
        out = out.assign(
            Metadata_pert_mfc_desc=out["Metadata_pert_iname"],
            Metadata_pert_name=out["Metadata_pert_iname"],
        )
    if "Metadata_cell_id" not in out.columns:
        out = out.assign(Metadata_cell_id="unknown")
    if "Metadata_broad_sample_type" in out.columns:
        return out.assign(Metadata_pert_type=out["Metadata_broad_sample_type"])
    return out.assign(Metadata_pert_type="", Metadata_broad_sample_type="")


def annotate(
    profiles: pd.DataFrame,
    platemap: pd.DataFrame,
    *,
    join_on: Sequence[str] = ("Metadata_well_position", "Metadata_Well"),
    add_metadata_id_to_platemap: bool = True,
    format_broad_cmap: bool = False,
    clean_cellprofiler: bool = True,
    external_metadata: pd.DataFrame | None = None,
    external_join_left: str | Sequence[str] | None = None,
    external_join_right: str | Sequence[str] | None = None,
) -> pd.DataFrame:
    """Join ``platemap`` (and ``external_metadata``) onto ``profiles``.

    ``join_on`` is (plate map column, profile column), named after prefixing. Wells
    missing from either side drop (inner join); rows follow the plate map's order; a
    plate map column whose name clashes with a profile column gets ``_platemap``.
    External metadata is left-joined on ``external_join_left`` (annotated side) =
    ``external_join_right`` (its side, default the same names); its columns are
    prefixed ``Metadata_`` first, and clashing names get ``_external``.
    """
    if len(join_on) != 2:
        raise ConfigError(
            f"join_on must be two column names (plate map, profiles), got {list(join_on)!r}"
        )
    map_key, profile_key = join_on[0], join_on[1]
    pm = platemap.copy()
    if add_metadata_id_to_platemap:
        pm.columns = pd.Index(prefix_metadata(list(pm.columns)))
    _require(pm, [map_key], "the plate map", "check its well column (well_position) and join_on")
    _require(
        profiles,
        [profile_key],
        "the profiles",
        "check the well column of the aggregated profiles and join_on",
    )

    annotated = pm.merge(
        profiles,
        left_on=map_key,
        right_on=profile_key,
        how="inner",
        suffixes=("_platemap", None),
    )
    if map_key != profile_key:
        annotated = annotated.drop(columns=map_key)

    if format_broad_cmap:
        annotated = _broad_cmap(annotated, profile_key)

    if (external_metadata is None) != (external_join_left is None):
        raise ConfigError(
            "external metadata needs both external_metadata and external_join_left "
            "(the merge column, e.g. Metadata_broad_sample)"
        )
    if external_metadata is not None and external_join_left is not None:
        left = _as_list(external_join_left)
        right = _as_list(external_join_right) if external_join_right is not None else left
        external = _prefix_external(external_metadata)
        _require(
            annotated,
            left,
            "the annotated profiles (after the plate map join)",
            "the merge column must be a plate map column",
        )
        _require(
            external,
            right,
            "the external metadata",
            "the merge column must have the same name in the plate map and the external metadata",
        )
        annotated = (
            annotated.merge(
                external,
                left_on=left,
                right_on=right,
                how="left",
                suffixes=(None, "_external"),
            )
            .reset_index(drop=True)
            .drop_duplicates()
        )

    if clean_cellprofiler:
        annotated = annotated.rename(columns=_CELLPROFILER_RENAMES)

    meta = [c for c in annotated.columns if isinstance(c, str) and c.startswith("Metadata_")]
    meta_set = set(meta)
    rest = [c for c in annotated.columns if c not in meta_set]
    return annotated.loc[:, meta + rest]
