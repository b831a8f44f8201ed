"""Compartments choose object tables, whatever their case, and never rename them; a compartment may have no features."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cytoprofile.aggregate import aggregate
from cytoprofile.collate import collate_plate
from cytoprofile.single_cells import SingleCellJoin

from . import faults


def _tables(sqlite: str) -> list[str]:
    conn = sqlite3.connect(sqlite)
    try:
        return sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    finally:
        conn.close()


def _collate(ws: Path, **options: object) -> dict[str, str]:
    result = collate_plate(ws, faults.BATCH, faults.PLATE, **options)  # type: ignore[arg-type]
    assert result.status == "done", result.message
    return dict(result.outputs)


@pytest.mark.parametrize("spelling", [("cells", "nuclei"), ("CELLS", "Nuclei"), ("cElls", "NUCLEI")])
@pytest.mark.parametrize("backend", [("sqlite",), ("parquet",)])
def test_compartments_in_another_case_choose_the_tables_as_spelled(
        tmp_path: Path, spelling: tuple[str, str], backend: tuple[str, ...]) -> None:
    """``--compartments cells,nuclei`` once renamed the backend's tables and columns to ``cells_*``;
    a later default ``--aggregate-only`` then crashed (exit 3)."""
    faults.small_plate(tmp_path / "clean")
    faults.small_plate(tmp_path / "ws")
    clean = _collate(tmp_path / "clean", compartments=("Cells", "Nuclei"), backend=("sqlite",))
    odd = _collate(tmp_path / "ws", compartments=spelling, backend=("sqlite", *backend))
    assert _tables(odd["sqlite"]) == _tables(clean["sqlite"])
    assert Path(odd["profiles"]).read_bytes() == Path(clean["profiles"]).read_bytes()
    again = collate_plate(tmp_path / "ws", faults.BATCH, faults.PLATE, aggregate_only=True, backend=backend)
    assert again.status == "done", again.message
    full = pd.read_csv(again.outputs["profiles"])
    assert {c.split("_")[0] for c in full.columns} == {"Metadata", "Image", "Cells", "Cytoplasm", "Nuclei"}
    lower = collate_plate(tmp_path / "ws", faults.BATCH, faults.PLATE, aggregate_only=True, backend=backend,
                          compartments=("cells", "CYTOPLASM", "nuclei"))
    assert lower.status == "skipped", lower.message  # the same compartments: the profiles are current
    join = SingleCellJoin(odd[backend[0]], compartments=[c.lower() for c in ("Cells", "Cytoplasm", "Nuclei")], hub="cytoplasm")
    try:
        assert join.compartments == ["Cells", "Cytoplasm", "Nuclei"] and join.hub == "Cytoplasm"
    finally:
        join.close()


def test_upper_case_file_names_take_the_compartment_spelling(tmp_path: Path) -> None:
    faults.small_plate(tmp_path / "clean")
    plate_dir = faults.small_plate(tmp_path / "ws")
    for folder in sorted(plate_dir.iterdir()):
        faults.rename_files(folder, str.upper)
    clean = _collate(tmp_path / "clean")
    upper = _collate(tmp_path / "ws")
    assert _tables(upper["sqlite"]) == _tables(clean["sqlite"])
    assert Path(upper["profiles"]).read_bytes() == Path(clean["profiles"]).read_bytes()


@pytest.mark.parametrize("backend", [("sqlite",), ("parquet",)])
@pytest.mark.parametrize("bare", ["Cytoplasm", "Cells"])
def test_a_compartment_without_features_aggregates_from_the_backend(
        tmp_path: Path, backend: tuple[str, ...], bare: str) -> None:
    """An object CSV of keys and links only once crashed every aggregation from the backend (an empty SELECT)."""
    plate_dir = faults.small_plate(tmp_path)
    for folder in sorted(plate_dir.iterdir()):
        faults.keep_columns(folder, bare, lambda name: name in {"ImageNumber", "ObjectNumber"}
                            or (bare == "Cytoplasm" and name.startswith("Parent_")))  # the links the join needs
    made = _collate(tmp_path, backend=backend)
    collated = pd.read_csv(made["profiles"])
    assert not any(c.startswith(f"{bare}_") for c in collated.columns)
    from_backend = aggregate(made[backend[0]])
    assert list(from_backend.columns) == list(collated.columns)
    assert from_backend["Metadata_Object_Count"].tolist() == collated["Metadata_Object_Count"].tolist()
    assert from_backend["Metadata_Object_Count"].min() > 0
    features = [c for c in collated.columns if not c.startswith("Metadata_")]
    assert np.allclose(from_backend[features].to_numpy(float), collated[features].to_numpy(float), rtol=1e-5)
    again = collate_plate(tmp_path, faults.BATCH, faults.PLATE, aggregate_only=True, backend=backend, operation="mean")
    assert again.status == "done", again.message


@pytest.mark.parametrize("backend", ["sqlite", "parquet"])
def test_a_table_only_a_quarantined_site_held_is_no_table_of_the_plate(tmp_path: Path, backend: str) -> None:
    """A site lacking Cells.csv (quarantined) that holds the plate's only Speckles.csv: the plate is built from
    the other sites without a Speckles table (before: SQLite crashed, exit 3; Parquet wrote an empty table with
    only TableNumber and listed every good site as lacking it)."""
    plate_dir = faults.small_plate(tmp_path / "ws")
    folder = faults.site(plate_dir, "A01", 1)
    (folder / "Speckles.csv").write_bytes((folder / "Nuclei.csv").read_bytes())
    (folder / "Cells.csv").unlink()
    result = collate_plate(tmp_path / "ws", faults.BATCH, faults.PLATE, backend=(backend,))  # type: ignore[arg-type]
    assert result.status == "done"
    assert "Speckles" not in result.report["tables"] and not result.report["partial_tables"]  # type: ignore[index]
    entry = next(s for s in result.report["sites"] if s["site"] == folder.name)  # type: ignore[index]
    assert entry["status"] == "quarantined" and "Cells" in entry["reason"], entry
    faults.assert_rows_accounted(result, plate_dir)
