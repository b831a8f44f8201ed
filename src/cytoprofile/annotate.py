"""Annotate per-well profiles with their plate map and, optionally, external metadata.

The output keeps the reference tool's layout so that downstream steps and existing
``_augmented`` files line up: plate map columns are prefixed ``Metadata_``, rows follow
the plate map, and every ``Metadata_*`` column comes before the features.

Unlike the reference, no well is dropped without a word: profiles of wells the plate
map lacks are an error naming them (``unmatched_wells="drop"`` drops them and says
how many), and external metadata with several different rows for one key (which
would repeat wells) is refused.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import pandas as pd

from .checks import as_names, check_choice, check_flag, check_frame
from .errors import ConfigError, CytoprofileError, InputError, MetadataError, about
from .step_data import AccountSink, FeatureAccount, report_account
from .vocabulary import (
    UNMATCHED_WELLS,
    feature_prefixes,
    is_any_metadata,
    metadata_columns,
    non_metadata_columns,
    prefix_metadata,
    with_metadata_prefix,
)

__all__ = ["annotate", "annotate_files", "prefixed_platemap"]

log = logging.getLogger(__name__)

_SHOW = 10  # wells or keys named in one message

# CellProfiler image-table metadata that older backends kept under an ``Image_`` prefix.
_CELLPROFILER_RENAMES = {
    "Image_Metadata_Plate": "Metadata_Plate",
    "Image_Metadata_Well": "Metadata_Well",
    "Image_Metadata_Site": "Metadata_Site",
}


def _listed(values: Sequence[object]) -> str:
    shown = ", ".join(str(v) for v in values[:_SHOW])
    return shown + (f" ... ({len(values)} in all)" if len(values) > _SHOW else "")


def _require(df: pd.DataFrame, columns: Sequence[str], what: str, fix: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{what} has no column {', '.join(map(repr, missing))}; {fix}")


def _prefix_external(
    external: pd.DataFrame, compartments: str | Sequence[str] | None
) -> pd.DataFrame:
    """Prefix external metadata columns, leaving feature-like and metadata names alone."""
    features = feature_prefixes(compartments)

    def protected(col: object) -> bool:
        if not isinstance(col, str):
            return True
        if is_any_metadata(col) or col.startswith(features):
            return True
        return col.startswith("Image") and pd.api.types.is_numeric_dtype(external[col])

    kept = {c for c in external.columns if protected(c)}
    out = external.copy()
    out.columns = pd.Index(
        [c if c in kept else with_metadata_prefix(c) for c in external.columns]
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


def _plates_of(profiles: pd.DataFrame) -> str:
    """The plate(s) of ``profiles`` for a log line (``P1``, ``P1, P2``), or ``profiles``."""
    if "Metadata_Plate" not in profiles.columns:
        return "profiles"
    return ", ".join(dict.fromkeys(profiles["Metadata_Plate"].dropna().astype(str))) or "profiles"


def _match_wells(
    profiles: pd.DataFrame, pm: pd.DataFrame, map_key: str, profile_key: str, unmatched_wells: str,
    platemap_name: str | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """``profiles`` without the wells the plate map lacks (and those wells), or an error naming them;
    ``platemap_name`` (the plate map's file) is named in the warning when given."""
    wells = profiles[profile_key]
    absent = wells.isna() | ~wells.isin(pm[map_key].dropna())
    unlisted = pm.loc[~pm[map_key].isin(wells.dropna()), map_key]
    if len(unlisted):
        log.info("annotate %s: %d plate map well(s) have no profile: %s", _plates_of(profiles),
                 len(unlisted), _listed(list(unlisted)))
    if not absent.any():
        return profiles, []
    names = list(dict.fromkeys(str(w) for w in wells[absent]))
    source = f" {platemap_name}" if platemap_name else ""
    if absent.all():
        raise MetadataError(
            f"none of the profiles' {len(names)} well(s) ({profile_key}) is in the plate map{source} ({map_key}): "
            f"{_listed(names)}; is it the plate map of this plate, and its well column the one join_on names?"
        )
    if unmatched_wells == "error":
        raise MetadataError(
            f"the plate map lacks {len(names)} well(s) of the profiles ({profile_key}): "
            f"{_listed(names)}; their profiles would be dropped: add them to the plate map, "
            "or drop them knowingly with unmatched_wells: drop (annotate.unmatched_wells in "
            "a recipe config, --unmatched-wells drop on the command line)"
        )
    log.warning(
        "annotate %s: %d of %d well(s) dropped (%d profile row(s)), not in the plate map%s "
        "(unmatched_wells: drop): %s", _plates_of(profiles), len(names), len(dict.fromkeys(str(w) for w in wells)),
        int(absent.sum()), source, _listed(names),
    )
    return profiles.loc[~absent.to_numpy()], names


def _refuse_repeated_keys(
    annotated: pd.DataFrame, external: pd.DataFrame, left: list[str], right: list[str]
) -> None:
    """A key with several different external rows would repeat every well that has it."""
    distinct = external.drop_duplicates()
    repeated = distinct.loc[distinct.duplicated(subset=right, keep=False), right]
    if repeated.empty:
        return
    used = repeated.merge(annotated[left].drop_duplicates(), left_on=right, right_on=left)
    if used.empty:
        return
    keys = list(dict.fromkeys("/".join(map(str, row)) for row in used[right].itertuples(index=False)))
    extra = len(annotated.merge(distinct[right], left_on=left, right_on=right, how="left"))
    raise MetadataError(
        f"the external metadata has several different rows for {', '.join(right)} "
        f"{_listed(keys)}; the join would repeat their wells ({len(annotated)} -> {extra} "
        "rows): keep one row per key"
    )


def _join_keys(join_on: Sequence[str]) -> tuple[str, str]:
    """``join_on`` as (plate map column, profile column); anything but two names is refused."""
    keys = as_names("join_on", join_on, repeats=True)  # a pair: plate-map column, profile column
    if len(keys) != 2:
        raise ConfigError(
            f"join_on must be two column names (plate map, profiles), got {join_on!r}"
        )
    return keys[0], keys[1]


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
    unmatched_wells: str = "error",
    compartments: str | Sequence[str] | None = None,
    platemap_name: str | None = None,
) -> pd.DataFrame:
    """Join ``platemap`` (and ``external_metadata``) onto ``profiles``.

    ``join_on`` is (plate map column, profile column), named after prefixing. Profile
    wells the plate map lacks are an error naming them; with ``unmatched_wells="drop"``
    they drop (inner join) and a warning says how many (naming ``platemap_name``, the plate
    map's file, when given). Rows follow the plate map's
    order; a plate map column whose name clashes with a profile column gets
    ``_platemap``. External metadata is left-joined on ``external_join_left``
    (annotated side) = ``external_join_right`` (its side, default the same names); its
    columns are prefixed ``Metadata_`` first (except feature names of
    ``compartments``), clashing names get ``_external``, and a key with several
    different rows is an error. ``attrs["wells"]`` of the result records the profile rows in and
    out and the wells dropped (the step's provenance record carries it, and QC reads it there).
    """
    check_frame("profiles", profiles)
    check_frame("platemap", platemap)
    map_key, profile_key = _join_keys(join_on)
    unmatched_wells = check_choice("unmatched_wells", unmatched_wells, UNMATCHED_WELLS)
    for flag, value in (
        ("add_metadata_id_to_platemap", add_metadata_id_to_platemap),
        ("format_broad_cmap", format_broad_cmap),
        ("clean_cellprofiler", clean_cellprofiler),
    ):
        check_flag(flag, value)
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
    rows_in = len(profiles)
    profiles, dropped = _match_wells(profiles, pm, map_key, profile_key, unmatched_wells, platemap_name)

    annotated = pm.merge(profiles, left_on=map_key, right_on=profile_key, how="inner", suffixes=("_platemap", None))
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
        annotated = _join_external(
            annotated, external_metadata, external_join_left, external_join_right, compartments
        )

    if clean_cellprofiler:
        annotated = annotated.rename(columns=_CELLPROFILER_RENAMES)

    meta = metadata_columns(annotated.columns)
    meta_set = set(meta)
    rest = [c for c in annotated.columns if c not in meta_set]
    out = annotated.loc[:, meta + rest]
    out.attrs["wells"] = {"in": rows_in, "out": len(out), "dropped_unmatched": dropped}  # for the step's record
    return out


