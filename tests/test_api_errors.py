"""Python API: every wrong argument of a step function is a ValueError-compatible user error.

Scripts written for pycytominer catch ``ValueError``; a wrong type must never escape as a
``TypeError``/``AttributeError`` from deep inside pandas or numpy.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cytoprofile import io
from cytoprofile.annotate import annotate
from cytoprofile.consensus import consensus
from cytoprofile.errors import ConfigError, CytoprofileError, InputError, MetadataError
from cytoprofile.feature_select import feature_select
from cytoprofile.normalize import normalize

WELLS = [f"{r}{c:02d}" for r in "ABCDEFGH" for c in range(1, 13)]
WRONG: list[object] = ["x", 3, 2.5, None, [1], {"a": 1}, object(), True, float("nan")]


def _profiles() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({
        "Metadata_Plate": "P1",
        "Metadata_Well": WELLS,
        "Metadata_broad_sample": [f"s{i % 8}" for i in range(96)],
        "Metadata_control_type": ["negcon" if i % 6 == 0 else "trt" for i in range(96)],
        "Metadata_Object_Count": rng.integers(1, 100, 96),
    })
    for j in range(6):
        df[f"Cells_f{j}"] = rng.normal(size=96)
    return df


def _platemap() -> pd.DataFrame:
    return pd.DataFrame({"plate_map_name": "pm", "well_position": WELLS,
                         "broad_sample": [f"s{i % 8}" for i in range(96)]})


def _context(step: str, param: str) -> dict[str, Any]:
    """Options that make ``param`` take effect."""
    if step == "feature_select" and param.startswith("noise_removal"):
        return {"operations": "noise_removal", "noise_removal_perturb_groups": "Metadata_broad_sample",
                "noise_removal_stdev_cutoff": 1.0}
    if step == "feature_select" and param.startswith("blocklist"):
        return {"operations": "blocklist"}
    if step == "feature_select" and param.startswith("corr"):
        return {"operations": "correlation_threshold"}
    if step == "normalize" and param.startswith("spherize"):
        return {"method": "spherize"}
    if step == "normalize" and param == "object_count_column":
        return {"min_cells": 2}
    if step == "normalize" and param.startswith("inverse_normal"):
        return {"method": "inverse_normal"}
    if step == "consensus" and param.startswith("modz"):
        return {"operation": "modz"}
    if step == "annotate" and param.startswith("external"):
        return {"external_metadata": pd.DataFrame({"broad_sample": ["s1"], "x": [1]}),
                "external_join_left": "Metadata_broad_sample"}
    return {}


def _write_gct(profiles: Any, **options: Any) -> str:
    """``io.write_gct`` to a throw-away file (its options are checked like a step's)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        return io.write_gct(profiles, f"{folder}/out.gct", **options)


STEPS: dict[str, tuple[Callable[..., Any], int]] = {
    "normalize": (normalize, 1),
    "feature_select": (feature_select, 1),
    "consensus": (consensus, 1),
    "annotate": (annotate, 2),
    "write_gct": (_write_gct, 1),
}
_SIGNATURES = {"write_gct": (io.write_gct, 2)}
CASES = [(step, param) for step, (fn, n) in STEPS.items()
         for param in list(inspect.signature(_SIGNATURES.get(step, (fn, n))[0]).parameters)[_SIGNATURES.get(step, (fn, n))[1]:]]


def test_user_errors_are_value_errors() -> None:
    for cls in (ConfigError, InputError, MetadataError):
        assert issubclass(cls, ValueError) and issubclass(cls, CytoprofileError)


@pytest.mark.parametrize(("step", "param"), CASES)
def test_wrong_arguments_are_value_errors(step: str, param: str) -> None:
    fn, n = STEPS[step]
    args = [_profiles(), _platemap()][:n]
    logging.disable(logging.CRITICAL)
    try:
        for value in WRONG:
            kwargs = _context(step, param) | {param: value}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fn(*args, **kwargs)
            except CytoprofileError as exc:
                assert isinstance(exc, ValueError), (param, value)
    finally:
        logging.disable(logging.NOTSET)


@pytest.mark.parametrize("step", list(STEPS))
@pytest.mark.parametrize("value", ["profiles.csv", None, 3, [1.0]])
def test_profiles_that_are_not_a_frame_are_config_errors(step: str, value: object) -> None:
    fn, n = STEPS[step]
    args: list[object] = [value, _platemap()][:n]
    with pytest.raises(ConfigError, match="DataFrame"):
        fn(*args)


@pytest.mark.parametrize(("option", "value"), [
    ("backend", ["foo"]), ("backend", []), ("backend", ["sqlite", "SQLite3"]), ("profile_format", "xlsx"),
    ("operation", "mode"), ("count_check", "strict"), ("single_cells", ["hdf5"]),
])
def test_collate_refuses_an_unknown_choice_before_reading(tmp_path: Any, option: str, value: object) -> None:
    """A misspelled choice in the Python API is one user error naming the option, and nothing is written."""
    from cytoprofile.collate import collate
    from cytoprofile.synth import synth

    ws = tmp_path / "ws"
    synth(ws, batch="B", plates=["P1"], wells=96, sites=1, cells=3, features=3, well_subset=2)
    before = sorted(p.relative_to(ws) for p in ws.rglob("*"))
    with pytest.raises(InputError, match=option) as caught:
        collate(ws, "B", ["P1"], **{option: value})
    assert isinstance(caught.value, ValueError)
    assert sorted(p.relative_to(ws) for p in ws.rglob("*")) == before


@pytest.mark.parametrize(("call", "names"), [
    (lambda df: consensus(df, operation="mode"), "median, mean or modz"),
    (lambda df: feature_select(df, operations=["variance", "nope"]), "variance and nope; choose"),
    (lambda df: normalize(df, method="zscore"), "standardize, robustize"),
    (lambda df: __import__("cytoprofile.evaluate").evaluate.mean_average_precision(df, mode="recall"),
     "activity, distinctiveness or consistency"),
    (lambda df: __import__("cytoprofile.evaluate").evaluate.average_precision(
        df, pos_sameby=["Metadata_broad_sample", "Metadata_Plate", "Metadata_Well"],
        pos_diffby=["Metadata_Plate", "Metadata_Well"], neg_diffby=["Metadata_broad_sample"]),
     "share Metadata_Plate and Metadata_Well"),
])
def test_messages_list_choices_as_words(call: Callable[[pd.DataFrame], object], names: str) -> None:
    """An error lists choices and names as a person writes them, never as a Python list."""
    with pytest.raises(CytoprofileError) as caught:
        call(_profiles())
    message = str(caught.value)
    assert names in message and "['" not in message and "']" not in message, message
