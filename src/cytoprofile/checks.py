"""Option checks shared by the steps: a wrong type or value is a ``ConfigError`` naming the option.

Steps called from Python get the same one-line messages as the command line and the
config, never a ``TypeError`` from deep inside pandas.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .errors import ConfigError, InputError

__all__ = ["as_names", "listed", "check_choice", "check_choices", "check_columns", "check_flag", "check_frame", "check_number"]


def check_number(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    integer: bool = False,
) -> float:
    """``value`` as a number, or a ``ConfigError`` naming ``name`` (never a ``TypeError``)."""
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, numbers.Integral if integer else numbers.Real) and not isinstance(
        value, bool | np.bool_
    )
    if not ok or np.isnan(float(value)):  # type: ignore[arg-type]
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    number = float(value)  # type: ignore[arg-type]
    if minimum is not None and number < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value!r}")
    if maximum is not None and number > maximum:
        raise ConfigError(f"{name} must be <= {maximum}, got {value!r}")
    return number


def check_frame(name: str, value: object) -> pd.DataFrame:
    """``value`` if it is a DataFrame; a path or anything else is a ``ConfigError``."""
    if not isinstance(value, pd.DataFrame):
        raise ConfigError(
            f"{name} must be a pandas DataFrame, got {type(value).__name__}; read files with "
            "cytoprofile.io.read_table (or use the command line)"
        )
    return value


def check_flag(name: str, value: object) -> bool:
    """``value`` as a bool, or a ``ConfigError`` (a string such as "False" is not a flag)."""
    if not isinstance(value, bool | np.bool_):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def listed(values: Iterable[object], *, last: str = "or") -> str:
    """Values as a person writes them in a message: ``a, b or c`` (never a Python list)."""
    names = [str(v) for v in values]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}" if names else "none"


def _choice(value: object, choices: Sequence[str], *, fold: bool) -> str | None:
    """The choice ``value`` names (compared case-insensitively when ``fold``), else None."""
    if isinstance(value, str):
        for choice in choices:
            if value == choice or (fold and value.lower() == choice.lower()):
                return choice
    return None


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices`` (compared case-insensitively), else a ``ConfigError``."""
    choice = _choice(value, choices, fold=True)
    if choice is None:
        raise ConfigError(f"{name} must be one of {listed(choices)}, got {value!r}")
    return choice


def check_choices(name: str, values: Iterable[object], choices: Sequence[str]) -> list[str]:
    """``values`` if each is one of ``choices`` (exactly), else an ``InputError`` naming the first other one:
    ``NAME VALUE: choose A, B or C`` (a flag's or an argument's name)."""
    out = []
    for value in values:
        choice = _choice(value, choices, fold=False)
        if choice is None:
            raise InputError(f"{name} {value}: choose {listed(choices)}")
        out.append(choice)
    return out


def as_names(name: str, value: object, *, repeats: bool = False) -> list[str]:
    """A column name or a list of them as a list (a string is one name, not its letters). A name given twice is
    refused unless ``repeats``: it would make the column twice in the output (a feature, a stratum) or fail deep in
    pandas (grouping by one column twice)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable) and not isinstance(value, bytes | Mapping):
        items = list(value)
        if all(isinstance(v, str) for v in items):
            twice = sorted({v for v in items if items.count(v) > 1}) if not repeats else []
            if twice:
                raise ConfigError(f"{name} names {listed(twice, last='and')} more than once; name each column once")
            return items
    raise ConfigError(f"{name} must be a column name or a list of names, got {value!r}")



def check_columns(name: str, value: object, frame: pd.DataFrame, *, message: str) -> list[str]:
    """``value`` as column names (see :func:`as_names`), each a column of ``frame``.

    A name the frame lacks is a ``ConfigError``: ``message`` with ``{missing}`` filled in; so is a name given
    twice (:func:`as_names`).
    """
    names = as_names(name, value)
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise ConfigError(message.format(missing=listed(missing, last="and")))
    return names
