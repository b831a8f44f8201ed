"""cytoprofile: CellProfiler output to analysis-ready Cell Painting profiles."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
