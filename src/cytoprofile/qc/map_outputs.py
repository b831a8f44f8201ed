"""The batch's mAP tables in QC: computed over the panels' profiles, written beside the report, and an
earlier run's tables that this run does not make removed."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import pandas as pd

from .. import io as cpio
from ..errors import CytoprofileError, InputError
from ..layout import QualityControlLayout
from ..vocabulary import MAP_MODES, is_metadata
from .metrics import map_by_plate, map_tables

__all__ = ["batch_map", "remove_stale_maps"]

log = logging.getLogger("cytoprofile.qc")


def _not_computed(batch: str, why: str) -> str:
    log.warning("%s: mAP not computed: %s", batch, why)
    return why


def batch_map(frames: dict[str, pd.DataFrame], features: list[str], where: QualityControlLayout, batch: str,
              plates: Sequence[str], settings: dict[str, Any], map_profiles: str | None,
              ) -> tuple[dict[str, Any] | None, str | None]:
    """mAP of the batch's profiles by mode, each table written to ``quality_control/map/BATCH/``: the tables and
    where they went, or (None, why) when the profiles cannot support it (no replicates, no negative controls)."""
    options = dict(settings)
    modes = options.pop("modes", ["activity"])
    source: str | None = None
    if map_profiles is not None:
        profiles = cpio.read_table(map_profiles)
        if "Metadata_Plate" in profiles.columns:
            profiles = profiles.loc[profiles["Metadata_Plate"].astype(str).isin(list(plates))].reset_index(drop=True)
        names = [c for c in profiles.columns if not is_metadata(c)]
        source = os.path.basename(map_profiles)
    elif frames:
        profiles, names = pd.concat(list(frames.values()), ignore_index=True), features
    else:
        return None, _not_computed(batch, f"no feature-selected profiles (PLATE_normalized_feature_select_LEVEL) "
                                          f"for batch {batch}")
    try:
        tables = map_tables(profiles, features=names, modes=modes, **options)
    except InputError as exc:  # what the profiles hold, not a setting: the rest of the report stands, and says so
        return None, _not_computed(batch, f"{source or 'the feature-selected profiles'}: {exc}")
    except CytoprofileError as exc:
        raise type(exc)(f"quality_control.map ({source or 'feature-selected profiles'}): {exc}") from exc
    by_plate: dict[str, pd.DataFrame] = {}
    if "Metadata_Plate" in profiles.columns:
        by_plate = map_by_plate(profiles, features=names, modes=modes, **options)
    paths = {}
    for mode, table in tables.items():
        paths[mode] = where.map_file(batch, mode)
        cpio.write_table(table, paths[mode])
    shown = {mode: f"{os.path.basename(where.outputs().rstrip('/'))}/{where.map_name(batch, mode)}" for mode in tables}
    for mode in by_plate:
        paths[f"{mode}_by_plate"] = where.map_file(batch, f"{mode}_by_plate")
        cpio.write_table(by_plate[mode], paths[f"{mode}_by_plate"])
        shown[f"{mode}_by_plate"] = f"{os.path.basename(where.outputs().rstrip('/'))}/{where.map_name(batch, f'{mode}_by_plate')}"
    return {"tables": tables, "source": source, "n_features": len(names), "by_plate": by_plate,
            "by_plate_note": None if by_plate else "the profiles have no Metadata_Plate column",
            "threshold": options.get("threshold", 0.05), "paths": paths, "shown": shown}, None


def remove_stale_maps(mean_ap: dict[str, Any] | None, where: QualityControlLayout, batch: str) -> None:
    """Delete an earlier run's mAP tables of ``batch`` that this run does not write (the mAP
    panel turned off, a mode dropped), so the map folder holds only this run's tables. ``mean_ap``: what
    :func:`batch_map` made (None: nothing)."""
    made = set(mean_ap["paths"]) if mean_ap is not None else set()
    for mode in MAP_MODES:
        for name in (mode, f"{mode}_by_plate"):
            path = where.map_file(batch, name)
            if name not in made and cpio.exists(path):
                cpio.remove(path)
                log.warning("batch %s: removed %s of an earlier run (this run does not compute it)", batch,
                            os.path.basename(path))
