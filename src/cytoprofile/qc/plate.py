"""Plate geometry for QC: well names ↔ grid positions, and the plate format holding a set of wells."""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..errors import InputError

__all__ = ["PLATE_FORMATS", "well_to_grid", "grid_to_well", "row_label", "normal_well", "plate_layout"]

#: (rows, columns) of 96-, 384- and 1536-well plates.
PLATE_FORMATS: tuple[tuple[int, int], ...] = ((8, 12), (16, 24), (32, 48))
_WELL_RE = re.compile(r"^\s*([A-Za-z]{1,2})\s*0*(\d{1,3})\s*$")


def well_to_grid(well: str) -> tuple[int, int]:
    """Zero-based (row, column) of a well name: ``"A01"`` → (0, 0), ``"AF48"`` → (31, 47)."""
    match = _WELL_RE.match(str(well))
    if not match:
        raise InputError(
            f"well {well!r} is not a well name like 'A01' or 'AF48'; "
            "check the Metadata_Well column"
        )
    letters, number = match.group(1).upper(), int(match.group(2))
    row = 0
    for letter in letters:  # bijective base 26: A..Z, AA..AZ, ...
        row = row * 26 + (ord(letter) - ord("A") + 1)
    if number < 1:
        raise InputError(f"well {well!r}: columns start at 1; check the Metadata_Well column")
    return row - 1, number - 1


def row_label(index: int) -> str:
    """Letters of a zero-based row: 0 → ``"A"``, 26 → ``"AA"``."""
    label = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        label = chr(ord("A") + rest) + label
    return label


def grid_to_well(row: int, col: int) -> str:
    """Well name of a zero-based grid position: (31, 47) → ``"AF48"``."""
    return f"{row_label(row)}{col + 1:02d}"


def normal_well(well: str) -> str:
    """``"a1"`` → ``"A01"``; a name that is not a well is returned unchanged."""
    try:
        return grid_to_well(*well_to_grid(well))
    except InputError:
        return str(well)


def plate_layout(wells: Iterable[str]) -> tuple[int, int]:
    """(rows, columns) of the smallest 96-, 384- or 1536-well plate holding ``wells``.

    Wells beyond 32 × 48 give a grid just large enough; no wells give 8 × 12.
    """
    max_row = max_col = -1
    for well in wells:
        row, col = well_to_grid(well)
        max_row, max_col = max(max_row, row), max(max_col, col)
    for n_rows, n_cols in PLATE_FORMATS:
        if max_row < n_rows and max_col < n_cols:
            return n_rows, n_cols
    return max_row + 1, max_col + 1
