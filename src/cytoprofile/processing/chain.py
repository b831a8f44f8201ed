"""Processing chains: reading a chain's steps, checking its options, and running it with a
record of each step's effect."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import pandas as pd

from ..errors import ConfigError
from ..vocabulary import NEGCON_QUERY as NEGCON
from ..vocabulary import PROCESSING_STEPS as CHAIN_STEPS
from ..vocabulary import resolve_features
from .steps import (
    SPHERING_GRID,
    Features,
    correct_well_position,
    drop_na_features,
    harmony_handed_over,
    mad_normalize,
    non_feature_columns,
    pca,
    rank_int,
    regress_cell_count,
    remove_outliers,
    select_variant_features,
    sphere,
)

__all__ = ["CHAIN_OPTIONS", "check_chain_options", "parse_chain", "run_chain"]

log = logging.getLogger("cytoprofile.processing")

#: ``run_chain`` options and the steps each one affects.
CHAIN_OPTIONS: dict[str, tuple[str, ...]] = {
    "plate_column": ("var", "mad"),
    "samples": ("var", "mad", "sphering"),
    "plates_without_controls": ("var", "mad"),
    "well_column": ("wellpos",),
    "cell_count_column": ("cc",),
    "min_unique": ("cc",),
    "outlier_bound": ("outlier",),
    "variance_fraction": ("pca",),
    "ties": ("int",),
    "sphering_epsilon": ("sphering",),
    "pert_column": ("sphering",),
    "neg_sameby": ("sphering",),
    "batch_key": ("harmony",),
    "seed": ("int", "harmony"),
    "featselect": ("featselect",),
}



def parse_chain(chain: str | Sequence[str]) -> list[str]:
    """Steps of a chain: ``"profiles_var_mad_int_featselect_harmony"`` or a list of names."""
    if isinstance(chain, str):
        parts = [p for p in chain.strip().split("_") if p]
        if parts and parts[0] == "profiles":
            parts = parts[1:]
    else:
        parts = [str(p).strip() for p in chain]
    unknown = [p for p in parts if p not in CHAIN_STEPS]
    if unknown:
        raise ConfigError(
            f"processing: unknown step(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(CHAIN_STEPS)}"
        )
    return parts


def check_chain_options(chain: str | Sequence[str], options: Mapping[str, Any]) -> None:
    """Refuse option names ``run_chain`` does not take, and options no step of ``chain`` uses."""
    import difflib
    import inspect

    from ..feature_select import feature_select

    steps = set(parse_chain(chain))
    for name in options:
        if name not in CHAIN_OPTIONS:
            close = difflib.get_close_matches(str(name), list(CHAIN_OPTIONS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown processing option {name!r}{hint}; accepted: {', '.join(CHAIN_OPTIONS)}")
        if not steps & set(CHAIN_OPTIONS[name]):
            raise ConfigError(f"processing option {name!r} has no effect: it is used by step(s) "
                              f"{', '.join(CHAIN_OPTIONS[name])}, none of which is in the chain")
    taken = set(inspect.signature(feature_select).parameters) - {
        "profiles", "features", "image_features", "compartments", "on_account"}
    for name in options.get("featselect") or {}:
        if name not in taken:
            raise ConfigError(f"unknown featselect option {name!r}; accepted: {', '.join(sorted(taken))}")


def _step_call(step: str, frames: list[pd.DataFrame], names: list[str], o: Mapping[str, Any]) -> pd.DataFrame:
    """One chain step with the chain's options, on the frame handed over in ``frames``."""
    from ..feature_select import feature_select

    if step == "harmony":  # lets go of its input's features before harmonypy's peak
        return harmony_handed_over(frames, features=names, batch_key=o["batch_key"], seed=o["seed"])
    frame = frames.pop()
    plates = {"plate_column": o["plate_column"], "samples": o["samples"],
              "plates_without_controls": o["plates_without_controls"]}
    if step == "var":
        return select_variant_features(frame, features=names, **plates)
    if step == "mad":
        return mad_normalize(frame, features=names, **plates)
    if step == "int":
        return rank_int(frame, features=names, ties=o["ties"], seed=o["seed"])
    if step == "featselect":
        return feature_select(frame, features=names, **o["featselect"])
    if step == "wellpos":
        return correct_well_position(frame, features=names, well_column=o["well_column"])
    if step == "cc":
        return regress_cell_count(frame, features=names, cell_count_column=o["cell_count_column"],
                                  min_unique=o["min_unique"])
    if step == "outlier":
        return remove_outliers(frame, features=names, bound=o["outlier_bound"])
    if step == "dropna":
        return drop_na_features(frame, features=names)
    if step == "pca":
        return pca(frame, features=names, variance_fraction=o["variance_fraction"])
    if step == "sphering":
        return sphere(frame, features=names, samples=o["samples"], epsilon=o["sphering_epsilon"],
                      pert_column=o["pert_column"], neg_sameby=o["neg_sameby"])
    raise AssertionError(f"no call for chain step {step!r}")  # parse_chain accepts only the steps above


