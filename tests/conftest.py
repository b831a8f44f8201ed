"""Shared fixtures: the real CellProfiler data in ../shared/data, and small synthetic workspaces."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests that need it skip with the reason when it is absent."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{SHARED_DATA} is missing in CI")
        pytest.skip(f"{SHARED_DATA} not found (tests read the shared data in place)")
    return SHARED_DATA


def link_sites(ws: Path, batch: str, plate: str, sites: dict[str, Path]) -> Path:
    """A handbook-layout workspace whose site folders are links to real site folders."""
    plate_dir = ws / "analysis" / batch / plate / "analysis"
    plate_dir.mkdir(parents=True, exist_ok=True)
    for name, target in sites.items():
        (plate_dir / name).symlink_to(target, target_is_directory=True)
    return plate_dir
