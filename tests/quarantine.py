"""A synthetic batch whose every plate has quarantined sites, and the warnings they must raise."""

from __future__ import annotations

from pathlib import Path

from cytoprofile.synth import synth

__all__ = ["BATCH", "quarantined_workspace"]

BATCH = "B1"


def quarantined_workspace(ws: Path, plates: list[str], *, wells: int = 6, seed: int = 0) -> list[str]:
    """Write ``plates`` and break two sites of each (an empty Nuclei.csv, a header-only
    Image.csv); return the quarantine warnings collate must print, one per broken site."""
    synth(ws, batch=BATCH, plates=plates, wells=96, well_subset=wells, sites=2, cells=10, features=8, seed=seed)
    expected = []
    for plate in plates:
        sites = sorted(p for p in (ws / "analysis" / BATCH / plate / "analysis").iterdir() if p.is_dir())
        (sites[0] / "Nuclei.csv").write_bytes(b"")
        image = sites[-1] / "Image.csv"
        image.write_text(image.read_text().splitlines()[0] + "\n")
        expected += [f"{plate}: site {sites[0].name} quarantined: Nuclei.csv is empty (0 bytes); Nuclei is one of the compartments",
                     f"{plate}: site {sites[-1].name} quarantined: Image.csv has a header but no data row"]
    return expected