def prefixed_platemap(platemap: pd.DataFrame) -> pd.DataFrame:
    """Plate map columns with the ``Metadata_`` prefix, as the recipe passes them."""
    return platemap.rename(columns={c: with_metadata_prefix(str(c)) for c in platemap.columns})


def annotate_files(
    profiles: str,
    platemap: str,
    *,
    join_on: Sequence[str] = ("Metadata_well_position", "Metadata_Well"),
    external: str | None = None,
    merge_column: str | None = None,
    unmatched_wells: str = "error",
    compartments: str | Sequence[str] | None = None,
    on_account: AccountSink | None = None,
) -> pd.DataFrame:
    """:func:`annotate` on files: the profiles table ``profiles``, the plate map file ``platemap``
    and, keyed by ``merge_column``, the external metadata file ``external``.

    The plate map and external metadata get the recipe's checks first (notes are warnings);
    errors reading the profiles name their file, errors of the join both files. ``on_account`` receives the
    features read and written (every column but metadata).
    """
    from . import io

    if external and not merge_column:
        raise ConfigError("--external needs --merge-column (e.g. broad_sample)")
    if merge_column and not external:  # a setting without its effect is refused, never ignored
        raise ConfigError("--merge-column needs --external (the external metadata file it keys)")
    with about(profiles):
        table = io.read_table(profiles)
    inputs = _file_inputs(platemap, external=external, merge_column=merge_column, unmatched_wells=unmatched_wells)
    try:  # a problem of the join is one of both files: name the two
        out = annotate(table, join_on=join_on, unmatched_wells=unmatched_wells, compartments=compartments,
                       platemap_name=os.path.basename(str(platemap)), **inputs)
    except CytoprofileError as exc:
        raise type(exc)(f"{profiles} with plate map {platemap}: {exc}") from exc
    report_account(_account(table, out), on_account)
    return out


