"""How QC numbers are written in the report and on figures: significant digits, never a bare "0."."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["format_number"]


def format_number(value: Any, *, digits: int = 3, decimals: int = 3) -> str:
    """``value`` as text keeping ``digits`` significant digits.

    Whole numbers print exactly (with thousands separators from 10,000). Other numbers
    keep at least ``decimals`` decimals and at least ``digits`` significant digits, so
    0.000123 prints as ``0.000123`` (not ``0.``) and 1234.5678 as ``1234.568``; below
    1e-4 they print in scientific notation (``1.23e-05``). A fraction never prints as a whole
    number: 0.9996 is ``0.9996``, not ``1``. NaN prints as an empty
    string, infinities as ``inf`` / ``-inf``.
    """
    number = float(value)
    if math.isnan(number):
        return ""
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    if number.is_integer():
        return f"{int(number):,}" if abs(number) >= 10_000 else str(int(number))
    size = abs(number)
    if size < 1e-4:
        return f"{number:.{digits}g}"
    places = max(decimals, digits - 1 - math.floor(math.log10(size)))
    text = f"{number:.{places}f}".rstrip("0").rstrip(".")
    while "." not in text and places < 20:  # a fraction never reads as a whole number (0.9996 as 1)
        places += 1
        text = f"{number:.{places}f}".rstrip("0").rstrip(".")
    return text