def _plates(frame: pd.DataFrame, plate_column: str) -> set[str]:
    return set(frame[plate_column].astype(str)) if plate_column in frame else set()


def run_chain(
    profiles: pd.DataFrame,
    chain: str | Sequence[str],
    *,
    features: Features = "infer",
    feature_prefixes: Sequence[str] | None = None,
    plate_column: str = "Metadata_Plate",
    samples: str = NEGCON,
    plates_without_controls: Literal["error", "drop"] = "error",
    well_column: str = "Metadata_Well",
    cell_count_column: str = "Metadata_Count_Cells",
    min_unique: int = 100,
    outlier_bound: float = 100.0,
    variance_fraction: float = 0.98,
    ties: Literal["random", "average"] = "random",
    sphering_epsilon: float | Sequence[float] = SPHERING_GRID,
    pert_column: str = "Metadata_broad_sample",
    neg_sameby: Sequence[str] = ("Metadata_Plate",),
    batch_key: str = "Metadata_Batch",
    seed: int = 0,
    featselect: Mapping[str, Any] | None = None,
    report: list[dict[str, Any]] | None = None,
) -> pd.DataFrame:
    """Apply the steps of ``chain`` (see ``parse_chain``) in order.

    ``featselect`` holds ``feature_select`` options over the defaults (frequency and
    correlation thresholds and the blocklist). When ``report`` is a list, one entry
    per step is appended: step, rows and features in and out, the dropped features
    and plates, and seconds.
    """
    steps = parse_chain(chain)
    names = resolve_features(profiles, features, feature_prefixes=feature_prefixes)
    options = {
        "plate_column": plate_column, "samples": samples, "plates_without_controls": plates_without_controls,
        "well_column": well_column, "cell_count_column": cell_count_column, "min_unique": min_unique,
        "outlier_bound": outlier_bound, "variance_fraction": variance_fraction, "ties": ties,
        "sphering_epsilon": sphering_epsilon, "pert_column": pert_column, "neg_sameby": tuple(neg_sameby),
        "batch_key": batch_key, "seed": seed,
        "featselect": {"operations": ["variance_threshold", "correlation_threshold", "blocklist"]}
        | dict(featselect or {}),
    }
    frame = profiles
    for step in steps:
        start = time.perf_counter()
        before_rows, before = len(frame), names
        other = set(non_feature_columns(frame, names))
        plates_before = _plates(frame, plate_column) if report is not None else set()
        frames = [frame]
        del frame  # handed over: a step may let go of the features of a frame the chain made
        frame = _step_call(step, frames, names, options)
        names = [c for c in frame.columns if c not in other]
        if report is not None:
            plates_after = _plates(frame, plate_column)
            report.append({
                "step": step, "rows_in": before_rows, "rows_out": len(frame),
                "features_in": len(before), "features_out": len(names),
                "dropped_features": [n for n in before if n not in set(names)] if step != "pca" else [],
                "dropped_plates": sorted(plates_before - plates_after),
                "seconds": round(time.perf_counter() - start, 3),
            })
        log.info("processing %s: %d rows x %d features", step, len(frame), len(names))
    return frame