def _file_inputs(platemap: str, *, external: str | None, merge_column: str | None,
                 unmatched_wells: str) -> dict[str, Any]:
    """A plate map file (and external metadata file) as ``annotate``'s ``platemap`` and external
    keywords, after the checks the recipe makes first (plate map, external keys; notes are warnings)."""
    from .metadata import load_external_metadata, load_platemap, validate_annotation_inputs

    for note in validate_annotation_inputs(platemap, external_metadata=external, merge_column=merge_column,
                                           unmatched_wells=unmatched_wells):
        log.warning("%s", note)
    ext = load_external_metadata(external, merge_column=merge_column) if external else None
    key = with_metadata_prefix(merge_column) if ext is not None and merge_column else None
    return {"platemap": prefixed_platemap(load_platemap(platemap)), "external_metadata": ext,
            "external_join_left": [key] if key else None, "external_join_right": [key] if key else None}


def _account(before: pd.DataFrame, after: pd.DataFrame) -> FeatureAccount:
    """The features annotate read and wrote (every column but metadata), for its provenance record."""
    def features(frame: pd.DataFrame) -> tuple[str, ...]:
        return tuple(non_metadata_columns(frame.columns))

    return FeatureAccount(step="annotate", features_in=features(before), features_out=features(after))


def _join_external(
    annotated: pd.DataFrame,
    external_metadata: pd.DataFrame,
    external_join_left: str | Sequence[str],
    external_join_right: str | Sequence[str] | None,
    compartments: str | Sequence[str] | None,
) -> pd.DataFrame:
    """Left-join the prefixed external metadata; a repeated key is refused."""
    left = as_names("external_join_left", external_join_left)
    right = (
        as_names("external_join_right", external_join_right)
        if external_join_right is not None
        else left
    )
    external = _prefix_external(check_frame("external_metadata", external_metadata), compartments)
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
    _refuse_repeated_keys(annotated, external, left, right)
    # pandas joins an empty key to an empty key: an external row without a key would
    # annotate every well whose plate map leaves the key empty (e.g. DMSO wells)
    external = external.loc[external[right].notna().all(axis=1).to_numpy()]
    return (
        annotated.merge(
            external,
            left_on=left,
            right_on=right,
            how="left",
            suffixes=(None, "_external"),
        )
        .drop_duplicates()
        .reset_index(drop=True)
    )
